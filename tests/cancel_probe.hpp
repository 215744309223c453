// Shared by the cancellation suites: run a wait in a child of a tendril::Scope,
// end it by cancel() or by the scope's deadline, and report how it ended.
// Call from a fiber (inside tendril::run).
#pragma once

#include <tendril/tendril.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <system_error>

namespace tendril_test {

// Runs `wait` in a scope's child and cancels the scope once the child has
// (very likely) parked. The error code the wait threw, or a default
// error_code if it returned.
inline std::error_code cancelled_while(const std::function<void()>& wait) {
  using namespace std::chrono_literals;
  std::error_code got;
  std::atomic<bool> reached{false};
  tendril::Scope s;
  s.spawn([&] {
    reached = true;
    try {
      wait();
    } catch (const std::system_error& e) {
      got = e.code();
    }
  });
  while (!reached) tendril::this_fiber::yield();
  tendril::this_fiber::sleep_for(20ms);  // let it park
  s.cancel();
  s.join();
  return got;
}

// The same, ended by the scope's deadline.
inline std::error_code deadline_while(const std::function<void()>& wait,
                                      std::chrono::milliseconds deadline = std::chrono::milliseconds(30)) {
  std::error_code got;
  tendril::Scope s(deadline);
  s.spawn([&] {
    try {
      wait();
    } catch (const std::system_error& e) {
      got = e.code();
    }
  });
  s.join();
  return got;
}

}  // namespace tendril_test
