// WaitGroup: the counter is one atomic word, so done() from many fibers at
// once is a CAS, not a lock (a mass exit of 100k fibers each calling done()
// spent a sixth of its time on the lock's cache line). The lock guards only
// the waiter list and `gen`, and is taken by wait(), by the done() that
// brings the counter to zero, and by an add() that lifts it from zero.
//
// Which waiters a zero releases. A waiter records `gen` when it queues
// (Waiter::count: WaitGroup does not use it otherwise). The counter leaves
// zero only under the lock, which bumps `gen`. The thread whose CAS brought
// the counter to zero takes the lock after its CAS (once per chunk of
// waiters it releases); by then the group may have been reused (an add()
// lifted the counter and fibers queued to wait for the next zero). If the
// counter is still zero, every queued waiter is released; otherwise exactly
// those queued before the latest lift, which are those with a smaller `gen`
// (waiters queue in order, and gen only grows): a waiter that queued while
// the counter was positive and then saw a lift has seen a zero in between,
// and one that queued after the lift has not.
#include "tendril/wait_group.hpp"

#include <atomic>
#include <stdexcept>

#include "tendril/detail/park.hpp"

namespace tendril {

struct WaitGroup::State {
  std::atomic<std::int64_t> count{0};
  detail::SpinLock lock;
  std::int64_t gen = 0;  // (lock) how many times the counter left zero
  detail::WaitQueue waiters;  // (lock) in the order they queued, so by gen
};

namespace {

constexpr std::size_t kWakeChunk = 64;

[[noreturn]] void throw_bad_count(bool negative) {
  throw std::logic_error(negative ? "tendril::WaitGroup: counter would go negative"
                                  : "tendril::WaitGroup: counter would overflow");
}

}  // namespace

WaitGroup::WaitGroup() : state_(std::make_shared<State>()) {}

void WaitGroup::add(std::int64_t n) {
  State& s = *state_;
  std::int64_t old = s.count.load(std::memory_order_relaxed);
  std::int64_t next;
  for (;;) {
    if (__builtin_add_overflow(old, n, &next)) throw_bad_count(n < 0);
    if (next < 0) throw_bad_count(true);
    if (old == 0 && n > 0) {
      // A lift from zero: under the lock, with a new generation.
      s.lock.lock();
      if (s.count.compare_exchange_strong(old, next, std::memory_order_acq_rel)) {
        ++s.gen;
        s.lock.unlock();
        return;
      }
      s.lock.unlock();
      continue;
    }
    if (s.count.compare_exchange_weak(old, next, std::memory_order_acq_rel, std::memory_order_relaxed)) break;
  }
  if (next != 0 || n == 0) return;

  // This add brought the counter to zero: release who waited for it, a
  // chunk at a time. A million waiters take a second to walk (a cache miss
  // each); woken chunk by chunk, the first ones run on the other workers
  // while the rest are claimed. The rule is re-read for each chunk, which is
  // right because it does not depend on when it is applied (see the top).
  // A woken waiter may destroy the WaitGroup this was called on (one that
  // lives in its frame, reached by reference): the state is held here.
  const std::shared_ptr<State> hold = state_;
  for (;;) {
    detail::Waiter* chunk[kWakeChunk];
    std::size_t claimed = 0, popped = 0;
    s.lock.lock();
    const bool still_zero = s.count.load(std::memory_order_acquire) == 0;
    while (popped < kWakeChunk) {
      detail::Waiter* w = s.waiters.front();
      if (w == nullptr || (!still_zero && w->count >= s.gen)) break;
      s.waiters.pop_front();
      ++popped;
      if (detail::claim(*w)) chunk[claimed++] = w;
    }
    s.lock.unlock();
    for (std::size_t i = 0; i < claimed; ++i) detail::wake(*chunk[i]);
    if (popped < kWakeChunk) return;
  }
}

void WaitGroup::done() { add(-1); }

void WaitGroup::wait() const {
  State& s = *state_;
  if (s.count.load(std::memory_order_acquire) == 0) return;
  s.lock.lock();
  if (s.count.load(std::memory_order_acquire) == 0) {
    s.lock.unlock();
    return;
  }
  detail::OwnWaiter own;  // unlinked by the waker, or below before anything else
  detail::Waiter& w = *own;
  w.count = s.gen;
  s.waiters.push_back(w);
  if (detail::park(w, s.lock, WaitReason::wait_group)) return;
  s.lock.lock();  // interrupted by the fiber's scope
  s.waiters.remove(w);
  s.lock.unlock();
  detail::throw_if_interrupted(nullptr, "tendril::WaitGroup::wait");
}

std::int64_t WaitGroup::count() const noexcept { return state_->count.load(std::memory_order_acquire); }

}  // namespace tendril
