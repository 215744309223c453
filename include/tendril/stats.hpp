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

namespace tendril {

struct Stats {
  unsigned workers = 0;
  std::uint64_t fibers_spawned = 0;    // fibers started, main included
  std::uint64_t fibers_live = 0;       // spawned and not yet finished
  std::uint64_t context_switches = 0;  // switches into a fiber
  std::uint64_t steals = 0;            // fibers taken from another worker's queue
  std::uint64_t steals_remote = 0;     // ... of a worker on another NUMA node (only when none of the thief's node had any)
  std::uint64_t worker_parks = 0;      // times an idle worker put its thread to sleep
  std::uint64_t worker_wakeups = 0;    // times a parked worker was woken to take work

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
  std::uint64_t cache_hits = 0;          // spawns served by the cache
  std::uint64_t cache_misses = 0;        // spawns that took a slot from the arena
  std::uint64_t stacks_cached = 0;       // fiber exits whose stack the cache took
  std::uint64_t stacks_dropped = 0;      // exits the cache refused (full, over budget, disabled)
  std::uint64_t stacks_evicted = 0;      // cached stacks given back after churn stopped
  std::uint64_t node_match = 0;          // cached stacks whose checked pages were all on the exiting worker's node
  std::uint64_t node_mismatch = 0;       // ... that had pages on another node (those pages were released, the stack kept)
  std::uint64_t pages_trimmed = 0;       // pages given back: cached stacks deeper than kept, foreign, evicted; and
                                         // pages mapped ahead of a fiber that it had not written when it parked
  std::uint64_t stack_cache_pages = 0;   // gauge: resident pages held by the cache now
  std::uint64_t stacks_prepared = 0;     // fresh stacks idle workers mapped ahead for a busy spawner

  // I/O (see <tendril/net.hpp>).
  std::string io_backend;                // "uring" or "epoll"
};

Stats stats();

}  // namespace tendril
