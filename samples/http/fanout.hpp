// /fanout's work: K concurrent backend calls (fibers, or threads in the twin)
// gathered with a deadline. A call is a line sent to --backend and read back
// (an echo server), after M ms; with no backend, a simulated call that only
// waits M ms plus a little deterministic jitter. Calls still running at the
// deadline are counted late. On tendril they end there (their sleeps and
// waits throw at the deadline of the tendril::Scope they run in, and every
// I/O step is bounded by it); in the twin they finish on their own, owning
// their state (shared_ptr), never the handler's.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "samples/common/host_port.hpp"
#include "samples/http/interrupt.hpp"
#include "samples/http/routes.hpp"

namespace sample_http {

using Backend = sample::HostPort;

// "host:port" (port 1..65535; an IPv6 host in brackets), or nullopt.
inline std::optional<Backend> parse_backend(const std::string& s) { return sample::parse_host_port(s); }

class Fanout {
 public:
  Fanout(std::optional<Backend> backend, std::chrono::milliseconds deadline, std::shared_ptr<Interrupt> interrupt);

  // Starts n calls of ms each and returns when all answered or the deadline
  // passed, whichever comes first.
  FanoutResult operator()(int n, int ms) const;

  // Waits until no call is running or the time passed; true if none is.
  bool drain_until(std::chrono::steady_clock::time_point t) const;

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
  std::chrono::milliseconds deadline_;
};

}  // namespace sample_http
