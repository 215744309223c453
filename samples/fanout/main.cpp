// fanout: a scatter-gather aggregator, the shape of search and feed servers.
// Each request fans out to k backend calls made concurrently (one fiber each;
// in fanout-pthread, one thread each), every call bounded by a deadline, and
// the answer says how many came back in time.
//
//   build/samples/echo --port 7000 &
//   build/samples/fanout/fanout --backend 127.0.0.1:7000 &
//   printf 'q 1 10\nstats\n' | nc -q1 127.0.0.1 7100
//   ok 1 10 10
//   {"runtime":"tendril","connections_open":1,...}
//
// Protocol (lines over TCP, at most 4 KiB each; a longer line closes the
// connection):
//   q <id> [k]   fan out k calls (default --k, at most --max-k) and answer
//                "ok <id> <answered> <k>" once all k are back or the deadline
//                (--call-deadline-ms after the calls started) has passed
//   stats        one line of JSON: runtime, connections_open,
//                requests_served, requests_waiting, calls_made,
//                calls_answered, calls_late, calls_failed, calls_refused,
//                live_tasks, peak_tasks (connection + call tasks), live_calls,
//                peak_calls, backend_conns, backend_connects, threads,
//                rss_bytes, rss_peak_bytes, and on tendril fibers_live
// Anything else gets "err <reason>" and the connection stays usable.
//
// A backend call sends "call <n>\n" to one of the --backend addresses (round
// robin) and expects the same line back (the echo sample is the backend). Its
// connect, write and read are bounded by the request's deadline.
//
// At most --max-calls calls are live in the process: a request waits in line
// until all its calls fit, and its deadline starts when they start (see
// CallSlots). Under overload requests queue, instead of all calls missing the
// deadline together: with more in flight than the backends and CPUs turn
// around within the deadline, every call is late. Size it to about the calls
// per second the server sustains times the deadline (the default, 1000, suits
// 2 CPUs and 50 ms).
//
// Backend connections are pooled for the whole process: a call borrows an
// idle one or opens one, and gives it back afterwards. A call that times out
// gives its connection back too, with its reply still owed: the next call on
// it drops those bytes before reading its own reply (see BackendConn). A
// connection that failed, or whose backend owes too much, is closed. A call
// holds at most one connection, so the process never has more than
// --max-calls backend connections, nor the twin more than --max-calls call
// threads (plus one per client connection).
//
// Outcomes: a call is answered if a correct echo came back before its
// request's answer was taken; late if it came after that, or not by the
// deadline, or the call started after the deadline; failed if it ended in an
// error (connection refused or reset, wrong reply) or could not be started
// (calls_refused: the twin out of threads). A call may end just after its
// request was answered: it shares ownership of the request's state.
//
// SIGINT or SIGTERM stops accepting, closes the open connections, waits for
// the calls in flight (each ends by its deadline) and exits 0.
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "samples/common/connections.hpp"
#include "samples/common/flags.hpp"
#include "samples/common/runtime.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMaxLine = 4096;  // bytes before the newline
constexpr std::size_t kMaxId = 128;

// No parking in catch blocks: nothing that may park a fiber (a sample::Mutex,
// a Group, I/O) runs inside a handler here. A parked fiber may resume on
// another worker thread, and the C++ runtime keeps the exception being handled
// per thread, so a `throw;` or the end of the handler would then act on the
// wrong thread's state. Handlers record what happened; the work follows them.

struct Config {
  std::string host = "127.0.0.1";
  int port = 7100;
  int backlog = 4096;
  std::string backend;
  int k = 10;
  int call_deadline_ms = 50;
  unsigned workers = 0;
  int max_k = 1000;
  int max_calls = 1000;
};

struct Backend {
  std::string host;
  std::uint16_t port = 0;
};

