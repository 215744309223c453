// Mutex, CondVar, Semaphore and WaitGroup: exactness under contention across
// workers, wake-up semantics, timeouts, and plain threads mixed with fibers.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/park_probe.hpp"
#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {
tendril::Options two_workers() { return tendril_test::workers(2); }
}  // namespace

TEST(Mutex, CounterExactUnderContentionAcrossWorkersAndThreads) {
  // Each fiber counts its own increments and keeps going past kIters until
  // fibers have run on both CPUs (or a generous cap), so the check does not
  // depend on how fast the kernel gives the second worker its CPU.
  constexpr int kFibers = 64, kThreads = 2;
  constexpr long kIters = stress_count(5000, 200);
  long counter = 0;  // deliberately not atomic: the mutex protects it
  std::atomic<long> increments{0};
  std::atomic<unsigned> cpus{0};
  tendril::run(two_workers(), [&] {
    tendril::Mutex m;
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < kFibers; ++i) {
      fs.push_back(tendril::spawn([&] {
        long mine = 0;
        while (mine < kIters ||
               (__builtin_popcount(cpus.load()) < 2 && std::chrono::steady_clock::now() < give_up)) {
          std::lock_guard<tendril::Mutex> g(m);
          long v = counter;
          if (mine % 64 == 0) tendril::this_fiber::yield();  // hold it across a switch
          counter = v + 1;
          cpus |= 1u << (sched_getcpu() & 31);
          ++mine;
        }
        increments += mine;
      }));
    }
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&] {
        for (long k = 0; k < kIters; ++k) {
          std::unique_lock<tendril::Mutex> g(m);
          ++counter;
        }
        increments += kIters;
      });
    }
    for (auto& f : fs) f.join();
    for (auto& t : ts) t.join();
  });
  EXPECT_EQ(counter, increments.load());
  EXPECT_GE(increments.load(), (kFibers + kThreads) * kIters);
  EXPECT_EQ(__builtin_popcount(cpus.load()), 2);
}

TEST(Mutex, TryLockAndScopedLock) {
  tendril::run([] {
    tendril::Mutex a, b;
    EXPECT_TRUE(a.try_lock());
    EXPECT_FALSE(a.try_lock());
    a.unlock();
    {
      std::scoped_lock both(a, b);
      auto f = tendril::spawn([&] {
        EXPECT_FALSE(a.try_lock());
        EXPECT_FALSE(b.try_lock());
      });
      f.join();
    }
    EXPECT_TRUE(b.try_lock());
    b.unlock();
  });
}

