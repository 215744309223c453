// Internal: how tendril's blocking primitives park and wake their callers.
// Not part of the public API; included by public templates such as Channel<T>.
//
// A primitive keeps its waiters in a WaitQueue guarded by its own SpinLock.
// A caller that must wait links a Waiter into the queue (the fiber's own, in
// its control block, where the wait allows it: see fiber_waiter(); otherwise
// one on the caller's stack) and calls park(), which gives the lock up only
// once it is safe to be woken: for a fiber, after its context has been saved
// (so a waker on another worker cannot resume a half-switched fiber); for a
// plain OS thread, before it sleeps on a futex. A waker claims a waiter
// (claim() fails if the waiter has already timed out), hands it whatever it
// waits for, and then wakes it.
//
// Channel<T> takes no lock: a waiter is published by the one CAS that puts it
// into a ring cell, as park_committed's commit step (see channel.hpp).
//
// Where Waiters live: the fiber's own (FiberCtl::waiter) for every wait that
// links one Waiter at a time: WaitGroup, Mutex, Semaphore, CondVar, Scope
// join, interruptible sleep, the epoll readiness wait, and Channel send /
// recv (parked in a cell or waiting for a cell's lap). A fiber's join and a
// plain sleep link none (the FiberCtl itself is published). On the stack:
// select (one Waiter that all its cases' registrations reach at once), a
// plain thread's waits (OwnWaiter), and blocking(), whose call record (with
// its Waiter) is on the stack or, when interruptible, on the heap, where the
// pool thread may still claim it after the fiber stopped waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "tendril/detail/wait_reason.hpp"

namespace tendril::detail {

struct FiberCtl;

// A test-and-test-and-set lock for critical sections of a few dozen
// instructions. It never parks; after a short spin it yields the CPU, so a
// holder descheduled by the kernel does not make waiters burn a time slice.
class SpinLock {
 public:
  bool try_lock() noexcept {
    return !held_.load(std::memory_order_relaxed) &&
           !held_.exchange(true, std::memory_order_acquire);
  }
  void lock() noexcept {
    if (try_lock()) return;
    lock_contended();
  }
  void unlock() noexcept { held_.store(false, std::memory_order_release); }

 private:
  void lock_contended() noexcept;
  std::atomic<bool> held_{false};
};

struct Waiter {
  enum : std::uint32_t { kWaiting = 0, kClaimed = 1, kTimedOut = 2 };

  FiberCtl* fiber = nullptr;            // nullptr: a plain OS thread
  std::atomic<std::uint32_t> state{kWaiting};
  std::atomic<std::uint32_t> woken{0};  // futex word for thread waiters
  Waiter* next = nullptr;
  Waiter* prev = nullptr;
  bool linked = false;                  // guarded by the primitive's lock
  void* slot = nullptr;                 // what a channel hands over
  bool ok = false;                      // outcome a waker reports (channel: value delivered)
  std::int64_t count = 0;               // what a semaphore waiter asks for; a WaitGroup waiter's generation
  // Where a channel value waits for the other party when its type fits
  // (channel_state.hpp: handoff_fits): a sender builds it here for a parked
  // receiver, and a parked sender moves its own here for the receiver to
  // take. Not on the parked fiber's stack, so the other party touches only
  // the dense record and never brings back the pages of a compacted stack.
  // Part of what was the record's padding (see the size check in
  // runtime/sched/fiber_ctl.hpp).
  static constexpr std::size_t kHandoffBytes = 32, kHandoffAlign = 16;
  alignas(kHandoffAlign) unsigned char handoff[kHandoffBytes];

  Waiter() noexcept;                    // binds to the calling fiber or thread
  explicit Waiter(FiberCtl* f) noexcept : fiber(f) {}  // bound to `f` (a fiber's own, see OwnWaiter)
  Waiter(const Waiter&) = delete;
  Waiter& operator=(const Waiter&) = delete;
};

// FIFO of waiters; every operation requires the owning primitive's lock.
class WaitQueue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  Waiter* front() const noexcept { return head_; }
  void push_back(Waiter& w) noexcept {
    w.next = nullptr;
    w.prev = tail_;
    if (tail_ != nullptr) tail_->next = &w; else head_ = &w;
    tail_ = &w;
    w.linked = true;
  }
  void remove(Waiter& w) noexcept {
    if (!w.linked) return;
    if (w.prev != nullptr) w.prev->next = w.next; else head_ = w.next;
    if (w.next != nullptr) w.next->prev = w.prev; else tail_ = w.prev;
    w.next = w.prev = nullptr;
    w.linked = false;
  }
  Waiter* pop_front() noexcept {
    Waiter* w = head_;
    if (w != nullptr) remove(*w);
    return w;
  }
  // Unlinks and claims waiters from the front until one is still waiting;
  // waiters that already timed out are skipped (they clean up after
  // themselves). Returns the claimed waiter or nullptr.
  Waiter* claim_front() noexcept;

 private:
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
};

using Deadline = std::chrono::steady_clock::time_point;

