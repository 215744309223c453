#include "tendril/wait_group.hpp"

#include <limits>
#include <stdexcept>

#include "tendril/detail/park.hpp"

namespace tendril {

struct WaitGroup::State {
  detail::SpinLock lock;
  std::int64_t count = 0;
  detail::WaitQueue waiters;
};

WaitGroup::WaitGroup() : state_(std::make_shared<State>()) {}

void WaitGroup::add(std::int64_t n) {
  State& s = *state_;
  detail::WaitQueue woken;
  s.lock.lock();
  const std::int64_t next = s.count + n;
  if (next < 0 || (n > 0 && next < s.count)) {
    s.lock.unlock();
    throw std::logic_error(next < 0 ? "tendril::WaitGroup: counter would go negative"
                                    : "tendril::WaitGroup: counter would overflow");
  }
  s.count = next;
  if (next == 0) {
    while (detail::Waiter* w = s.waiters.claim_front()) woken.push_back(*w);
  }
  s.lock.unlock();
  while (detail::Waiter* w = woken.pop_front()) detail::wake(*w);
}

void WaitGroup::done() { add(-1); }

void WaitGroup::wait() const {
  State& s = *state_;
  s.lock.lock();
  if (s.count == 0) {
    s.lock.unlock();
    return;
  }
  detail::OwnWaiter own;  // unlinked by the waker, or below before anything else
  detail::Waiter& w = *own;
  s.waiters.push_back(w);
  if (detail::park(w, s.lock, WaitReason::wait_group)) return;
  s.lock.lock();  // interrupted by the fiber's scope
  s.waiters.remove(w);
  s.lock.unlock();
  detail::throw_if_interrupted(nullptr, "tendril::WaitGroup::wait");
}

std::int64_t WaitGroup::count() const noexcept {
  State& s = *state_;
  s.lock.lock();
  const std::int64_t n = s.count;
  s.lock.unlock();
  return n;
}

}  // namespace tendril
