// FiberLocal: one value per fiber that follows it across parks and workers,
// built on first use and destroyed at the fiber's end; one per thread on
// plain threads; FiberLocals that come and go while fibers hold values.
#include <gtest/gtest.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

tendril::Options two_workers() { return tendril_test::workers(2); }

std::atomic<long> g_made{0}, g_destroyed{0};

struct Counted {
  Counted() { g_made.fetch_add(1); }
  ~Counted() { g_destroyed.fetch_add(1); }
  Counted(const Counted&) = delete;
  long value = 0;
  tendril::FiberId owner = 0;
};

tendril::FiberLocal<Counted> g_counted;  // a global
tendril::FiberLocal<int> g_int;

void reset_counts() {
  g_made = 0;
  g_destroyed = 0;
}

}  // namespace

// Fibers on two workers, each keeping its own value across yields, sleeps and
// channel hand-offs that move it between the workers (seen with gettid).
TEST(FiberLocal, EachFiberKeepsItsOwnValueAcrossParksAndWorkers) {
  const int kFibers = 16;
  const int kRounds = int(stress_count(2000, 200));
  std::atomic<long> moves{0}, wrong{0};
  // Again if no fiber happened to move (bounded): the point is values that
  // follow fibers across workers.
  for (int attempt = 0; attempt < 10 && moves.load() == 0; ++attempt) {
    reset_counts();
    tendril::run(two_workers(), [&] {
      tendril::Channel<int> relay(4);
      std::vector<tendril::Fiber> fibers;
      for (int i = 0; i < kFibers; ++i) {
        fibers.push_back(tendril::spawn([&, i] {
          Counted& mine = g_counted.get();
          mine.owner = tendril::this_fiber::id();
          *g_int = i * 1000;
          pid_t tid = ::gettid();
          for (int r = 0; r < kRounds; ++r) {
            g_counted->value += 1;
            *g_int += 1;
            switch (r % 4) {
              case 0: tendril::this_fiber::yield(); break;
              case 1: relay.send(r); relay.recv(); break;  // the other worker may take it
              case 2: if (r % 32 == 2) tendril::this_fiber::sleep_for(20us); break;
              default: if (r % 32 == 3) tendril::blocking([] {}); break;  // woken by a pool thread
            }
            if (::gettid() != tid) moves.fetch_add(1);
            tid = ::gettid();
            if (&g_counted.get() != &mine || g_counted->owner != tendril::this_fiber::id() ||
                g_counted->value != r + 1 || g_int.get() != i * 1000 + r + 1)
              wrong.fetch_add(1);
          }
        }));
      }
      for (auto& f : fibers) f.join();
    });
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(g_made.load(), kFibers);  // main never used g_counted
    EXPECT_EQ(g_destroyed.load(), kFibers);
  }
  EXPECT_GT(moves.load(), 0) << "no fiber moved between workers: the test proves little";
}

TEST(FiberLocal, BuiltOnFirstUseAndDestroyedOnTheFiberBeforeJoinReturns) {
  reset_counts();
  struct Probe {
    std::atomic<tendril::FiberId>* destroyed_on;
    ~Probe() { if (destroyed_on != nullptr) destroyed_on->store(tendril::this_fiber::id()); }
  };
  static tendril::FiberLocal<Probe> probe;  // a static
  std::atomic<tendril::FiberId> destroyed_on{0};
  tendril::run(two_workers(), [&] {
    tendril::spawn([] { tendril::this_fiber::yield(); }).join();
    EXPECT_EQ(g_made.load(), 0) << "a fiber that never calls get() makes nothing";
    tendril::FiberId id = 0;
    tendril::Fiber f = tendril::spawn([&] {
      id = tendril::this_fiber::id();
      probe->destroyed_on = &destroyed_on;
      EXPECT_EQ(g_counted->value, 0) << "value-initialised";
      EXPECT_EQ(*g_int, 0) << "value-initialised";
      tendril::this_fiber::sleep_for(100us);
    });
    f.join();
    EXPECT_EQ(g_made.load(), 1);
    EXPECT_EQ(g_destroyed.load(), 1) << "destroyed before join() returned";
    EXPECT_EQ(destroyed_on.load(), id) << "destroyed on the fiber itself";
  });
}

