// fanout_load: the fanout sample (scatter-gather, k backend calls per request,
// each with a deadline) under closed-loop load, on tendril and on its
// thread-per-connection-and-per-call twin.
//
// It starts the echo sample as the backend (one for the whole run, the same
// for both servers), then for each k and each server a fresh fanout process
// (so peaks are per row), and drives it with N client connections (fibers in
// this process, the same client for both servers), each sending `q <id> <k>`
// and waiting for the answer before sending the next, for S seconds. A
// separate connection polls the server's `stats` line every 200 ms.
//
//   fanout_load [--quick] [--clients N] [--seconds S] [--k-list 10,100]
//               [--deadline-ms 50] [--max-calls 1000] [--markdown FILE]
//               [--servers pthread,tendril] [--backend host:port]
//               [--echo PATH] [--fanout PATH] [--fanout-pthread PATH]
//               [--at host:port]
//
// --quick: 2 s per run instead of 5 (same clients and k).
//
// Per row: requests/s, p50/p99 latency, the fraction of calls answered in
// time, the server's peak of live tasks (connections + calls, counted by the
// server itself), the peak of its threads (twin) or live fibers (tendril) as
// polled, and its peak RSS (VmHWM). Ratios are tendril/pthread.
//
// Descriptors and threads: with 1,000 clients and k = 100, one backend
// connection per call would be 100,000 descriptors, five times the hard limit
// here (20,000), and one thread per call would be 100,000 threads, three times
// this machine's pid_max (32,768, shared with everything else running). The
// fanout server pools its backend connections for the whole process and
// bounds the calls live at once by --max-calls (passed to both servers; 1,000
// by default): a request waits until its calls fit, a call holds at most one
// connection, so the server opens at most max-calls backend connections and
// the twin runs at most max-calls call threads besides one per client. Beyond
// about (calls/s sustained) x (deadline) calls in flight, every call is late
// on either server: 10,000 here gives 15% answered on tendril and 40% on the
// twin at k = 10, 1,000 gives 99% and 65%.
//
// Binaries are found beside this one's build tree (../samples/...) unless
// given. With --at, nothing is started: the fanout server already running
// there is driven (one row per k; its peaks are then since it started). Children are stopped with SIGTERM at the end of their row (their exit
// status is checked), killed if this program exits early, and die with it
// (PR_SET_PDEATHSIG). Progress goes to stderr, the table to stdout.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bench/report/table.hpp"
#include "samples/common/child_process.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Config {
  int clients = 1000;
  double seconds = 5;
  std::vector<int> ks = {10, 100};
  int deadline_ms = 50;
  int max_calls = 1000;
  std::string markdown;
  std::vector<std::string> servers = {"pthread", "tendril"};
  std::string backend;  // host:port of a running backend; empty: start echo
  std::string echo_bin, fanout_bin, fanout_pthread_bin;
  std::string at;  // host:port of a running fanout server; empty: start them
  bool quick = false;
};

// ---- child processes ----

std::mutex g_children_mu;
std::vector<pid_t> g_children;  // running children, killed if we exit early

void kill_children() {
  std::lock_guard<std::mutex> g(g_children_mu);
  for (pid_t p : g_children) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  g_children.clear();
}

extern "C" void on_fatal_signal(int sig) {
  // Async-signal-safe: only kill(); PR_SET_PDEATHSIG reaps the rest.
  for (pid_t p : g_children) ::kill(p, SIGKILL);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { kill(); }

  // Starts argv with stdout on a pipe; stderr is ours. Called from the main
  // thread (outside tendril::run), which lives as long as the program, so the
  // child's PR_SET_PDEATHSIG fires only when the program ends.
  bool start(const std::vector<std::string>& argv) {
    std::lock_guard<std::mutex> g(g_children_mu);
    pid_ = sample::spawn_with_stdout_pipe(argv, &out_);
    if (pid_ < 0) return false;
    g_children.push_back(pid_);
    return true;
  }

  // The next line of its stdout, or nullopt at its end or after timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
      if (left <= 0) return std::nullopt;
      pollfd pfd{out_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left)) <= 0) continue;
      char b[512];
      const ssize_t n = ::read(out_, b, sizeof b);
      if (n <= 0) return std::nullopt;
      buf_.append(b, static_cast<std::size_t>(n));
    }
  }

  // SIGTERM, then the wait status; SIGKILL (and -1) if it did not exit in time.
  int stop(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    const auto until = Clock::now() + timeout;
    int status = -1;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (Clock::now() > until) {
        kill();
        return -1;
      }
      ::usleep(10000);  // waiting for an exit status: nothing to read meanwhile
    }
    forget();
    return status;
  }

  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    forget();
  }

 private:
  void forget() {
    std::lock_guard<std::mutex> g(g_children_mu);
    g_children.erase(std::remove(g_children.begin(), g_children.end(), pid_), g_children.end());
    pid_ = -1;
    if (out_ >= 0) ::close(std::exchange(out_, -1));
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
};

