// The runtime a sample server runs on: tendril fibers, or one OS thread per
// connection (the "pthread twin"). Every sample is compiled twice from the
// same sources; the twin is built with SAMPLE_PTHREAD=1 and never links
// tendril, so a comparison between the two measures the runtime alone.
//
//   int main(int argc, char** argv) {
//     sample::block_stop_signals();              // before any thread starts
//     sample::serve(workers, [&](sample::StopToken& stop) {
//       auto l = sample::Listener::bind("127.0.0.1", 8080, 4096);
//       stop.on_stop([&] { l.close(); });         // SIGINT/SIGTERM wakes accept
//       while (auto c = l.accept()) sample::go([c = std::move(*c)]() mutable { ... });
//     });
//   }
//
// Blocking calls park the fiber (tendril) or block the thread (twin). Errors
// are std::system_error naming the operation; a timeout is
// std::errc::timed_out on both.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>

#include "samples/common/fd_limit.hpp"
#include <vector>

#if SAMPLE_PTHREAD
#include <condition_variable>
#include <mutex>
#else
#include <tendril/tendril.hpp>
#endif

namespace sample {

using Millis = std::chrono::milliseconds;

// "tendril" or "pthread": which twin this binary is.
const char* runtime_name() noexcept;

// A connected TCP stream. Move-only; closes on destruction.
class Stream {
 public:
  Stream() = default;
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  ~Stream();

  // Resolves host (numeric or name) and connects within timeout.
  static Stream connect(const std::string& host, std::uint16_t port, Millis timeout);

  // Some bytes (at least 1), or 0 at end of stream.
  std::size_t read(void* buf, std::size_t n);
  // The same, with errors (reset, timeout, shutdown) in ec instead of thrown:
  // a connection loop ends on them without unwinding, which takes KiB of stack.
  std::size_t read(void* buf, std::size_t n, std::error_code& ec) noexcept;
  // Until a read would not wait (data, end of stream, an error), consuming
  // nothing; the timeout and errors in ec, as for read. A connection loop
  // that waits here, outside the frame of its read buffer, keeps less stack
  // live while idle (tendril compacts idle stacks to what is live).
  void wait_readable(std::error_code& ec) noexcept;
  void write_all(const void* buf, std::size_t n);
  // For later reads and writes; zero means none.
  void set_timeout(Millis timeout);
  void set_nodelay();
  // Releases the descriptor. Only the stream's owner calls it.
  void close() noexcept;
  // Wakes calls in progress on this stream (reads return 0, writes fail);
  // safe from another fiber or thread while the owner is blocked in it.
  void shutdown() noexcept;
  bool is_open() const noexcept;

 private:
#if SAMPLE_PTHREAD
  explicit Stream(int fd) noexcept : fd_(fd) {}
  int fd_ = -1;
  friend class Listener;
#else
  explicit Stream(tendril::net::TcpStream s) noexcept : s_(std::move(s)) {}
  tendril::net::TcpStream s_;
  friend class Listener;
#endif
};

// A listening TCP socket.
class Listener {
 public:
  Listener() = default;
  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  ~Listener();

  static Listener bind(const std::string& host, std::uint16_t port, int backlog);
  // The next connection, or nullopt once close() was called.
  // Transient failures (EMFILE, ECONNABORTED, ...) are reported on stderr at
  // most once a second and retried after a short pause, never a spin.
  std::optional<Stream> accept();
  std::uint16_t port() const;
  // Stops accept(): safe from another fiber or thread while accept() waits.
  void close() noexcept;