// Globals, statics and members: independent slots.
TEST(FiberLocal, SeveralFiberLocalsAreIndependent) {
  struct Holder {
    tendril::FiberLocal<std::string> name;
    tendril::FiberLocal<std::vector<int>> list;
  };
  tendril::run(two_workers(), [] {
    Holder a, b;
    static tendril::FiberLocal<std::string> s;
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < 8; ++i) {
      fibers.push_back(tendril::spawn([&, i] {
        *a.name = "a" + std::to_string(i);
        *b.name = "b" + std::to_string(i);
        *s = "s" + std::to_string(i);
        a.list->push_back(i);
        tendril::this_fiber::yield();
        EXPECT_EQ(*a.name, "a" + std::to_string(i));
        EXPECT_EQ(*b.name, "b" + std::to_string(i));
        EXPECT_EQ(*s, "s" + std::to_string(i));
        EXPECT_EQ(a.list->size(), 1u);
        EXPECT_TRUE(b.list->empty());
      }));
    }
    for (auto& f : fibers) f.join();
  });
}

// Outside a fiber: one value per thread, destroyed at the thread's exit.
TEST(FiberLocal, PlainThreadsHaveOneValueEach) {
  reset_counts();
  std::vector<std::thread> threads;
  std::atomic<long> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      g_counted->value = t;
      for (int i = 0; i < 1000; ++i) std::this_thread::yield();
      if (g_counted->value != t || &g_counted.get() != &*g_counted) wrong.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(g_made.load(), 4);
  EXPECT_EQ(g_destroyed.load(), 4) << "destroyed at thread exit";
  // The main thread's value is its own too, and not the same as a fiber's.
  g_counted->value = 42;
  tendril::run(two_workers(), [] { EXPECT_EQ(g_counted->value, 0); });
  EXPECT_EQ(g_counted->value, 42);
}

// A FiberLocal destroyed while fibers still hold values: they are destroyed
// when those fibers end (nothing leaks: LeakSanitizer checks in the ASan
// build), and a new FiberLocal taking over the slot starts fresh.
TEST(FiberLocal, DestroyedWhileFibersHoldValues) {
  reset_counts();
  tendril::run(two_workers(), [] {
    auto local = std::make_unique<tendril::FiberLocal<Counted>>();
    tendril::Channel<int> go;
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < 8; ++i) {
      fibers.push_back(tendril::spawn([&, i] {
        (*local)->value = 100 + i;
        go.recv();  // the FiberLocal is destroyed meanwhile
      }));
    }
    while (g_made.load() != 8) tendril::this_fiber::yield();
    local.reset();
    EXPECT_EQ(g_destroyed.load(), 0) << "values live on until their fibers end";
    tendril::FiberLocal<Counted> next;  // reuses the freed slot
    EXPECT_EQ(next->value, 0);
    for (int i = 0; i < 8; ++i) go.send(i);
    for (auto& f : fibers) f.join();
    EXPECT_EQ(g_destroyed.load(), 8);
  });
  EXPECT_EQ(g_made.load(), 9);
  EXPECT_EQ(g_destroyed.load(), 9);  // main's `next` value went with the main fiber
}

TEST(FiberLocal, ASlotTakenOverByANewFiberLocalIsFreshAndTheOldValueGoes) {
  reset_counts();
  tendril::run(two_workers(), [] {
    auto old_local = std::make_unique<tendril::FiberLocal<Counted>>();
    (*old_local)->value = 7;
    old_local.reset();
    tendril::FiberLocal<Counted> fresh;
    EXPECT_EQ(fresh->value, 0) << "never the destroyed FiberLocal's value";
    EXPECT_EQ(g_destroyed.load(), 1) << "the old value in the slot was destroyed when it was reused";
  });
  EXPECT_EQ(g_made.load(), 2);
  EXPECT_EQ(g_destroyed.load(), 2);
}