TEST(Mutex, WaitersAreServedInArrivalOrder) {
  tendril::Options o;
  o.workers = 1;
  std::vector<int> order;
  tendril::run(o, [&] {
    tendril::Mutex m;
    m.lock();
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 5; ++i) {
      fs.push_back(tendril::spawn([&, i] {
        std::lock_guard<tendril::Mutex> g(m);
        order.push_back(i);
      }));
      tendril::this_fiber::yield();  // let it queue up before the next one
    }
    m.unlock();
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(CondVar, ProducerConsumerWithPredicate) {
  tendril::run(two_workers(), [] {
    tendril::Mutex m;
    tendril::CondVar not_empty, not_full;
    std::vector<int> queue;
    long consumed = 0;
    constexpr int kItems = static_cast<int>(stress_count(20000));
    auto consumer = tendril::spawn([&] {
      for (int i = 0; i < kItems; ++i) {
        std::unique_lock<tendril::Mutex> lk(m);
        not_empty.wait(lk, [&] { return !queue.empty(); });
        consumed += queue.back();
        queue.pop_back();
        not_full.notify_one();
      }
    });
    std::thread producer([&] {  // a plain thread on the other side
      for (int i = 1; i <= kItems; ++i) {
        std::unique_lock<tendril::Mutex> lk(m);
        not_full.wait(lk, [&] { return queue.size() < 8; });
        queue.push_back(i);
        not_empty.notify_one();
      }
    });
    consumer.join();
    producer.join();
    EXPECT_EQ(consumed, static_cast<long>(kItems) * (kItems + 1) / 2);
  });
}

TEST(CondVar, NotifyAllWakesEveryWaiterAndNotifyOneWakesOne) {
  tendril::run(two_workers(), [] {
    tendril::Mutex m;
    tendril::CondVar cv;
    int generation = 0;
    int waiting = 0;  // under m: waiters that read generation 0
    std::atomic<int> woke{0};
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 10; ++i) {
      fs.push_back(tendril::spawn([&] {
        std::unique_lock<tendril::Mutex> lk(m);
        const int g = generation;
        ++waiting;
        cv.wait(lk, [&] { return generation != g; });
        ++woke;
      }));
    }
    // Every waiter has read generation 0 (and, holding m until it waits,
    // is in the wait) before the generation moves on.
    for (;;) {
      {
        std::lock_guard<tendril::Mutex> g(m);
        if (waiting == 10) break;
      }
      tendril::this_fiber::sleep_for(1ms);
    }
    {
      std::lock_guard<tendril::Mutex> g(m);
      ++generation;
    }
    cv.notify_all();
    for (auto& f : fs) f.join();
    EXPECT_EQ(woke.load(), 10);

    // notify_one wakes exactly one of two waiters.
    std::atomic<int> returned{0};
    waiting = 0;
    auto w1 = tendril::spawn([&] {
      std::unique_lock<tendril::Mutex> lk(m);
      ++waiting;
      cv.wait(lk);
      ++returned;
    });
    auto w2 = tendril::spawn([&] {
      std::unique_lock<tendril::Mutex> lk(m);
      ++waiting;
      cv.wait(lk);
      ++returned;
    });
    for (;;) {
      {
        std::lock_guard<tendril::Mutex> g(m);
        if (waiting == 2) break;
      }
      tendril::this_fiber::sleep_for(1ms);
    }
    cv.notify_one();
    tendril::this_fiber::sleep_for(20ms);
    EXPECT_EQ(returned.load(), 1);
    cv.notify_one();
    w1.join();
    w2.join();
    EXPECT_EQ(returned.load(), 2);
  });
}

TEST(CondVar, WaitForTimesOutAndNotifiedWaitDoesNot) {
  tendril::run(two_workers(), [] {
    tendril::Mutex m;
    tendril::CondVar cv;
    std::unique_lock<tendril::Mutex> lk(m);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(cv.wait_for(lk, 5ms), std::cv_status::timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 5ms);
    EXPECT_TRUE(lk.owns_lock());
    EXPECT_FALSE(cv.wait_for(lk, 1ms, [] { return false; }));

    bool flag = false;
    auto notifier = tendril::spawn([&] {
      std::lock_guard<tendril::Mutex> g(m);
      flag = true;
      cv.notify_one();
    });
    EXPECT_TRUE(cv.wait_for(lk, 10s, [&] { return flag; }));
    lk.unlock();
    notifier.join();

    // A plain thread times out too.
    std::thread t([&] {
      std::unique_lock<tendril::Mutex> l2(m);
      EXPECT_EQ(cv.wait_for(l2, 2ms), std::cv_status::timeout);
    });
    t.join();
  });
}

TEST(CondVar, ManyTimedWaitsRacingNotifiesLoseNothing) {
  // Timeouts and notifications race; every notified unit of work must be
  // consumed exactly once, and nothing may hang.
  tendril::run(two_workers(), [] {
    tendril::Mutex m;
    tendril::CondVar cv;
    int available = 0, taken = 0;
    constexpr int kUnits = 5000;
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 8; ++i) {
      fs.push_back(tendril::spawn([&] {
        std::unique_lock<tendril::Mutex> lk(m);
        while (taken < kUnits) {
          if (available > 0) {
            --available;
            ++taken;
            continue;
          }
          cv.wait_for(lk, 50us);
        }
      }));
    }
    for (int i = 0; i < kUnits; ++i) {
      {
        std::lock_guard<tendril::Mutex> g(m);
        ++available;
      }
      cv.notify_one();
      if (i % 16 == 0) tendril::this_fiber::yield();
    }
    for (auto& f : fs) f.join();
    EXPECT_EQ(taken, kUnits);
    EXPECT_EQ(available, 0);
  });
}

TEST(CondVar, WaitWithoutTheLockThrows) {
  tendril::run([] {
    tendril::Mutex m;
    tendril::CondVar cv;
    std::unique_lock<tendril::Mutex> lk(m, std::defer_lock);
    EXPECT_THROW(cv.wait(lk), std::system_error);
  });
}

