// Spawning, joining, detaching, exceptions, ids, yields and sleeps.
#include <gtest/gtest.h>
#include <sched.h>
#include <tendril/tendril.hpp>

#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {
tendril::Options two_workers() { return tendril_test::workers(2); }
}  // namespace

TEST(Fiber, HundredThousandSpawnedAndJoined) {
  constexpr int kFibers = static_cast<int>(stress_count(100000));  // 100k; fewer under sanitizers
  std::atomic<long long> sum{0};
  tendril::run(two_workers(), [&] {
    std::vector<tendril::Fiber> fibers;
    fibers.reserve(1000);
    for (int batch = 0; batch < kFibers / 1000; ++batch) {
      for (int i = 0; i < 1000; ++i)
        fibers.push_back(tendril::spawn([&sum](int v) { sum += v; }, batch * 1000 + i));
      for (auto& f : fibers) f.join();
      fibers.clear();
    }
  });
  EXPECT_EQ(sum.load(), static_cast<long long>(kFibers) * (kFibers - 1) / 2);
  const tendril::Stats s = tendril::stats();
  EXPECT_GE(s.fibers_spawned, static_cast<std::uint64_t>(kFibers));
  EXPECT_EQ(s.fibers_live, 0u);
}

// join() races with the end of the joined fiber: the joiner publishes itself
// only once its context is saved, and a fiber that finished first (on this
// or the other worker) must not leave it parked, nor resume it twice. Joiners
// on both workers, children that end before, during and after the join.
TEST(Fiber, JoinRacingWithTheEndOfTheFiberResumesTheJoinerOnce) {
  const int kRounds = static_cast<int>(stress_count(20000));
  std::atomic<long> ended{0}, joined{0};
  tendril::run(two_workers(), [&] {
    auto joiner = [&](int seed) {
      for (int i = 0; i < kRounds / 4; ++i) {
        const int yields = (i * 7 + seed) % 3;  // 0: often over before the join
        tendril::Fiber f = tendril::spawn([&ended, yields] {
          for (int y = 0; y < yields; ++y) tendril::this_fiber::yield();
          ended.fetch_add(1);
        });
        if (i % 5 == 0) tendril::this_fiber::yield();  // let it finish first
        f.join();
        joined.fetch_add(1);
      }
    };
    std::vector<tendril::Fiber> joiners;
    for (int j = 0; j < 4; ++j) joiners.push_back(tendril::spawn(joiner, j));
    for (auto& j : joiners) j.join();
  });
  EXPECT_EQ(ended.load(), joined.load());
  EXPECT_EQ(joined.load(), 4L * (kRounds / 4));
  EXPECT_EQ(tendril::stats().fibers_live, 0u);
}

TEST(Fiber, ArgumentsAreMovedIntoTheFiber) {
  tendril::run([] {
    auto p = std::make_unique<int>(7);
    std::string s(1000, 'x');  // larger than any small-string buffer
    int got = 0;
    std::size_t len = 0;
    auto f = tendril::spawn(
        [&](std::unique_ptr<int> q, std::string t) {
          got = *q;
          len = t.size();
        },
        std::move(p), s);
    f.join();
    EXPECT_EQ(got, 7);
    EXPECT_EQ(len, 1000u);
    EXPECT_EQ(p, nullptr);
  });
}

TEST(Fiber, JoinRethrowsTheFibersException) {
  tendril::run([] {
    auto f = tendril::spawn([] { throw std::runtime_error("boom"); });
    try {
      f.join();
      FAIL() << "join did not rethrow";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "boom");
    }
    EXPECT_FALSE(f.joinable());
  });
}

