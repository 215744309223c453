// Misuse is diagnosed clearly: exceptions for recoverable misuse, a message
// and abort for what cannot be recovered.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include <cstdlib>
#include <stdexcept>
#include <system_error>
#include <thread>

TEST(Misuse, RunInsideRunThrows) {
  tendril::run([] {
    EXPECT_THROW(tendril::run([] {}), std::logic_error);
    std::thread t([] { EXPECT_THROW(tendril::run([] {}), std::logic_error); });
    t.join();
  });
}

TEST(Misuse, SpawnOutsideRunThrows) {
  EXPECT_THROW(tendril::spawn([] {}), std::logic_error);
}

TEST(Misuse, EmptyMainThrows) {
  EXPECT_THROW(tendril::run(std::function<void()>{}), std::invalid_argument);
}

TEST(Misuse, JoinAndDetachOfNonJoinableFiberThrow) {
  tendril::Fiber f;
  EXPECT_THROW(f.join(), std::system_error);
  EXPECT_THROW(f.detach(), std::system_error);
  tendril::run([] {
    auto g = tendril::spawn([] {});
    g.join();
    EXPECT_THROW(g.join(), std::system_error);
  });
}

TEST(Misuse, FiberJoiningItselfThrowsDeadlock) {
  tendril::run([] {
    tendril::Fiber self;
    tendril::Channel<int> go, tried;
    self = tendril::spawn([&, go, tried]() mutable {
      go.recv();  // until `self` holds this fiber's handle
      try {
        self.join();
        ADD_FAILURE() << "self-join returned";
      } catch (const std::system_error& e) {
        EXPECT_EQ(e.code(), std::errc::resource_deadlock_would_occur);
      }
      tried.send(1);
    });
    const auto id = self.id();
    go.send(1);
    tried.recv();
    // The failed self-join left the handle as it was.
    EXPECT_TRUE(self.joinable());
    EXPECT_EQ(self.id(), id);
    self.join();
  });
}

TEST(Misuse, BadStackLimitsThrow) {
  tendril::run([] {
    EXPECT_THROW(tendril::spawn({.name = "", .stack_limit = 1024}, [] {}), std::invalid_argument);
    EXPECT_THROW(tendril::spawn({.name = "", .stack_limit = std::size_t{1} << 40}, [] {}),
                 std::invalid_argument);
    struct Huge {
      char bytes[64 * 1024];
      void operator()() const {}
    };
    EXPECT_THROW(tendril::spawn({.name = "", .stack_limit = 64 * 1024}, Huge{}), std::length_error);
  });
}

namespace {
// Runs `body` with TENDRIL_<name> variables the suite itself may be run with
// (ctest runs it once more with TENDRIL_STACK_MODE=kernel) removed.
struct CleanEnvironment {
  CleanEnvironment() {
    if (const char* v = std::getenv("TENDRIL_STACK_MODE")) saved_mode = v;
    unsetenv("TENDRIL_STACK_MODE");
  }
  ~CleanEnvironment() {
    if (!saved_mode.empty()) setenv("TENDRIL_STACK_MODE", saved_mode.c_str(), 1);
  }
  std::string saved_mode;
};
}  // namespace

TEST(Misuse, BadOptionsAndEnvironmentThrow) {
  CleanEnvironment clean;
  tendril::Options o;
  o.stack_limit = 100;
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o = {};
  o.stack_mode = "bogus";
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  // Malformed TENDRIL_* variables: tests/options_test.cpp, one per variable.
}

TEST(Misuse, EnvironmentOverridesOptions) {
  setenv("TENDRIL_WORKERS", "1", 1);
  setenv("TENDRIL_STACK_LIMIT", "512K", 1);
  tendril::Options o;
  o.workers = 2;
  const tendril::Options e = o.with_environment();
  EXPECT_EQ(e.workers, 1u);
  EXPECT_EQ(e.stack_limit, 512u * 1024);
  tendril::run(o, [] { EXPECT_EQ(tendril::stats().workers, 1u); });
  unsetenv("TENDRIL_WORKERS");
  unsetenv("TENDRIL_STACK_LIMIT");
}

using MisuseDeathTest = ::testing::Test;

TEST(MisuseDeathTest, DestroyingAJoinableFiberAborts) {
  EXPECT_DEATH(tendril::run([] {
                 tendril::Fiber f = tendril::spawn({.name = "forgotten"}, [] {});
               }),
               "Fiber [0-9]+ 'forgotten' destroyed while joinable");
}

TEST(MisuseDeathTest, ExceptionEscapingADetachedFiberAborts) {
  EXPECT_DEATH(tendril::run([] {
                 tendril::spawn({.name = "thrower"}, [] { throw std::runtime_error("lost"); })
                     .detach();
                 tendril::this_fiber::sleep_for(std::chrono::seconds(5));
               }),
               "exception escaped detached fiber [0-9]+ 'thrower': lost");
}

TEST(MisuseDeathTest, ParkingOnTheWorkerStackAborts) {
  EXPECT_DEATH(tendril::run([] {
                 tendril::spawn({.name = "sleeper"}, [] {
                   tendril::this_fiber::on_worker_stack(
                       // Long enough that it cannot have passed before the
                       // sleep parks (a passed deadline only yields).
                       [] { tendril::this_fiber::sleep_for(std::chrono::hours(1)); });
                 }).join();
               }),
               "fiber [0-9]+ 'sleeper' tried to park inside this_fiber::on_worker_stack");
}