TEST(Semaphore, BoundsConcurrencyExactly) {
  tendril::run(two_workers(), [] {
    tendril::Semaphore sem(3);
    std::atomic<int> inside{0}, peak{0};
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 50; ++i) {
      fs.push_back(tendril::spawn([&] {
        for (int k = 0; k < 20; ++k) {
          sem.acquire();
          const int now = ++inside;
          int p = peak.load();
          while (now > p && !peak.compare_exchange_weak(p, now)) {
          }
          tendril::this_fiber::yield();
          --inside;
          sem.release();
        }
      }));
    }
    for (auto& f : fs) f.join();
    EXPECT_LE(peak.load(), 3);
    EXPECT_GE(peak.load(), 1);
    EXPECT_EQ(sem.available(), 3);

    // Exactly three get in at once: the fourth stays parked until a release.
    std::atomic<int> in{0};
    tendril::Channel<int> leave(0);
    std::vector<tendril::Fiber> holders;
    for (int i = 0; i < 4; ++i)
      holders.push_back(tendril::spawn([&, leave]() mutable {
        sem.acquire();
        ++in;
        leave.recv();
        sem.release();
      }));
    while (in.load() < 3) tendril::this_fiber::yield();
    tendril::this_fiber::sleep_for(10ms);
    EXPECT_EQ(in.load(), 3);
    for (int i = 0; i < 4; ++i) leave.send(0);
    for (auto& f : holders) f.join();
    EXPECT_EQ(in.load(), 4);
  });
}

TEST(Semaphore, TryAcquireTimeoutsAndReleaseMany) {
  tendril::run(two_workers(), [] {
    tendril::Semaphore sem(0);
    EXPECT_FALSE(sem.try_acquire());
    EXPECT_FALSE(sem.try_acquire_for(2ms));
    std::atomic<int> got{0};
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 4; ++i)
      fs.push_back(tendril::spawn([&] {
        sem.acquire();
        ++got;
      }));
    tendril::this_fiber::sleep_for(5ms);
    EXPECT_EQ(got.load(), 0);
    sem.release(3);
    // Three get in, however late they start; the fourth cannot.
    while (got.load() < 3) tendril::this_fiber::sleep_for(1ms);
    tendril::this_fiber::sleep_for(5ms);
    EXPECT_EQ(got.load(), 3);
    std::thread t([&] { sem.release(2); });  // from a plain thread
    t.join();
    for (auto& f : fs) f.join();
    EXPECT_EQ(got.load(), 4);
    EXPECT_EQ(sem.available(), 1);
    EXPECT_TRUE(sem.try_acquire_for(1s));
    EXPECT_THROW(sem.release(-1), std::invalid_argument);
    EXPECT_THROW(tendril::Semaphore(-1), std::invalid_argument);
    sem.release(1);
    EXPECT_THROW(sem.release(INT64_MAX), std::invalid_argument);
  });
}

TEST(WaitGroup, WaitsForAllAndCopiesShareTheCounter) {
  tendril::run(two_workers(), [] {
    tendril::WaitGroup wg;
    std::atomic<int> done{0};
    for (int i = 0; i < 200; ++i) {
      wg.add(1);
      tendril::spawn([wg, &done]() mutable {
        tendril::this_fiber::sleep_for(std::chrono::microseconds(100));
        ++done;
        wg.done();
      }).detach();
    }
    // Two waiters, one of them a plain thread.
    std::thread t([wg] { wg.wait(); });
    wg.wait();
    EXPECT_EQ(done.load(), 200);
    t.join();
    EXPECT_EQ(wg.count(), 0);
    wg.wait();  // zero: returns at once
  });
}

TEST(WaitGroup, NegativeCounterThrows) {
  tendril::WaitGroup wg;
  EXPECT_THROW(wg.done(), std::logic_error);
  wg.add(2);
  EXPECT_THROW(wg.add(-3), std::logic_error);
  EXPECT_EQ(wg.count(), 2);
}

TEST(WaitGroup, OverflowThrowsAndLeavesTheCounter) {
  tendril::WaitGroup wg;
  wg.add(INT64_MAX);
  EXPECT_THROW(wg.add(1), std::logic_error);
  EXPECT_EQ(wg.count(), INT64_MAX);
  wg.add(-INT64_MAX);
  EXPECT_EQ(wg.count(), 0);
  wg.wait();
}