// ---- Interruption (tendril::Scope: deadlines and cancellation)
//
// A fiber spawned by a Scope carries that scope's deadline and cancellation.
// Its parks are interruptible unless it is inside this_fiber::NoCancel or the
// primitive is not a cancellation point (Mutex). An interruptible park
//   - waits at most until the earlier of its own deadline and the scope's
//     (the timer already ends timed waits: a scope deadline is one more);
//   - publishes an Interrupt (on its own stack) for as long as it is parked.
//     Scope::cancel() runs `fn` on the cancelling thread while the parked
//     fiber cannot get past its unpublish step, so the Interrupt and anything
//     it points to are alive. `fn` must end the wait the way a timeout does
//     (claim the waiter with kTimedOut and ready the fiber) or arrange for it
//     to end (an io_uring op: an async cancel on the op's ring), and must
//     never block;
//   - ends, when interrupted, through the primitive's own timed-out path
//     (relock, unlink), after which the primitive calls
//     throw_if_interrupted() to turn the early end into an exception.
// A cancel that lands before the Interrupt is published is not lost: the
// park reads the scope's flag after publishing (seq_cst on both sides) and
// interrupts itself.
struct Interrupt {
  void (*fn)(Interrupt* self, FiberCtl* fiber) noexcept;
};

enum class Cancellable : bool { no, yes };

// The calling fiber's scope deadline (steady ticks), INT64_MAX if none or if
// its parks are not interruptible now (no scope, NoCancel, a plain thread).
std::int64_t interrupt_deadline() noexcept;
// What an interruptible park of the caller should report instead of its own
// outcome: timed_out if the scope's deadline has passed and was no later than
// `own` (the operation's own deadline, nullptr: none); else
// operation_canceled if its scope was cancelled; otherwise 0 (an own
// timeout, or no scope).
int interrupt_error(const Deadline* own) noexcept;
// Throws std::system_error(interrupt_error(own), `what`) when it is not 0.
void throw_if_interrupted(const Deadline* own, const char* what);

// Parks the caller, which has linked `w` into a queue guarded by `lock` and
// holds `lock`. Returns with `lock` NOT held: true once woken by wake(w), false
// if `deadline` (when given) passed first or the fiber's scope interrupted the
// park (see above; only when `cancellable`), in which case the caller must
// take the lock again, unlink `w` if it is still linked, and call
// throw_if_interrupted(deadline, ...). `what` is recorded in a parking
// fiber's park record (the fiber dump reports it).
bool park(Waiter& w, SpinLock& lock, WaitFor what, const Deadline* deadline = nullptr,
          Cancellable cancellable = Cancellable::yes);

// Parks the caller until wake(w), for waits whose registration is a single
// atomic step rather than a locked queue. `commit(arg)` publishes `w` (so a
// waker can find it) and runs only once it is safe to be woken: for a fiber,
// after its context is saved. If commit returns false there is nothing to wait
// for and the caller continues at once. With an `interrupt`, an interruptible
// fiber publishes it after a successful commit (see above); its `fn` must
// withdraw `w` where commit published it, or leave it to a waker that got
// there first.
//
// With a `deadline` the wait also ends then: the timer (a futex timeout for a
// thread) claims `w` with kTimedOut (w.state must be kWaiting once commit has
// published it) and resumes the caller, as park() does; an interruptible
// fiber's scope deadline is then armed the same way (the earlier wins), and
// the caller tells the two apart with interrupt_error(deadline).
void park_committed(Waiter& w, WaitFor what, bool (*commit)(void* arg) noexcept, void* arg,
                    Interrupt* interrupt = nullptr, const Deadline* deadline = nullptr);
// Whether the caller's parks are interruptible now (a scoped fiber outside
// NoCancel); park_committed callers use it to skip building an Interrupt.
bool interruptible() noexcept;

// Claims a waiter; false if it timed out first (then leave it alone).
inline bool claim(Waiter& w) noexcept {
  std::uint32_t expected = Waiter::kWaiting;
  return w.state.compare_exchange_strong(expected, Waiter::kClaimed, std::memory_order_acq_rel);
}

// For a waker that claims a batch of waiters before it wakes them
// (CondVar::notify_all): the claimed fiber counts as runnable from
// here on (ParkRecord::readied), not from when wake() reaches it, which for
// the last of a million waiters is a second later; meanwhile an idle worker
// would compact its stack, only for it to be restored when it runs.
void note_claimed_for_wake(Waiter& w) noexcept;

// Wakes a claimed waiter. After this call `w` may no longer exist. A woken
// fiber runs next on the waker's worker (or goes to the run queues when the
// waker is not a fiber).
void wake(Waiter& w) noexcept;

// The calling fiber's own Waiter, reset for a new wait, or nullptr on a plain
// thread. It lives in the fiber's control block, with the rest of what a
// waker touches (dense, off the stack), so a wake does not touch the parked
// fiber's stack page. A fiber has one, and the next wait resets it, so a wait
// may use it only if, when its park returns, nobody links, claims or writes it
// any more: every waker, timer and Interrupt that can reach it has made its
// last touch (wake(), or a claim that failed under the primitive's lock)
// before the fiber gets past the park and its timed-out cleanup. A wait that
// links several Waiters (select), or one that another party may still claim
// after the fiber stopped waiting (an abandoned blocking() call), keeps its
// own.
Waiter* fiber_waiter() noexcept;

// The Waiter of one such wait of the caller: the fiber's own, or one on this
// frame for a plain thread.
class OwnWaiter {
 public:
  OwnWaiter() noexcept : w_(fiber_waiter()) {
    if (w_ == nullptr) w_ = &thread_.emplace();
  }
  OwnWaiter(const OwnWaiter&) = delete;
  OwnWaiter& operator=(const OwnWaiter&) = delete;
  Waiter& operator*() const noexcept { return *w_; }

 private:
  Waiter* w_;
  std::optional<Waiter> thread_;
};

}  // namespace tendril::detail
