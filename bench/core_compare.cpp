// Core comparison: tendril vs pthreads, measured in the same run.
//
//   core_compare [--quick] [--reps N] [--markdown FILE] [--png DIR]
//
// Four comparisons, each case repeated (5 times, 3 with --quick) and the
// median taken:
//   1. switch:     tendril this_fiber::yield between two fibers
//                  vs two threads pinned to one CPU taking turns with sched_yield
//   2. ping-pong:  unbuffered Channel<int> round trip between two fibers (and
//                  tendril Mutex+CondVar between two fibers)
//                  vs std::mutex+std::condition_variable between two pthreads
//                  (same CPU, across CPUs, unpinned)
//   3. spawn+join: spawn one and join it, repeated; and spawn 1000 then join all
//                  vs std::thread create+join (the same two shapes)
//   4. uncontended lock+unlock: tendril::Mutex vs std::mutex
// Tendril cases run with Options::workers = 1 and 2. Each tendril repetition is
// its own tendril::run(); timing starts inside the main fiber once the partner
// is spawned and warmed, so worker start-up is never timed.
//
// Progress goes to stderr, the tables to stdout. --markdown FILE writes the
// tables as Markdown; --png DIR writes bar charts with gnuplot (skipped, with a
// note, if gnuplot is not installed).
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/report/core_common.hpp"
#include "tendril/tendril.hpp"

namespace {

using bench::Placement;
using Clock = std::chrono::steady_clock;

template <class T>
inline void keep(T&& v) {
  asm volatile("" : : "g"(v) : "memory");
}
inline void clobber() { asm volatile("" : : : "memory"); }

// Process CPU time, ns (all threads: with 2 workers it includes an idle
// worker's spinning). On a loaded machine wall time includes time spent
// descheduled; CPU time does not.
double process_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e9 + double(ts.tv_nsec);
}
double t_cpu0 = 0;        // set by start_clock() (a global: the fiber may change threads)
double t_cpu_per_op = 0;  // set by ns_since()

Clock::time_point start_clock() {
  t_cpu0 = process_cpu_ns();
  return Clock::now();
}
double ns_since(Clock::time_point t0, double ops) {
  const double wall = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / ops;
  t_cpu_per_op = (process_cpu_ns() - t_cpu0) / ops;
  return wall;
}

// One measurement: ns per unit, plus tendril stats per unit (tendril cases).
struct Sample {
  double ns = 0;
  double cpu_ns = 0;  // process CPU per unit
  bench::StatsDelta d;
};

// ---- tendril kernels -------------------------------------------------------

template <class F>
Sample in_tendril(unsigned workers, F&& body) {
  tendril::Options o;
  o.workers = workers;
  Sample s;
  tendril::run(o, [&] { s = body(); });
  return s;
}

Sample tendril_yield(unsigned workers, long n) {
  return in_tendril(workers, [n] {
    std::atomic<bool> stop{false};
    tendril::Fiber partner = tendril::spawn([&stop] {
      while (!stop.load(std::memory_order_relaxed)) tendril::this_fiber::yield();
    });
    for (int i = 0; i < 1000; ++i) tendril::this_fiber::yield();
    const tendril::Stats a = tendril::stats();
    const auto t0 = start_clock();
    for (long i = 0; i < n; ++i) tendril::this_fiber::yield();
    Sample s;
    s.ns = ns_since(t0, 2.0 * double(n));
    s.cpu_ns = t_cpu_per_op;  // main -> partner -> main: two switches
    s.d = bench::stats_delta(a, tendril::stats(), 2.0 * double(n));
    stop.store(true);
    partner.join();
    return s;
  });
}

Sample tendril_channel(unsigned workers, long n) {
  return in_tendril(workers, [n] {
    tendril::Channel<int> ping, pong;
    tendril::Fiber partner = tendril::spawn([ping, pong]() mutable {
      while (std::optional<int> v = ping.recv()) pong.send(*v);
    });
    for (int i = 0; i < 1000; ++i) {
      ping.send(i);
      pong.recv();
    }
    const tendril::Stats a = tendril::stats();
    const auto t0 = start_clock();
    for (long i = 0; i < n; ++i) {
      ping.send(int(i));
      keep(*pong.recv());
    }
    Sample s;
    s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
    s.d = bench::stats_delta(a, tendril::stats(), double(n));
    ping.close();
    partner.join();
    return s;
  });
}

