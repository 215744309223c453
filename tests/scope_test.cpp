// tendril::Scope: cancellation and deadlines at every cancellation point of
// the scheduler and the sync primitives, nesting, the first exception,
// NoCancel, and cancellation racing completion without losing anything.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/cancel_probe.hpp"
#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

using tendril_test::workers;
tendril::Options two_workers() { return workers(2); }

// Runs `wait` in a child of a scope in a fresh runtime and ends it with
// cancel() / with the scope's deadline (see tests/cancel_probe.hpp).
std::error_code error_of_cancelled(const std::function<void()>& wait) {
  std::error_code got;
  tendril::run(two_workers(), [&] { got = tendril_test::cancelled_while(wait); });
  return got;
}
std::error_code error_of_deadline(const std::function<void()>& wait) {
  std::error_code got;
  tendril::run(two_workers(), [&] { got = tendril_test::deadline_while(wait); });
  return got;
}

const std::error_code kCanceled = std::make_error_code(std::errc::operation_canceled);
const std::error_code kTimedOut = std::make_error_code(std::errc::timed_out);

}  // namespace

TEST(ScopeCancel, Sleep) {
  EXPECT_EQ(error_of_cancelled([] { tendril::this_fiber::sleep_for(1h); }), kCanceled);
  EXPECT_EQ(error_of_deadline([] { tendril::this_fiber::sleep_for(1h); }), kTimedOut);
}

TEST(ScopeCancel, SleepShorterThanDeadlineEndsNormally) {
  std::error_code got;
  bool returned = false;
  tendril::run([&] {
    tendril::Scope s(10s);
    s.spawn([&] {
      tendril::this_fiber::sleep_for(5ms);
      returned = true;
    });
    s.join();
  });
  EXPECT_TRUE(returned);
}

TEST(ScopeCancel, CondVarWaitHoldsTheMutexWhenItThrows) {
  tendril::Mutex m;
  tendril::CondVar cv;
  bool held_after = false;
  auto wait = [&] {
    std::unique_lock<tendril::Mutex> lk(m);
    try {
      cv.wait(lk);
    } catch (...) {
      held_after = lk.owns_lock() && !m.try_lock();
      throw;
    }
  };
  EXPECT_EQ(error_of_cancelled(wait), kCanceled);
  EXPECT_TRUE(held_after);
  held_after = false;
  EXPECT_EQ(error_of_deadline(wait), kTimedOut);
  EXPECT_TRUE(held_after);
}

TEST(ScopeCancel, CondVarOwnTimeoutEarlierThanDeadlineIsReportedAsUsual) {
  std::cv_status st = std::cv_status::no_timeout;
  tendril::run([&] {
    tendril::Scope s(10s);
    s.spawn([&] {
      tendril::Mutex m;
      tendril::CondVar cv;
      std::unique_lock<tendril::Mutex> lk(m);
      st = cv.wait_for(lk, 5ms);
    });
    s.join();
  });
  EXPECT_EQ(st, std::cv_status::timeout);
}

TEST(ScopeCancel, CondVarDeadlineEarlierThanOwnTimeoutThrows) {
  EXPECT_EQ(error_of_deadline([] {
              tendril::Mutex m;
              tendril::CondVar cv;
              std::unique_lock<tendril::Mutex> lk(m);
              cv.wait_for(lk, 1h);
            }),
            kTimedOut);
}

TEST(ScopeCancel, SemaphoreAcquire) {
  tendril::Semaphore sem(0);
  EXPECT_EQ(error_of_cancelled([&] { sem.acquire(); }), kCanceled);
  EXPECT_EQ(error_of_deadline([&] { sem.acquire(); }), kTimedOut);
  EXPECT_EQ(sem.available(), 0);
}

TEST(ScopeCancel, WaitGroupWait) {
  tendril::WaitGroup wg;
  wg.add(1);
  EXPECT_EQ(error_of_cancelled([&] { wg.wait(); }), kCanceled);
  EXPECT_EQ(error_of_deadline([&] { wg.wait(); }), kTimedOut);
  wg.done();
}

TEST(ScopeCancel, FiberJoinLeavesTheFiberJoinable) {
  bool joinable_after = false;
  auto wait = [&] {
    tendril::Semaphore never(0);
    tendril::Fiber f = tendril::spawn([&never] {
      never.try_acquire_for(200ms);  // not in the scope: runs to its end
    });
    try {
      f.join();
    } catch (...) {
      joinable_after = f.joinable();
      tendril::this_fiber::NoCancel nc;
      f.join();  // the handle is still good
      throw;
    }
  };
  EXPECT_EQ(error_of_cancelled(wait), kCanceled);
  EXPECT_TRUE(joinable_after);
  joinable_after = false;
  EXPECT_EQ(error_of_deadline(wait), kTimedOut);
  EXPECT_TRUE(joinable_after);
}

