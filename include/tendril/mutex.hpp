// tendril::Mutex: a mutual-exclusion lock that parks fibers, not threads.
//
//   tendril::Mutex m;
//   long counter = 0;
//   ... in many fibers:
//   { std::lock_guard<tendril::Mutex> g(m); ++counter; }
//
// Meets the Lockable requirements, so it works with std::lock_guard,
// std::unique_lock and std::scoped_lock. An uncontended lock/unlock is one
// atomic operation each. Under contention the lock is handed directly to the
// longest waiter (FIFO), so no waiter starves. It may be used from fibers and
// from plain OS threads alike (a thread waiting for it sleeps on a futex).
// Not recursive: locking it twice from the same fiber deadlocks, as with
// std::mutex; unlocking a mutex that is not locked is undefined.
#pragma once

#include <atomic>
#include <cstdint>

#include "tendril/detail/park.hpp"

namespace tendril {

class Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() {
    std::uint32_t expected = kUnlocked;
    if (!state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire)) lock_slow();
  }
  bool try_lock() noexcept {
    std::uint32_t expected = kUnlocked;
    return state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire);
  }
  void unlock() noexcept {
    std::uint32_t expected = kLocked;
    if (!state_.compare_exchange_strong(expected, kUnlocked, std::memory_order_release)) unlock_slow();
  }

 private:
  enum : std::uint32_t { kUnlocked = 0, kLocked = 1, kLockedWithWaiters = 2 };
  void lock_slow();
  void unlock_slow() noexcept;

  std::atomic<std::uint32_t> state_{kUnlocked};
  detail::SpinLock queue_lock_;
  detail::WaitQueue waiters_;
};

}  // namespace tendril