// More waiters than one release chunk (64), a plain thread among them; then
// the group reused: waiters of the next zero stay parked until it comes.
TEST(WaitGroup, ReleasesManyWaitersAndReuseWaitsForTheNextZero) {
  constexpr int kFirst = 1000, kSecond = 10;
  std::atomic<int> first{0}, second{0};
  tendril::run(two_workers(), [&] {
    tendril::WaitGroup wg;
    // n fibers that each wait on wg, then count themselves in `returned`.
    auto spawn_waiters = [&wg](int n, std::atomic<int>& returned) {
      std::vector<tendril::Fiber> fs;
      for (int i = 0; i < n; ++i) fs.push_back(tendril::spawn([wg, &returned] {
        wg.wait();
        returned.fetch_add(1);
      }));
      return fs;
    };
    wg.add(1);
    std::vector<tendril::Fiber> fs = spawn_waiters(kFirst, first);
    std::thread t([&, wg] {
      wg.wait();
      first.fetch_add(1);
    });
    tendril_test::wait_until_parked_count(tendril::WaitReason::wait_group, kFirst);
    EXPECT_EQ(first.load(), 0);
    wg.done();
    for (auto& f : fs) f.join();
    t.join();
    EXPECT_EQ(first.load(), kFirst + 1);

    wg.add(1);
    fs = spawn_waiters(kSecond, second);
    tendril_test::wait_until_parked_count(tendril::WaitReason::wait_group, kSecond);
    EXPECT_EQ(second.load(), 0);
    wg.done();
    for (auto& f : fs) f.join();
    EXPECT_EQ(second.load(), kSecond);
  });
}

// The group lives in the frame of its first waiter, which everyone else
// reaches by reference: that waiter returns (destroying the group) as soon
// as it is woken, while done() is still releasing the later chunks of
// waiters. Under ASan a release that touched the group after the first wake
// would be a use after free.
TEST(WaitGroup, FirstWaiterMayDestroyTheGroupWhileTheRestAreReleased) {
  constexpr int kOthers = 500, kRounds = stress_count(20, 4);
  std::atomic<int> released{0};
  tendril::run(two_workers(), [&] {
    for (int round = 0; round < kRounds; ++round) {
      tendril::WaitGroup* shared = nullptr;
      tendril::WaitGroup gate;  // the owner's "group is ready" signal
      gate.add(1);
      tendril::Fiber owner = tendril::spawn([&] {
        tendril::WaitGroup wg;  // dies when this fiber returns
        wg.add(1);
        shared = &wg;
        gate.done();
        wg.wait();
        released.fetch_add(1);
      });
      gate.wait();
      tendril_test::wait_until_parked(owner.id(), tendril::WaitReason::wait_group);
      std::vector<tendril::Fiber> others;
      for (int i = 0; i < kOthers; ++i) others.push_back(tendril::spawn([&] {
        shared->wait();
        released.fetch_add(1);
      }));
      tendril_test::wait_until_parked_count(tendril::WaitReason::wait_group, kOthers + 1);
      tendril::spawn([&] { shared->done(); }).join();
      owner.join();
      for (auto& f : others) f.join();
    }
  });
  EXPECT_EQ(released.load(), kRounds * (kOthers + 1));
}

// A group reused right after it reached zero: the fibers that wait for the
// next zero must not be released by the previous one, even when the done()
// that made that zero has not yet released its own waiters when the group is
// lifted again and the next waiter queues. Every waiter checks, once its
// wait returns, that all the done() calls of its round have happened.
TEST(WaitGroup, ReuseReleasesOnlyTheWaitersOfEachZero) {
  constexpr int kRounds = stress_count(20000, 400), kDoers = 2;
  std::vector<std::atomic<int>> dones(kRounds);
  std::atomic<int> early{0}, returned{0};
  tendril::run(two_workers(), [&] {
    tendril::WaitGroup wg;
    std::vector<tendril::Fiber> waiters;
    waiters.reserve(kRounds);
    for (int r = 0; r < kRounds; ++r) {
      wg.add(kDoers);
      waiters.push_back(tendril::spawn([&, wg, r] {
        wg.wait();
        if (dones[r].load() != kDoers) early.fetch_add(1);
        returned.fetch_add(1);
      }));
      for (int d = 0; d < kDoers; ++d)
        tendril::spawn([&, wg, r]() mutable {
          dones[r].fetch_add(1);
          wg.done();
        }).detach();
      // The next round lifts the group as soon as this one reached zero,
      // possibly before the last done() has taken the waiter list.
      while (wg.count() != 0) tendril::this_fiber::yield();
    }
    for (auto& f : waiters) f.join();
  });
  EXPECT_EQ(early.load(), 0);
  EXPECT_EQ(returned.load(), kRounds);
}