// FiberLocals come and go by the thousand; tables stay small (slots are
// reused) and every value is destroyed.
TEST(FiberLocal, ManyShortLivedFiberLocals) {
  reset_counts();
  const int kLocals = int(stress_count(20000, 1000));
  tendril::run(two_workers(), [&] {
    tendril::Fiber f = tendril::spawn([&] {
      for (int i = 0; i < kLocals; ++i) {
        tendril::FiberLocal<Counted> l;
        l->value = i;
        if (i % 100 == 0) tendril::this_fiber::yield();
      }
    });
    f.join();
  });
  EXPECT_EQ(g_made.load(), kLocals);
  EXPECT_EQ(g_destroyed.load(), kLocals);
}

// A T() that parks (and may resume on another worker) still lands in the
// right fiber's table.
TEST(FiberLocal, AConstructorThatParks) {
  struct Slow {
    Slow() { tendril::this_fiber::sleep_for(50us); id = tendril::this_fiber::id(); }
    tendril::FiberId id;
  };
  static tendril::FiberLocal<Slow> slow;
  tendril::run(two_workers(), [] {
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < 32; ++i)
      fibers.push_back(tendril::spawn([] { EXPECT_EQ(slow->id, tendril::this_fiber::id()); }));
    for (auto& f : fibers) f.join();
  });
}

// A destructor may use FiberLocals, even one already destroyed for this fiber:
// what it makes is destroyed in a later pass.
TEST(FiberLocal, DestructorsThatUseFiberLocals) {
  reset_counts();
  struct UsesCounted {
    ~UsesCounted() { g_counted->value += 1; }
  };
  static tendril::FiberLocal<UsesCounted> uses;
  tendril::run(two_workers(), [] {
    // Whichever of the two is destroyed first, g_counted is (made again and)
    // destroyed after ~UsesCounted used it.
    tendril::spawn([] {
      g_counted->value = 1;
      uses.get();
    }).join();
    tendril::spawn([] { uses.get(); }).join();  // here only the destructor makes a Counted
  });
  EXPECT_GE(g_made.load(), 2);
  EXPECT_EQ(g_destroyed.load(), g_made.load());
}

// A destructor that throws: the fiber's other values are still destroyed, the
// exception is what join() rethrows, and the runtime goes on.
TEST(FiberLocal, ADestructorThatThrowsBecomesTheFibersException) {
  reset_counts();
  struct Throws {
    ~Throws() noexcept(false) { throw std::runtime_error("from a fiber-local destructor"); }
  };
  static tendril::FiberLocal<Throws> throws;
  tendril::run(two_workers(), [] {
    for (int i = 0; i < 100; ++i) {
      tendril::Fiber f = tendril::spawn([] {
        throws.get();
        g_counted.get();
      });
      EXPECT_THROW(
          {
            try {
              f.join();
            } catch (const std::runtime_error& e) {
              EXPECT_STREQ(e.what(), "from a fiber-local destructor");
              throw;
            }
          },
          std::runtime_error);
    }
    // The fiber's own exception wins over the destructor's.
    tendril::Fiber f = tendril::spawn([] {
      throws.get();
      throw std::logic_error("the fiber's own");
    });
    EXPECT_THROW(f.join(), std::logic_error);
    tendril::spawn([] { tendril::this_fiber::yield(); }).join();  // still running fine
  });
  EXPECT_EQ(g_made.load(), 100);
  EXPECT_EQ(g_destroyed.load(), 100);
}

TEST(FiberLocalDeathTest, ADestructorThatThrowsInADetachedFiberStopsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  struct Throws {
    ~Throws() noexcept(false) { throw std::runtime_error("detached dtor"); }
  };
  static tendril::FiberLocal<Throws> throws;
  EXPECT_DEATH(tendril::run([] {
                 tendril::spawn([] { throws.get(); }).detach();
                 tendril::this_fiber::sleep_for(1s);
               }),
               "exception escaped detached fiber .*detached dtor");
}