Sample tendril_mutex_cv(unsigned workers, long n) {
  return in_tendril(workers, [n] {
    bench::TurnPair<tendril::Mutex, tendril::CondVar> p;
    tendril::Fiber partner = tendril::spawn([&p] { p.partner_loop(); });
    for (int i = 0; i < 1000; ++i) p.round_trip();
    const tendril::Stats a = tendril::stats();
    const auto t0 = start_clock();
    for (long i = 0; i < n; ++i) p.round_trip();
    Sample s;
    s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
    s.d = bench::stats_delta(a, tendril::stats(), double(n));
    p.finish();
    partner.join();
    return s;
  });
}

Sample tendril_spawn_join(unsigned workers, long n) {
  return in_tendril(workers, [n] {
    for (int i = 0; i < 100; ++i) tendril::spawn([] {}).join();
    const tendril::Stats a = tendril::stats();
    const auto t0 = start_clock();
    for (long i = 0; i < n; ++i) tendril::spawn([] { clobber(); }).join();
    Sample s;
    s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
    s.d = bench::stats_delta(a, tendril::stats(), double(n));
    return s;
  });
}

constexpr int kBatch = 1000;

Sample tendril_spawn_batch(unsigned workers, long batches) {
  return in_tendril(workers, [batches] {
    std::vector<tendril::Fiber> fibers;
    fibers.reserve(kBatch);
    auto batch = [&] {
      for (int i = 0; i < kBatch; ++i) fibers.push_back(tendril::spawn([] { clobber(); }));
      for (tendril::Fiber& f : fibers) f.join();
      fibers.clear();
    };
    batch();
    const tendril::Stats a = tendril::stats();
    const auto t0 = start_clock();
    for (long b = 0; b < batches; ++b) batch();
    Sample s;
    s.ns = ns_since(t0, double(batches) * kBatch);
    s.cpu_ns = t_cpu_per_op;
    s.d = bench::stats_delta(a, tendril::stats(), double(batches) * kBatch);
    return s;
  });
}

Sample tendril_mutex_uncontended(long n) {
  return in_tendril(1, [n] {
    tendril::Mutex m;
    const auto t0 = start_clock();
    for (long i = 0; i < n; ++i) {
      m.lock();
      clobber();
      m.unlock();
    }
    Sample s;
    s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
    return s;
  });
}

// ---- pthread kernels -------------------------------------------------------

Sample pthread_sched_yield(long n) {
  const auto cpus = bench::placement_cpus(Placement::kSame);
  const cpu_set_t old = bench::pin_self(cpus.first);
  std::atomic<bool> stop{false};
  std::thread partner([&] {
    bench::pin_self(cpus.second);
    while (!stop.load(std::memory_order_relaxed)) sched_yield();
  });
  for (int i = 0; i < 1000; ++i) sched_yield();
  const auto t0 = start_clock();
  for (long i = 0; i < n; ++i) sched_yield();
  Sample s;
  s.ns = ns_since(t0, 2.0 * double(n));
    s.cpu_ns = t_cpu_per_op;
  stop.store(true);
  partner.join();
  bench::restore_affinity(old);
  return s;
}

Sample pthread_mutex_cv(Placement place, long n) {
  const auto cpus = bench::placement_cpus(place);
  const cpu_set_t old = bench::pin_self(cpus.first);
  bench::TurnPair<std::mutex, std::condition_variable> p;
  std::thread partner([&] {
    bench::pin_self(cpus.second);
    p.partner_loop();
  });
  for (int i = 0; i < 100; ++i) p.round_trip();
  const auto t0 = start_clock();
  for (long i = 0; i < n; ++i) p.round_trip();
  Sample s;
  s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
  p.finish();
  partner.join();
  bench::restore_affinity(old);
  return s;
}

Sample pthread_create_join(long n) {
  for (int i = 0; i < 10; ++i) std::thread([] {}).join();
  const auto t0 = start_clock();
  for (long i = 0; i < n; ++i) std::thread([] { clobber(); }).join();
  Sample s;
  s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
  return s;
}

