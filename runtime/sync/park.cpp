// Parking and waking for every tendril primitive (see include/tendril/detail/park.hpp).
#include "tendril/detail/park.hpp"

#include <sched.h>

#include "runtime/sched/futex.hpp"
#include "runtime/sched/interrupt.hpp"
#include "tendril/scope.hpp"
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
  Interrupt* interrupt;  // published once the wait is committed; nullptr: none
};

void release_lock(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<ParkArgs*>(arg);
  a->lock->unlock();
  if (a->interrupt != nullptr) publish_interrupt(from, a->interrupt);
}

void arm_timer_and_release_lock(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<ParkArgs*>(arg);
  a->heap->lock.lock();
  a->heap->insert(from);
  a->heap->lock.unlock();
  a->lock->unlock();
  if (a->interrupt != nullptr) publish_interrupt(from, a->interrupt);
}

bool park_fiber(Worker* w, FiberCtl* self, Waiter& waiter, SpinLock& lock, WaitFor what,
                const Deadline* deadline, Cancellable cancellable) noexcept {
  WaiterInterrupt interrupt(waiter);
  Deadline storage;
  const bool interruptible = cancellable == Cancellable::yes && fiber_interruptible(self);
  if (interruptible) {
    deadline = effective_deadline(self, deadline, storage);
    if (fiber_cancelled(self) || (deadline != nullptr && *deadline <= std::chrono::steady_clock::now())) {
      // Not worth a switch: report it as a timeout at once (the waiter is
      // still linked; the caller's timed-out path unlinks it).
      waiter.state.store(Waiter::kTimedOut, std::memory_order_relaxed);
      lock.unlock();
      return false;
    }
  }
  self->park.begin(what, w->index(), park_clock_ns());
  ParkArgs args{&lock, nullptr, interruptible ? &interrupt : nullptr};
  if (interruptible) hold_interrupt(self);
  if (deadline == nullptr) {
    w->switch_out(self, release_lock, &args);
    if (!interruptible) return true;  // only a wake() resumes an untimed waiter
    unpublish_interrupt(self);
    return waiter.state.load(std::memory_order_acquire) == Waiter::kClaimed;
  }
  // The timer goes in the heap of the worker we park on; once resumed we may
  // be elsewhere, so remember which heap to clean up.
  args.heap = &w->timers();
  self->timer_deadline = to_ticks(*deadline);
  self->timer_waiter = &waiter;
  w->switch_out(self, arm_timer_and_release_lock, &args);
  if (interruptible) unpublish_interrupt(self);
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
  Interrupt* interrupt;
  TimerHeap* heap;  // the scope's deadline is armed here; nullptr: none
};

void commit_or_resume(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<CommitArgs*>(arg);
  if (a->heap != nullptr) {
    a->heap->lock.lock();
    a->heap->insert(from);
    a->heap->lock.unlock();
  }
  // Read before the commit: once it succeeds, a park without an Interrupt
  // (nothing holds the fiber) may already be resumed and `a` gone.
  Interrupt* const interrupt = a->interrupt;
  if (!a->commit(a->arg)) {
    if (interrupt != nullptr) drop_interrupt(from);
    current_scheduler()->ready(from, /*handoff=*/true);
    return;
  }
  if (interrupt != nullptr) publish_interrupt(from, interrupt);
}

}  // namespace

void park_fiber_committed(Worker* w, FiberCtl* self, WaitFor what, bool (*commit)(void*) noexcept, void* arg,
                          Interrupt* interrupt) noexcept {
  if (!fiber_interruptible(self)) interrupt = nullptr;
  self->park.begin(what, w->index(), park_clock_ns());
  CommitArgs a{commit, arg, interrupt, nullptr};
  if (interrupt != nullptr) {
    hold_interrupt(self);
    if (self->scope->deadline != INT64_MAX) {
      // The timer ends this wait through the Interrupt, as a cancel would.
      a.heap = &w->timers();
      self->timer_deadline = self->scope->deadline;
      self->timer_waiter = nullptr;
      self->timer_interrupts = true;
    }
  }
  w->switch_out(self, commit_or_resume, &a);
  if (interrupt == nullptr) return;
  unpublish_interrupt(self);
  if (TimerHeap* heap = a.heap) {
    heap->lock.lock();
    if (self->timer_heap == heap) heap->erase(self);
    heap->lock.unlock();
    self->timer_interrupts = false;
  }
}

