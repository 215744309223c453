// Test only: the delay after which a parked fiber's stack is compacted, in
// nanoseconds, for runtimes started after the call; it replaces
// Options::compact_after where that is set (it does not turn compaction on).
// 0 compacts a fiber at its worker's first look after it parked, which is
// what the tests that race wakers and I/O against compaction want; the
// public option cannot ask for that (0 means off). -1: no override.
//
//   tendril::detail::set_compact_delay_for_tests(0);
//   tendril::run(options_with_compact_after, ...);
//   tendril::detail::set_compact_delay_for_tests(-1);
#pragma once

#include <atomic>
#include <cstdint>

namespace tendril::detail {

extern std::atomic<std::int64_t> g_compact_delay_for_tests;

inline void set_compact_delay_for_tests(std::int64_t ns) noexcept {
  g_compact_delay_for_tests.store(ns, std::memory_order_relaxed);
}

}  // namespace tendril::detail
