// Internal: a lock-free set of parked waiters that are all woken together.
// Not part of the public API; Channel<T> parks operations here on the rare
// path where the ring cell they drew is still busy with an earlier lap.
//
// Why wake-all rather than a FIFO: a waiter is published with one atomic push
// (so it can be the commit step of park_committed) and the waker needs one
// atomic exchange; neither side ever unlinks a single node, so there is no ABA
// and no lock. Woken waiters re-check their own condition and park again if it
// still does not hold; this path only runs when more operations are in flight
// on one channel than its ring has cells.
//
// A fiber's waiter here is its own (OwnWaiter, in its control block), which
// it parks on again right after it is woken. That is safe because a waiter
// is woken only by the walk that took it off the list (an interrupt runs a
// walk too; no timer claims it), and the walk reads the waiter's link
// before its claim and wake, its last touches.
#pragma once

#include <atomic>

#include "tendril/detail/park.hpp"

namespace tendril::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Waiting for another party to finish a step of a few dozen instructions (a
// cell in "resuming"): pause first; past a few dozen rounds, give the CPU up,
// since the other party may have been preempted by the kernel and spinning
// on would only delay it.
class Backoff {
 public:
  void pause() noexcept {
    if (++rounds_ < kSpinRounds) {
      cpu_relax();
    } else {
      yield_cpu();
    }
  }

 private:
  static constexpr unsigned kSpinRounds = 64;
  static void yield_cpu() noexcept;
  unsigned rounds_ = 0;
};

class TurnWaiters {
 public:
  // Publishes `w`. After this returns `w` may already have been woken.
  void push(Waiter& w) noexcept;
  // Wakes every waiter pushed before this call. The load is sequentially
  // consistent on purpose: a waker makes its condition true with an atomic
  // RMW and then calls this, a waiter pushes and then re-checks the condition,
  // so at least one of them sees the other (no lost wake-up).
  void wake_all() noexcept {
    if (head_.load(std::memory_order_seq_cst) != nullptr) wake_all_slow();
  }

 private:
  void wake_all_slow() noexcept;
  std::atomic<Waiter*> head_{nullptr};
};

}  // namespace tendril::detail
