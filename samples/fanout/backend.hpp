// The fanout sample's side of its backends: the pool of connections every
// call borrows from, and one call's round trip on a connection.
//
// Backend connections are pooled for the whole process: a call borrows an
// idle one or opens one, and gives it back afterwards. A call that times out
// gives its connection back too, with its reply still owed: the next call on
// it drops those bytes before reading its own reply (see BackendConn). A
// connection that failed, or whose backend owes too much, is closed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "samples/common/host_port.hpp"
#include "samples/common/runtime.hpp"

namespace sample_fanout {

using Clock = std::chrono::steady_clock;

// A pooled backend connection. A call that gives up at its deadline leaves
// its reply on the way: `owed` counts the bytes the backend still owes from
// such calls, which the next call on the connection reads and drops before its
// own reply. So a late call neither outlives its deadline nor costs its
// connection (under overload, closing the connection of every late call turns
// each call into a new connection, and the backend into an accept loop).
struct BackendConn {
  explicit BackendConn(sample::Stream s) : stream(std::move(s)) {}
  sample::Stream stream;
  std::size_t owed = 0;
};
// Owing more than this, a connection is closed (a stuck backend); kBroken: a
// write or read failed midway, the byte count is lost.
constexpr std::size_t kMaxOwed = 4096;
constexpr std::size_t kBroken = ~std::size_t(0);

// Backend connections shared by every call of the process. A connection is
// either idle here or leased by exactly one call.
class BackendPool {
 public:
  struct Lease {
    std::unique_ptr<BackendConn> conn;
    std::size_t backend = 0;
    bool reused = false;
  };

  BackendPool(std::vector<sample::HostPort> backends, std::size_t max_open)
      : backends_(std::move(backends)), idle_(backends_.size()), max_open_(max_open) {}

  // The backend for the next call, round robin.
  std::size_t pick() { return static_cast<std::size_t>(rr_.fetch_add(1) % backends_.size()); }

  // An idle connection to backend b (unless fresh), or a new one connected
  // within timeout.
  Lease acquire(std::size_t b, sample::Millis timeout, bool fresh = false);

  // Back to the pool if it is usable (a late reply still owed goes to the
  // front, to be taken last), else closed.
  void release(Lease& lease);

  // Closes it, whatever its state.
  void discard(Lease& lease) {
    if (!lease.conn) return;
    lease.conn->owed = kBroken;
    release(lease);
  }

  std::size_t open();
  std::uint64_t connects() const { return connects_.load(); }

  void close_idle();

 private:
  // An idle connection to b, or nullptr with room made for a new one
  // (*evicted: an idle connection to another backend, to close).
  std::unique_ptr<BackendConn> take_idle_or_room(std::size_t b, bool fresh,
                                                 std::unique_ptr<BackendConn>* evicted);
  std::unique_ptr<BackendConn> connect(std::size_t b, sample::Millis timeout);

  const std::vector<sample::HostPort> backends_;
  sample::Mutex m_;
  std::vector<std::deque<std::unique_ptr<BackendConn>>> idle_;  // per backend, guarded by m_
  std::size_t open_ = 0;                                         // idle + leased, guarded by m_
  const std::size_t max_open_;
  std::atomic<std::uint64_t> rr_{0};
  std::atomic<std::uint64_t> connects_{0};
};

using sample::left_until;

// One call on c: writes line, drops what earlier calls left owed, reads the
// echo and checks it, all by deadline. On a timeout (std::errc::timed_out),
// c.owed counts what is still to come and c stays usable; after another error,
// c.owed is kBroken or the caller closes c anyway.
void round_trip(BackendConn& c, const std::string& line, Clock::time_point deadline);

}  // namespace sample_fanout
