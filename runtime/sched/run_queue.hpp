// A worker's local run queue: a bounded ring that its owner pushes to and pops
// from without locks, and that other workers steal half of (as Go's runq).
// head is advanced by CAS (owner pops and thieves race for it); tail is written
// only by the owner.
#pragma once

#include <atomic>
#include <cstdint>

namespace tendril::detail {

struct FiberCtl;

class RunQueue {
 public:
  static constexpr std::uint32_t kCapacity = 256;

  // Owner only. False when full: the caller moves work to the global queue.
  bool push(FiberCtl* f) noexcept {
    const std::uint32_t h = head_.load(std::memory_order_acquire);
    const std::uint32_t t = tail_.load(std::memory_order_relaxed);
    if (t - h >= kCapacity) return false;
    slots_[t % kCapacity].store(f, std::memory_order_relaxed);
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

  // Owner only.
  FiberCtl* pop() noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t t = tail_.load(std::memory_order_relaxed);
      if (t == h) return nullptr;
      FiberCtl* f = slots_[h % kCapacity].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + 1, std::memory_order_acq_rel)) return f;
    }
  }

  // Owner only: takes up to `max` fibers from the head (oldest first), for
  // moving them to the global queue when the ring is full.
  std::uint32_t pop_batch(FiberCtl** out, std::uint32_t max) noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t t = tail_.load(std::memory_order_relaxed);
      std::uint32_t n = t - h;
      if (n > max) n = max;
      if (n == 0) return 0;
      for (std::uint32_t i = 0; i < n; ++i)
        out[i] = slots_[(h + i) % kCapacity].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + n, std::memory_order_acq_rel)) return n;
    }
  }

  // Any thread: moves half of this queue into `out` (capacity kCapacity / 2).
  std::uint32_t steal_half(FiberCtl** out) noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t t = tail_.load(std::memory_order_acquire);
      std::uint32_t n = t - h;
      n -= n / 2;
      if (n == 0 || n > kCapacity / 2) {
        if (n == 0) return 0;
        h = head_.load(std::memory_order_acquire);  // torn read of a moving queue
        continue;
      }
      for (std::uint32_t i = 0; i < n; ++i)
        out[i] = slots_[(h + i) % kCapacity].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + n, std::memory_order_acq_rel)) return n;
    }
  }

  // Any thread: takes the oldest fiber (a thief from another NUMA node takes
  // one at a time: the rest stay near their stacks).
  FiberCtl* steal_one() noexcept {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t t = tail_.load(std::memory_order_acquire);
      const std::uint32_t n = t - h;
      if (n == 0) return nullptr;
      if (n > kCapacity) {  // torn read of a moving queue
        h = head_.load(std::memory_order_acquire);
        continue;
      }
      FiberCtl* f = slots_[h % kCapacity].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + 1, std::memory_order_acq_rel)) return f;
    }
  }

  // Owner only: the fiber i places behind the head, or nullptr. A thief may
  // take it meanwhile, so it is a hint (for prefetching), not a claim.
  FiberCtl* peek(std::uint32_t i) const noexcept {
    const std::uint32_t h = head_.load(std::memory_order_relaxed);
    if (tail_.load(std::memory_order_relaxed) - h <= i) return nullptr;
    return slots_[(h + i) % kCapacity].load(std::memory_order_relaxed);
  }

  std::uint32_t size() const noexcept {
    return tail_.load(std::memory_order_acquire) - head_.load(std::memory_order_acquire);
  }

 private:
  alignas(64) std::atomic<std::uint32_t> head_{0};
  alignas(64) std::atomic<std::uint32_t> tail_{0};
  alignas(64) std::atomic<FiberCtl*> slots_[kCapacity] = {};
};

}  // namespace tendril::detail
