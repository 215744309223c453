#include "tendril/mutex.hpp"

namespace tendril {

void Mutex::lock_slow() {
  // A holder on another worker usually lets go within a few hundred
  // nanoseconds; a short spin saves two context switches.
  for (int i = 0; i < 32; ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (state_.load(std::memory_order_relaxed) == kUnlocked && try_lock()) return;
  }
  queue_lock_.lock();
  if (state_.exchange(kLockedWithWaiters, std::memory_order_acquire) == kUnlocked) {
    queue_lock_.unlock();
    return;
  }
  detail::OwnWaiter own;  // unlinked by unlock_slow before it wakes us
  detail::Waiter& w = *own;
  waiters_.push_back(w);
  detail::park(w, queue_lock_, WaitReason::mutex, nullptr, detail::Cancellable::no);
  // unlock_slow handed the lock to us.
}

void Mutex::unlock_slow() noexcept {
  queue_lock_.lock();
  detail::Waiter* next = waiters_.claim_front();
  if (next == nullptr) {
    state_.store(kUnlocked, std::memory_order_release);
    queue_lock_.unlock();
    return;
  }
  // Hand the lock over without releasing it, so no newcomer can barge in
  // ahead of a waiter (FIFO, starvation-free).
  state_.store(waiters_.empty() ? kLocked : kLockedWithWaiters, std::memory_order_release);
  queue_lock_.unlock();
  detail::wake(*next);
}

}  // namespace tendril