TEST(ScopeCancel, MutexLockIsNotACancellationPoint) {
  bool locked = false;
  tendril::run(two_workers(), [&] {
    tendril::Mutex m;
    m.lock();
    tendril::Scope s;
    s.spawn([&] {
      std::lock_guard<tendril::Mutex> g(m);
      locked = true;
    });
    tendril::this_fiber::sleep_for(10ms);
    s.cancel();
    tendril::this_fiber::sleep_for(10ms);
    m.unlock();
    s.join();
  });
  EXPECT_TRUE(locked);
}

TEST(ScopeCancel, ParkAfterCancelThrowsAtOnce) {
  int throws = 0;
  tendril::run([&] {
    tendril::Scope s;
    s.cancel();
    s.spawn([&] {
      EXPECT_TRUE(tendril::this_fiber::cancelled());
      for (int i = 0; i < 3; ++i) {
        try {
          tendril::this_fiber::sleep_for(1h);
        } catch (const std::system_error& e) {
          if (e.code() == kCanceled) ++throws;
        }
      }
    });
    s.join();
  });
  EXPECT_EQ(throws, 3);
}

TEST(ScopeCancel, NoCancelParksAreNotInterrupted) {
  bool slept = false;
  std::error_code after;
  tendril::run([&] {
    tendril::Scope s(5ms);
    s.spawn([&] {
      {
        tendril::this_fiber::NoCancel nc;
        tendril::this_fiber::sleep_for(30ms);  // past the deadline: not interrupted
        slept = true;
      }
      try {
        tendril::this_fiber::sleep_for(1h);
      } catch (const std::system_error& e) {
        after = e.code();
      }
    });
    s.join();
  });
  EXPECT_TRUE(slept);
  EXPECT_EQ(after, kTimedOut);
}

TEST(Scope, JoinRethrowsTheFirstExceptionAndCancelsSiblings) {
  std::atomic<int> cancelled{0};
  std::string what;
  tendril::run(two_workers(), [&] {
    tendril::Scope s;
    for (int i = 0; i < 8; ++i) {
      s.spawn([&] {
        try {
          tendril::this_fiber::sleep_for(1h);
        } catch (const std::system_error& e) {
          if (e.code() == kCanceled) ++cancelled;
          throw;
        }
      });
    }
    s.spawn([] {
      tendril::this_fiber::sleep_for(5ms);
      throw std::runtime_error("first");
    });
    try {
      s.join();
    } catch (const std::runtime_error& e) {
      what = e.what();
    }
    EXPECT_TRUE(s.cancelled());
  });
  EXPECT_EQ(what, "first");
  EXPECT_EQ(cancelled.load(), 8);
}

TEST(Scope, NestedScopesInheritTheEarlierDeadlineAndTheCancellation) {
  std::optional<std::chrono::steady_clock::time_point> outer_d, inner_d, later_d, fiber_d;
  std::error_code inner_err;
  tendril::run(two_workers(), [&] {
    tendril::Scope outer(50ms);
    outer_d = outer.deadline();
    outer.spawn([&] {
      tendril::Scope inner(1h);   // later than its parent's: the parent's wins
      inner_d = inner.deadline();
      tendril::Scope earlier(1ms);
      later_d = earlier.deadline();
      inner.spawn([&] {
        fiber_d = tendril::this_fiber::deadline();
        try {
          tendril::this_fiber::sleep_for(1h);
        } catch (const std::system_error& e) {
          inner_err = e.code();
        }
      });
      inner.join();  // interrupted too (this fiber is in `outer`): throws timed_out
    });
    EXPECT_THROW(outer.join(), std::system_error);
  });
  ASSERT_TRUE(outer_d && inner_d && later_d && fiber_d);
  EXPECT_EQ(*inner_d, *outer_d);
  EXPECT_EQ(*fiber_d, *outer_d);
  EXPECT_LT(*later_d, *outer_d);
  EXPECT_EQ(inner_err, kTimedOut);
}

