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

#include "tendril/detail/counters.hpp"
#include "tendril/options.hpp"

namespace tendril::detail {

// One fiber stack. The usable range is [lo, hi); stacks grow down from hi. At
// least the page just below hi is mapped when allocate() returns, so the
// scheduler may put the fiber's callable and first frame there.
struct StackSlot {
  char* lo = nullptr;
  char* hi = nullptr;
  std::size_t limit = 0;     // hi - lo
  std::uint32_t index = 0;   // provider-private identity (slot number)
};

// Default memory budget of the free-stack cache (bytes of resident pages held
// by cached stacks); Options::stack_cache_bytes.
constexpr std::size_t kDefaultStackCacheBytes = std::size_t(64) << 20;

// The defaults are Options' defaults; the fields mirror Options (see
// options.hpp for what each means), which validates them.
struct StackConfig {
  std::size_t default_limit = 256 * 1024;
  unsigned workers = 1;
  std::string mode;  // "" (uffd where allowed), "uffd" or "kernel"
  // Budget of the NUMA-aware free-stack cache; 0 disables it (a released slot
  // then goes straight back to its arena with its top page).
  std::size_t cache_bytes = kDefaultStackCacheBytes;
  bool fill_move = false;                  // Options::stack_fill == "move"
  unsigned max_grow_pages = 16;            // Options::stack_grow_pages
  std::uint64_t burst_ns = 1000 * 1000;    // Options::stack_burst
  bool learn_depth = true;                 // Options::stack_learn_depth
  bool numa_check = false;                 // Options::stack_numa_check
  std::string place;                       // Options::stack_place: "", "owner" or "faulter"
  bool compact = false;                    // Options::compact_after != 0 (uffd mode only)
  bool defer = true;                       // Options::stack_defer
};

// The stack subsystem's part of `options` (already validated, environment
// applied), for `workers` worker indexes.
inline StackConfig stack_config(const Options& options, unsigned workers) {
  StackConfig c;
  c.default_limit = options.stack_limit;
  c.workers = workers;
  c.mode = options.stack_mode;
  c.cache_bytes = options.stack_cache_bytes;
  c.fill_move = options.stack_fill == "move";
  c.max_grow_pages = options.stack_grow_pages;
  c.burst_ns = std::uint64_t(options.stack_burst.count()) * 1000;
  c.learn_depth = options.stack_learn_depth;
  c.numa_check = options.stack_numa_check;
  c.place = options.stack_place;
  c.compact = options.compact_after.count() > 0;
  c.defer = options.stack_defer;
  return c;
}

struct StackCounters {
  std::string mode;                  // "uffd" or "kernel"
  std::uint64_t stack_faults = 0;    // faults that grew a stack
  std::uint64_t stack_pages_mapped = 0;
  std::uint64_t pool_refills = 0;
  std::uint64_t pool_pages = 0;
  // Pages still resident in free slots (each keeps at least its top page so
  // the next allocate costs no fault).
  std::uint64_t cached_pages = 0;
  // The cache's counters, named as in Stats (TENDRIL_STACK_CACHE_COUNTERS).
  // cached_pages above counts every resident page of a free slot,
  // stack_cache_pages the part of it held by the stack cache.
#define TENDRIL_STACK_COUNTER(storage, field, doc) std::uint64_t field = 0;
  TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_STACK_COUNTER)
#undef TENDRIL_STACK_COUNTER
  std::uint64_t cache_stacks = 0;    // gauge: stacks in the cache now
  bool compaction = false;           // idle-stack compaction is on
#define TENDRIL_STACK_COUNTER(storage, field, doc) std::uint64_t field = 0;
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_STACK_COUNTER)
#undef TENDRIL_STACK_COUNTER
};

// Lifetime: init() before any worker starts, shutdown() after all have stopped.
void stack_init(const StackConfig& config);
void stack_shutdown() noexcept;

