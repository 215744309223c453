#include "tendril/semaphore.hpp"

#include <cstdint>
#include <limits>
#include <stdexcept>

namespace tendril {

Semaphore::Semaphore(std::int64_t initial) : count_(initial) {
  if (initial < 0) throw std::invalid_argument("tendril::Semaphore: negative initial count");
}

bool Semaphore::try_acquire() noexcept {
  lock_.lock();
  // Waiters go first: a newcomer must not overtake a parked acquirer.
  const bool ok = count_ > 0 && waiters_.empty();
  if (ok) --count_;
  lock_.unlock();
  return ok;
}

bool Semaphore::acquire_until(const detail::Deadline* deadline) {
  lock_.lock();
  if (count_ > 0 && waiters_.empty()) {
    --count_;
    lock_.unlock();
    return true;
  }
  detail::OwnWaiter own;  // unlinked by release(), or below before anything else
  detail::Waiter& w = *own;
  waiters_.push_back(w);
  if (detail::park(w, lock_, WaitReason::semaphore, deadline)) return true;  // release() gave us a unit
  lock_.lock();
  waiters_.remove(w);
  lock_.unlock();
  detail::throw_if_interrupted(deadline, "tendril::Semaphore::acquire");
  return false;
}

void Semaphore::acquire() { acquire_until(nullptr); }

bool Semaphore::try_acquire_until(std::chrono::steady_clock::time_point deadline) {
  return acquire_until(&deadline);
}

void Semaphore::release(std::int64_t n) {
  if (n < 0) throw std::invalid_argument("tendril::Semaphore::release: negative count");
  detail::WaitQueue woken;
  lock_.lock();
  if (count_ > std::numeric_limits<std::int64_t>::max() - n) {
    lock_.unlock();
    throw std::invalid_argument("tendril::Semaphore::release: count would overflow");
  }
  count_ += n;
  while (count_ > 0) {
    detail::Waiter* w = waiters_.claim_front();
    if (w == nullptr) break;
    --count_;  // handed straight to the waiter
    woken.push_back(*w);
  }
  lock_.unlock();
  while (detail::Waiter* w = woken.pop_front()) detail::wake(*w);
}

std::int64_t Semaphore::available() const noexcept {
  lock_.lock();
  const std::int64_t n = count_;
  lock_.unlock();
  return n;
}

}  // namespace tendril