// The port in "<name> (<runtime>) listening on <host>:<port>", or 0.
std::uint16_t port_of(const std::optional<std::string>& line) {
  if (!line || line->find(" listening on ") == std::string::npos) return 0;
  return static_cast<std::uint16_t>(std::atoi(line->c_str() + line->rfind(':') + 1));
}

// ---- the load ----

struct Row {
  std::string server;
  int k = 0;
  bool ran = false;
  std::string why_not;
  double rps = 0, p50_ms = 0, p99_ms = 0, answered = 0;
  std::uint64_t requests = 0, client_errors = 0;
  std::uint64_t calls_made = 0, calls_late = 0, calls_failed = 0, calls_refused = 0;
  std::uint64_t peak_tasks = 0, peak_threads = 0, peak_fibers = 0, rss_peak = 0;
  int exit_status = 0;
};

std::map<std::string, std::uint64_t> parse_stats(const std::string& line) {
  // {"runtime":"tendril","connections_open":3,...}: numbers only.
  std::map<std::string, std::uint64_t> out;
  std::size_t i = 0;
  while ((i = line.find('"', i)) != std::string::npos) {
    const std::size_t end = line.find('"', i + 1);
    if (end == std::string::npos || end + 1 >= line.size() || line[end + 1] != ':') break;
    const std::string key = line.substr(i + 1, end - i - 1);
    if (end + 2 < line.size() && line[end + 2] == '"') {  // a string value: skipped
      const std::size_t close = line.find('"', end + 3);
      if (close == std::string::npos) break;
      i = close + 1;
      continue;
    }
    std::uint64_t v = 0;
    auto [q, ec] = std::from_chars(line.data() + end + 2, line.data() + line.size(), v);
    if (ec != std::errc()) break;
    out[key] = v;
    i = static_cast<std::size_t>(q - line.data());
  }
  return out;
}

// One request/answer line exchange on a client stream with a line buffer.
bool ask(tendril::net::TcpStream& s, std::string& buf, const std::string& request, std::string* answer) {
  s.write_all(request.data(), request.size());
  char chunk[4096];
  for (;;) {
    if (auto nl = buf.find('\n'); nl != std::string::npos) {
      answer->assign(buf, 0, nl);
      buf.erase(0, nl + 1);
      return true;
    }
    const std::size_t n = s.read(chunk, sizeof chunk);
    if (n == 0) return false;
    buf.append(chunk, n);
  }
}

double percentile(std::vector<std::uint64_t>& v, double p) {
  if (v.empty()) return 0;
  const std::size_t k = std::min(v.size() - 1, static_cast<std::size_t>(static_cast<double>(v.size()) * p));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]);
}

