// The server's routes: what each path answers, and the checks on its query
// arguments. The blocking work (sleeping, fanning out, collecting stats) is
// passed in as Actions, so the tests can drive the real routes with stand-ins.
//
//   GET /                  200 "hello from <runtime>"
//   GET /stats             200 JSON counters (stats_json.hpp)
//   GET /debug/fibers      200 every fiber: state, wait reason, frames (as Go's
//                          /debug/pprof/goroutine?debug=2); 404 on the thread twin
//   GET /sleep?ms=N        waits N ms (0..60000), then 200
//   GET /fanout?n=K&ms=M   K backend calls (1..1000) of M ms (0..60000), 200 JSON
//   other paths 404, other methods 405, bad arguments 400
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "samples/http/session.hpp"

namespace sample_http {

// Server-wide counters, shown by /stats.
struct Counters {
  std::atomic<std::uint64_t> connections_open{0};
  std::atomic<std::uint64_t> requests_served{0};  // requests a route answered
};

struct FanoutResult {
  int asked = 0;
  int answered = 0;  // calls that completed before the deadline
};

struct Actions {
  // Waits; false if the server is stopping (the wait was cut short).
  std::function<bool(std::chrono::milliseconds)> sleep;
  // Makes n backend calls of ms each and gathers them (fanout.hpp).
  std::function<FanoutResult(int n, int ms)> fanout;
  // The /stats body.
  std::function<std::string()> stats;
  // The /debug/fibers body; empty: the runtime has no fibers to show.
  std::function<std::string()> fiber_dump;
};

constexpr int kMaxSleepMs = 60000;
constexpr int kMaxFanout = 1000;

class Routes {
 public:
  Routes(Actions actions, std::shared_ptr<Counters> counters);
  Reply operator()(const Request& req) const;

 private:
  Reply route(const Request& req) const;
  Actions actions_;
  std::shared_ptr<Counters> counters_;
};

}  // namespace sample_http
