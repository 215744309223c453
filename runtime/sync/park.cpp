// Parking and waking for every tendril primitive (see include/tendril/detail/park.hpp).
#include "tendril/detail/park.hpp"

#include <sched.h>

#include "runtime/sched/futex.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

void SpinLock::lock_contended() noexcept {
  for (unsigned spins = 0;; ++spins) {
    while (held_.load(std::memory_order_relaxed)) {
      if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        ++spins;
      } else {
        sched_yield();  // the holder may have been preempted
      }
    }
    if (!held_.exchange(true, std::memory_order_acquire)) return;
  }
}

Waiter::Waiter() noexcept : fiber(current_fiber()) {}

Waiter* WaitQueue::claim_front() noexcept {
  while (Waiter* w = pop_front()) {
    if (claim(*w)) return w;
  }
  return nullptr;
}

namespace {

struct ParkArgs {
  SpinLock* lock;
  TimerHeap* heap;
};

void release_lock(FiberCtl*, void* arg) noexcept { static_cast<SpinLock*>(arg)->unlock(); }

void arm_timer_and_release_lock(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<ParkArgs*>(arg);
  a->heap->lock.lock();
  a->heap->insert(from);
  a->heap->lock.unlock();
  a->lock->unlock();
}

bool park_fiber(Worker* w, FiberCtl* self, Waiter& waiter, SpinLock& lock, WaitFor what,
                const Deadline* deadline) noexcept {
  self->park.begin(what, w->index(), park_clock_ns());
  if (deadline == nullptr) {
    w->switch_out(self, release_lock, &lock);
    return true;  // only a wake() resumes an untimed waiter
  }
  // The timer goes in the heap of the worker we park on; once resumed we may
  // be elsewhere, so remember which heap to clean up.
  ParkArgs args{&lock, &w->timers()};
  self->timer_deadline = to_ticks(*deadline);
  self->timer_waiter = &waiter;
  w->switch_out(self, arm_timer_and_release_lock, &args);
  TimerHeap* heap = args.heap;
  heap->lock.lock();
  if (self->timer_heap == heap) heap->erase(self);
  heap->lock.unlock();
  self->timer_waiter = nullptr;
  return waiter.state.load(std::memory_order_acquire) == Waiter::kClaimed;
}

bool park_thread(Waiter& waiter, SpinLock& lock, const Deadline* deadline) noexcept {
  lock.unlock();
  while (waiter.woken.load(std::memory_order_acquire) == 0) {
    if (futex_wait(waiter.woken, 0, deadline)) continue;
    std::uint32_t expected = Waiter::kWaiting;
    if (waiter.state.compare_exchange_strong(expected, Waiter::kTimedOut,
                                             std::memory_order_acq_rel))
      return false;
    deadline = nullptr;  // claimed just in time: the waker is on its way
  }
  return true;
}

struct CommitArgs {
  bool (*commit)(void*) noexcept;
  void* arg;
};

void commit_or_resume(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<CommitArgs*>(arg);
  if (!a->commit(a->arg)) current_scheduler()->ready(from, /*handoff=*/true);
}

}  // namespace

void park_committed(Waiter& waiter, WaitFor what, bool (*commit)(void*) noexcept, void* arg) {
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self != nullptr) {
    self->park.begin(what, w->index(), park_clock_ns());
    CommitArgs a{commit, arg};
    w->switch_out(self, commit_or_resume, &a);
    return;
  }
  if (!commit(arg)) return;
  while (waiter.woken.load(std::memory_order_acquire) == 0) futex_wait(waiter.woken, 0, nullptr);
}

bool park(Waiter& waiter, SpinLock& lock, WaitFor what, const Deadline* deadline) {
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self != nullptr) return park_fiber(w, self, waiter, lock, what, deadline);
  return park_thread(waiter, lock, deadline);
}

void wake(Waiter& waiter) noexcept {
  if (FiberCtl* f = waiter.fiber) {
    Scheduler* s = current_scheduler();
    s->ready(f, /*handoff=*/true);
    return;
  }
  waiter.woken.store(1, std::memory_order_release);
  futex_wake_one(waiter.woken);
}

}  // namespace tendril::detail