// "host:port[,host:port...]"; IPv6 hosts in brackets ("[::1]:7000").
bool parse_backends(const std::string& list, std::vector<Backend>* out, std::string* why) {
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(start, end - start);
    const std::size_t colon = item.rfind(':');
    if (item.empty() || colon == std::string::npos || colon == 0) {
      *why = "bad backend '" + item + "' (want host:port)";
      return false;
    }
    Backend b;
    b.host = item.substr(0, colon);
    if (b.host.size() >= 2 && b.host.front() == '[' && b.host.back() == ']') b.host = b.host.substr(1, b.host.size() - 2);
    const std::string port = item.substr(colon + 1);
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || ptr != port.data() + port.size() || p == 0 || p > 65535 || b.host.empty()) {
      *why = "bad backend '" + item + "' (want host:port, port 1..65535)";
      return false;
    }
    b.port = static_cast<std::uint16_t>(p);
    out->push_back(std::move(b));
    start = end + 1;
  }
  return !out->empty();
}

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

  BackendPool(std::vector<Backend> backends, std::size_t max_open)
      : backends_(std::move(backends)), idle_(backends_.size()), max_open_(max_open) {}

  std::size_t pick() { return static_cast<std::size_t>(rr_.fetch_add(1) % backends_.size()); }

  // An idle connection to backend b (unless fresh), or a new one connected
  // within timeout.
  Lease acquire(std::size_t b, sample::Millis timeout, bool fresh = false) {
    Lease lease;
    lease.backend = b;
    std::unique_ptr<BackendConn> evicted;
    {
      std::lock_guard<sample::Mutex> g(m_);
      if (!fresh && !idle_[b].empty()) {  // those owing nothing are at the back
        lease.conn = std::move(idle_[b].back());
        idle_[b].pop_back();
        lease.reused = true;
        return lease;
      }
      // Full: make room by closing an idle connection to another backend.
      if (open_ >= max_open_) {
        for (auto& list : idle_) {
          if (!list.empty()) {
            evicted = std::move(list.front());
            list.pop_front();
            --open_;
            break;
          }
        }
      }
      ++open_;
    }
    evicted.reset();
    connects_.fetch_add(1);
    std::exception_ptr failure;
    try {
      const Backend& be = backends_[b];
      lease.conn = std::make_unique<BackendConn>(sample::Stream::connect(be.host, be.port, timeout));
      lease.conn->stream.set_nodelay();
    } catch (...) {
      failure = std::current_exception();  // no parking in catch blocks (see the top)
    }
    if (failure) {
      {
        std::lock_guard<sample::Mutex> g(m_);
        --open_;
      }
      std::rethrow_exception(failure);
    }
    return lease;
  }

  // Back to the pool if it is usable (a late reply still owed goes to the
  // front, to be taken last), else closed.
  void release(Lease& lease) {
    if (!lease.conn) return;
    if (lease.conn->owed > kMaxOwed) {
      lease.conn.reset();
      std::lock_guard<sample::Mutex> g(m_);
      --open_;
      return;
    }
    std::lock_guard<sample::Mutex> g(m_);
    auto& list = idle_[lease.backend];
    if (lease.conn->owed == 0) list.push_back(std::move(lease.conn));
    else list.push_front(std::move(lease.conn));
  }

  // Closes it, whatever its state.
  void discard(Lease& lease) {
    if (!lease.conn) return;
    lease.conn->owed = kBroken;
    release(lease);
  }

  std::size_t open() {
    std::lock_guard<sample::Mutex> g(m_);
    return open_;
  }
  std::uint64_t connects() const { return connects_.load(); }

  void close_idle() {
    std::vector<std::deque<std::unique_ptr<BackendConn>>> idle(backends_.size());
    {
      std::lock_guard<sample::Mutex> g(m_);
      for (auto& list : idle_) open_ -= list.size();
      idle.swap(idle_);
    }
  }

 private:
  const std::vector<Backend> backends_;
  sample::Mutex m_;
  std::vector<std::deque<std::unique_ptr<BackendConn>>> idle_;  // per backend, guarded by m_
  std::size_t open_ = 0;                                         // idle + leased, guarded by m_
  const std::size_t max_open_;
  std::atomic<std::uint64_t> rr_{0};
  std::atomic<std::uint64_t> connects_{0};
};

