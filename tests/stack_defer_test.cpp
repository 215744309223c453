// Deferred stacks: a fiber spawned on a worker gets its stack when it first
// runs (runtime/stack/arena.cpp, "Deferred stacks"), so fibers queued behind
// a busy spawner hold no pages.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <new>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/sched/scheduler.hpp"
#include "tendril/tendril.hpp"

namespace {

tendril::Options one_worker() {
  tendril::Options o;
  o.workers = 1;
  o.pin_workers = false;
  return o;
}

// Children spawned by a fiber that does not yield wait in the queue; none
// holds a stack until it runs.
TEST(StackDefer, QueuedChildrenHoldNoStack) {
  static constexpr int kChildren = 2000;
  tendril::run(one_worker(), [] {
    std::atomic<int> ran{0};
    const tendril::Stats before = tendril::stats();
    for (int i = 0; i < kChildren; ++i) tendril::spawn([&ran] { ran.fetch_add(1); }).detach();
    const tendril::Stats queued = tendril::stats();
    EXPECT_EQ(ran.load(), 0);
    EXPECT_EQ(queued.fibers_unstarted, before.fibers_unstarted + kChildren);
    // Eager stacks would hold a page each (2000 pages at least).
    EXPECT_LT(queued.stack_pages_mapped, before.stack_pages_mapped + kChildren / 10);
    while (ran.load() < kChildren) tendril::this_fiber::yield();
    EXPECT_EQ(tendril::stats().fibers_unstarted, before.fibers_unstarted);
  });
}

// Each child that runs takes the stack the one before it gave back: a burst
// of short children costs the cache a handful of stacks, not one per child.
TEST(StackDefer, ChildrenRunOnTheStacksOfThoseThatEnded) {
  static constexpr int kChildren = 5000;
  tendril::run(one_worker(), [] {
    std::vector<tendril::Fiber> kids;
    kids.reserve(kChildren);
    std::atomic<int> ran{0};
    const tendril::Stats before = tendril::stats();
    for (int i = 0; i < kChildren; ++i) kids.push_back(tendril::spawn([&ran] { ran.fetch_add(1); }));
    for (auto& k : kids) k.join();
    const tendril::Stats after = tendril::stats();
    EXPECT_EQ(ran.load(), kChildren);
    // Without deferral every child takes a fresh slot at spawn (5000 misses).
    EXPECT_LT(after.cache_misses - before.cache_misses, std::uint64_t(kChildren / 10));
  });
}

// A callable that cannot wait in the record (too big, or a move that may
// throw) gets its stack at spawn, as before.
struct MayThrowOnMove {
  int v = 7;
  MayThrowOnMove() = default;
  MayThrowOnMove(const MayThrowOnMove&) = default;
  MayThrowOnMove(MayThrowOnMove&& o) noexcept(false) : v(o.v) {}
};

TEST(StackDefer, CallablesThatCannotWaitInTheRecordGetTheirStackAtSpawn) {
  tendril::run(one_worker(), [] {
    std::atomic<int> sum{0};
    const std::uint64_t before = tendril::stats().fibers_unstarted;
    struct Big {
      std::uint64_t words[32];
    } big{};
    big.words[31] = 40;
    MayThrowOnMove m;
    auto a = tendril::spawn([big, &sum] { sum.fetch_add(int(big.words[31])); });
    auto b = tendril::spawn([m, &sum] { sum.fetch_add(m.v); });
    EXPECT_EQ(tendril::stats().fibers_unstarted, before);
    auto c = tendril::spawn([&sum] { sum.fetch_add(100); });
    EXPECT_EQ(tendril::stats().fibers_unstarted, before + 1);
    a.join();
    b.join();
    c.join();
    EXPECT_EQ(sum.load(), 147);
  });
}

// The callable waits in the record, moves onto the stack when the fiber
// first runs, and is destroyed exactly once, whatever it holds.
struct Counted {
  static inline std::atomic<int> live{0};
  int v;
  explicit Counted(int x) : v(x) { live.fetch_add(1); }
  Counted(const Counted& o) : v(o.v) { live.fetch_add(1); }
  Counted(Counted&& o) noexcept : v(o.v) { live.fetch_add(1); }
  ~Counted() { live.fetch_sub(1); }
};

TEST(StackDefer, TheCallableArrivesIntactAndIsDestroyedOnce) {
  ASSERT_EQ(Counted::live.load(), 0);
  tendril::run(tendril::Options{}, [] {
    std::vector<tendril::Fiber> kids;
    std::atomic<long> sum{0};
    for (int i = 0; i < 1000; ++i) {
      Counted c(i);
      std::string name = "fiber-" + std::to_string(i);  // a heap-owning capture, moved twice
      kids.push_back(tendril::spawn([c = std::move(c), name = std::move(name), &sum]() mutable {
        if (name == "fiber-" + std::to_string(c.v)) sum.fetch_add(c.v);
        c.v = -1;  // the callable is the fiber's own, mutable
      }));
    }
    for (auto& k : kids) k.join();
    EXPECT_EQ(sum.load(), 999L * 1000 / 2);
  });
  EXPECT_EQ(Counted::live.load(), 0);
}

// Fibers queued on one worker and taken by the other get their stacks
// there; the room their home kept for them is given back all the same.
TEST(StackDefer, StolenUnstartedFibersGetTheirStacksWhereTheyRun) {
  tendril::Options o;
  o.workers = 2;
  o.pin_workers = false;
  tendril::run(o, [] {
    static constexpr int kFibers = 20000;
    std::atomic<int> on_worker[2] = {0, 0};
    std::atomic<int> ran{0};
    for (int i = 0; i < kFibers; ++i)
      tendril::spawn([&] {
        const unsigned w = tendril::detail::current_worker()->index();
        on_worker[w & 1].fetch_add(1);
        // Long enough for the other worker to come and take some.
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
        while (std::chrono::steady_clock::now() < until) {
        }
        ran.fetch_add(1);
      }).detach();
    while (ran.load() < kFibers) tendril::this_fiber::yield();
    EXPECT_GT(on_worker[0].load() + on_worker[1].load(), 0);
    EXPECT_EQ(tendril::stats().fibers_unstarted, 0u);
    if (on_worker[0].load() == 0 || on_worker[1].load() == 0)
      GTEST_SKIP() << "every fiber ran on one worker: nothing was stolen";
  });
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TENDRIL_HUGE_STACK_ARENAS 0  // 1 GiB stacks: ASan poisons them whole, TSan has no room for the arenas
#else
#define TENDRIL_HUGE_STACK_ARENAS 1
#endif

unsigned worker_index() { return tendril::detail::current_worker()->index(); }

// Spins (without yielding: this worker stays busy, the other may take what
// is queued here) until `done` or a while has passed.
void spin_until(const std::atomic<bool>& done, std::chrono::milliseconds at_most) {
  const auto until = std::chrono::steady_clock::now() + at_most;
  while (!done.load() && std::chrono::steady_clock::now() < until) {
  }
}

// A thief whose own arena is full cannot bind a stolen fiber a stack: it
// sends the fiber home, where the spawn kept room for it, and it runs there.
TEST(StackDefer, AThiefWithAFullArenaSendsTheFiberHome) {
  if (!TENDRIL_HUGE_STACK_ARENAS) GTEST_SKIP() << "needs 1 GiB stack arenas";
  tendril::Options o;
  o.workers = 2;
  o.pin_workers = false;
  o.stack_cache_bytes = 0;
  o.stall_threshold = std::chrono::milliseconds(0);  // this worker spins on purpose
  tendril::run(o, [] {
    tendril::this_fiber::NoMigrate stay;
    const unsigned home = worker_index(), thief = 1 - home;
    tendril::SpawnOptions big;
    big.stack_limit = std::size_t(1) << 30;  // the class with fewest slots
    // The filler is taken by the other worker while this one spins, and
    // there fills that worker's arena for the class (a big callable: its
    // fibers get their stacks at spawn, from that arena).
    tendril::Semaphore release(0);
    std::vector<tendril::Fiber> fillers;
    std::atomic<bool> filled{false};
    bool filled_on_thief = false;
    tendril::Fiber filler = tendril::spawn([&] {
      filled_on_thief = worker_index() == thief;
      tendril::this_fiber::NoMigrate there;
      struct Padding {
        char bytes[200] = {};
      } pad;
      try {
        for (int i = 0; i < 100000; ++i)
          fillers.push_back(tendril::spawn(big, [&release, pad] {
            (void)pad;
            release.acquire();
          }));
      } catch (const std::bad_alloc&) {
      }
      filled = true;
    });
    spin_until(filled, std::chrono::seconds(30));
    filler.join();
    if (!filled_on_thief) GTEST_SKIP() << "the other worker never took the filler";
    ASSERT_FALSE(fillers.empty());
    // Small fibers of the same class, spawned here: deferred, with room kept
    // in this worker's arena. The thief takes some while this one spins.
    constexpr int kDeferred = 64;
    std::atomic<int> ran{0}, ran_on_thief{0};
    tendril::WaitGroup all_ran;
    all_ran.add(kDeferred);
    const std::uint64_t steals_before = tendril::stats().steals;
    for (int i = 0; i < kDeferred; ++i)
      tendril::spawn(big, [&] {
        ran_on_thief.fetch_add(worker_index() == thief ? 1 : 0);
        ran.fetch_add(1);
        all_ran.done();
      }).detach();
    EXPECT_EQ(tendril::stats().fibers_unstarted, std::uint64_t(kDeferred));
    const std::atomic<bool> never{false};
    spin_until(never, std::chrono::milliseconds(200));
    const std::uint64_t steals = tendril::stats().steals - steals_before;
    all_ran.wait();
    EXPECT_EQ(ran.load(), kDeferred);
    EXPECT_EQ(ran_on_thief.load(), 0) << "a fiber got a stack on the worker whose arena is full";
    EXPECT_GT(steals, 0u) << "the thief took none: nothing was tested";
    EXPECT_EQ(tendril::stats().fibers_unstarted, 0u);
    release.release(static_cast<std::int64_t>(fillers.size()));
    for (auto& f : fillers) f.join();
  });
}

// Options::stack_defer = false: every fiber gets its stack at spawn.
TEST(StackDefer, OffGivesEveryFiberItsStackAtSpawn) {
  tendril::Options o = one_worker();
  o.stack_defer = false;
  tendril::run(o, [] {
    static constexpr int kChildren = 200;
    std::atomic<int> ran{0};
    const tendril::Stats before = tendril::stats();
    for (int i = 0; i < kChildren; ++i) tendril::spawn([&ran] { ran.fetch_add(1); }).detach();
    const tendril::Stats queued = tendril::stats();
    EXPECT_EQ(queued.fibers_unstarted, 0u);
    EXPECT_GE(queued.stack_pages_mapped, before.stack_pages_mapped + kChildren);
    while (ran.load() < kChildren) tendril::this_fiber::yield();
  });
}

// A fiber spawned from a plain thread (no worker) gets its stack at spawn.
TEST(StackDefer, SpawnsFromPlainThreadsAreNotDeferred) {
  tendril::run(one_worker(), [] {
    std::atomic<int> ran{0};
    std::atomic<bool> looked{false};
    std::uint64_t unstarted = ~0ull;
    std::thread t([&] {
      tendril::Fiber f = tendril::spawn([&ran] { ran.fetch_add(1); });
      unstarted = tendril::stats().fibers_unstarted;
      looked = true;
      f.join();
    });
    // The only worker is ours until we park: the thread's fiber cannot run
    // before the thread has looked.
    while (!looked.load()) {
    }
    tendril::blocking([&] { t.join(); });
    EXPECT_EQ(ran.load(), 1);
  });
}

}  // namespace
