// The lists of runtime counters that tendril::Stats reports. Each list is the
// one place a counter is declared: the per-worker storage, the summing into a
// snapshot and the Stats field all come from it (X-macros).
#pragma once

// Scheduler counters: one per worker, written by that worker only, summed into
// Stats. X(storage name in WorkerCounters, Stats field, what it counts).
#define TENDRIL_SCHEDULER_COUNTERS(X)                                                     \
  X(spawned, fibers_spawned, "fibers started, main included")                              \
  X(switches, context_switches, "switches into a fiber")                                   \
  X(steals, steals, "fibers taken from another worker's queue")                            \
  X(steals_remote, steals_remote,                                                          \
    "... of a worker on another NUMA node (only when none of the thief's node had any)")  \
  X(parks, worker_parks, "times an idle worker put its thread to sleep")                   \
  X(wakeups, worker_wakeups, "times a parked worker was woken to take work")

// Free-stack cache counters: one per worker in the stack subsystem, summed into
// its StackCounters and copied into Stats.
// X(storage name in CacheCounters, StackCounters and Stats field, what it counts).
// Gauges are kept as deltas per worker; only their sum means something.
#define TENDRIL_STACK_CACHE_COUNTERS(X)                                                                 \
  X(hits, cache_hits, "spawns served by the cache")                                                     \
  X(misses, cache_misses, "spawns that took a slot from the arena")                                     \
  X(cached, stacks_cached, "fiber exits whose stack the cache took")                                    \
  X(dropped, stacks_dropped, "exits the cache refused (full, over budget, disabled)")                  \
  X(evicted, stacks_evicted, "cached stacks given back after churn stopped")                            \
  X(node_match, node_match, "cached stacks whose checked pages were all on the exiting worker's node")  \
  X(node_mismatch, node_mismatch,                                                                       \
    "... that had pages on another node (those pages were released, the stack kept)")                  \
  X(pages_trimmed, pages_trimmed,                                                                       \
    "pages given back: cached stacks deeper than kept, foreign, evicted; and pages mapped ahead of a "  \
    "fiber that it had not written when it parked")                                                     \
  X(pages, stack_cache_pages, "gauge: resident pages held by the cache now")                            \
  X(prepared, stacks_prepared, "fresh stacks idle workers mapped ahead for a busy spawner")             \
  X(pages_moved, stack_pages_moved,                                                                     \
    "pages of stolen fibers' stacks moved to the thief's NUMA node (remote steals only)")

// Idle-stack compaction counters (uffd mode, Options::compact_after): summed
// over the workers and their fault handlers into StackCounters and Stats.
// X(storage name, StackCounters and Stats field, what it counts). Gauges are
// kept as deltas per worker; only their sum means something.
#define TENDRIL_STACK_COMPACT_COUNTERS(X)                                                             \
  X(compactions, compactions, "parked fibers whose stack pages were copied out and given back")        \
  X(restores, restores, "compacted stacks put back (at switch-in, or by the fault handler on a touch)") \
  X(touch_restores, restores_on_touch,                                                                 \
    "of the restores, those the fault handler made: something touched the stack before its fiber ran") \
  X(compacted, fibers_compacted, "gauge: fibers whose stack is held in a compaction buffer now")      \
  X(compact_bytes, compact_bytes, "gauge: bytes held in compaction buffers now")
