// The runtime's debug threads for one run(): the stall watchdog
// (Options::stall_threshold) and the fiber dump on a signal
// (Options::dump_signal). Both are plain threads that sleep almost always; the
// signal handlers they install do nothing but note the signal (the dump, the
// unwinding and the writing happen on those threads, never in a handler).
#pragma once

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "tendril/options.hpp"

namespace tendril::detail {

class Scheduler;

// The signal number for a name ("USR1", "SIGUSR1", "RTMIN+2") or a decimal
// number; -1 if it is neither.
int parse_signal(const char* text) noexcept;
// Why `sig` cannot carry the fiber dump, or nullptr if it can.
const char* unusable_dump_signal(int sig) noexcept;

// The signal the stall watchdog sends a worker to sample its running fiber.
constexpr int kStallSampleSignal = SIGURG;

class DebugService {
 public:
  // Starts what the options ask for. Throws std::system_error naming the
  // call (errno kept) if its pipe or a thread cannot be made; nothing is
  // left running then.
  DebugService(Scheduler& sched, const Options& options);
  ~DebugService() { stop(); }
  DebugService(const DebugService&) = delete;
  DebugService& operator=(const DebugService&) = delete;

  // Stops both threads and restores the signal dispositions; idempotent.
  void stop() noexcept;

 private:
  void start_watchdog();
  void start_dump_service();
  void watch_for_stalls();
  void serve_dump_signal();

  Scheduler& sched_;
  const std::chrono::milliseconds threshold_;
  const int dump_signal_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread watchdog_;
  std::thread dumper_;
  int dump_pipe_[2] = {-1, -1};
  struct sigaction old_dump_action_ {};
  struct sigaction old_sample_action_ {};
  bool dump_installed_ = false, sample_installed_ = false;
};

}  // namespace tendril::detail