// The exceptions being handled and std::uncaught_exceptions() belong to the
// fiber, not to the worker thread: fibers park inside catch blocks and in
// destructors during unwinding, migrate between workers, and still rethrow
// their own exception and count their own unwinding.
TEST(Fiber, ExceptionStateFollowsTheFiberAcrossSwitchesAndWorkers) {
  constexpr int kFibers = 64;
  std::atomic<int> rethrown_ok{0}, current_ok{0}, unwinding_ok{0}, outside_ok{0};
  std::atomic<unsigned> cpus{0};
  int rounds = 0;
  // Rounds until the fibers were seen on both workers (a loaded machine may
  // keep one round on one worker); every round checks every fiber.
  for (; rounds < 100 && (rounds == 0 || __builtin_popcount(cpus.load()) < 2); ++rounds)
  tendril::run(two_workers(), [&] {
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < kFibers; ++i) {
      fs.push_back(tendril::spawn([&, i] {
        const std::string mine = "fiber " + std::to_string(i);
        auto park_a_while = [&] {
          for (int k = 0; k < 20; ++k) {
            if (k % 5 == 0) tendril::this_fiber::sleep_for(std::chrono::microseconds(50));
            else tendril::this_fiber::yield();
            const int cpu = sched_getcpu();
            if (cpu >= 0 && cpu < 32) cpus.fetch_or(1u << cpu);
          }
        };
        try {
          throw std::runtime_error(mine);
        } catch (const std::runtime_error&) {
          park_a_while();  // others throw and catch on this worker meanwhile
          try {
            if (std::current_exception() != nullptr) current_ok.fetch_add(1);
            throw;  // must rethrow this fiber's exception
          } catch (const std::runtime_error& again) {
            if (again.what() == mine) rethrown_ok.fetch_add(1);
          }
        }
        {
          struct ParksWhileUnwinding {
            std::function<void()> park;
            std::atomic<int>* ok;
            ~ParksWhileUnwinding() {
              const int before = std::uncaught_exceptions();
              park();
              if (before == 1 && std::uncaught_exceptions() == 1) ok->fetch_add(1);
            }
          };
          try {
            ParksWhileUnwinding guard{park_a_while, &unwinding_ok};
            throw std::logic_error(mine);
          } catch (const std::logic_error&) {
          }
        }
        // Out of every handler, nothing is left behind.
        if (std::current_exception() == nullptr && std::uncaught_exceptions() == 0) outside_ok.fetch_add(1);
      }));
    }
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(rethrown_ok.load(), kFibers * rounds);
  EXPECT_EQ(current_ok.load(), kFibers * rounds);
  EXPECT_EQ(unwinding_ok.load(), kFibers * rounds);
  EXPECT_EQ(outside_ok.load(), kFibers * rounds);
  if (std::thread::hardware_concurrency() >= 2) {
    EXPECT_GE(__builtin_popcount(cpus.load()), 2) << "the fibers never ran on both workers";
  }
}

TEST(Fiber, RunRethrowsExceptionEscapingMain) {
  EXPECT_THROW(tendril::run([] { throw std::out_of_range("main"); }), std::out_of_range);
  // And the runtime can be started again afterwards.
  int v = 0;
  tendril::run([&] { v = 1; });
  EXPECT_EQ(v, 1);
}

TEST(Fiber, IdsAreUniqueAndNamesAreKept) {
  tendril::run([] {
    EXPECT_NE(tendril::this_fiber::id(), 0u);
    EXPECT_STREQ(tendril::this_fiber::name(), "main");
    tendril::FiberId seen = 0;
    std::string name;
    auto f = tendril::spawn({.name = "worker-17"}, [&] {
      seen = tendril::this_fiber::id();
      name = tendril::this_fiber::name();
    });
    const tendril::FiberId id = f.id();
    f.join();
    EXPECT_EQ(seen, id);
    EXPECT_NE(id, tendril::this_fiber::id());
    EXPECT_EQ(name, "worker-17");
  });
  EXPECT_EQ(tendril::this_fiber::id(), 0u);
}

TEST(Fiber, DetachedFibersRunToCompletion) {
  std::atomic<int> done{0};
  tendril::run(two_workers(), [&] {
    tendril::WaitGroup wg;
    for (int i = 0; i < 1000; ++i) {
      wg.add(1);
      tendril::spawn([&done, wg]() mutable {
        tendril::this_fiber::yield();
        ++done;
        wg.done();
      }).detach();
    }
    wg.wait();
  });
  EXPECT_EQ(done.load(), 1000);
}

TEST(Fiber, YieldInterleavesFibersOnOneWorker) {
  std::vector<int> order;
  tendril::Options o;
  o.workers = 1;
  tendril::run(o, [&] {
    auto a = tendril::spawn([&] {
      for (int i = 0; i < 3; ++i) {
        order.push_back(1);
        tendril::this_fiber::yield();
      }
    });
    auto b = tendril::spawn([&] {
      for (int i = 0; i < 3; ++i) {
        order.push_back(2);
        tendril::this_fiber::yield();
      }
    });
    a.join();
    b.join();
  });
  ASSERT_EQ(order.size(), 6u);
  for (std::size_t i = 1; i < order.size(); ++i) EXPECT_NE(order[i], order[i - 1]) << "at " << i;
}

TEST(Fiber, SleepsWakeInDeadlineOrder) {
  // The fibers start sleeping only once all of them exist (slow to spawn under
  // sanitizers), with deadlines far enough ahead that none has passed when it
  // goes to sleep; one worker makes the order of wake-ups the order of
  // execution.
  std::vector<int> order;
  tendril::Options o;
  o.workers = 1;
  tendril::run(o, [&] {
    tendril::Channel<int> gate;
    std::chrono::steady_clock::time_point base;
    std::vector<tendril::Fiber> fs;
    for (int i : {5, 1, 4, 2, 3}) {
      fs.push_back(tendril::spawn([&, i, gate]() mutable {
        gate.recv();  // nullopt once main closes it
        const auto deadline = base + std::chrono::milliseconds(20 * i);
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the machine stalled; deadline passed";
        tendril::this_fiber::sleep_until(deadline);
        order.push_back(i);
      }));
    }
    tendril::this_fiber::yield();  // every fiber is now parked on the gate
    base = std::chrono::steady_clock::now() + 100ms;
    gate.close();
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5}));
}