Sample pthread_create_batch(long batches, int per_batch) {
  std::vector<std::thread> threads;
  threads.reserve(std::size_t(per_batch));
  const auto t0 = start_clock();
  for (long b = 0; b < batches; ++b) {
    for (int i = 0; i < per_batch; ++i) threads.emplace_back([] { clobber(); });
    for (std::thread& t : threads) t.join();
    threads.clear();
  }
  Sample s;
  s.ns = ns_since(t0, double(batches) * per_batch);
    s.cpu_ns = t_cpu_per_op;
  return s;
}

Sample std_mutex_uncontended(long n) {
  std::mutex m;
  const auto t0 = start_clock();
  for (long i = 0; i < n; ++i) {
    m.lock();
    clobber();
    m.unlock();
  }
  Sample s;
  s.ns = ns_since(t0, double(n));
    s.cpu_ns = t_cpu_per_op;
  return s;
}

// ---- the cases -------------------------------------------------------------

struct Case {
  std::string key;    // short id, used by comparisons and charts
  std::string group;  // switch, ping-pong, spawn+join, mutex
  std::string label;  // human-readable
  bool is_tendril;
  std::function<Sample()> run;
  // Filled in:
  double ns = 0, min_ns = 0, max_ns = 0, cpu_ns = 0;
  bench::StatsDelta d;
};

struct Comparison {
  std::string what, tendril_key, pthread_key;
  double target = 0;  // 0: none
};

struct Config {
  bool quick = false;
  int reps = 0;
  std::string markdown, png_dir;
};

std::vector<Case> make_cases(const Config& c) {
  const long k = c.quick ? 1 : 10;  // scale
  std::vector<Case> v;
  auto T = [&](std::string key, std::string group, std::string label, std::function<Sample()> f) {
    v.push_back({std::move(key), std::move(group), std::move(label), true, std::move(f), 0, 0, 0, 0, {}});
  };
  auto P = [&](std::string key, std::string group, std::string label, std::function<Sample()> f) {
    v.push_back({std::move(key), std::move(group), std::move(label), false, std::move(f), 0, 0, 0, 0, {}});
  };
  T("yield1", "switch", "tendril yield, 1 worker (ns/switch)", [=] { return tendril_yield(1, 100000 * k); });
  T("yield2", "switch", "tendril yield, 2 workers (ns/switch)", [=] { return tendril_yield(2, 100000 * k); });
  P("schedyield", "switch", "pthread sched_yield pair, same CPU (ns/switch)",
    [=] { return pthread_sched_yield(10000 * k); });

  T("chan1", "ping-pong", "tendril Channel ping-pong, 1 worker", [=] { return tendril_channel(1, 50000 * k); });
  T("chan2", "ping-pong", "tendril Channel ping-pong, 2 workers", [=] { return tendril_channel(2, 50000 * k); });
  T("fmcv1", "ping-pong", "tendril Mutex+CondVar ping-pong, 1 worker",
    [=] { return tendril_mutex_cv(1, 20000 * k); });
  T("fmcv2", "ping-pong", "tendril Mutex+CondVar ping-pong, 2 workers",
    [=] { return tendril_mutex_cv(2, 20000 * k); });
  P("pmcv_same", "ping-pong", "pthread mutex+condvar ping-pong, same CPU",
    [=] { return pthread_mutex_cv(Placement::kSame, 3000 * k); });
  P("pmcv_free", "ping-pong", "pthread mutex+condvar ping-pong, unpinned",
    [=] { return pthread_mutex_cv(Placement::kFree, 2000 * k); });
  P("pmcv_across", "ping-pong", "pthread mutex+condvar ping-pong, across CPUs",
    [=] { return pthread_mutex_cv(Placement::kAcross, 300 * k); });

  T("spawn1", "spawn+join", "tendril spawn+join one at a time, 1 worker",
    [=] { return tendril_spawn_join(1, 2000 * k); });
  T("spawn2", "spawn+join", "tendril spawn+join one at a time, 2 workers",
    [=] { return tendril_spawn_join(2, 2000 * k); });
  T("batch1", "spawn+join", "tendril spawn 1000 then join, 1 worker",
    [=] { return tendril_spawn_batch(1, 2 * k); });
  T("batch2", "spawn+join", "tendril spawn 1000 then join, 2 workers",
    [=] { return tendril_spawn_batch(2, 2 * k); });
  P("pcreate", "spawn+join", "pthread create+join one at a time",
    [=] { return pthread_create_join(1000 * k); });
  P("pbatch", "spawn+join", "pthread create 1000 then join",
    [=] { return pthread_create_batch(c.quick ? 1 : 3, kBatch); });

  T("tmutex", "mutex", "tendril::Mutex lock+unlock, uncontended (fiber)",
    [=] { return tendril_mutex_uncontended(2000000 * k); });
  P("stdmutex", "mutex", "std::mutex lock+unlock, uncontended",
    [=] { return std_mutex_uncontended(2000000 * k); });
  return v;
}

