// Where fiber control blocks live: off the fibers' stacks, in per-worker
// caches of records that are reused (runtime/sched/fiber_ctl_cache.hpp).
#include <gtest/gtest.h>
#include <tendril/debug.hpp>
#include <tendril/tendril.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <system_error>
#include <vector>

#include <tendril/select.hpp>

#include "runtime/sched/scheduler.hpp"
#include "runtime/stack/stack.hpp"
#include "tests/scale.hpp"

namespace td = tendril::detail;

namespace {

struct FoundSlot {
  std::uint64_t id;
  const void* ctl = nullptr;
  const char* lo = nullptr;
  const char* hi = nullptr;
  bool found = false;
};

void find_slot(const td::LiveStack& ls, void* arg) {
  auto* f = static_cast<FoundSlot*>(arg);
  if (ls.fiber_id != f->id) return;
  f->found = true;
  f->ctl = ls.ctl;
  f->lo = ls.slot.lo;
  f->hi = ls.slot.hi;
}

// Records carved by every cache of the running scheduler (workers and plain
// threads).
std::vector<std::size_t> carved_per_cache() {
  td::Scheduler* s = td::current_scheduler();
  std::vector<std::size_t> out;
  for (unsigned i = 0; i <= s->worker_count(); ++i) out.push_back(s->ctl_cache(i).carved());
  return out;
}

// Spawns `n` fibers that park on one gate, opens it, joins them all.
void park_and_release(int n) {
  tendril::WaitGroup gate;
  gate.add(1);
  std::vector<tendril::Fiber> fibers;
  fibers.reserve(n);
  for (int i = 0; i < n; ++i) fibers.push_back(tendril::spawn([&gate] { gate.wait(); }));
  tendril::this_fiber::yield();
  gate.done();
  for (auto& f : fibers) f.join();
}

// Yields until the fiber dump shows fiber `id` parked for `why` (the caller
// shares its worker, so each yield lets the fiber run on to its park).
void yield_until_parked(std::uint64_t id, tendril::WaitReason why) {
  for (;;) {
    for (const tendril::FiberInfo& f : tendril::fibers()) {
      if (f.id == id && f.state == tendril::FiberState::parked && f.reason == why) return;
    }
    tendril::this_fiber::yield();
  }
}

// Whether `p` lies in the stack slot of fiber `id`.
bool on_stack_of(std::uint64_t id, const void* p) {
  FoundSlot slot{id};
  td::stack_for_each_live(find_slot, &slot);
  const char* c = static_cast<const char*>(p);
  return slot.found && c >= slot.lo && c < slot.hi;
}

}  // namespace