TEST(Fiber, SleepersOnBothWorkersAllWake) {
  std::atomic<int> woke{0};
  tendril::run(two_workers(), [&] {
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 200; ++i) {
      fs.push_back(tendril::spawn([&, i] {
        tendril::this_fiber::sleep_for(std::chrono::microseconds(50 * (i % 20)));
        ++woke;
      }));
    }
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(woke.load(), 200);
}

TEST(Fiber, SleepLastsAtLeastItsDuration) {
  tendril::run([] {
    for (auto d : {0us, 200us, 2000us}) {
      const auto t0 = std::chrono::steady_clock::now();
      tendril::this_fiber::sleep_for(d);
      EXPECT_GE(std::chrono::steady_clock::now() - t0, d);
    }
    const auto until = std::chrono::steady_clock::now() + 1ms;
    tendril::this_fiber::sleep_until(until);
    EXPECT_GE(std::chrono::steady_clock::now(), until);
  });
}

TEST(Fiber, SleepingFiberDoesNotBlockItsWorker) {
  tendril::Options o;
  o.workers = 1;
  std::atomic<int> progress{0};
  tendril::run(o, [&] {
    auto sleeper = tendril::spawn([] { tendril::this_fiber::sleep_for(30ms); });
    auto busy = tendril::spawn([&] {
      for (int i = 0; i < 100; ++i) {
        ++progress;
        tendril::this_fiber::yield();
      }
    });
    busy.join();
    EXPECT_EQ(progress.load(), 100);  // ran while the other fiber slept
    sleeper.join();
  });
}

TEST(Fiber, WorkSpreadsOverBothWorkers) {
  // CPU-bound fibers that yield keep running until fibers have been seen on
  // both CPUs (or a generous cap passes), so the test does not depend on how
  // quickly the kernel gives the second worker its CPU.
  std::atomic<unsigned> mask{0};
  tendril::run(two_workers(), [&] {
    std::vector<tendril::Fiber> fs;
    const auto give_up = std::chrono::steady_clock::now() + 20s;
    for (int i = 0; i < 64; ++i) {
      fs.push_back(tendril::spawn([&] {
        do {
          mask |= 1u << (sched_getcpu() & 31);
          tendril::this_fiber::yield();
        } while (__builtin_popcount(mask.load()) < 2 && std::chrono::steady_clock::now() < give_up);
      }));
    }
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(__builtin_popcount(mask.load()), 2) << "mask " << mask.load();
  EXPECT_GT(tendril::stats().steals, 0u);
}

TEST(Fiber, LongRunningFiberDoesNotStarveAFiberSpawnedBehindIt) {
  // The child sits in the runnext slot of a worker that is busy; the other
  // worker must steal it.
  tendril::run(two_workers(), [&] {
    std::atomic<bool> child_ran{false};
    auto child = tendril::spawn([&] { child_ran = true; });
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!child_ran && std::chrono::steady_clock::now() < give_up) {
    }
    EXPECT_TRUE(child_ran.load());
    child.join();
  });
}

TEST(Fiber, RunnextIsStolenAfterTheRuntimeWasFullyIdle) {
  // Both workers park with nothing to watch; the one that wakes for main's
  // timer must get the other watching again, or the child waits forever.
  tendril::run(two_workers(), [&] {
    tendril::this_fiber::sleep_for(100ms);
    std::atomic<bool> child_ran{false};
    auto child = tendril::spawn([&] { child_ran = true; });
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!child_ran && std::chrono::steady_clock::now() < give_up) {
    }
    EXPECT_TRUE(child_ran.load());
    child.join();
  });
}

TEST(Fiber, IdleRuntimeDoesNotKeepWakingUp) {
  // While every worker is parked there is nothing to watch over: they sleep
  // until the one timer instead of re-checking every few milliseconds (which
  // would be ~50 wake-ups per worker in 500 ms).
  tendril::run(two_workers(), [&] {
    tendril::this_fiber::sleep_for(20ms);  // let both workers settle
    const std::uint64_t before = tendril::stats().worker_parks;
    tendril::this_fiber::sleep_for(500ms);
    const std::uint64_t parks = tendril::stats().worker_parks - before;
    EXPECT_LE(parks, 12u) << "idle workers woke up " << parks << " times";
  });
}

TEST(Fiber, PingPongPairDoesNotStarveAThirdFiber) {
  tendril::Options o;
  o.workers = 1;
  tendril::run(o, [&] {
    std::atomic<bool> stop{false};
    tendril::Channel<int> a, b;
    auto ping = tendril::spawn([&] {
      while (!stop) {
        if (!a.send(1)) break;
        if (!b.recv()) break;
      }
    });
    auto pong = tendril::spawn([&] {
      while (auto v = a.recv()) {
        if (!b.send(*v)) break;
      }
    });
    auto third = tendril::spawn([&] { stop = true; });
    third.join();  // would hang if the pair kept the worker to itself
    a.close();
    b.close();
    ping.join();
    pong.join();
  });
}

TEST(Fiber, SpawnFromAPlainThreadDuringRun) {
  std::atomic<int> v{0};
  tendril::run([&] {
    std::thread t([&] {
      EXPECT_FALSE(tendril::in_runtime());
      auto f = tendril::spawn([&] { v = tendril::in_runtime() ? 2 : 1; });
      f.join();  // blocks the plain thread
    });
    // Park this fiber until the thread is done, without blocking the worker.
    tendril::WaitGroup wg;
    wg.add(1);
    std::thread waiter([&] {
      t.join();
      wg.done();
    });
    wg.wait();
    waiter.join();
  });
  EXPECT_EQ(v.load(), 2);
}

// A plain thread's last wake-up races the end of run(): the fiber it wakes
// lets main return at once, while the thread is still inside the wake-up
// (queueing the fiber, waking a worker). run() must not tear the scheduler
// down under it; ThreadSanitizer and AddressSanitizer report it if it does.
TEST(Fiber, PlainThreadsLastWakeUpRacesTheEndOfRun) {
  for (long round = 0; round < stress_count(400, 40); ++round) {
    std::thread t;
    int got = 0;
    tendril::run(two_workers(), [&] {
      tendril::Channel<int> ch;
      t = std::thread([ch]() mutable { ch.send(1); });
      got = ch.recv().value_or(0);
    });
    t.join();
    ASSERT_EQ(got, 1);
  }
}

// ---- this_fiber::on_worker_stack --------------------------------------------------

// Uses `bytes` of whatever stack it runs on; returns a value that depends on
// every page so nothing is optimised away.
long use_stack_expected(std::size_t bytes) {
  long sum = 0;
  for (std::size_t i = 0; i < bytes && i < 64 * 1024; i += 1024) sum += char(i >> 10);
  return sum;
}

__attribute__((noinline)) long use_stack_bytes(std::size_t bytes) {
  volatile char area[64 * 1024];
  long sum = 0;
  for (std::size_t i = 0; i < bytes && i < sizeof area; i += 1024) {
    area[sizeof area - 1 - i] = char(i >> 10);
    sum += area[sizeof area - 1 - i];
  }
  return sum;
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
TEST(Fiber, OnWorkerStackKeepsDeepFramesOffTheFibersStack) {
  tendril::Options o;
  o.workers = 2;
  tendril::run(o, [] {
    std::vector<tendril::Fiber> fibers;
    std::atomic<int> ok{0};
    for (int i = 0; i < 64; ++i)
      fibers.push_back(tendril::spawn([&] {
        const std::size_t before = tendril::this_fiber::stack_high_water();
        long got = 0;
        tendril::this_fiber::on_worker_stack([&] { got = use_stack_bytes(60 * 1024); });
        EXPECT_EQ(got, use_stack_expected(60 * 1024));
        // 60 KiB of frames, and the fiber's own stack grew by at most the
        // page the switch to the worker stack may need (where the fiber's
        // frames end next to a page boundary and no deeper page was mapped
        // ahead of it).
        if (tendril::this_fiber::stack_high_water() <= before + 4096) ok.fetch_add(1);
        tendril::this_fiber::yield();  // interleave fibers on both workers
      }));
    for (auto& f : fibers) f.join();
    EXPECT_EQ(ok.load(), 64);
  });
}
#endif

TEST(Fiber, OnWorkerStackPropagatesExceptionsAndNests) {
  tendril::run([] {
    tendril::spawn([] {
      EXPECT_THROW(tendril::this_fiber::on_worker_stack([] { throw std::runtime_error("from the worker stack"); }),
                   std::runtime_error);
      int depth = 0;
      tendril::this_fiber::on_worker_stack([&] {
        ++depth;
        tendril::this_fiber::on_worker_stack([&] { ++depth; });  // nested: runs in place
      });
      EXPECT_EQ(depth, 2);
      // The fiber is intact afterwards: it can still park and resume.
      tendril::this_fiber::sleep_for(std::chrono::microseconds(100));
    }).join();
  });
  // Outside the runtime it simply runs in place.
  int ran = 0;
  tendril::this_fiber::on_worker_stack([&] { ran = 1; });
  EXPECT_EQ(ran, 1);
}

TEST(Fiber, StatsCountSwitchesAndLiveFibers) {
  tendril::run([] {
    const tendril::Stats before = tendril::stats();
    EXPECT_GE(before.fibers_live, 1u);  // main
    auto f = tendril::spawn([] {
      for (int i = 0; i < 10; ++i) tendril::this_fiber::yield();
    });
    f.join();
    const tendril::Stats after = tendril::stats();
    EXPECT_GE(after.context_switches, before.context_switches + 2);
    EXPECT_EQ(after.fibers_spawned, before.fibers_spawned + 1);
    EXPECT_EQ(after.fibers_live, before.fibers_live);
  });
}