const std::vector<Comparison>& comparisons() {
  static const std::vector<Comparison> c = {
      {"switch, 1 worker vs sched_yield pair", "yield1", "schedyield", 0},
      {"switch, 2 workers vs sched_yield pair", "yield2", "schedyield", 0},
      {"Channel ping-pong, 1 worker vs mutex+cv same CPU", "chan1", "pmcv_same", bench::kTargetPingPongNs},
      {"Channel ping-pong, 2 workers vs mutex+cv unpinned", "chan2", "pmcv_free", bench::kTargetPingPongNs},
      {"Channel ping-pong, 2 workers vs mutex+cv across CPUs", "chan2", "pmcv_across",
       bench::kTargetPingPongNs},
      {"Mutex+CondVar fibers, 1 worker vs threads same CPU", "fmcv1", "pmcv_same", 0},
      {"Mutex+CondVar fibers, 2 workers vs threads unpinned", "fmcv2", "pmcv_free", 0},
      {"spawn+join one at a time, 1 worker vs pthread", "spawn1", "pcreate", bench::kTargetSpawnJoinNs},
      {"spawn+join one at a time, 2 workers vs pthread", "spawn2", "pcreate", bench::kTargetSpawnJoinNs},
      {"spawn 1000 then join, 1 worker vs pthread", "batch1", "pbatch", bench::kTargetSpawnJoinNs},
      {"spawn 1000 then join, 2 workers vs pthread", "batch2", "pbatch", bench::kTargetSpawnJoinNs},
      {"uncontended lock+unlock vs std::mutex", "tmutex", "stdmutex", 0},
  };
  return c;
}

// ---- output ----------------------------------------------------------------

const Case* find(const std::vector<Case>& cases, const std::string& key) {
  for (const Case& c : cases)
    if (c.key == key) return &c;
  return nullptr;
}

bench::Table results_table(const std::vector<Case>& cases) {
  bench::Table t;
  t.header = {"case", "median ns", "min..max ns", "CPU ns", "switches/op", "wakeups/op", "steals/op"};
  char buf[64];
  for (const Case& c : cases) {
    std::vector<std::string> row = {c.label, bench::fmt_ns(c.ns),
                                    bench::fmt_ns(c.min_ns) + ".." + bench::fmt_ns(c.max_ns),
                                    bench::fmt_ns(c.cpu_ns)};
    if (c.is_tendril && c.key != "tmutex") {
      for (double x : {c.d.switches, c.d.wakeups, c.d.steals}) {
        std::snprintf(buf, sizeof buf, "%.3g", x);
        row.push_back(buf);
      }
    }
    t.rows.push_back(row);
  }
  return t;
}

bench::Table ratio_table(const std::vector<Case>& cases) {
  bench::Table t;
  t.header = {"comparison", "tendril ns", "pthread ns", "pthread/tendril", "issue target", "meets target"};
  for (const Comparison& cmp : comparisons()) {
    const Case* a = find(cases, cmp.tendril_key);
    const Case* b = find(cases, cmp.pthread_key);
    if (a == nullptr || b == nullptr) continue;
    t.rows.push_back({cmp.what, bench::fmt_ns(a->ns), bench::fmt_ns(b->ns), bench::fmt_ratio(b->ns / a->ns),
                      cmp.target > 0 ? "<= " + bench::fmt_ns(cmp.target) : "",
                      cmp.target > 0 ? (a->ns <= cmp.target ? "yes" : "NO") : ""});
  }
  return t;
}

bench::Table peers_table() {
  bench::Table t;
  t.header = {"(earlier, not this run)", "Go 1.19", "Boost.Fiber 1.74", "pthreads"};
  for (const bench::Peer& p : bench::peers()) t.rows.push_back({p.what, p.go, p.bfiber, p.pthread});
  return t;
}

