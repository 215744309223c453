// How much of a worker's time idle-stack compaction takes (worker.cpp).
//
// A walk of a worker's list compacts at most kCompactBatch fibers: one
// membarrier and one give-back of staged pages (stack_release_staged_pages)
// per batch. While the worker has other work, the next walk waits
// kCompactBusyShare - 1 times as long as the batch took, so a burst of
// fibers that all park at once (a million of them cost tens of seconds of
// compaction here) slows the fibers that keep running by at most a tenth;
// the rest is done in idle time, where batches follow each other and the
// worker looks for work between two.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tendril::detail {

inline constexpr std::size_t kCompactBatch = 32;
inline constexpr std::int64_t kCompactBusyShare = 10;

}  // namespace tendril::detail