// Drives the server at port with cfg.clients closed-loop clients for
// cfg.seconds; fills the measured fields of row.
void drive(const Config& cfg, const std::string& host, std::uint16_t port, Row& row) {
  const int n = cfg.clients;
  const std::string label = "[k=" + std::to_string(row.k) + " " + (row.server.empty() ? std::string("server") : row.server) + "]";
  std::vector<std::vector<std::uint64_t>> lat(static_cast<std::size_t>(n));  // ns per request
  std::atomic<std::uint64_t> done_requests{0}, answered_calls{0}, asked_calls{0}, errors{0}, connect_errors{0};
  std::atomic<bool> finished{false};
  tendril::WaitGroup connected, done;
  connected.add(n);
  done.add(n);
  Clock::time_point start{}, end{};
  std::atomic<bool> started{false};
  std::mutex start_mu;

  for (int i = 0; i < n; ++i) {
    tendril::spawn([&, i] {
      auto& mine = lat[static_cast<std::size_t>(i)];
      mine.reserve(256);
      tendril::net::TcpStream c;
      try {
        c = tendril::net::TcpStream::connect(host, port, 10s);
        c.set_nodelay(true);
        c.set_timeout(60s);  // a hung server ends the run as errors, not a hang
      } catch (const std::exception&) {
        connect_errors.fetch_add(1);
      }
      connected.done();
      connected.wait();
      {
        std::lock_guard<std::mutex> g(start_mu);
        if (!started.exchange(true)) {
          start = Clock::now();
          end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.seconds));
        }
      }
      std::string buf, answer;
      const std::string tail = " " + std::to_string(row.k) + "\n";
      bool ok = c.is_open();
      try {
        for (std::uint64_t seq = 0; ok && Clock::now() < end; ++seq) {
          const std::string req = "q " + std::to_string(i) + "." + std::to_string(seq) + tail;
          const auto t0 = Clock::now();
          if (!ask(c, buf, req, &answer)) {
            ok = false;
            break;
          }
          mine.push_back(static_cast<std::uint64_t>((Clock::now() - t0).count()));
          unsigned answered = 0, k = 0;
          char id[64];
          if (std::sscanf(answer.c_str(), "ok %63s %u %u", id, &answered, &k) != 3 || k != static_cast<unsigned>(row.k)) {
            ok = false;
            break;
          }
          answered_calls.fetch_add(answered, std::memory_order_relaxed);
          asked_calls.fetch_add(k, std::memory_order_relaxed);
          done_requests.fetch_add(1, std::memory_order_relaxed);
        }
      } catch (const std::exception&) {
        ok = false;
      }
      if (!ok && c.is_open()) errors.fetch_add(1);
      done.done();
    }).detach();
  }

  // The stats poller: its own connection, a line every 200 ms, progress
  // every second.
  std::map<std::string, std::uint64_t> last;
  std::string runtime;
  tendril::Fiber poller = tendril::spawn([&] {
    tendril::net::TcpStream s;
    std::string buf, line;
    try {
      s = tendril::net::TcpStream::connect(host, port, 10s);
      s.set_timeout(60s);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s stats connection: %s\n", label.c_str(), e.what());
      return;
    }
    auto poll_once = [&] {
      if (!ask(s, buf, "stats\n", &line)) return false;
      last = parse_stats(line);
      runtime = line.find("\"runtime\":\"pthread\"") != std::string::npos ? "pthread" : "tendril";
      row.peak_threads = std::max(row.peak_threads, last["threads"]);
      row.peak_fibers = std::max(row.peak_fibers, last["fibers_live"]);
      row.rss_peak = std::max(row.rss_peak, last["rss_bytes"]);
      return true;
    };
    int ticks = 0;
    try {
      while (!finished.load()) {
        if (!poll_once()) break;
        if (++ticks % 5 == 0) {
          const double asked = static_cast<double>(asked_calls.load());
          std::fprintf(stderr, "%s %4.1f s: %llu requests, %.1f%% of calls answered, %llu live tasks, %llu threads\n",
                       label.c_str(), ticks * 0.2, static_cast<unsigned long long>(done_requests.load()),
                       asked > 0 ? 100.0 * static_cast<double>(answered_calls.load()) / asked : 0.0,
                       static_cast<unsigned long long>(last["live_tasks"]),
                       static_cast<unsigned long long>(last["threads"]));
        }
        tendril::this_fiber::sleep_for(200ms);
      }
      poll_once();  // the final counters, peaks and VmHWM
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s stats connection: %s\n", label.c_str(), e.what());
    }
  });

  done.wait();
  const auto stop = Clock::now();
  finished.store(true);
  poller.join();

  std::vector<std::uint64_t> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  row.ran = true;
  if (row.server.empty()) row.server = runtime;
  row.requests = done_requests.load();
  row.client_errors = errors.load() + connect_errors.load();
  const double secs = started ? std::chrono::duration<double>(stop - start).count() : 0;
  row.rps = secs > 0 ? static_cast<double>(row.requests) / secs : 0;
  row.p50_ms = percentile(all, 0.50) / 1e6;
  row.p99_ms = percentile(all, 0.99) / 1e6;
  row.answered = asked_calls.load() ? static_cast<double>(answered_calls.load()) / static_cast<double>(asked_calls.load()) : 0;
  row.calls_made = last["calls_made"];
  row.calls_late = last["calls_late"];
  row.calls_failed = last["calls_failed"];
  row.calls_refused = last["calls_refused"];
  row.peak_tasks = last["peak_tasks"];
  row.rss_peak = std::max(row.rss_peak, last["rss_peak_bytes"]);
}

// ---- the report ----

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string count(std::uint64_t v) { return v ? std::to_string(v) : "-"; }
std::string ratio(double t, double p) { return p > 0 && t > 0 ? fmt("%.2fx", t / p) : "-"; }

