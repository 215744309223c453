// A worker's timers: a binary min-heap of parked fibers ordered by deadline.
//
// Each fiber is in at most one heap at a time and records its index, so a
// fiber woken early (a condvar notified before its wait_for ran out) removes
// its own entry in O(log n). The heap has a lock because the fiber may resume
// on another worker, and idle workers fire the expired timers of busy ones;
// thieves only try_lock it.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "tendril/detail/park.hpp"

namespace tendril::detail {

struct FiberCtl;

struct TimerHeap {
  SpinLock lock;
  std::vector<FiberCtl*> heap;  // guarded by lock
  // Earliest deadline (steady_clock ticks), INT64_MAX when empty; read
  // without the lock to decide whether it is worth taking.
  std::atomic<std::int64_t> earliest{INT64_MAX};

  // Requires lock.
  void insert(FiberCtl* f) noexcept;
  void erase(FiberCtl* f) noexcept;
  // Requires lock. Pops one expired fiber, or nullptr.
  FiberCtl* pop_expired(std::int64_t now) noexcept;

 private:
  void sift_up(std::size_t i) noexcept;
  void sift_down(std::size_t i) noexcept;
  void place(std::size_t i, FiberCtl* f) noexcept;
  void publish_earliest() noexcept;
};

}  // namespace tendril::detail
