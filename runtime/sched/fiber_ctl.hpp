// The fiber control block. It lives at the top of the fiber's own stack (in the
// page that is mapped at spawn), so spawning allocates nothing but the stack.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>

#include "runtime/context/switch.hpp"
#include "runtime/stack/stack.hpp"
#include "tendril/detail/park.hpp"
#include "tendril/fiber.hpp"

namespace tendril::detail {

struct alignas(64) FiberCtl {
  Context ctx;
  FiberCtl* next = nullptr;  // intrusive link for the global queue
  FiberId id = 0;
  StackSlot stack;

  // The callable, moved onto the stack just below this block.
  const ClosureOps* ops = nullptr;
  void* closure = nullptr;

  // Two references: the Fiber handle's (dropped by join/detach) and the
  // running fiber's (dropped after its last switch away). The stack is released
  // with the last one.
  std::atomic<std::uint32_t> refs{2};
  // One word settles the race between finishing, joining and detaching:
  // kRunning, kDone, kDetached, or who waits for it: a joining fiber's
  // FiberCtl* tagged with kJoinerIsFiber, or a plain thread's Waiter*
  // (8-aligned, so the tag bit is clear).
  static constexpr std::uintptr_t kRunning = 0, kDone = 1, kDetached = 2, kJoinerIsFiber = 4;
  std::atomic<std::uintptr_t> join_state{kRunning};
  std::exception_ptr error;    // set before kDone is published; read by the joiner

  // Timer state (see timer_heap.hpp): the heap it is in and its index there.
  struct TimerHeap* timer_heap = nullptr;
  std::size_t timer_index = 0;
  std::int64_t timer_deadline = 0;  // steady_clock ticks
  Waiter* timer_waiter = nullptr;   // claimed by the timer when it fires

  char name[32] = {};
};

static_assert(alignof(Waiter) >= 8 && alignof(FiberCtl) > FiberCtl::kJoinerIsFiber,
              "join_state tags a joining fiber's pointer with kJoinerIsFiber");

}  // namespace tendril::detail
