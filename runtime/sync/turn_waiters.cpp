// Wake-all waiter set for Channel cells (see include/tendril/detail/turn_waiters.hpp).
#include "tendril/detail/turn_waiters.hpp"

#include <sched.h>

namespace tendril::detail {

void Backoff::yield_cpu() noexcept { sched_yield(); }

void TurnWaiters::push(Waiter& w) noexcept {
  Waiter* head = head_.load(std::memory_order_relaxed);
  do {
    w.next = head;
  } while (!head_.compare_exchange_weak(head, &w, std::memory_order_seq_cst,
                                        std::memory_order_relaxed));
}

void TurnWaiters::wake_all_slow() noexcept {
  Waiter* w = head_.exchange(nullptr, std::memory_order_seq_cst);
  while (w != nullptr) {
    // Read before the claim: once woken, a waiter may vanish or (a fiber's
    // own) be pushed again, here or on another list.
    Waiter* next = w->next;
    if (claim(*w)) wake(*w);
    w = next;
  }
}

}  // namespace tendril::detail