// Room for --max-calls live calls. A request takes room for all its calls
// before they start, waiting in line (first come, first served) while there
// is none: the back-pressure of an overloaded server, instead of calls that
// start too late to make their deadline, or refusals that a closed-loop
// client answers with its next request at once.
class CallSlots {
 public:
  explicit CallSlots(int n) : free_(n) {}

  void acquire(int n) {
    std::shared_ptr<Waiter> w;
    {
      std::lock_guard<sample::Mutex> g(m_);
      if (line_.empty() && free_ >= n) {
        free_ -= n;
        return;
      }
      w = std::make_shared<Waiter>();
      w->n = n;
      w->ready.add(1);
      line_.push_back(w);
    }
    w->ready.wait();
  }

  void release(int n) {
    std::vector<std::shared_ptr<Waiter>> go;
    {
      std::lock_guard<sample::Mutex> g(m_);
      free_ += n;
      while (!line_.empty() && free_ >= line_.front()->n) {
        free_ -= line_.front()->n;
        go.push_back(std::move(line_.front()));
        line_.pop_front();
      }
    }
    for (auto& w : go) w->ready.done();  // the waiter shares it: it may end at once
  }

  std::size_t waiting() {
    std::lock_guard<sample::Mutex> g(m_);
    return line_.size();
  }

 private:
  struct Waiter {
    int n = 0;
    sample::Group ready;
  };
  sample::Mutex m_;
  int free_;                                  // guarded by m_
  std::deque<std::shared_ptr<Waiter>> line_;  // guarded by m_
};

// The open client connections, so that a stop can wake their readers.
struct Server {
  Server(const Config& c, std::vector<Backend> backends)
      : cfg(c), pool(std::move(backends), static_cast<std::size_t>(c.max_calls)), slots(c.max_calls) {}

  const Config& cfg;
  Counters counters;
  BackendPool pool;
  CallSlots slots;
  sample::Group live;  // every call task that has not ended
  std::atomic<std::uint64_t> call_seq{0};
};

// What one request's calls share with it. The calls own it together with the
// connection task, so one that ends after the answer went out still finds it.
struct Request {
  static constexpr std::uint32_t kAnswered = 1u << 31;

  Clock::time_point deadline;
  sample::Group pending;  // calls not ended yet
  std::atomic<std::uint32_t> tally{0};  // calls answered in time; kAnswered once the answer is taken

  // Counts a call that came back; false if the answer already went out.
  bool count_in_time() {
    std::uint32_t v = tally.load();
    while (!(v & kAnswered)) {
      if (tally.compare_exchange_weak(v, v + 1)) return true;
    }
    return false;
  }
  // Takes the answer: the calls counted so far; later ones are late.
  std::uint32_t take_answer() { return tally.fetch_or(kAnswered) & ~kAnswered; }
};

[[noreturn]] void throw_errc(std::errc e, const char* what) { throw std::system_error(std::make_error_code(e), what); }

// What is left until deadline, rounded up to whole milliseconds (>= 1), or
// throws timed_out.
sample::Millis left_until(Clock::time_point deadline) {
  const auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) throw_errc(std::errc::timed_out, "call deadline");
  return std::chrono::ceil<sample::Millis>(left);
}

