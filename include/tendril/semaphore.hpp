// tendril::Semaphore: a counting semaphore that parks fibers.
//
//   tendril::Semaphore slots(8);     // at most 8 concurrent backend calls
//   slots.acquire();
//   call_backend();
//   slots.release();
//
// acquire() takes one unit, parking while none is available; release(n) adds n
// units and wakes waiters in FIFO order. try_acquire() never parks;
// try_acquire_for/until park at most until the deadline. Counts are
// std::int64_t; a negative initial count or release(n) with n < 0, or a count
// that would overflow, throws std::invalid_argument.
#pragma once

#include <chrono>
#include <cstdint>

#include "tendril/detail/park.hpp"

namespace tendril {

class Semaphore {
 public:
  explicit Semaphore(std::int64_t initial = 0);
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  void acquire();
  bool try_acquire() noexcept;
  template <class Rep, class Period>
  bool try_acquire_for(const std::chrono::duration<Rep, Period>& d) {
    return try_acquire_until(std::chrono::steady_clock::now() +
                             std::chrono::ceil<std::chrono::steady_clock::duration>(d));
  }
  bool try_acquire_until(std::chrono::steady_clock::time_point deadline);
  void release(std::int64_t n = 1);
  // The units available now (a snapshot).
  std::int64_t available() const noexcept;

 private:
  bool acquire_until(const detail::Deadline* deadline);

  mutable detail::SpinLock lock_;
  std::int64_t count_;
  detail::WaitQueue waiters_;
};

}  // namespace tendril