namespace {

struct TimedCommitArgs {
  bool (*commit)(void*) noexcept;
  void* arg;
  Interrupt* interrupt;  // nullptr: the park is not interruptible
  Waiter* waiter;
  TimerHeap* heap;
};

// The switch action of a committed park with a deadline. The interrupt word
// is held for the whole action (even when there is no Interrupt to publish),
// so a waker that resumes the fiber right after the commit keeps it in
// unpublish_interrupt until the action no longer touches the waiter.
void commit_timed_or_resume(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<TimedCommitArgs*>(arg);
  a->heap->lock.lock();
  a->heap->insert(from);
  a->heap->lock.unlock();
  if (!a->commit(a->arg)) {
    drop_interrupt(from);
    current_scheduler()->ready(from, /*handoff=*/true);
    return;
  }
  // A timer that fired before the commit found the waiter not yet waiting
  // and left it alone: the expiry is ours to deliver.
  if (steady_ticks() >= from->timer_deadline) {
    std::uint32_t expected = Waiter::kWaiting;
    if (a->waiter->state.compare_exchange_strong(expected, Waiter::kTimedOut, std::memory_order_acq_rel))
      current_scheduler()->ready(from, /*handoff=*/true);
  }
  if (a->interrupt != nullptr) {
    publish_interrupt(from, a->interrupt);
  } else {
    drop_interrupt(from);
  }
}

void park_fiber_committed_until(Worker* w, FiberCtl* self, Waiter& waiter, WaitFor what,
                                bool (*commit)(void*) noexcept, void* arg, Interrupt* interrupt,
                                const Deadline* deadline) noexcept {
  if (!fiber_interruptible(self)) interrupt = nullptr;
  Deadline storage;
  if (interrupt != nullptr) deadline = effective_deadline(self, deadline, storage);
  self->park.begin(what, w->index(), park_clock_ns());
  TimedCommitArgs a{commit, arg, interrupt, &waiter, &w->timers()};
  self->timer_deadline = to_ticks(*deadline);
  self->timer_waiter = &waiter;
  self->timer_interrupts = false;
  hold_interrupt(self);
  w->switch_out(self, commit_timed_or_resume, &a);
  unpublish_interrupt(self);
  TimerHeap* heap = a.heap;
  heap->lock.lock();
  if (self->timer_heap == heap) heap->erase(self);
  heap->lock.unlock();
  self->timer_waiter = nullptr;
}

}  // namespace

void park_committed(Waiter& waiter, WaitFor what, bool (*commit)(void*) noexcept, void* arg,
                    Interrupt* interrupt, const Deadline* deadline) {
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self != nullptr) {
    if (deadline != nullptr) {
      park_fiber_committed_until(w, self, waiter, what, commit, arg, interrupt, deadline);
    } else {
      park_fiber_committed(w, self, what, commit, arg, interrupt);
    }
    return;
  }
  if (!commit(arg)) return;
  while (waiter.woken.load(std::memory_order_acquire) == 0) {
    if (futex_wait(waiter.woken, 0, deadline)) continue;
    std::uint32_t expected = Waiter::kWaiting;
    if (waiter.state.compare_exchange_strong(expected, Waiter::kTimedOut, std::memory_order_acq_rel)) return;
    deadline = nullptr;  // claimed just in time: the waker is on its way
  }
}

bool park(Waiter& waiter, SpinLock& lock, WaitFor what, const Deadline* deadline, Cancellable cancellable) {
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self != nullptr) return park_fiber(w, self, waiter, lock, what, deadline, cancellable);
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