// One call on c: writes line, drops what earlier calls left owed, reads the
// echo and checks it, all by deadline. On a timeout (std::errc::timed_out),
// c.owed counts what is still to come and c stays usable; after another error,
// c.owed is kBroken or the caller closes c anyway.
void round_trip(BackendConn& c, const std::string& line, Clock::time_point deadline) {
  sample::Stream& s = c.stream;
  s.set_timeout(left_until(deadline));
  const std::size_t drop = c.owed;  // bytes before our reply
  c.owed = kBroken;                 // until the whole line is written
  s.write_all(line.data(), line.size());
  c.owed = drop + line.size();
  std::size_t pos = 0;  // bytes read of drop + line
  char buf[4096];
  while (c.owed > 0) {
    s.set_timeout(left_until(deadline));  // a timed-out read transfers nothing
    const std::size_t n = s.read(buf, std::min(sizeof buf, c.owed));
    if (n == 0) throw_errc(std::errc::connection_reset, "backend closed the connection");
    for (std::size_t i = 0; i < n; ++i) {
      if (pos + i >= drop && buf[i] != line[pos + i - drop]) {
        c.owed = kBroken;
        throw std::runtime_error("backend answered another line");
      }
    }
    pos += n;
    c.owed -= n;
  }
}

bool timed_out(const std::system_error& e) { return e.code() == std::errc::timed_out; }

enum class Outcome { answered, late, failed };

Outcome call_backend(Server& srv, Request& req, std::size_t b) {
  // Started too late to be in the answer (an overloaded server): spare the
  // backend.
  if (Clock::now() >= req.deadline) return Outcome::late;
  const std::string line = "call " + std::to_string(srv.call_seq.fetch_add(1)) + "\n";
  // A reused connection may have died while idle (backend restarted): one
  // more try on a new one (the other idle ones may be dead too), within the
  // same deadline.
  for (int attempt = 0;; ++attempt) {
    BackendPool::Lease lease;
    enum { ok, timeout, io_error, other } result = ok;
    try {
      lease = srv.pool.acquire(b, left_until(req.deadline), attempt > 0);
      round_trip(*lease.conn, line, req.deadline);
    } catch (const std::system_error& e) {
      result = timed_out(e) ? timeout : io_error;
    } catch (const std::exception&) {
      result = other;  // a wrong reply
    }
    switch (result) {
      case ok:
        srv.pool.release(lease);
        return req.count_in_time() ? Outcome::answered : Outcome::late;
      case timeout:
        srv.pool.release(lease);  // closed if it broke or owes too much
        return Outcome::late;
      case io_error:
        srv.pool.discard(lease);
        if (lease.reused && attempt == 0) continue;
        return Outcome::failed;
      case other:
        srv.pool.discard(lease);
        return Outcome::failed;
    }
  }
}

void run_call(Server& srv, const std::shared_ptr<Request>& req, std::size_t backend) {
  Outcome o = Outcome::failed;
  try {
    o = call_backend(srv, *req, backend);
  } catch (const std::exception&) {
  }
  switch (o) {
    case Outcome::answered: srv.counters.calls_answered.fetch_add(1); break;
    case Outcome::late: srv.counters.calls_late.fetch_add(1); break;
    case Outcome::failed: srv.counters.calls_failed.fetch_add(1); break;
  }
  req->pending.done();
}

// Fans out k calls and gathers them until the deadline: the answer line.
// The deadline runs from when the request has room for its calls.
std::string fan_out(Server& srv, std::string_view id, int k) {
  srv.slots.acquire(k);
  auto req = std::make_shared<Request>();
  req->deadline = Clock::now() + sample::Millis(srv.cfg.call_deadline_ms);
  req->pending.add(k);
  Counters& c = srv.counters;
  c.calls_made.fetch_add(static_cast<std::uint64_t>(k));
  for (int i = 0; i < k; ++i) {
    const std::size_t backend = srv.pool.pick();  // in request order, whatever runs first
    c.call_started();
    srv.live.add(1);
    bool started = true;
    try {
      sample::go([&srv, req, backend] {
        run_call(srv, req, backend);
        srv.counters.call_ended();
        srv.slots.release(1);
        srv.live.done();
      });
    } catch (const std::exception&) {  // the twin could not start a thread
      started = false;
    }
    if (!started) {
      c.call_ended();
      c.calls_refused.fetch_add(1);
      c.calls_failed.fetch_add(1);
      srv.slots.release(1);
      srv.live.done();
      req->pending.done();
    }
  }
  req->pending.wait_until(req->deadline);
  const std::uint32_t answered = req->take_answer();
  c.requests_served.fetch_add(1);
  std::string out = "ok ";
  out.append(id);
  out += ' ' + std::to_string(answered) + ' ' + std::to_string(k) + '\n';
  return out;
}

