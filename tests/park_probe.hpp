// Waiting, in a test, until another fiber is parked for a given reason: the
// order a test needs ("the reader is in its read, now close the stream") is
// then a fact it observed, not a guess about how soon a spawned fiber runs
// (fibers start later under the sanitizers, in a TCG guest, and when their
// stack is bound at first run).
#pragma once

#include <tendril/tendril.hpp>

#include <chrono>
#include <cstddef>

namespace tendril_test {

// Sleeps a millisecond at a time until the fiber dump shows `id` parked for
// `why`. Never returns if the fiber ends or parks for something else: the
// test's timeout reports that.
inline void wait_until_parked(tendril::FiberId id, tendril::WaitReason why) {
  for (;;) {
    for (const tendril::FiberInfo& f : tendril::fibers()) {
      if (f.id == id && f.state == tendril::FiberState::parked && f.reason == why) return;
    }
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
  }
}

// Sleeps a millisecond at a time until at least `n` fibers are parked for
// `why`.
inline void wait_until_parked_count(tendril::WaitReason why, std::size_t n) {
  for (;;) {
    std::size_t parked = 0;
    for (const tendril::FiberInfo& f : tendril::fibers())
      if (f.state == tendril::FiberState::parked && f.reason == why) ++parked;
    if (parked >= n) return;
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace tendril_test
