// tendril::CondVar: a condition variable for tendril::Mutex.
//
//   tendril::Mutex m;
//   tendril::CondVar cv;
//   bool ready = false;
//   // consumer fiber:
//   std::unique_lock<tendril::Mutex> lk(m);
//   cv.wait(lk, [&] { return ready; });
//   // producer fiber:
//   { std::lock_guard<tendril::Mutex> g(m); ready = true; }
//   cv.notify_one();
//
// Same contract as std::condition_variable: wait() atomically releases the
// lock and parks, and re-acquires the lock before returning. Wake-ups are FIFO
// and there are no spurious wake-ups from tendril itself, but use the predicate
// forms anyway. The lock must be held by the caller (wait on an unlocked
// unique_lock throws std::system_error(operation_not_permitted)). Works from
// fibers and plain OS threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "tendril/detail/park.hpp"
#include "tendril/mutex.hpp"

namespace tendril {

class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void notify_one() noexcept;
  void notify_all() noexcept;

  void wait(std::unique_lock<Mutex>& lock) { wait_until_steady(lock, nullptr); }
  template <class Pred>
  void wait(std::unique_lock<Mutex>& lock, Pred pred) {
    while (!pred()) wait(lock);
  }

  template <class Clock, class Duration>
  std::cv_status wait_until(std::unique_lock<Mutex>& lock,
                            const std::chrono::time_point<Clock, Duration>& t) {
    const detail::Deadline d = to_steady(t);
    return wait_until_steady(lock, &d) ? std::cv_status::no_timeout : std::cv_status::timeout;
  }
  template <class Clock, class Duration, class Pred>
  bool wait_until(std::unique_lock<Mutex>& lock,
                  const std::chrono::time_point<Clock, Duration>& t, Pred pred) {
    while (!pred()) {
      if (wait_until(lock, t) == std::cv_status::timeout) return pred();
    }
    return true;
  }
  template <class Rep, class Period>
  std::cv_status wait_for(std::unique_lock<Mutex>& lock,
                          const std::chrono::duration<Rep, Period>& d) {
    return wait_until(lock, std::chrono::steady_clock::now() +
                                std::chrono::ceil<std::chrono::steady_clock::duration>(d));
  }
  template <class Rep, class Period, class Pred>
  bool wait_for(std::unique_lock<Mutex>& lock, const std::chrono::duration<Rep, Period>& d,
                Pred pred) {
    return wait_until(lock,
                      std::chrono::steady_clock::now() +
                          std::chrono::ceil<std::chrono::steady_clock::duration>(d),
                      std::move(pred));
  }

 private:
  template <class Clock, class Duration>
  static detail::Deadline to_steady(const std::chrono::time_point<Clock, Duration>& t) {
    if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
      return std::chrono::time_point_cast<std::chrono::steady_clock::duration>(t);
    } else {
      return std::chrono::steady_clock::now() +
             std::chrono::ceil<std::chrono::steady_clock::duration>(t - Clock::now());
    }
  }
  // Returns false on timeout.
  bool wait_until_steady(std::unique_lock<Mutex>& lock, const detail::Deadline* deadline);

  detail::SpinLock queue_lock_;
  detail::WaitQueue waiters_;
};

}  // namespace tendril
