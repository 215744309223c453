// Interrupting parked fibers: see runtime/sched/interrupt.hpp.
#include "runtime/sched/interrupt.hpp"

#include <sched.h>

#include <system_error>

#include "runtime/sched/scheduler.hpp"
#include "tendril/scope.hpp"

namespace tendril::detail {

namespace {

void claim_waiter(Interrupt* self, FiberCtl* f) noexcept {
  Waiter* w = static_cast<WaiterInterrupt*>(self)->waiter;
  std::uint32_t expected = Waiter::kWaiting;
  if (w->state.compare_exchange_strong(expected, Waiter::kTimedOut, std::memory_order_acq_rel))
    current_scheduler()->ready(f, /*handoff=*/false);
}

}  // namespace

WaiterInterrupt::WaiterInterrupt(Waiter& w) noexcept : Interrupt{claim_waiter}, waiter(&w) {}

bool fiber_cancelled(const FiberCtl* f) noexcept {
  return f->scope != nullptr && f->scope->cancelled.load(std::memory_order_seq_cst);
}

const Deadline* effective_deadline(const FiberCtl* f, const Deadline* own, Deadline& storage) noexcept {
  if (!fiber_interruptible(f) || f->scope->deadline == INT64_MAX) return own;
  const Deadline scope{Deadline::duration(f->scope->deadline)};
  if (own != nullptr && *own <= scope) return own;
  storage = scope;
  return &storage;
}

void publish_interrupt(FiberCtl* f, Interrupt* it) noexcept {
  // The word is held: the fiber cannot resume past unpublish_interrupt, so
  // its scope and frames are alive. A cancel that set the flag before our
  // hold saw nothing to interrupt (the flag is read after the hold, both
  // seq_cst); one that came during the hold, or a timer that fired, left
  // kInterruptPending. Either way the interrupt is ours to deliver.
  std::uintptr_t held = kInterruptBusy;
  if (!fiber_cancelled(f) &&
      f->interrupt.compare_exchange_strong(held, reinterpret_cast<std::uintptr_t>(it), std::memory_order_seq_cst))
    return;
  it->fn(it, f);
  f->interrupt.store(0, std::memory_order_release);  // our last touch of f
}

void unpublish_interrupt(FiberCtl* f) noexcept {
  std::uintptr_t p = f->interrupt.load(std::memory_order_acquire);
  for (unsigned spins = 0;;) {
    if (p == 0) return;  // a canceller ran it and let go
    if ((p & (kInterruptBusy | kInterruptPending)) != 0) {
      // Held by our park's switch action, or a canceller is inside our
      // Interrupt: a CAS and a ready. Either may have been preempted, so do
      // not burn the slice.
      if (++spins > 64) sched_yield();
      p = f->interrupt.load(std::memory_order_acquire);
      continue;
    }
    if (f->interrupt.compare_exchange_weak(p, 0, std::memory_order_acq_rel, std::memory_order_acquire)) return;
  }
}

void interrupt_fiber(FiberCtl* f) noexcept {
  std::uintptr_t p = f->interrupt.load(std::memory_order_seq_cst);
  for (;;) {
    if (p == 0 || (p & kInterruptPending) != 0) return;  // not parked, or already asked
    if (p == kInterruptBusy) {
      // Held (a park committing, or another canceller running it): leave
      // word that the holder must deliver it.
      if (f->interrupt.compare_exchange_weak(p, kInterruptBusy | kInterruptPending, std::memory_order_seq_cst))
        return;
      continue;
    }
    if (f->interrupt.compare_exchange_weak(p, kInterruptBusy, std::memory_order_seq_cst)) break;
  }
  auto* it = reinterpret_cast<Interrupt*>(p);
  it->fn(it, f);
  f->interrupt.store(0, std::memory_order_release);
}

std::int64_t interrupt_deadline() noexcept {
  const FiberCtl* f = current_fiber();
  return fiber_interruptible(f) ? f->scope->deadline : INT64_MAX;
}

bool interruptible() noexcept { return fiber_interruptible(current_fiber()); }

int interrupt_error(const Deadline* own) noexcept {
  const FiberCtl* f = current_fiber();
  if (!fiber_interruptible(f)) return 0;
  // A passed deadline is reported even when a cancel came too: it is usually
  // the cause (a scope whose join timed out cancels its children on the way
  // out).
  const std::int64_t d = f->scope->deadline;
  if (d != INT64_MAX && steady_ticks() >= d && (own == nullptr || to_ticks(*own) >= d))
    return int(std::errc::timed_out);
  if (fiber_cancelled(f)) return int(std::errc::operation_canceled);
  return 0;
}

void throw_if_interrupted(const Deadline* own, const char* what) {
  if (const int e = interrupt_error(own)) throw std::system_error(e, std::generic_category(), what);
}

}  // namespace tendril::detail
