// tendril::stats(): a snapshot of the runtime's counters.
//
//   tendril::Stats s = tendril::stats();
//   std::printf("%llu fibers live, %llu switches\n",
//               (unsigned long long)s.fibers_live,
//               (unsigned long long)s.context_switches);
//
// Counters are per worker and summed when the snapshot is taken, so the
// snapshot is not one atomic instant; each counter only grows, except the
// gauges (fibers_live, stack_pages_mapped, pool_pages). Outside run() the
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
  std::uint64_t worker_parks = 0;      // times an idle worker put its thread to sleep
  std::uint64_t worker_wakeups = 0;    // times a parked worker was woken to take work

  // Stacks (see <tendril/fiber.hpp> for the stack model).
  std::string stack_mode;                // "uffd" or "kernel"
  std::uint64_t stack_faults = 0;        // page faults that grew a stack
  std::uint64_t stack_pages_mapped = 0;  // pages resident in live and cached stacks
  std::uint64_t pool_refills = 0;        // batch refills of per-worker page pools
  std::uint64_t pool_pages = 0;          // pages waiting in per-worker pools

  // I/O (see <tendril/net.hpp>).
  std::string io_backend;                // "uring" or "epoll"
};

Stats stats();

}  // namespace tendril