std::string notes(const Row& r) {
  std::string n;
  auto add = [&n](const std::string& s) { n += (n.empty() ? "" : "; ") + s; };
  if (!r.ran) return "not run: " + r.why_not;
  if (r.calls_refused) add(std::to_string(r.calls_refused) + " calls not started (no thread)");
  if (r.calls_failed > r.calls_refused) add(std::to_string(r.calls_failed - r.calls_refused) + " calls failed");
  if (r.client_errors) add(std::to_string(r.client_errors) + " client errors");
  if (r.exit_status != 0) add("server did not stop cleanly (status " + std::to_string(r.exit_status) + ")");
  return n;
}

using bench::render;
using bench::Table;

Table make_table(const std::vector<Row>& rows) {
  Table t;
  t.left = 2;  // k, server
  t.last_left = true;  // notes
  t.header = {"k", "server", "req/s", "p50 ms", "p99 ms", "answered", "peak tasks", "peak threads", "peak fibers",
              "RSS peak MiB", "notes"};
  auto mib = [](std::uint64_t b) { return b ? fmt("%.1f", static_cast<double>(b) / (1 << 20)) : "-"; };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    if (!r.ran) {
      t.rows.push_back({std::to_string(r.k), r.server, "-", "-", "-", "-", "-", "-", "-", "-", notes(r)});
    } else {
      t.rows.push_back({std::to_string(r.k), r.server, fmt("%.0f", r.rps), fmt("%.2f", r.p50_ms), fmt("%.2f", r.p99_ms),
                        fmt("%.1f%%", 100 * r.answered), count(r.peak_tasks), count(r.peak_threads),
                        r.server == "tendril" ? count(r.peak_fibers) : "-", mib(r.rss_peak), notes(r)});
    }
    // After the last row of a k: tendril/pthread.
    if (i + 1 == rows.size() || rows[i + 1].k != r.k) {
      const Row *t_row = nullptr, *p_row = nullptr;
      for (const Row& x : rows)
        if (x.k == r.k && x.ran) (x.server == "tendril" ? t_row : p_row) = &x;
      if (t_row && p_row)
        t.rows.push_back({std::to_string(r.k), "tendril/pthread", ratio(t_row->rps, p_row->rps),
                          ratio(t_row->p50_ms, p_row->p50_ms), ratio(t_row->p99_ms, p_row->p99_ms),
                          ratio(t_row->answered, p_row->answered),
                          ratio(static_cast<double>(t_row->peak_tasks), static_cast<double>(p_row->peak_tasks)),
                          "-", "-",
                          ratio(static_cast<double>(t_row->rss_peak), static_cast<double>(p_row->rss_peak)), ""});
    }
  }
  return t;
}

// ---- set-up ----

std::string self_dir() {
  char b[4096];
  const ssize_t n = ::readlink("/proc/self/exe", b, sizeof b - 1);
  if (n <= 0) return ".";
  std::string p(b, static_cast<std::size_t>(n));
  return p.substr(0, p.rfind('/'));
}

bool is_file(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// build/samples/<name>: where every sample binary is built.
std::string find_sample(const std::string& name) { return self_dir() + "/../samples/" + name; }

std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> out;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    int v = 0;
    auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, v);
    if (ec != std::errc() || p != s.data() + j || v < 1) return {};
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

