// The seam between the scheduler and the stack subsystem.
//
// The scheduler only ever asks for a stack, gives one back, and tells the stack
// subsystem when a worker switches to a fiber. Everything else (arena layout, page
// pools, userfaultfd, guard handling, caching) lives behind these calls in
// runtime/stack/ and can be replaced without touching runtime/sched/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tendril::detail {

// One fiber stack. The usable range is [lo, hi); stacks grow down from hi. At
// least the page just below hi is mapped when allocate() returns, so the
// scheduler may put the fiber's control block and first frame there.
struct StackSlot {
  char* lo = nullptr;
  char* hi = nullptr;
  std::size_t limit = 0;     // hi - lo
  std::uint32_t index = 0;   // provider-private identity (slot number)
};

struct StackConfig {
  std::size_t default_limit = 256 * 1024;
  unsigned workers = 1;
  std::string mode;  // "", "uffd" or "kernel" (TENDRIL_STACK_MODE)
};

struct StackCounters {
  std::string mode;                  // "uffd" or "kernel" ("simple" for the issue-2 provider)
  std::uint64_t stack_faults = 0;    // faults that grew a stack
  std::uint64_t stack_pages_mapped = 0;
  std::uint64_t pool_refills = 0;
  std::uint64_t pool_pages = 0;
  // Added by issue 3: pages still resident in released slots kept for reuse
  // (each free slot keeps its top page so the next allocate costs no fault).
  std::uint64_t cached_pages = 0;
};

// Lifetime: init() before any worker starts, shutdown() after all have stopped.
void stack_init(const StackConfig& config);
void stack_shutdown() noexcept;

// Called on worker `worker` (0-based). Throws std::system_error / std::bad_alloc
// when no stack can be had; never returns a half-usable slot.
StackSlot stack_allocate(unsigned worker, std::size_t limit);
// Called on worker `worker` after the fiber using `slot` has switched away for
// the last time; nothing runs on it any more.
void stack_release(unsigned worker, const StackSlot& slot) noexcept;

// Records who owns a slot so that an overflow diagnostic can name the fiber
// without reading the stack itself (the name is copied, truncated to 31 chars).
void stack_set_owner(const StackSlot& slot, std::uint64_t fiber_id, const char* name) noexcept;

// Called by worker `worker` on every switch, just before it resumes the fiber on
// `next` (nullptr when it switches to its own scheduler context). Must be cheap
// when there is nothing to do: it is on the context-switch path.
void stack_on_switch(unsigned worker, const StackSlot* next) noexcept;

// Deepest extent the stack in `slot` has reached, in bytes from hi (at least one
// page). Called by the fiber that owns the slot.
std::size_t stack_high_water(const StackSlot& slot) noexcept;

StackCounters stack_counters();

// Added by issue 3. Called once on each worker thread before it runs any fiber
// (after stack_init). Gives the thread an alternate signal stack so a stack
// overflow in "kernel" mode can still be reported, and places worker `worker`'s
// userfaultfd handler thread on the same CPU(s) as the calling thread (a
// same-CPU hand-off is several times cheaper than a cross-CPU one). Threads
// that never call it still work; an overflow on them in kernel mode dies with a
// plain SIGSEGV instead of the diagnostic.
void stack_thread_init(unsigned worker) noexcept;

}  // namespace tendril::detail
