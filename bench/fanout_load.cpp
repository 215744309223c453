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
// there is driven (one row per k; its peaks are then since it started).
// Children are stopped with SIGTERM at the end of their row (their exit
// status is checked), killed if this program returns early, and die with it
// (PR_SET_PDEATHSIG) if it is killed. Progress goes to stderr, the table to
// stdout. Flags take --name value or --name=value; --help lists them.
#include <signal.h>
#include <sys/stat.h>
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
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bench/report/table.hpp"
#include "samples/common/child_process.hpp"
#include "samples/common/fd_limit.hpp"
#include "samples/common/flags.hpp"
#include "samples/common/host_port.hpp"

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
  // Calls still running when the last answer came: each outlived its
  // request's answer, holding a fiber (thread) and maybe a backend socket.
  std::uint64_t calls_left = 0;
  bool calls_left_known = false;
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

// What one drive() shares between its client fibers and its stats poller.
struct Load {
  std::string host;
  std::uint16_t port = 0;
  int k = 0;
  std::string label;  // "[k=10 tendril]", for progress lines
  std::vector<std::vector<std::uint64_t>> latencies;  // ns per request, per client
  std::atomic<std::uint64_t> requests{0}, answered_calls{0}, asked_calls{0}, errors{0}, connect_errors{0};
  std::atomic<bool> finished{false};
  tendril::WaitGroup connected, done;
  std::mutex start_mu;
  bool started = false;  // guarded by start_mu; then start and end are set
  Clock::time_point start{}, end{};
  std::map<std::string, std::uint64_t> last_stats;  // the poller's latest `stats`
  std::string runtime;                              // as the server reports it
};

// A client connection to the server; closed (with connect_errors counted) if
// it cannot connect.
tendril::net::TcpStream connect_client(Load& load) {
  tendril::net::TcpStream c;
  try {
    c = tendril::net::TcpStream::connect(load.host, load.port, 10s);
    c.set_nodelay(true);
    c.set_timeout(60s);  // a hung server ends the run as errors, not a hang
  } catch (const std::exception&) {
    load.connect_errors.fetch_add(1);
  }
  return c;
}