// A field of /proc/self/status in its unit (kB fields in bytes), or 0.
struct ProcStatus {
  std::uint64_t threads = 0, rss_bytes = 0, rss_peak_bytes = 0;
};
ProcStatus read_proc_status() {
  ProcStatus st;
  FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) return st;
  char line[256];
  unsigned long long v = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "Threads: %llu", &v) == 1) st.threads = v;
    else if (std::sscanf(line, "VmRSS: %llu kB", &v) == 1) st.rss_bytes = v * 1024;
    else if (std::sscanf(line, "VmHWM: %llu kB", &v) == 1) st.rss_peak_bytes = v * 1024;
  }
  std::fclose(f);
  return st;
}

std::string stats_json(Server& srv) {
  const Counters& c = srv.counters;
  const ProcStatus ps = read_proc_status();
  std::string j = "{\"runtime\":\"";
  j += sample::runtime_name();
  j += '"';
  auto field = [&j](const char* name, std::uint64_t v) {
    j += ",\"";
    j += name;
    j += "\":";
    j += std::to_string(v);
  };
  field("connections_open", c.connections_open.load());
  field("requests_served", c.requests_served.load());
  field("calls_made", c.calls_made.load());
  field("calls_answered", c.calls_answered.load());
  field("calls_late", c.calls_late.load());
  field("calls_failed", c.calls_failed.load());
  field("calls_refused", c.calls_refused.load());
  field("live_tasks", static_cast<std::uint64_t>(c.live_tasks.load()));
  field("peak_tasks", static_cast<std::uint64_t>(c.peak_tasks.load()));
  field("live_calls", static_cast<std::uint64_t>(c.live_calls.load()));
  field("peak_calls", static_cast<std::uint64_t>(c.peak_calls.load()));
  field("requests_waiting", srv.slots.waiting());
  field("backend_conns", srv.pool.open());
  field("backend_connects", srv.pool.connects());
  field("threads", ps.threads);
  field("rss_bytes", ps.rss_bytes);
  field("rss_peak_bytes", ps.rss_peak_bytes);
#if !SAMPLE_PTHREAD
  field("fibers_live", tendril::stats().fibers_live);
#endif
  j += "}\n";
  return j;
}

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    const std::size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

std::string handle_line(Server& srv, std::string_view line) {
  const auto w = split(line);
  if (w.empty()) return "err empty line\n";
  if (w[0] == "stats") {
    if (w.size() != 1) return "err usage: stats\n";
    return stats_json(srv);
  }
  if (w[0] != "q") return "err unknown command (want: q <id> [k] | stats)\n";
  if (w.size() < 2 || w.size() > 3) return "err usage: q <id> [k]\n";
  if (w[1].size() > kMaxId) return "err id longer than " + std::to_string(kMaxId) + " bytes\n";
  int k = srv.cfg.k;
  if (w.size() == 3) {
    auto [end, ec] = std::from_chars(w[2].data(), w[2].data() + w[2].size(), k);
    if (ec != std::errc() || end != w[2].data() + w[2].size() || k < 1 || k > srv.cfg.max_k)
      return "err k must be an integer in 1.." + std::to_string(srv.cfg.max_k) + "\n";
  }
  return fan_out(srv, w[1], k);
}

