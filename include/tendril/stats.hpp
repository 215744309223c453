// tendril::stats(): a snapshot of the runtime's counters.
//
//   tendril::Stats s = tendril::stats();
//   std::printf("%llu fibers live, %llu switches\n",
//               (unsigned long long)s.fibers_live,
//               (unsigned long long)s.context_switches);
//
// Counters are per worker and summed when the snapshot is taken, so the
// snapshot is not one atomic instant; each counter only grows, except the
// gauges (fibers_live, stack_pages_mapped, pool_pages, stack_cache_pages). Outside run() the
// counters of the last run are returned (zeros before the first).
#pragma once

#include <cstdint>
#include <string>

#include "tendril/detail/counters.hpp"

namespace tendril {

struct Stats {
  unsigned workers = 0;
  // fibers_spawned, context_switches, steals, worker_parks, worker_wakeups:
  // see TENDRIL_SCHEDULER_COUNTERS in <tendril/detail/counters.hpp>.
#define TENDRIL_STATS_FIELD(storage, field, doc) std::uint64_t field = 0;
  TENDRIL_SCHEDULER_COUNTERS(TENDRIL_STATS_FIELD)
  std::uint64_t fibers_live = 0;       // spawned and not yet finished
  std::uint64_t fibers_unstarted = 0;  // gauge: of those, not run yet; they get their stack when they first run
  std::uint64_t stalls = 0;            // fibers the stall watchdog caught holding a worker too long (not per worker)

  // Stacks (see <tendril/fiber.hpp> for the stack model).
  std::string stack_mode;                // "uffd" or "kernel"
  std::uint64_t stack_faults = 0;        // page faults that grew a stack
  std::uint64_t stack_pages_mapped = 0;  // gauge: pages resident in live stacks (cached ones: stack_cache_pages)
  std::uint64_t pool_refills = 0;        // batch refills of per-worker page pools
  std::uint64_t pool_pages = 0;          // pages waiting in per-worker pools

  // Free-stack cache (Options::stack_cache_bytes). A spawn either hits the
  // cache (a freed stack with its pages still mapped, checked to be on the
  // spawning worker's NUMA node: no page fault, no system call) or misses
  // (a slot from the arena, top page only).
  // cache_hits, cache_misses, stacks_cached, stacks_dropped, stacks_evicted,
  // node_match, node_mismatch, pages_trimmed, stack_cache_pages (a gauge),
  // stacks_prepared: see TENDRIL_STACK_CACHE_COUNTERS.
  TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_STATS_FIELD)
  // compactions, restores, restores_on_touch, fibers_compacted and
  // compact_bytes (gauges): see TENDRIL_STACK_COMPACT_COUNTERS.
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_STATS_FIELD)
#undef TENDRIL_STATS_FIELD
  // Idle-stack compaction is on: Options::compact_after is set, the stack
  // mode is uffd and the kernel has UFFDIO_MOVE (Linux 6.8+).
  bool stack_compaction = false;

  // I/O (see <tendril/net.hpp>).
  std::string io_backend;                // "uring" or "epoll"
};

Stats stats();

}  // namespace tendril