// Called on worker `worker` (0-based). Throws std::system_error / std::bad_alloc
// when no stack can be had; never returns a half-usable slot.
StackSlot stack_allocate(unsigned worker, std::size_t limit);
// The same, for a fiber spawned at `site` (any stable
// address naming the spawn site: SpawnOptions::site, else the closure's
// ClosureOps). The subsystem remembers how deep stacks from each site grew and
// hands out a stack already mapped that deep. site == nullptr: no learning.
StackSlot stack_allocate(unsigned worker, std::size_t limit, const void* site);
// Deferred stacks: a fiber spawned on a worker may get its stack only when
// it first runs, so that the fibers queued behind a busy spawner hold no
// pages (skynet's parents spawn ten children each and most of them wait).
// stack_defer, on worker `worker`, promises such a fiber a slot of `limit`'s
// class in that worker's arena: false (nothing promised) when the arena has
// no room to keep, in which case the spawn allocates now and fails there if
// the arena is full. stack_allocate_deferred, on the worker that runs the
// fiber first, allocates from its own cache and arena as stack_allocate does
// and settles the promise made on `reserved_on`; false (the promise stands)
// when its own arena is full and it is not `reserved_on` (the fiber goes
// home, where the kept room is), or, with `cache_only`, when the cache has no
// stack: a switch may take a cached stack in passing, but a fresh slot costs
// system calls that must not run while the fiber switching away still holds
// the lock its park releases. On `reserved_on`, a stack that cannot be had
// (out of memory for ten seconds) stops the process with a message. A fiber
// that never runs gives its promise back with stack_cancel_deferred.
bool stack_defer(unsigned worker, std::size_t limit);
bool stack_allocate_deferred(unsigned worker, unsigned reserved_on, std::size_t limit, const void* site,
                             bool cache_only, StackSlot* out) noexcept;
void stack_cancel_deferred(unsigned reserved_on, std::size_t limit) noexcept;
// Fibers promised a stack and not yet given one (the gauge fibers_unstarted).
std::uint64_t stack_deferred_count() noexcept;

// Called on worker `worker` after the fiber using `slot` has switched away for
// the last time; nothing runs on it any more.
void stack_release(unsigned worker, const StackSlot& slot) noexcept;

// A hint from the scheduler that the fiber on `slot` runs soon and may end:
// fetches the side-table entries its release reads (a mass wake of fibers
// that each finish waited on them one by one). Never faults, never writes;
// a slot index that is stale by then is harmless.
void stack_prefetch_release(const StackSlot& slot) noexcept;

// Records who owns a slot so that an overflow diagnostic can name the fiber
// without reading the stack itself (the name is copied, truncated to 31 chars),
// and where its control block is (`ctl`, opaque here), so that the debug tools
// that walk live slots find it (LiveStack::ctl, the gdb extension).
void stack_set_owner(const StackSlot& slot, std::uint64_t fiber_id, const char* name,
                     const void* ctl = nullptr) noexcept;

// Called by worker `worker` on every switch, just before it resumes the fiber on
// `next` (nullptr when it switches to its own scheduler context). `parking` is
// the stack of the fiber switching away when it will run again (it parks or
// yields; nullptr when it finished or the switch is from the scheduler
// context): the call runs on that stack. Must be cheap when there is nothing
// to do: it is on the context-switch path.
void stack_on_switch(unsigned worker, const StackSlot* parking, const StackSlot* next) noexcept;

// Called by worker `worker` when it has taken, from a worker of another NUMA
// node, a fiber that is not running (its saved stack pointer is `sp`): moves
// the stack's resident pages to `worker`'s node, so the fiber runs on local
// pages and its release finds them local. A few microseconds per stolen
// fiber, paid only on cross-node steals; nothing on a single-node machine.
void stack_follow_to_node(unsigned worker, const StackSlot& slot, const void* sp) noexcept;

// ---- idle-stack compaction (uffd mode; design at the top of arena.cpp) ------
// True when compaction was asked for (StackConfig::compact) and the stack
// mode supports it (userfaultfd with UFFDIO_MOVE); false in kernel mode.
bool stack_compaction_enabled() noexcept;
// Called by worker `worker` for a fiber that is parked and switched out (its
// saved stack pointer is `sp`) and that no worker can switch into until this
// returns: copies the used bytes of the slot (its top page included) into a
// buffer sized to them and gives those pages back. `compacted` if it did; `retry`
// if it could not right now (another worker is compacting a stack of the
// same owner); `skipped` if there is nothing worth doing or it cannot (pages
// not resident or pinned, out of memory). The stack is untouched unless
// `compacted`.
enum class CompactResult { compacted, retry, skipped };
CompactResult stack_compact(unsigned worker, const StackSlot& slot, const void* sp) noexcept;
// Called by a worker after a batch of stack_compact: gives back the pages
// the batch's compactions left in the staging areas (copied out, dead), one
// MADV_DONTNEED per staging area instead of one per compaction. An area
// another worker holds is left to it (it calls this after its own batch).
void stack_release_staged_pages() noexcept;
// Called by worker `worker` before it switches into a fiber whose stack
// stack_compact compacted: puts the pages back with their content (or waits
// for the fault handler that is already doing so) and frees the buffer.
void stack_restore(unsigned worker, const StackSlot& slot) noexcept;

