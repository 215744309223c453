#include "tendril/condvar.hpp"

#include <system_error>

namespace tendril {

bool CondVar::wait_until_steady(std::unique_lock<Mutex>& lock, const detail::Deadline* deadline) {
  if (!lock.owns_lock())
    throw std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                            "tendril::CondVar::wait: the lock is not held");
  // Unlinked (by a notify, or below) before the mutex is taken again, which
  // may park on this same Waiter.
  detail::OwnWaiter own;
  detail::Waiter& w = *own;
  queue_lock_.lock();
  waiters_.push_back(w);
  // Enqueued before the mutex is released, so a notify that follows a state
  // change made under the mutex cannot miss us.
  lock.mutex()->unlock();
  const bool woken = detail::park(w, queue_lock_, WaitReason::condvar, deadline);
  if (!woken) {
    queue_lock_.lock();
    waiters_.remove(w);
    queue_lock_.unlock();
  }
  lock.mutex()->lock();
  if (!woken) detail::throw_if_interrupted(deadline, "tendril::CondVar::wait");
  return woken;
}

void CondVar::notify_one() noexcept {
  queue_lock_.lock();
  detail::Waiter* w = waiters_.claim_front();
  queue_lock_.unlock();
  if (w != nullptr) detail::wake(*w);
}

void CondVar::notify_all() noexcept {
  detail::WaitQueue woken;
  queue_lock_.lock();
  while (detail::Waiter* w = waiters_.claim_front()) {
    detail::note_claimed_for_wake(*w);
    woken.push_back(*w);
  }
  queue_lock_.unlock();
  while (detail::Waiter* w = woken.pop_front()) detail::wake(*w);
}

}  // namespace tendril