 private:
#if SAMPLE_PTHREAD
  int fd_ = -1;
  std::shared_ptr<std::atomic<bool>> closed_;
#else
  tendril::net::TcpListener l_;
  std::shared_ptr<std::atomic<bool>> closed_;
#endif
};

// Every fiber with its state, wait reason and frames, as tendril::dump_fibers
// writes it (tendril); empty for the twin, whose connections are threads.
std::string fiber_dump();

// Runs fn detached: a fiber (tendril) or a thread (twin).
void go(std::function<void()> fn);

// Parks the fiber (tendril) or sleeps the thread (twin).
void sleep_for(Millis d);

// What is left until deadline, rounded up to whole milliseconds (>= 1): the
// timeout of the next step of a call that must end by the deadline. Throws
// std::system_error timed_out once it has passed.
inline Millis left_until(std::chrono::steady_clock::time_point deadline) {
  const auto left = deadline - std::chrono::steady_clock::now();
  if (left <= std::chrono::steady_clock::duration::zero())
    throw std::system_error(std::make_error_code(std::errc::timed_out), "call deadline");
  return std::chrono::ceil<Millis>(left);
}

// Runs f, which must not block, on the worker's stack (tendril:
// this_fiber::on_worker_stack, so its frames cost no page of each connection
// fiber's stack) or in place (twin).
void on_worker_stack_impl(void (*fn)(void*), void* arg);
template <class F>
void on_worker_stack(F&& f) {
  using Fn = std::remove_reference_t<F>;
  on_worker_stack_impl([](void* p) { (*static_cast<Fn*>(p))(); }, static_cast<void*>(&f));
}

// A mutex and condition variable of the matching kind, for state shared
// between connections.
#if SAMPLE_PTHREAD
using Mutex = std::mutex;
using CondVar = std::condition_variable;
#else
using Mutex = tendril::Mutex;
using CondVar = tendril::CondVar;
#endif

// A count of outstanding tasks that can be waited for with a deadline: what a
// fan-out needs to gather answers from K calls.
class Group {
 public:
  void add(int n = 1);
  void done();
  // True if the count reached zero before the deadline.
  bool wait_until(std::chrono::steady_clock::time_point deadline);
  void wait();

 private:
  Mutex m_;
  CondVar cv_;
  int count_ = 0;
};

// One request's calls, which end by the request's deadline. On tendril they
// are the children of a tendril::Scope with that deadline: at the deadline
// every park a late call is in (a sleep, a wait, a CondVar) throws
// std::system_error timed_out, so the call ends at once and gives back what it
// holds. In the twin they are detached threads that end by their own I/O
// timeouts, and a late one runs on after wait() returned.
//
//   sample::CallScope calls(deadline);
//   for (...) calls.go([=] { ...; });  // each catches its own exceptions
//   calls.wait();                      // then count the answers
class CallScope {
 public:
  explicit CallScope(std::chrono::steady_clock::time_point deadline);
  // tendril: cancels the calls still running and waits for them.
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  // Starts fn as one of the calls; throws like go(). An exception that
  // escapes fn is dropped.
  void go(std::function<void()> fn);
  // Until every call ended (tendril: they all end by the deadline) or, in the
  // twin, the deadline passed.
  void wait();

 private:
#if SAMPLE_PTHREAD
  std::chrono::steady_clock::time_point deadline_;
  std::shared_ptr<Group> pending_ = std::make_shared<Group>();  // shared with late threads
#else
  tendril::Scope scope_;
#endif
};

// Receives the stop request (SIGINT or SIGTERM). Callbacks registered with
// on_stop run once, on a fiber/thread of the runtime, when it arrives, or at
// once if it arrived already.
class StopToken {
 public:
  void on_stop(std::function<void()> fn);
  bool stop_requested() const noexcept;
  void request_stop();  // also what the signal does

 private:
  Mutex m_;
  std::vector<std::function<void()>> fns_;  // guarded by m_
  std::atomic<bool> stopped_{false};
};

// Blocks SIGINT and SIGTERM in the calling thread; call it first in main(),
// before any thread starts, so that every thread inherits the mask and the
// signals reach only the watcher that serve() starts.
void block_stop_signals();

// Runs main(stop) on the runtime (tendril::run with `workers` workers, 0: one
// per CPU; the twin ignores workers) and returns when main returns. A watcher
// turns SIGINT/SIGTERM into stop.request_stop().
void serve(unsigned workers, const std::function<void(StopToken&)>& main);

// Writes a line to stderr unless this reporter wrote one within the same
// second: for failures that can repeat in a tight loop (EMFILE on accept, a
// thread that cannot be started), so they are seen without flooding the log.
class ThrottledReport {
 public:
  void operator()(const std::string& line);

 private:
  std::atomic<std::int64_t> last_second_{-1};
};

}  // namespace sample