TEST(Scope, CancellingTheOuterScopeReachesFibersOfNestedScopes) {
  std::atomic<int> cancelled{0};
  tendril::run(two_workers(), [&] {
    tendril::Scope outer;
    std::atomic<int> parked{0};
    for (int i = 0; i < 4; ++i) {
      outer.spawn([&] {
        tendril::Scope inner;
        for (int j = 0; j < 4; ++j) {
          inner.spawn([&] {
            ++parked;
            try {
              tendril::this_fiber::sleep_for(1h);
            } catch (const std::system_error& e) {
              if (e.code() == kCanceled) ++cancelled;
            }
          });
        }
        inner.join();
      });
    }
    while (parked < 16) tendril::this_fiber::sleep_for(1ms);
    outer.cancel();
    // outer's own children were in inner.join(): it threw operation_canceled,
    // the first exception outer saw.
    try {
      outer.join();
      ADD_FAILURE() << "join did not rethrow";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), kCanceled);
    }
  });
  EXPECT_EQ(cancelled.load(), 16);
}

TEST(Scope, DestructorCancelsAndJoinsRunningChildren) {
  std::atomic<int> ended{0};
  tendril::run(two_workers(), [&] {
    {
      tendril::Scope s;
      for (int i = 0; i < 16; ++i) {
        s.spawn([&] {
          try {
            tendril::this_fiber::sleep_for(1h);
          } catch (...) {
          }
          ++ended;
        });
      }
      tendril::this_fiber::sleep_for(5ms);
    }
    EXPECT_EQ(ended.load(), 16);  // none outlives the scope
  });
}

TEST(Scope, UsableFromAPlainThreadWhileTheRuntimeRuns) {
  std::atomic<int> cancelled{0};
  tendril::run(two_workers(), [&] {
    std::thread t([&] {
      tendril::Scope s;
      for (int i = 0; i < 4; ++i) {
        s.spawn([&] {
          try {
            tendril::this_fiber::sleep_for(1h);
          } catch (const std::system_error& e) {
            if (e.code() == kCanceled) ++cancelled;
          }
        });
      }
      std::this_thread::sleep_for(10ms);
      s.cancel();
      s.join();
    });
    tendril::blocking([&] { t.join(); });
  });
  EXPECT_EQ(cancelled.load(), 4);
}

TEST(Scope, ThisFiberOutsideAScope) {
  tendril::run([&] {
    EXPECT_FALSE(tendril::this_fiber::cancelled());
    EXPECT_FALSE(tendril::this_fiber::deadline().has_value());
    tendril::this_fiber::sleep_for(1ms);  // not interrupted
  });
  EXPECT_FALSE(tendril::this_fiber::cancelled());
}

// Cancellation racing wake-ups: every unit a semaphore hands out is either
// taken by an acquire that returns, or still in the semaphore. None is lost
// to an acquire that threw, none handed twice.
TEST(ScopeCancelStress, SemaphoreUnitsAreNeverLostToACancelledAcquire) {
  const long rounds = stress_count(300, 20);
  long lost = 0;
  tendril::run(two_workers(), [&] {
    for (long r = 0; r < rounds; ++r) {
      tendril::Semaphore sem(0);
      std::atomic<long> taken{0};
      constexpr int kWaiters = 8;
      {
        tendril::Scope s;
        for (int i = 0; i < kWaiters; ++i) {
          s.spawn([&] {
            try {
              sem.acquire();
              ++taken;
            } catch (const std::system_error&) {
            }
          });
        }
        tendril::this_fiber::yield();
        std::thread releaser([&] { sem.release(kWaiters / 2); });
        s.cancel();
        releaser.join();
        try {
          s.join();
        } catch (const std::system_error&) {
        }
      }
      lost += kWaiters / 2 - (taken.load() + sem.available());
    }
  });
  EXPECT_EQ(lost, 0);
}

TEST(ScopeCancelStress, DeadlinesAndJoinsRacing) {
  const long rounds = stress_count(200, 20);
  std::atomic<long> done{0};
  tendril::run(two_workers(), [&] {
    for (long r = 0; r < rounds; ++r) {
      tendril::Scope s(std::chrono::microseconds(r % 50));
      for (int i = 0; i < 4; ++i) {
        s.spawn([&, i] {
          tendril::Fiber f = tendril::spawn([i] { tendril::this_fiber::sleep_for(std::chrono::microseconds(i * 10)); });
          try {
            f.join();
          } catch (const std::system_error&) {
            tendril::this_fiber::NoCancel nc;
            f.join();
          }
          ++done;
        });
      }
      try {
        s.join();
      } catch (const std::system_error&) {
      }
    }
  });
  EXPECT_EQ(done.load(), rounds * 4);
}