void serve_connection(Server& srv, sample::Stream& s) {
  s.set_nodelay();
  static const char kTooLong[] = "err line longer than 4096 bytes\n";
  std::string in;
  char chunk[4096];
  try {
    for (;;) {
      std::size_t nl;
      while ((nl = in.find('\n')) != std::string::npos && nl <= kMaxLine) {
        std::string_view line(in.data(), nl);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        const std::string reply = handle_line(srv, line);
        s.write_all(reply.data(), reply.size());
        in.erase(0, nl + 1);
      }
      if (nl != std::string::npos || in.size() > kMaxLine) {  // a line over the limit: close
        s.write_all(kTooLong, sizeof kTooLong - 1);
        return;
      }
      const std::size_t n = s.read(chunk, sizeof chunk);
      if (n == 0) return;
      in.append(chunk, n);
    }
  } catch (const std::exception&) {
    // A reset peer, or a stop that shut the connection down, ends it only.
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  const bool twin = std::string(sample::runtime_name()) == "pthread";
  sample::Flags flags(twin ? "fanout-pthread" : "fanout",
                      std::string("scatter-gather aggregator on ") + sample::runtime_name() +
                          ": each request fans out to k backend calls with a deadline");
  flags.add("host", &cfg.host, "address to listen on");
  flags.add("port", &cfg.port, "port to listen on (0: any, printed at start)");
  flags.add("backend", &cfg.backend, "backends, host:port[,host:port...], round robin (required)");
  flags.add("k", &cfg.k, "calls per request when the request names none");
  flags.add("call-deadline-ms", &cfg.call_deadline_ms,
            "deadline of a request's calls, from when they start: the answer counts the calls back by then");
  flags.add("max-k", &cfg.max_k, "largest k a request may ask for (at most --max-calls)");
  flags.add("max-calls", &cfg.max_calls,
            "calls live at once in the process (a request waits until its k fit), and most backend connections open");
  flags.add("workers", &cfg.workers, "tendril worker threads (0: one per CPU; ignored by the pthread twin)");
  flags.add("backlog", &cfg.backlog, "listen backlog");
  flags.parse(argc, argv);

  const char* prog = twin ? "fanout-pthread" : "fanout";
  auto bad = [prog](const std::string& why) {
    std::fprintf(stderr, "%s: %s (see --help)\n", prog, why.c_str());
    return 2;
  };
  std::vector<Backend> backends;
  std::string why;
  if (cfg.backend.empty()) return bad("--backend is required");
  if (!parse_backends(cfg.backend, &backends, &why)) return bad(why);
  if (cfg.port < 0 || cfg.port > 65535) return bad("--port must be 0..65535");
  if (cfg.max_k < 1) return bad("--max-k must be at least 1");
  if (cfg.k < 1 || cfg.k > cfg.max_k) return bad("--k must be 1..--max-k");
  if (cfg.call_deadline_ms < 1) return bad("--call-deadline-ms must be at least 1");
  if (cfg.max_calls < 1) return bad("--max-calls must be at least 1");
  if (cfg.max_k > cfg.max_calls) return bad("--max-k must not exceed --max-calls");
  if (cfg.backlog < 1) return bad("--backlog must be at least 1");

  sample::block_stop_signals();
  sample::raise_fd_limit();
  int status = 0;
  try {
    sample::serve(cfg.workers, [&](sample::StopToken& stop) {
      Server srv(cfg, std::move(backends));
      auto l = sample::Listener::bind(cfg.host, static_cast<std::uint16_t>(cfg.port), cfg.backlog);
      std::printf("fanout (%s) listening on %s:%u\n", sample::runtime_name(), cfg.host.c_str(), l.port());
      std::fflush(stdout);
      // Connections end once a stop shuts them down; their calls end by their
      // deadlines (srv.live).
      sample::accept_until_stopped(
          l, stop,
          [&srv](sample::Stream& s) {
            srv.counters.connections_open.fetch_add(1);
            srv.counters.task_started();
            serve_connection(srv, s);
            srv.counters.connections_open.fetch_sub(1);
            srv.counters.task_ended();
          },
          {},
          [&](const std::exception& e) {  // the twin could not start a thread
            static sample::ThrottledReport report;
            report(std::string(prog) + ": connection dropped: " + e.what());
          });
      srv.live.wait();
      srv.pool.close_idle();
      std::printf("%s: stopped\n", prog);
      std::fflush(stdout);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", prog, e.what());
    status = 1;
  }
  return status;
}