// Deepest extent the stack in `slot` has reached, in bytes from hi (at least one
// page). Called by the fiber that owns the slot.
std::size_t stack_high_water(const StackSlot& slot) noexcept;

StackCounters stack_counters();

// One live stack as the debug tools see it (see stack_for_each_live).
struct LiveStack {
  StackSlot slot;
  std::uint64_t fiber_id = 0;    // as stack_set_owner recorded it; 0 until then
  const void* ctl = nullptr;     // as stack_set_owner recorded it (may be a previous owner's)
  std::uint32_t mapped_pages = 0;
  std::size_t high_water = 0;    // bytes from hi: deepest fault (uffd) or lowest resident page (kernel)
};
// Calls `fn` for every slot that holds a fiber now (allocated, not yet
// released). Reads only the side tables and, in kernel mode, mincore(2); never
// the stacks. Any thread may call it while workers run: a slot allocated or
// released meanwhile may or may not be reported.
void stack_for_each_live(void (*fn)(const LiveStack& s, void* arg), void* arg) noexcept;

// Called once on each worker thread before it runs any fiber
// (after stack_init). Gives the thread an alternate signal stack so a stack
// overflow in "kernel" mode can still be reported, and places worker `worker`'s
// userfaultfd handler thread on the same CPU(s) as the calling thread (a
// same-CPU hand-off is several times cheaper than a cross-CPU one). Threads
// that never call it still work; an overflow on them in kernel mode dies with a
// plain SIGSEGV instead of the diagnostic.
void stack_thread_init(unsigned worker) noexcept;

// Housekeeping of the free-stack cache for worker `worker`:
// issues the worker's pending batched page trims and, once per epoch (about
// 0.5 s of the monotonic coarse clock), gives back cached stacks that went
// unused during the last epoch. Cheap when there is nothing to do. The
// scheduler calls it from a worker's idle path, before the worker parks
// (stack_on_switch also runs it every 1024 switches), so an idle server hands
// its cached stacks back.
// Returns the nanoseconds until the cache wants another call (its next epoch)
// while stacks remain cached, or 0 when there is nothing left to give back.
std::uint64_t stack_maintain(unsigned worker) noexcept;

// Called by an idle worker (while it spins for work, before
// it parks): if a worker of its NUMA node keeps carving fresh slots on its
// spawn path, prepares a few fresh stacks for it (slots of that worker's
// arena, top pages mapped from this thread) and hands them over through the
// node's depot. Returns true if it did some of that work (call again soon),
// false if there is nothing to do. Never blocks; takes only try-locks.
bool stack_prepare_ahead(unsigned worker) noexcept;

// The learned depth (bytes from hi) for `site`, 0 if none.
std::size_t stack_learned_depth(const void* site) noexcept;

// ---- test seams --------------------------------------------------------------
// The NUMA topology as the stack cache sees it. Tests replace it to simulate a
// machine with several nodes; nullptr members fall back to the real ones.
struct StackTopology {
  unsigned nodes = 0;                       // 0: ask libnuma
  int (*worker_node)(unsigned worker) = nullptr;  // nullptr: node of the CPU the worker's thread is on
  // move_pages(2) in query mode: status[i] = node of pages[i] or a negative
  // errno (-ENOENT: not resident). Returns 0, or -1 when the query failed.
  long (*query_pages)(unsigned long count, void** pages, int* status) = nullptr;
  bool check_single_node = false;           // run the locality checks with one node too
};
// Takes effect at the next stack_init (and for worker nodes at once).
// nullptr restores the real topology.
void stack_set_topology_for_testing(const StackTopology* topology) noexcept;
// Replaces the coarse monotonic clock (nanoseconds) that drives cache epochs;
// nullptr restores it.
void stack_set_clock_for_testing(std::uint64_t (*now_ns)()) noexcept;
// Length of a cache epoch in nanoseconds.
constexpr std::uint64_t kStackCacheEpochNs = 500'000'000;

}  // namespace tendril::detail