TEST(FiberCtl, ParkedFibersControlBlockIsOffItsStackAndFoundFromItsSlot) {
  tendril::run(tendril_test::workers(1), [] {
    tendril::WaitGroup gate;
    gate.add(1);
    std::atomic<td::FiberCtl*> seen{nullptr};
    tendril::Fiber child = tendril::spawn(tendril::SpawnOptions{"parked-child", 0}, [&] {
      seen.store(td::current_fiber());
      gate.wait();
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    tendril::this_fiber::yield();  // the child parks
    td::FiberCtl* c = seen.load();

    // Not in its stack slot (nor in the guard zone below it)...
    FoundSlot slot{c->id};
    td::stack_for_each_live(find_slot, &slot);
    ASSERT_TRUE(slot.found);
    const char* p = reinterpret_cast<const char*>(c);
    EXPECT_TRUE(p + sizeof(td::FiberCtl) <= slot.lo - (slot.hi - slot.lo) || p >= slot.hi)
        << "the control block lies in or just below its stack";
    // ...but in the cache of the worker that spawned it, and the slot's side
    // table leads to it (the fiber dump and gdb go that way).
    EXPECT_TRUE(td::current_scheduler()->ctl_cache(c->home).owns(c));
    EXPECT_EQ(c->home, 0u);
    EXPECT_EQ(slot.ctl, c);
    // The Waiter the WaitGroup queued is the fiber's own, in that block: a
    // wake touches nothing on the parked fiber's stack.
    EXPECT_TRUE(c->waiter.linked);
    EXPECT_EQ(c->waiter.fiber, c);

    bool listed = false;
    for (const tendril::FiberInfo& f : tendril::fibers()) {
      if (f.id != c->id) continue;
      listed = true;
      EXPECT_EQ(f.name, "parked-child");
      EXPECT_EQ(f.state, tendril::FiberState::parked);
      EXPECT_EQ(f.reason, tendril::WaitReason::wait_group);
    }
    EXPECT_TRUE(listed) << "the fiber dump did not find the parked fiber";

    gate.done();
    child.join();
  });
}

TEST(FiberCtl, RecordsAreReusedOnOneWorker) {
  const int kFibers = static_cast<int>(stress_count(2000, 200));
  tendril::run(tendril_test::workers(1), [&] {
    park_and_release(kFibers);
    const std::vector<std::size_t> after_first = carved_per_cache();
    for (int round = 0; round < 20; ++round) park_and_release(kFibers);
    const std::vector<std::size_t> after = carved_per_cache();
    // Peak live: kFibers children of main, spawned on worker 0.
    EXPECT_LE(after[0], std::size_t(kFibers) + 1);
    EXPECT_EQ(after[0], after_first[0]) << "the cache grew although no more fibers were live at once";
    EXPECT_EQ(after[1], 1u);  // main, spawned by run()'s thread
  });
}

TEST(FiberCtl, RecordsFreedOnAnotherWorkerGoBackToTheirCache) {
  // Spawners on both workers; their children finish and are joined wherever
  // they were scheduled, so many records are freed by a thread that is not
  // their cache's owner (put_remote).
  const int kSpawners = 4;
  const int kPerSpawner = static_cast<int>(stress_count(500, 100));
  const int kRounds = 20;
  // Compaction off: its list keeps a fiber that ends on another worker than
  // the one it parked on until that worker's next walk, which would let a
  // cache carve up to a round's worth more (StackCompact.EndedFibers...
  // covers that retention).
  tendril::Options o = tendril_test::workers(2);
  o.compact_after = std::chrono::milliseconds(0);
  tendril::run(o, [&] {
    for (int round = 0; round < kRounds; ++round) {
      tendril::WaitGroup gate;
      gate.add(1);
      std::vector<tendril::Fiber> spawners;
      for (int s = 0; s < kSpawners; ++s) {
        spawners.push_back(tendril::spawn([&gate, kPerSpawner] {
          std::vector<tendril::Fiber> children;
          children.reserve(kPerSpawner);
          for (int i = 0; i < kPerSpawner; ++i) children.push_back(tendril::spawn([&gate] { gate.wait(); }));
          for (auto& c : children) c.join();
        }));
      }
      tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
      gate.done();
      for (auto& s : spawners) s.join();
    }
    // No cache carves more records than were live at once (plus a few freed
    // remotely just as it looked); a leak on the remote path would carve
    // about kRounds times as many.
    const std::size_t peak = std::size_t(kSpawners) * (kPerSpawner + 1) + 1;
    std::size_t total = 0;
    for (std::size_t c : carved_per_cache()) {
      EXPECT_LE(c, peak + 64);
      total += c;
    }
    EXPECT_LE(total, 3 * (peak + 64));
  });
}

TEST(FiberCtl, ParkedChannelOperationsWaitOnTheFibersOwnWaiter) {
  tendril::run(tendril_test::workers(1), [] {
    tendril::Channel<int> ch;
    std::atomic<td::FiberCtl*> seen{nullptr};
    tendril::Fiber receiver = tendril::spawn([&] {
      seen.store(td::current_fiber());
      EXPECT_EQ(ch.recv(), 7);
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    td::FiberCtl* c = seen.load();
    yield_until_parked(c->id, tendril::WaitReason::channel_recv);

    // The cell the receiver parked in publishes the Waiter in its control
    // block, and the value goes to the Waiter's hand-off buffer: the sender
    // claims, fills and wakes it without touching the receiver's stack.
    auto* st = td::channel::Access::state(ch);
    auto& cell = st->cell(0);
    EXPECT_EQ(td::channel::state_of(cell.word.load()), td::channel::kRecvWait);
    EXPECT_EQ(cell.receiver.load(), &c->waiter);
    EXPECT_EQ(c->waiter.fiber, c);
    EXPECT_FALSE(on_stack_of(c->id, &c->waiter));
    EXPECT_EQ(c->waiter.slot, static_cast<void*>(c->waiter.handoff));
    EXPECT_TRUE(ch.send(7));
    receiver.join();

    // A value too big for the hand-off buffer is built on the receiver's
    // stack instead.
    struct Wide {
      char bytes[td::Waiter::kHandoffBytes + 1];
    };
    tendril::Channel<Wide> wide;
    seen.store(nullptr);
    tendril::Fiber wide_receiver = tendril::spawn([&] {
      seen.store(td::current_fiber());
      const std::optional<Wide> got = wide.recv();
      EXPECT_TRUE(got.has_value() && got->bytes[0] == 'w');
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    c = seen.load();
    yield_until_parked(c->id, tendril::WaitReason::channel_recv);
    EXPECT_EQ(td::channel::Access::state(wide)->cell(0).receiver.load(), &c->waiter);
    EXPECT_TRUE(on_stack_of(c->id, c->waiter.slot));
    EXPECT_TRUE(wide.send(Wide{{'w'}}));
    wide_receiver.join();

    // The same for a sender parked on an unbuffered channel.
    seen.store(nullptr);
    tendril::Fiber sender = tendril::spawn([&] {
      seen.store(td::current_fiber());
      EXPECT_TRUE(ch.send(8));
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    c = seen.load();
    yield_until_parked(c->id, tendril::WaitReason::channel_send);
    auto& next = st->cell(1);
    EXPECT_EQ(td::channel::state_of(next.word.load()), td::channel::kSendWait);
    EXPECT_EQ(next.sender.load(), &c->waiter);
    EXPECT_EQ(c->waiter.slot, static_cast<void*>(c->waiter.handoff));  // the value waits there
    EXPECT_EQ(ch.recv(), 8);
    sender.join();
  });
}

TEST(FiberCtl, SleepingFibersWaitOnNothingOnTheirStack) {
  using namespace std::chrono_literals;
  tendril::run(tendril_test::workers(1), [] {
    // An interruptible sleep (in a Scope) parks on the fiber's own Waiter,
    // which the timer or a cancel claims.
    std::atomic<td::FiberCtl*> seen{nullptr};
    tendril::Scope scope;
    scope.spawn([&] {
      seen.store(td::current_fiber());
      try {
        tendril::this_fiber::sleep_for(1h);
      } catch (const std::system_error&) {
      }
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    td::FiberCtl* c = seen.load();
    yield_until_parked(c->id, tendril::WaitReason::sleep);
    EXPECT_EQ(c->timer_waiter, &c->waiter);
    EXPECT_EQ(c->waiter.state.load(), td::Waiter::kWaiting);
    scope.cancel();
    scope.join();

    // A plain sleep links no Waiter at all: only the timer wakes it.
    seen.store(nullptr);
    tendril::Fiber plain = tendril::spawn([&] {
      seen.store(td::current_fiber());
      tendril::this_fiber::sleep_for(1h);
    });
    while (seen.load() == nullptr) tendril::this_fiber::yield();
    c = seen.load();
    yield_until_parked(c->id, tendril::WaitReason::sleep);
    EXPECT_EQ(c->timer_waiter, nullptr);
    plain.detach();  // the run ends without waiting for an hour
  });
}
