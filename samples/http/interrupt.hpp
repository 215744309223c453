// A sleep that a stop cuts short: /sleep and the simulated backend calls may
// wait up to a minute, and SIGTERM must not wait for them. Built on
// sample::Group (a count with a deadline wait): the count is 1 until
// trigger() takes it to 0, which wakes every sleeper at once.
#pragma once

#include <atomic>
#include <chrono>

#include "samples/common/runtime.hpp"

namespace sample_http {

class Interrupt {
 public:
  Interrupt() { group_.add(1); }
  Interrupt(const Interrupt&) = delete;
  Interrupt& operator=(const Interrupt&) = delete;

  // Parks the fiber (or thread) for d; false if trigger() came first.
  bool sleep_for(std::chrono::milliseconds d) {
    return !group_.wait_until(std::chrono::steady_clock::now() + d);
  }
  void trigger() {
    if (!triggered_.exchange(true)) group_.done();
  }

 private:
  sample::Group group_;
  std::atomic<bool> triggered_{false};
};

}  // namespace sample_http
