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

// Once the lock is released a waker may resume the fiber, on another worker,
// and its frames (`a` among them) may be gone unless it published an
// Interrupt (then it waits in unpublish_interrupt for us): read `a` first.
void release_lock(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<ParkArgs*>(arg);
  Interrupt* const interrupt = a->interrupt;
  a->lock->unlock();
  if (interrupt != nullptr) publish_interrupt(from, interrupt);
}

void arm_timer_and_release_lock(FiberCtl* from, void* arg) noexcept {
  auto* a = static_cast<ParkArgs*>(arg);
  a->heap->lock.lock();
  a->heap->insert(from);
  a->heap->lock.unlock();
  Interrupt* const interrupt = a->interrupt;  // see release_lock
  a->lock->unlock();
  if (interrupt != nullptr) publish_interrupt(from, interrupt);
}

// The timer goes in the heap of the worker we park on; once resumed we may be
// elsewhere, so the heap to clean up is the one recorded in `args`.
void disarm_timer(FiberCtl* self, TimerHeap* heap) noexcept {
  heap->lock.lock();
  if (self->timer_heap == heap) heap->erase(self);
  heap->lock.unlock();
  self->timer_waiter = nullptr;
}

bool park_fiber_interruptibly(Worker* w, FiberCtl* self, Waiter& waiter, SpinLock& lock, WaitFor what,
                              const Deadline* deadline) noexcept {
  WaiterInterrupt interrupt(waiter);
  Deadline storage;
  deadline = effective_deadline(self, deadline, storage);
  // A deadline that has passed is left to the timer (it fires at the
  // worker's next look): reading the clock here would cost every park more
  // than the rare late park saves.
  if (fiber_cancelled(self)) {
    // Not worth a switch: report it as a timeout at once (the waiter is still
    // linked, and the lock keeps wakers off it; the caller's timed-out path
    // unlinks it).
    waiter.state.store(Waiter::kTimedOut, std::memory_order_relaxed);
    lock.unlock();
    return false;
  }
  self->park.begin(what, w->index(), park_clock_ns());
  ParkArgs args{&lock, nullptr, &interrupt};
  hold_interrupt(self);
  if (deadline == nullptr) {
    w->switch_out(self, release_lock, &args);
    unpublish_interrupt(self);
  } else {
    args.heap = &w->timers();
    self->timer_deadline = to_ticks(*deadline);
    self->timer_waiter = &waiter;
    w->switch_out(self, arm_timer_and_release_lock, &args);
    unpublish_interrupt(self);
    disarm_timer(self, args.heap);
  }
  return waiter.state.load(std::memory_order_acquire) == Waiter::kClaimed;
}

bool park_fiber(Worker* w, FiberCtl* self, Waiter& waiter, SpinLock& lock, WaitFor what,
                const Deadline* deadline, Cancellable cancellable) noexcept {
  if (cancellable == Cancellable::yes && fiber_interruptible(self))
    return park_fiber_interruptibly(w, self, waiter, lock, what, deadline);
  self->park.begin(what, w->index(), park_clock_ns());
  ParkArgs args{&lock, nullptr, nullptr};
  if (deadline == nullptr) {
    w->switch_out(self, release_lock, &args);
    return true;  // only a wake() resumes an untimed, uninterruptible waiter
  }
  args.heap = &w->timers();
  self->timer_deadline = to_ticks(*deadline);
  self->timer_waiter = &waiter;
  w->switch_out(self, arm_timer_and_release_lock, &args);
  disarm_timer(self, args.heap);
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
  Interrupt* const interrupt = a->interrupt;  // see release_lock: after the commit `a` may be gone
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

Waiter* fiber_waiter() noexcept {
  FiberCtl* f = current_fiber();
  if (f == nullptr) return nullptr;
  Waiter& w = f->waiter;
  w.state.store(Waiter::kWaiting, std::memory_order_relaxed);
  w.woken.store(0, std::memory_order_relaxed);
  w.next = w.prev = nullptr;
  w.linked = false;
  w.slot = nullptr;
  w.ok = false;
  w.count = 0;
  return &w;
}

void note_claimed_for_wake(Waiter& w) noexcept {
  if (FiberCtl* f = w.fiber) f->park.readied();
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
