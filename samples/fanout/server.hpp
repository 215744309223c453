// What the fanout server's connections and calls share: its counters, the
// room for live calls (CallSlots), the backend pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>

#include "samples/common/runtime.hpp"
#include "samples/fanout/backend.hpp"
#include "samples/fanout/config.hpp"

namespace sample_fanout {

// Counters reported by `stats`.
struct Counters {
  std::atomic<std::uint64_t> connections_open{0};
  std::atomic<std::uint64_t> requests_served{0};
  std::atomic<std::uint64_t> calls_made{0};
  std::atomic<std::uint64_t> calls_answered{0};
  std::atomic<std::uint64_t> calls_late{0};
  std::atomic<std::uint64_t> calls_failed{0};
  std::atomic<std::uint64_t> calls_refused{0};  // part of calls_failed: no thread (the twin)
  std::atomic<std::int64_t> live_tasks{0};      // connection + call tasks
  std::atomic<std::int64_t> peak_tasks{0};
  std::atomic<std::int64_t> live_calls{0};
  std::atomic<std::int64_t> peak_calls{0};

  static void raise_peak(std::atomic<std::int64_t>& peak, std::int64_t n) {
    std::int64_t p = peak.load();
    while (n > p && !peak.compare_exchange_weak(p, n)) {
    }
  }
  void task_started() { raise_peak(peak_tasks, live_tasks.fetch_add(1) + 1); }
  void task_ended() { live_tasks.fetch_sub(1); }
  void call_started() {
    task_started();
    raise_peak(peak_calls, live_calls.fetch_add(1) + 1);
  }
  void call_ended() {
    live_calls.fetch_sub(1);
    task_ended();
  }
};

// Room for --max-calls live calls. A request takes room for all its calls
// before they start, waiting in line (first come, first served) while there
// is none: the back-pressure of an overloaded server, instead of calls that
// start too late to make their deadline, or refusals that a closed-loop
// client answers with its next request at once.
class CallSlots {
 public:
  explicit CallSlots(int n) : free_(n) {}

  void acquire(int n);
  void release(int n);
  std::size_t waiting();

 private:
  struct Waiter {
    int n = 0;
    sample::Group ready;
  };
  sample::Mutex m_;
  int free_;                                  // guarded by m_
  std::deque<std::shared_ptr<Waiter>> line_;  // guarded by m_
};

struct Server {
  explicit Server(const Config& c)
      : cfg(c), pool(c.backends, static_cast<std::size_t>(c.max_calls)), slots(c.max_calls) {}

  const Config& cfg;
  Counters counters;
  BackendPool pool;
  CallSlots slots;
  sample::Group live;  // every call task that has not ended
  std::atomic<std::uint64_t> call_seq{0};
};

}  // namespace sample_fanout