std::string environment_line(const Config& cfg, const std::string& stack_mode) {
  std::string s = "CPUs in affinity mask: " + std::to_string(bench::allowed_cpus().size()) +
                  "; repetitions per case: " + std::to_string(cfg.reps) + " (median)" +
                  (cfg.quick ? "; --quick" : "") + "; stack provider: " + stack_mode;
  if (stack_mode == "simple") s += " (dev mmap-per-stack provider: spawn+join numbers are pessimistic)";
  return s;
}

void write_markdown(const Config& cfg, const std::vector<Case>& cases, const std::string& env) {
  if (const std::size_t slash = cfg.markdown.rfind('/'); slash != std::string::npos && slash > 0)
    std::system(("mkdir -p '" + cfg.markdown.substr(0, slash) + "'").c_str());
  std::FILE* f = std::fopen(cfg.markdown.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "core_compare: cannot write %s: %s\n", cfg.markdown.c_str(), std::strerror(errno));
    return;
  }
  std::fprintf(f, "# tendril vs pthreads, core_compare\n\n%s\n\n", env.c_str());
  std::fprintf(f, "## Ratios (same run)\n\npthread/tendril > 1 means tendril is faster. Units: ns per switch, "
                  "per round trip, per fiber/thread, per lock+unlock.\n\n");
  bench::print_markdown(ratio_table(cases), f);
  std::fprintf(f, "\n## All cases\n\n");
  bench::print_markdown(results_table(cases), f);
  std::fprintf(f, "\n## Peers\n\n%s.\n\n", bench::kPeerNote);
  bench::print_markdown(peers_table(), f);
  std::fclose(f);
  std::fprintf(stderr, "wrote %s\n", cfg.markdown.c_str());
}

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// One bar chart per group (log scale), with the issue target as a line and,
// for ping-pong and spawn+join, the earlier peer figures as grey bars.
void write_pngs(const Config& cfg, const std::vector<Case>& cases) {
  if (!have_gnuplot()) {
    std::fprintf(stderr, "note: gnuplot not found; skipping --png (apt-get install gnuplot-nox)\n");
    return;
  }
  std::system(("mkdir -p '" + cfg.png_dir + "'").c_str());
  struct PeerBar {
    const char* label;
    double ns;
  };
  const std::map<std::string, std::vector<PeerBar>> peer_bars = {
      {"ping-pong", {{"Go chan (earlier)", 206}, {"Boost.Fiber 1 thr (earlier)", 178},
                     {"Boost.Fiber ws (earlier)", 660}}},
      {"spawn+join", {{"Go (earlier)", 135}, {"Boost.Fiber (earlier)", 4500}}},
  };
  const std::map<std::string, double> targets = {{"ping-pong", bench::kTargetPingPongNs},
                                                 {"spawn+join", bench::kTargetSpawnJoinNs}};
  for (const char* group : {"switch", "ping-pong", "spawn+join", "mutex"}) {
    const std::string base = cfg.png_dir + "/core_" + std::string(group == std::string("spawn+join") ? "spawn_join" : group);
    const std::string dat = base + ".dat", gp = base + ".gp", png = base + ".png";
    std::FILE* d = std::fopen(dat.c_str(), "w");
    if (d == nullptr) continue;
    int n = 0;
    for (const Case& c : cases) {
      if (c.group != group) continue;
      std::fprintf(d, "%d \"%s\" %g %d\n", n++, c.label.c_str(), c.ns, c.is_tendril ? 1 : 2);
    }
    if (auto it = peer_bars.find(group); it != peer_bars.end())
      for (const PeerBar& p : it->second) std::fprintf(d, "%d \"%s\" %g 3\n", n++, p.label, p.ns);
    std::fclose(d);
    std::FILE* g = std::fopen(gp.c_str(), "w");
    if (g == nullptr) continue;
    std::fprintf(g,
                 "set terminal pngcairo size 1100,650 font 'Sans,9'\n"
                 "set output '%s'\n"
                 "set title 'tendril vs pthreads: %s (ns, log scale; lower is better)'\n"
                 "set logscale y\nset grid ytics\nset style fill solid 0.8\nset boxwidth 0.7\n"
                 "set xtics rotate by 30 right\nset bmargin 12\nset lmargin 16\nset key top left\n"
                 "set yrange [1:*]\n",
                 png.c_str(), group);
    if (auto it = targets.find(group); it != targets.end())
      std::fprintf(g, "set arrow from graph 0, first %g to graph 1, first %g nohead lw 2 dt 2 lc rgb 'red'\n"
                      "set label 'issue target %g ns' at graph 0.75, first %g offset 0,0.7 tc rgb 'red'\n",
                   it->second, it->second, it->second, it->second);
    std::fprintf(g,
                 "plot '%s' using 1:($4==1?$3:1/0):xtic(2) with boxes lc rgb '#2a7ab0' title 'tendril (this run)', \\\n"
                 "     '' using 1:($4==2?$3:1/0):xtic(2) with boxes lc rgb '#d9822b' title 'pthreads (this run)', \\\n"
                 "     '' using 1:($4==3?$3:1/0):xtic(2) with boxes lc rgb '#aaaaaa' title 'peers (earlier, not this run)', \\\n"
                 "     '' using 1:3:(sprintf('%%.0f',$3)) with labels offset 0,0.8 notitle\n",
                 dat.c_str());
    std::fclose(g);
    const std::string cmd = "gnuplot '" + gp + "' 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "note: gnuplot failed for %s\n", gp.c_str());
    } else {
      std::fprintf(stderr, "wrote %s\n", png.c_str());
    }
  }
}