// Every client starts together: the first one through sets the run's window.
void start_window(Load& load, double seconds) {
  std::lock_guard<std::mutex> g(load.start_mu);
  if (load.started) return;
  load.started = true;
  load.start = Clock::now();
  load.end = load.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Closed loop until the window ends: `q <i>.<seq> <k>`, its answer, the next.
// False if the connection failed or an answer was wrong.
bool ask_until_end(Load& load, tendril::net::TcpStream& c, int i) {
  auto& mine = load.latencies[static_cast<std::size_t>(i)];
  mine.reserve(256);
  std::string buf, answer;
  const std::string tail = " " + std::to_string(load.k) + "\n";
  for (std::uint64_t seq = 0; Clock::now() < load.end; ++seq) {
    const std::string req = "q " + std::to_string(i) + "." + std::to_string(seq) + tail;
    const auto t0 = Clock::now();
    if (!ask(c, buf, req, &answer)) return false;
    mine.push_back(static_cast<std::uint64_t>((Clock::now() - t0).count()));
    unsigned answered = 0, k = 0;
    char id[64];
    if (std::sscanf(answer.c_str(), "ok %63s %u %u", id, &answered, &k) != 3 || k != static_cast<unsigned>(load.k))
      return false;
    load.answered_calls.fetch_add(answered, std::memory_order_relaxed);
    load.asked_calls.fetch_add(k, std::memory_order_relaxed);
    load.requests.fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

void run_client(Load& load, double seconds, int i) {
  tendril::net::TcpStream c = connect_client(load);
  load.connected.done();
  load.connected.wait();
  start_window(load, seconds);
  bool ok = c.is_open();
  try {
    ok = ok && ask_until_end(load, c, i);
  } catch (const std::exception&) {
    ok = false;
  }
  if (!ok && c.is_open()) load.errors.fetch_add(1);
  load.done.done();
}

// One `stats` line into load.last_stats and the row's polled peaks.
bool poll_stats_once(Load& load, tendril::net::TcpStream& s, std::string& buf, Row& row) {
  std::string line;
  if (!ask(s, buf, "stats\n", &line)) return false;
  load.last_stats = parse_stats(line);
  load.runtime = line.find("\"runtime\":\"pthread\"") != std::string::npos ? "pthread" : "tendril";
  row.peak_threads = std::max(row.peak_threads, load.last_stats["threads"]);
  row.peak_fibers = std::max(row.peak_fibers, load.last_stats["fibers_live"]);
  row.rss_peak = std::max(row.rss_peak, load.last_stats["rss_bytes"]);
  return true;
}

void print_progress(Load& load, int ticks) {
  const double asked = static_cast<double>(load.asked_calls.load());
  std::fprintf(stderr, "%s %4.1f s: %llu requests, %.1f%% of calls answered, %llu live tasks, %llu threads\n",
               load.label.c_str(), ticks * 0.2, static_cast<unsigned long long>(load.requests.load()),
               asked > 0 ? 100.0 * static_cast<double>(load.answered_calls.load()) / asked : 0.0,
               static_cast<unsigned long long>(load.last_stats["live_tasks"]),
               static_cast<unsigned long long>(load.last_stats["threads"]));
}

// The stats poller: its own connection, a line every 200 ms, progress every
// second, and a last line once the clients are done (final counters, peaks
// and VmHWM).
void poll_stats(Load& load, Row& row) {
  tendril::net::TcpStream s;
  std::string buf;
  try {
    s = tendril::net::TcpStream::connect(load.host, load.port, 10s);
    s.set_timeout(60s);
    for (int ticks = 1; !load.finished.load(); ++ticks) {
      if (!poll_stats_once(load, s, buf, row)) return;
      if (ticks % 5 == 0) print_progress(load, ticks);
      tendril::this_fiber::sleep_for(200ms);
    }
    poll_stats_once(load, s, buf, row);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s stats connection: %s\n", load.label.c_str(), e.what());
  }
}

// Right after the last answer (no request is in flight any more): the calls
// the server still runs, from a `stats` on a connection of its own.
void probe_calls_left(Load& load, Row& row) {
  try {
    tendril::net::TcpStream s = tendril::net::TcpStream::connect(load.host, load.port, 10s);
    s.set_timeout(60s);
    std::string buf, line;
    if (!ask(s, buf, "stats\n", &line)) return;
    auto stats = parse_stats(line);
    row.calls_left = stats["live_calls"];
    row.calls_left_known = stats.count("live_calls") != 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s stats after the load: %s\n", load.label.c_str(), e.what());
  }
}

// The measured fields of row, from the clients' counts and the last stats.
void summarize(Load& load, Clock::time_point stop, Row& row) {
  std::vector<std::uint64_t> all;
  for (auto& v : load.latencies) all.insert(all.end(), v.begin(), v.end());
  auto& last = load.last_stats;
  row.ran = true;
  if (row.server.empty()) row.server = load.runtime;
  row.requests = load.requests.load();
  row.client_errors = load.errors.load() + load.connect_errors.load();
  const double secs = load.started ? std::chrono::duration<double>(stop - load.start).count() : 0;
  row.rps = secs > 0 ? static_cast<double>(row.requests) / secs : 0;
  row.p50_ms = percentile(all, 0.50) / 1e6;
  row.p99_ms = percentile(all, 0.99) / 1e6;
  const std::uint64_t asked = load.asked_calls.load();
  row.answered = asked ? static_cast<double>(load.answered_calls.load()) / static_cast<double>(asked) : 0;
  row.calls_made = last["calls_made"];
  row.calls_late = last["calls_late"];
  row.calls_failed = last["calls_failed"];
  row.calls_refused = last["calls_refused"];
  row.peak_tasks = last["peak_tasks"];
  row.rss_peak = std::max(row.rss_peak, last["rss_peak_bytes"]);
}

// Drives the server at host:port with cfg.clients closed-loop clients for
// cfg.seconds; fills the measured fields of row. Runs inside tendril::run.
void drive(const Config& cfg, const std::string& host, std::uint16_t port, Row& row) {
  Load load;
  load.host = host;
  load.port = port;
  load.k = row.k;
  load.label = "[k=" + std::to_string(row.k) + " " + (row.server.empty() ? std::string("server") : row.server) + "]";
  load.latencies.resize(static_cast<std::size_t>(cfg.clients));
  load.connected.add(cfg.clients);
  load.done.add(cfg.clients);
  for (int i = 0; i < cfg.clients; ++i)
    tendril::spawn([&load, seconds = cfg.seconds, i] { run_client(load, seconds, i); }).detach();
  tendril::Fiber poller = tendril::spawn([&load, &row] { poll_stats(load, row); });
  load.done.wait();
  probe_calls_left(load, row);
  const auto stop = Clock::now();
  load.finished.store(true);
  poller.join();
  summarize(load, stop, row);
}

// ---- the report ----

std::string count(std::uint64_t v) { return v ? std::to_string(v) : "-"; }
std::string ratio(double t, double p) { return p > 0 && t > 0 ? bench::cell(t / p, "%.2fx") : "-"; }

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
              "RSS peak MiB", "calls left", "notes"};
  auto mib = [](std::uint64_t b) { return b ? bench::cell(static_cast<double>(b) / (1 << 20), "%.1f") : "-"; };
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    if (!r.ran) {
      t.rows.push_back({std::to_string(r.k), r.server, "-", "-", "-", "-", "-", "-", "-", "-", "-", notes(r)});
    } else {
      t.rows.push_back({std::to_string(r.k), r.server, bench::cell(r.rps, "%.0f"), bench::cell(r.p50_ms, "%.2f"), bench::cell(r.p99_ms, "%.2f"),
                        bench::cell(100 * r.answered, "%.1f%%"), count(r.peak_tasks), count(r.peak_threads),
                        r.server == "tendril" ? count(r.peak_fibers) : "-", mib(r.rss_peak),
                        r.calls_left_known ? std::to_string(r.calls_left) : "-", notes(r)});
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
                          ratio(static_cast<double>(t_row->rss_peak), static_cast<double>(p_row->rss_peak)), "-", ""});
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

void add_flags(sample::Flags& flags, Config& cfg, std::string& k_list, std::string& servers) {
  flags.add("quick", &cfg.quick, "2 s per run instead of 5 (unless --seconds)");
  flags.add("clients", &cfg.clients, "closed-loop client connections");
  flags.add("seconds", &cfg.seconds, "seconds per run");
  flags.add("k-list", &k_list, "calls per request, one row each: k,k,...");
  flags.add("deadline-ms", &cfg.deadline_ms, "the servers' --call-deadline-ms");
  flags.add("max-calls", &cfg.max_calls, "the servers' --max-calls");
  flags.add("markdown", &cfg.markdown, "append the table to this Markdown file");
  flags.add("servers", &servers, "which servers to start: pthread,tendril");
  flags.add("backend", &cfg.backend, "host:port of a running backend (empty: start the echo sample)");
  flags.add("echo", &cfg.echo_bin, "path of the echo sample (empty: beside this build)");
  flags.add("fanout", &cfg.fanout_bin, "path of the fanout sample (empty: beside this build)");
  flags.add("fanout-pthread", &cfg.fanout_pthread_bin, "path of its pthread twin (empty: beside this build)");
  flags.add("at", &cfg.at, "host:port of a running fanout server to drive (starts nothing)");
}

// The flags, checked; exits 2 on a bad one.
Config parse_config(int argc, char** argv) {
  Config cfg;
  std::string k_list = "10,100", servers = "pthread,tendril";
  sample::Flags flags("fanout_load", "the fanout sample under closed-loop load, on tendril and its pthread twin");
  add_flags(flags, cfg, k_list, servers);
  flags.parse(argc, argv);
  if (cfg.quick && !flags.given("seconds")) cfg.seconds = 2;
  cfg.ks = parse_ints(k_list);
  cfg.servers = parse_words(servers);
  if (cfg.clients < 1 || cfg.seconds <= 0 || cfg.ks.empty() || cfg.deadline_ms < 1 || cfg.max_calls < 1)
    flags.fail("--clients, --seconds, --k-list, --deadline-ms and --max-calls must be positive");
  for (const auto& s : cfg.servers)
    if (s != "tendril" && s != "pthread") flags.fail("--servers takes tendril and pthread, not '" + s + "'");
  if (!cfg.at.empty() && !sample::parse_host_port(cfg.at)) flags.fail("--at must be host:port");
  if (cfg.echo_bin.empty()) cfg.echo_bin = find_sample("echo");
  if (cfg.fanout_bin.empty()) cfg.fanout_bin = find_sample("fanout");
  if (cfg.fanout_pthread_bin.empty()) cfg.fanout_pthread_bin = find_sample("fanout-pthread");
  return cfg;
}

// Whether the binaries this run starts are there (says which is not).
bool binaries_exist(const Config& cfg) {
  if (!cfg.at.empty()) return true;
  for (const auto& [name, path] : {std::pair{"tendril", cfg.fanout_bin}, std::pair{"pthread", cfg.fanout_pthread_bin}}) {
    if (std::find(cfg.servers.begin(), cfg.servers.end(), name) != cfg.servers.end() && !is_file(path)) {
      std::fprintf(stderr, "fanout_load: no server binary at %s (build the samples, or pass its path)\n", path.c_str());
      return false;
    }
  }
  if (cfg.backend.empty() && !is_file(cfg.echo_bin)) {
    std::fprintf(stderr, "fanout_load: no echo backend at %s (build the samples, or pass --echo or --backend)\n",
                 cfg.echo_bin.c_str());
    return false;
  }
  return true;
}

// Both ends of every client connection are ours or the server's: we need a
// descriptor per client (+ the stats connection), the server one per client
// plus its backend pool (at most --max-calls). Caps cfg.clients to fit; what
// was capped, or "".
std::string fit_clients_in_fd_limit(Config& cfg) {
  const long fd_room = static_cast<long>(sample::raise_fd_limit()) - 100;
  std::string capped;
  if (cfg.clients > fd_room) {
    capped = "clients capped from " + std::to_string(cfg.clients) + " by RLIMIT_NOFILE";
    cfg.clients = static_cast<int>(fd_room);
  }
  if (cfg.clients + cfg.max_calls > fd_room)
    std::fprintf(stderr, "fanout_load: warning: %d clients + %d pooled backend connections may not fit in the server's %ld descriptors\n",
                 cfg.clients, cfg.max_calls, fd_room);
  return capped;
}

// Starts the echo sample as the backend: its host:port, or "" (said why).
std::string start_echo(const Config& cfg, std::unique_ptr<sample::ChildProcess>& echo) {
  std::fprintf(stderr, "starting the echo backend (%s)...\n", cfg.echo_bin.c_str());
  try {
    echo = std::make_unique<sample::ChildProcess>(std::vector<std::string>{cfg.echo_bin, "--host", "127.0.0.1", "--port", "0"});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fanout_load: cannot start %s: %s\n", cfg.echo_bin.c_str(), e.what());
    return "";
  }
  const auto port = sample::listening_port(echo->read_line(10s).value_or(""));
  if (!port) {
    std::fprintf(stderr, "fanout_load: the echo backend did not start\n");
    return "";
  }
  return "127.0.0.1:" + std::to_string(*port);
}

std::string k_list(const Config& cfg) {
  std::string ks;
  for (int k : cfg.ks) ks += (ks.empty() ? "" : ",") + std::to_string(k);
  return ks;
}

void print_header(const Config& cfg, const std::string& backend, const std::string& capped) {
  if (cfg.at.empty()) {
    std::printf("fanout_load: %d clients, closed loop, %.1f s per run, k in {%s}, call deadline %d ms, max-calls %d,\n"
                "backend %s (%s), %ld CPUs%s%s\n",
                cfg.clients, cfg.seconds, k_list(cfg).c_str(), cfg.deadline_ms, cfg.max_calls, backend.c_str(),
                cfg.backend.empty() ? "the echo sample on tendril" : "given", ::sysconf(_SC_NPROCESSORS_ONLN),
                capped.empty() ? "" : "; ", capped.c_str());
  } else {
    std::printf("fanout_load: %d clients, closed loop, %.1f s per run, k in {%s}, the server running at %s%s%s\n",
                cfg.clients, cfg.seconds, k_list(cfg).c_str(), cfg.at.c_str(), capped.empty() ? "" : "; ", capped.c_str());
  }
  std::fflush(stdout);
}

// drive() in a tendril::run of its own; a failure is the row's why_not.
void drive_in_run(const Config& cfg, const std::string& host, std::uint16_t port, Row& row) {
  try {
    tendril::run([&] { drive(cfg, host, port, row); });
  } catch (const std::exception& e) {
    row.ran = false;
    row.why_not = e.what();
  }
}

// One row per k against the server already running at --at.
std::vector<Row> drive_running_server(const Config& cfg) {
  const sample::HostPort at = *sample::parse_host_port(cfg.at);
  std::vector<Row> rows;
  for (int k : cfg.ks) {
    Row row;
    row.k = k;
    drive_in_run(cfg, at.host, at.port, row);
    rows.push_back(row);
  }
  return rows;
}

// A fresh server process for one row: started, driven, stopped.
Row run_server_row(const Config& cfg, const std::string& server, int k, const std::string& backend) {
  Row row;
  row.server = server;
  row.k = k;
  const std::string label = "[k=" + std::to_string(k) + " " + server + "]";
  const std::string& bin = server == "tendril" ? cfg.fanout_bin : cfg.fanout_pthread_bin;
  const int max_k = *std::max_element(cfg.ks.begin(), cfg.ks.end());
  std::fprintf(stderr, "%s starting %s...\n", label.c_str(), bin.c_str());
  std::unique_ptr<sample::ChildProcess> srv;
  try {
    srv = std::make_unique<sample::ChildProcess>(std::vector<std::string>{
        bin, "--host", "127.0.0.1", "--port", "0", "--backend", backend, "--k", std::to_string(k),
        "--call-deadline-ms", std::to_string(cfg.deadline_ms), "--max-calls", std::to_string(cfg.max_calls),
        "--max-k", std::to_string(max_k)});
  } catch (const std::exception&) {
    row.why_not = "cannot start " + bin;
    return row;
  }
  const auto port = sample::listening_port(srv->read_line(10s).value_or(""));
  if (!port) {
    row.why_not = "the server did not start";
    return row;  // killed by ~ChildProcess
  }
  drive_in_run(cfg, "127.0.0.1", *port, row);
  std::fprintf(stderr, "%s stopping the server...\n", label.c_str());
  row.exit_status = sample::exit_code(srv->stop(30s));
  std::fprintf(stderr, "%s %.0f req/s, p99 %.2f ms, %.1f%% answered, peak %llu tasks, exit %d\n", label.c_str(),
               row.rps, row.p99_ms, 100 * row.answered, static_cast<unsigned long long>(row.peak_tasks),
               row.exit_status);
  return row;
}

// For each k, a row per server in --servers, each on a fresh server process.
std::vector<Row> run_started_servers(const Config& cfg, const std::string& backend) {
  std::vector<Row> rows;
  for (int k : cfg.ks)
    for (const auto& server : cfg.servers) rows.push_back(run_server_row(cfg, server, k, backend));
  return rows;
}

void print_table(const Table& t) {
  std::printf("\n%s", render(t, false).c_str());
  std::printf("(answered: calls answered within the deadline / calls asked; peak tasks: live connections + calls,\n"
              " counted by the server; peak threads/fibers: polled every 200 ms; RSS peak: the server's VmHWM;\n"
              " calls left: calls the server still ran right after the last answer, each past its request's answer)\n");
  std::fflush(stdout);
}

bool append_markdown(const Config& cfg, const Table& t, const std::string& capped) {
  FILE* f = std::fopen(cfg.markdown.c_str(), "a");
  if (f == nullptr) {
    std::perror(cfg.markdown.c_str());
    return false;
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::localtime(&now));
  std::fprintf(f,
               "\n### fanout_load (%s)\n\n%d clients, closed loop, %.1f s per run, call deadline %d ms, "
               "max-calls %d, backend: %s, %ld CPUs%s%s.\n\n%s",
               date, cfg.clients, cfg.seconds, cfg.deadline_ms, cfg.max_calls,
               cfg.backend.empty() ? "the echo sample on tendril" : cfg.backend.c_str(),
               ::sysconf(_SC_NPROCESSORS_ONLN), capped.empty() ? "" : "; ", capped.c_str(), render(t, true).c_str());
  std::fclose(f);
  std::fprintf(stderr, "appended the table to %s\n", cfg.markdown.c_str());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg = parse_config(argc, argv);
  if (!binaries_exist(cfg)) return 1;
  const std::string capped = fit_clients_in_fd_limit(cfg);
  ::signal(SIGPIPE, SIG_IGN);
  const int max_k = *std::max_element(cfg.ks.begin(), cfg.ks.end());
  if (max_k > cfg.max_calls) {
    std::fprintf(stderr, "fanout_load: k = %d does not fit in --max-calls %d\n", max_k, cfg.max_calls);
    return 2;
  }

  std::unique_ptr<sample::ChildProcess> echo;
  std::string backend = cfg.backend;
  if (backend.empty() && cfg.at.empty()) {
    backend = start_echo(cfg, echo);
    if (backend.empty()) return 1;
  }
  print_header(cfg, backend, capped);

  const std::vector<Row> rows = cfg.at.empty() ? run_started_servers(cfg, backend) : drive_running_server(cfg);
  if (echo && echo->stop(10s) != 0) std::fprintf(stderr, "fanout_load: the echo backend did not stop cleanly\n");

  const Table t = make_table(rows);
  print_table(t);
  if (!cfg.markdown.empty() && !append_markdown(cfg, t, capped)) return 1;
  return 0;
}
