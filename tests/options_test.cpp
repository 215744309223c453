// Every TENDRIL_* variable: a malformed value makes run() throw
// std::invalid_argument naming the variable, and a good one reaches Options.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tendril/options.hpp"
#include "tendril/runtime.hpp"

namespace {

const char* const kVariables[] = {
    "TENDRIL_WORKERS",    "TENDRIL_STACK_LIMIT", "TENDRIL_SPIN_US",        "TENDRIL_PIN",
    "TENDRIL_STACK_MODE", "TENDRIL_IO",          "TENDRIL_STACK_CACHE_BYTES", "TENDRIL_STACK_FILL",
    "TENDRIL_STACK_GROW", "TENDRIL_STACK_BURST_US", "TENDRIL_STACK_LEARN", "TENDRIL_STACK_NUMA_CHECK",
    "TENDRIL_BLOCKING_THREADS", "TENDRIL_COMPACT_MS"};

// Clears every TENDRIL_* variable (ctest runs suites with some set) and
// restores them afterwards.
class CleanEnvironment : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVariables) {
      if (const char* old = std::getenv(v)) saved_.push_back({v, old});
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVariables) unsetenv(v);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }

 private:
  std::vector<std::pair<std::string, std::string>> saved_;
};

struct Case {
  const char* variable;
  std::vector<const char*> malformed;
  const char* good;
  std::function<bool(const tendril::Options&)> applied;  // true if `good` took effect
};

std::vector<Case> cases() {
  using std::chrono::microseconds;
  return {
      {"TENDRIL_WORKERS", {"two", "-1", "1x", "", "100000"}, "1", [](auto& o) { return o.workers == 1; }},
      {"TENDRIL_STACK_LIMIT", {"12Q", "", "-4K", "1M2"}, "512K", [](auto& o) { return o.stack_limit == 512 * 1024; }},
      {"TENDRIL_SPIN_US", {"fast", "-5", "2000000"}, "7", [](auto& o) { return o.spin_before_park == microseconds(7); }},
      {"TENDRIL_PIN", {"maybe", "2", ""}, "off", [](auto& o) { return !o.pin_workers; }},
      {"TENDRIL_STACK_MODE", {"simple", "UFFD"}, "kernel", [](auto& o) { return o.stack_mode == "kernel"; }},
      {"TENDRIL_IO", {"poll", "io_uring"}, "epoll", [](auto& o) { return o.io_backend == "epoll"; }},
      {"TENDRIL_STACK_CACHE_BYTES", {"lots", "-1"}, "0", [](auto& o) { return o.stack_cache_bytes == 0; }},
      {"TENDRIL_STACK_FILL", {"zero", "1"}, "move", [](auto& o) { return o.stack_fill == "move"; }},
      {"TENDRIL_STACK_GROW", {"abc", "0", "17", "", "4x"}, "4", [](auto& o) { return o.stack_grow_pages == 4; }},
      {"TENDRIL_STACK_BURST_US", {"soon", "-1", "1.5"}, "0", [](auto& o) { return o.stack_burst.count() == 0; }},
      {"TENDRIL_STACK_LEARN", {"nope", "2"}, "0", [](auto& o) { return !o.stack_learn_depth; }},
      {"TENDRIL_STACK_NUMA_CHECK", {"always", "11"}, "1", [](auto& o) { return o.stack_numa_check; }},
      {"TENDRIL_BLOCKING_THREADS", {"many", "0", "5000"}, "3", [](auto& o) { return o.blocking_threads == 3; }},
      {"TENDRIL_COMPACT_MS", {"idle", "-1", "3600001", "1.5"}, "250",
       [](auto& o) { return o.compact_after == std::chrono::milliseconds(250); }},
  };
}

using OptionsEnvironment = CleanEnvironment;

TEST_F(OptionsEnvironment, EveryVariableIsCovered) { EXPECT_EQ(cases().size(), std::size(kVariables)); }

TEST_F(OptionsEnvironment, MalformedValueMakesRunThrowNamingTheVariable) {
  for (const Case& c : cases()) {
    for (const char* bad : c.malformed) {
      setenv(c.variable, bad, 1);
      try {
        tendril::run([] {});
        ADD_FAILURE() << c.variable << "=\"" << bad << "\" accepted";
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(c.variable), std::string::npos) << e.what();
      }
      unsetenv(c.variable);
    }
  }
}

TEST_F(OptionsEnvironment, GoodValueReachesOptions) {
  for (const Case& c : cases()) {
    setenv(c.variable, c.good, 1);
    EXPECT_TRUE(c.applied(tendril::Options{}.with_environment())) << c.variable << "=" << c.good;
    unsetenv(c.variable);
  }
}

TEST_F(OptionsEnvironment, GoodValuesRun) {
  for (const Case& c : cases()) {
    setenv(c.variable, c.good, 1);
    bool ran = false;
    tendril::run([&] { ran = true; });
    EXPECT_TRUE(ran) << c.variable << "=" << c.good;
    unsetenv(c.variable);
  }
}

TEST_F(OptionsEnvironment, OutOfRangeOptionsThrow) {
  tendril::Options o;
  o.stack_grow_pages = 0;
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o = {};
  o.stack_fill = "zero";
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o = {};
  o.blocking_threads = 0;
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o = {};
  o.stack_burst = std::chrono::microseconds(-1);
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
}

}  // namespace