void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--quick] [--reps N] [--markdown FILE] [--png DIR]\n", argv0);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage(argv[0]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") cfg.quick = true;
    else if (a == "--reps") cfg.reps = std::atoi(value().c_str());
    else if (a == "--markdown") cfg.markdown = value();
    else if (a == "--png") cfg.png_dir = value();
    else if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else {
      usage(argv[0]);
      return 2;
    }
  }
  if (cfg.reps <= 0) cfg.reps = cfg.quick ? 3 : 5;
  bench::warn_env_overrides(stderr);

  std::vector<Case> cases = make_cases(cfg);
  const auto t_start = Clock::now();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    std::vector<double> ns, cpu, sw, wk, st;
    const auto t0 = start_clock();
    for (int r = 0; r < cfg.reps; ++r) {
      std::fprintf(stderr, "\r[%2zu/%zu] %-52s rep %d/%d   ", i + 1, cases.size(), c.label.c_str(), r + 1,
                   cfg.reps);
      std::fflush(stderr);
      const Sample s = c.run();
      ns.push_back(s.ns);
      cpu.push_back(s.cpu_ns);
      sw.push_back(s.d.switches);
      wk.push_back(s.d.wakeups);
      st.push_back(s.d.steals);
    }
    c.ns = bench::median(ns);
    c.min_ns = *std::min_element(ns.begin(), ns.end());
    c.max_ns = *std::max_element(ns.begin(), ns.end());
    c.cpu_ns = bench::median(cpu);
    c.d.switches = bench::median(sw);
    c.d.wakeups = bench::median(wk);
    c.d.steals = bench::median(st);
    std::fprintf(stderr, "\r[%2zu/%zu] %-52s %12s ns  (%.1f s)\n", i + 1, cases.size(), c.label.c_str(),
                 bench::fmt_ns(c.ns).c_str(), std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::fprintf(stderr, "total %.1f s\n", std::chrono::duration<double>(Clock::now() - t_start).count());

  const std::string env = environment_line(cfg, tendril::stats().stack_mode);
  std::printf("\ntendril vs pthreads -- %s\n", env.c_str());
  std::printf("\nRatios (same run; pthread/tendril > 1 means tendril is faster; ns per switch, per round trip,\n"
              "per fiber/thread, per lock+unlock):\n");
  bench::print_text(ratio_table(cases), stdout);
  std::printf("\nAll cases (CPU ns: whole-process CPU per unit, includes idle workers' spinning and the\n"
              "partner thread; tendril stats per unit in the last columns):\n");
  bench::print_text(results_table(cases), stdout);
  std::printf("\n%s:\n", bench::kPeerNote);
  bench::print_text(peers_table(), stdout);
  std::fflush(stdout);

  if (!cfg.markdown.empty()) write_markdown(cfg, cases, env);
  if (!cfg.png_dir.empty()) write_pngs(cfg, cases);
  return 0;
}