std::vector<std::string> parse_words(const std::string& s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    std::size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--quick] [--clients N] [--seconds S] [--k-list 10,100] [--deadline-ms 50]\n"
               "       [--max-calls 1000] [--markdown FILE] [--servers pthread,tendril] [--backend host:port]\n"
               "       [--echo PATH] [--fanout PATH] [--fanout-pthread PATH] [--at host:port]\n",
               argv0);
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  bool seconds_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0], 2);
      return argv[++i];
    };
    if (a == "--help" || a == "-h") usage(argv[0], 0);
    else if (a == "--quick") cfg.quick = true;
    else if (a == "--clients") cfg.clients = std::atoi(value().c_str());
    else if (a == "--seconds") cfg.seconds = std::atof(value().c_str()), seconds_set = true;
    else if (a == "--k-list") cfg.ks = parse_ints(value());
    else if (a == "--deadline-ms") cfg.deadline_ms = std::atoi(value().c_str());
    else if (a == "--max-calls") cfg.max_calls = std::atoi(value().c_str());
    else if (a == "--markdown") cfg.markdown = value();
    else if (a == "--servers") cfg.servers = parse_words(value());
    else if (a == "--backend") cfg.backend = value();
    else if (a == "--echo") cfg.echo_bin = value();
    else if (a == "--fanout") cfg.fanout_bin = value();
    else if (a == "--fanout-pthread") cfg.fanout_pthread_bin = value();
    else if (a == "--at") cfg.at = value();
    else usage(argv[0], 2);
  }
  if (cfg.quick && !seconds_set) cfg.seconds = 2;
  if (cfg.clients < 1 || cfg.seconds <= 0 || cfg.ks.empty() || cfg.deadline_ms < 1 || cfg.max_calls < 1) usage(argv[0], 2);
  for (const auto& s : cfg.servers)
    if (s != "tendril" && s != "pthread") usage(argv[0], 2);
  if (cfg.echo_bin.empty()) cfg.echo_bin = find_sample("echo");
  if (cfg.fanout_bin.empty()) cfg.fanout_bin = find_sample("fanout");
  if (cfg.fanout_pthread_bin.empty()) cfg.fanout_pthread_bin = find_sample("fanout-pthread");
  for (const auto& [name, path] : {std::pair{"tendril", cfg.fanout_bin}, std::pair{"pthread", cfg.fanout_pthread_bin}}) {
    if (cfg.at.empty() && std::find(cfg.servers.begin(), cfg.servers.end(), name) != cfg.servers.end() && !is_file(path)) {
      std::fprintf(stderr, "fanout_load: no server binary at %s (build the samples, or pass its path)\n", path.c_str());
      return 1;
    }
  }
  if (cfg.at.empty() && cfg.backend.empty() && !is_file(cfg.echo_bin)) {
    std::fprintf(stderr, "fanout_load: no echo backend at %s (build the samples, or pass --echo or --backend)\n",
                 cfg.echo_bin.c_str());
    return 1;
  }

  // Both ends of every client connection are ours or the server's: we need a
  // descriptor per client (+ the stats connection), the server one per client
  // plus its backend pool (at most --max-calls).
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  ::getrlimit(RLIMIT_NOFILE, &rl);
  const long fd_room = static_cast<long>(rl.rlim_cur) - 100;
  std::string capped;
  if (cfg.clients > fd_room) {
    capped = "clients capped from " + std::to_string(cfg.clients) + " by RLIMIT_NOFILE";
    cfg.clients = static_cast<int>(fd_room);
  }
  if (cfg.clients + cfg.max_calls > fd_room)
    std::fprintf(stderr, "fanout_load: warning: %d clients + %d pooled backend connections may not fit in the server's %ld descriptors\n",
                 cfg.clients, cfg.max_calls, fd_room);

  std::atexit(kill_children);
  ::signal(SIGINT, on_fatal_signal);
  ::signal(SIGTERM, on_fatal_signal);
  ::signal(SIGPIPE, SIG_IGN);

  std::string ks;
  for (int k : cfg.ks) ks += (ks.empty() ? "" : ",") + std::to_string(k);
  const int max_k = *std::max_element(cfg.ks.begin(), cfg.ks.end());
  if (max_k > cfg.max_calls) {
    std::fprintf(stderr, "fanout_load: k = %d does not fit in --max-calls %d\n", max_k, cfg.max_calls);
    return 2;
  }

  Child echo;
  std::string backend = cfg.backend;
  if (backend.empty() && cfg.at.empty()) {
    std::fprintf(stderr, "starting the echo backend (%s)...\n", cfg.echo_bin.c_str());
    if (!echo.start({cfg.echo_bin, "--host", "127.0.0.1", "--port", "0"})) {
      std::fprintf(stderr, "fanout_load: cannot start %s\n", cfg.echo_bin.c_str());
      return 1;
    }
    const std::uint16_t p = port_of(echo.read_line(10s));
    if (p == 0) {
      std::fprintf(stderr, "fanout_load: the echo backend did not start\n");
      return 1;
    }
    backend = "127.0.0.1:" + std::to_string(p);
  }

  if (cfg.at.empty()) {
    std::printf("fanout_load: %d clients, closed loop, %.1f s per run, k in {%s}, call deadline %d ms, max-calls %d,\n"
                "backend %s (%s), %ld CPUs%s%s\n",
                cfg.clients, cfg.seconds, ks.c_str(), cfg.deadline_ms, cfg.max_calls, backend.c_str(),
                cfg.backend.empty() ? "the echo sample on tendril" : "given", ::sysconf(_SC_NPROCESSORS_ONLN),
                capped.empty() ? "" : "; ", capped.c_str());
  } else {
    std::printf("fanout_load: %d clients, closed loop, %.1f s per run, k in {%s}, the server running at %s%s%s\n",
                cfg.clients, cfg.seconds, ks.c_str(), cfg.at.c_str(), capped.empty() ? "" : "; ", capped.c_str());
  }
  std::fflush(stdout);

  std::vector<Row> rows;
  for (int k : cfg.ks) {
    if (!cfg.at.empty()) {  // a running server: drive it, nothing to start or stop
      Row row;
      row.k = k;
      const std::size_t colon = cfg.at.rfind(':');
      const std::string host = colon == std::string::npos ? "127.0.0.1" : cfg.at.substr(0, colon);
      const auto port = static_cast<std::uint16_t>(std::atoi(cfg.at.c_str() + (colon == std::string::npos ? 0 : colon + 1)));
      try {
        tendril::run([&] { drive(cfg, host, port, row); });
      } catch (const std::exception& e) {
        row.ran = false;
        row.why_not = e.what();
      }
      rows.push_back(row);
      continue;
    }
    for (const auto& server : cfg.servers) {
      Row row;
      row.server = server;
      row.k = k;
      const std::string label = "[k=" + std::to_string(k) + " " + server + "]";
      const std::string& bin = server == "tendril" ? cfg.fanout_bin : cfg.fanout_pthread_bin;
      Child srv;
      std::fprintf(stderr, "%s starting %s...\n", label.c_str(), bin.c_str());
      if (!srv.start({bin, "--host", "127.0.0.1", "--port", "0", "--backend", backend, "--k", std::to_string(k),
                      "--call-deadline-ms", std::to_string(cfg.deadline_ms), "--max-calls",
                      std::to_string(cfg.max_calls), "--max-k", std::to_string(max_k)})) {
        row.why_not = "cannot start " + bin;
        rows.push_back(row);
        continue;
      }
      const std::uint16_t port = port_of(srv.read_line(10s));
      if (port == 0) {
        row.why_not = "the server did not start";
        srv.kill();
        rows.push_back(row);
        continue;
      }
      try {
        tendril::run([&] { drive(cfg, "127.0.0.1", port, row); });
      } catch (const std::exception& e) {
        row.ran = false;
        row.why_not = e.what();
      }
      std::fprintf(stderr, "%s stopping the server...\n", label.c_str());
      const int st = srv.stop(30s);
      row.exit_status = (st >= 0 && WIFEXITED(st)) ? WEXITSTATUS(st) : (st < 0 ? -1 : 128 + WTERMSIG(st));
      std::fprintf(stderr, "%s %.0f req/s, p99 %.2f ms, %.1f%% answered, peak %llu tasks, exit %d\n", label.c_str(),
                   row.rps, row.p99_ms, 100 * row.answered, static_cast<unsigned long long>(row.peak_tasks),
                   row.exit_status);
      rows.push_back(row);
    }
  }
  if (cfg.at.empty() && cfg.backend.empty() && echo.stop(10s) != 0) std::fprintf(stderr, "fanout_load: the echo backend did not stop cleanly\n");

  const Table t = make_table(rows);
  std::printf("\n%s", render(t, false).c_str());
  std::printf("(answered: calls answered within the deadline / calls asked; peak tasks: live connections + calls,\n"
              " counted by the server; peak threads/fibers: polled every 200 ms; RSS peak: the server's VmHWM)\n");
  std::fflush(stdout);

  if (!cfg.markdown.empty()) {
    FILE* f = std::fopen(cfg.markdown.c_str(), "a");
    if (f == nullptr) {
      std::perror(cfg.markdown.c_str());
      return 1;
    }
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::localtime(&now));
    std::fprintf(f,
                 "\n### fanout_load (%s)\n\n%d clients, closed loop, %.1f s per run, call deadline %d ms, "
                 "max-calls %d, backend: %s, %ld CPUs%s%s.\n\n%s",
                 date, cfg.clients, cfg.seconds, cfg.deadline_ms, cfg.max_calls,
                 cfg.backend.empty() ? "the echo sample on tendril" : cfg.backend.c_str(),
                 ::sysconf(_SC_NPROCESSORS_ONLN), capped.empty() ? "" : "; ", capped.c_str(),
                 render(t, true).c_str());
    std::fclose(f);
    std::fprintf(stderr, "appended the table to %s\n", cfg.markdown.c_str());
  }
  return 0;
}
