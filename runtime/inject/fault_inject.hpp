// Test-only fault injection on the system calls the runtime wraps. Tests
// install one hook (set_fault_hook) that decides, per call site, whether the
// call fails and with which errno; with no hook installed (always, outside
// the tests) each site costs one relaxed load and a predictable branch.
//
//   int fail_next_reserve(tendril::detail::FaultPoint p) noexcept {
//     return p == tendril::detail::FaultPoint::arena_reserve ? ENOMEM : 0;
//   }
//   tendril::detail::set_fault_hook(fail_next_reserve);
//   // ... a spawn that needs a new stack arena now throws std::system_error
//   tendril::detail::set_fault_hook(nullptr);
//
// The hook runs on whatever thread reaches the site, including the
// userfaultfd handler threads: it must not lock, allocate or touch fiber
// stacks (atomics only).
#pragma once

#include <atomic>

namespace tendril::detail {

enum class FaultPoint : unsigned {
  arena_reserve,    // mmap of a stack arena reservation (ENOMEM: RLIMIT_AS, vm.max_map_count)
  uffd_copy,        // UFFDIO_COPY in the stack fault handler (ENOMEM, EAGAIN)
  uring_sq_full,    // io_uring_get_sqe finds the submission queue full (any non-zero)
  uring_submit,     // io_uring_enter for a submission fails (EBUSY, EAGAIN)
  uring_create,     // io_uring_setup for a worker's ring (ENOMEM, EMFILE)
  epoll_create,     // epoll_create1 for a worker's poller (EMFILE, ENFILE, ENOMEM)
  socket,           // socket(2) (EMFILE, ENFILE)
  accept,           // accept4(2) (EMFILE, ENFILE)
  connect,          // connect(2) (EMFILE is not possible here; ENETUNREACH, ...)
  blocking_thread,  // starting a blocking() pool thread (EAGAIN)
  pipe,             // pipe2(2) for the runtime's own pipes, e.g. the dump signal's (EMFILE, ENFILE)
};

// 0: let the call run; else the errno it fails with.
using FaultHook = int (*)(FaultPoint) noexcept;

extern std::atomic<FaultHook> g_fault_hook;

inline int injected_fault(FaultPoint p) noexcept {
  const FaultHook h = g_fault_hook.load(std::memory_order_relaxed);
  return __builtin_expect(h != nullptr, false) ? h(p) : 0;
}

// Tests only: installs the hook, or removes it (nullptr).
void set_fault_hook(FaultHook hook) noexcept;

}  // namespace tendril::detail
