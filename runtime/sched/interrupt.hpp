// How a scope's cancel() reaches a parked fiber (the protocol is described at
// Interrupt in tendril/detail/park.hpp).
//
// FiberCtl::interrupt holds the Interrupt of the park in progress. The park
// publishes it once its wait is committed (in the switch action, the fiber's
// context saved) and takes it back as the first thing after it resumes. A
// canceller swaps it for kInterruptBusy, runs it, and stores 0: while the
// word reads busy the resumed fiber waits (a few instructions: a CAS and a
// ready), so the Interrupt, which lives in the parked frames, is alive
// whenever a canceller can reach it.
#pragma once

#include "runtime/sched/fiber_ctl.hpp"

namespace tendril::detail {

// Whether f's parks are interruptible now. Owner only.
inline bool fiber_interruptible(const FiberCtl* f) noexcept {
  return f != nullptr && f->scope != nullptr && f->no_cancel == 0;
}
// Whether f's scope is cancelled (not the deadline: the timer watches that).
bool fiber_cancelled(const FiberCtl* f) noexcept;
// The steady-clock deadline an interruptible park of f waits at most until:
// the earlier of `own` (nullptr: none) and f's scope deadline, in `storage`.
const Deadline* effective_deadline(const FiberCtl* f, const Deadline* own, Deadline& storage) noexcept;

// The order of a park that publishes: hold_interrupt on the fiber before it
// switches out; then, in the switch action, commit the wait and
// publish_interrupt (or drop_interrupt if there was nothing to wait for). A
// waker may resume the fiber, on another worker, between the commit and the
// publish: the held word keeps it in unpublish_interrupt until the action is
// done with the Interrupt, and keeps cancellers out until then: a canceller
// (or the timer) that finds it held leaves kInterruptPending, and the
// publish, which also reads the scope's flag, delivers the interrupt itself.
inline void hold_interrupt(FiberCtl* f) noexcept {
  f->interrupt.store(kInterruptBusy, std::memory_order_seq_cst);  // before the flag is read (publish)
}
void publish_interrupt(FiberCtl* f, Interrupt* it) noexcept;
inline void drop_interrupt(FiberCtl* f) noexcept { f->interrupt.store(0, std::memory_order_release); }
// On f, first thing after it resumes from a park that published.
void unpublish_interrupt(FiberCtl* f) noexcept;
// From any thread: runs f's published Interrupt, if any.
void interrupt_fiber(FiberCtl* f) noexcept;

// park_committed for a fiber on worker w (see tendril/detail/park.hpp). An
// interruptible park with a scope deadline arms the timer in the
// interrupting mode (FiberCtl::timer_interrupts): it runs the Interrupt.
class Worker;
void park_fiber_committed(Worker* w, FiberCtl* self, WaitFor what, bool (*commit)(void*) noexcept, void* arg,
                          Interrupt* interrupt) noexcept;

// The Interrupt of a park on a Waiter: claims it as the timer would.
struct WaiterInterrupt : Interrupt {
  explicit WaiterInterrupt(Waiter& w) noexcept;
  Waiter* waiter;
};

}  // namespace tendril::detail
