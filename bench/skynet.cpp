// The skynet spawn tree on tendril, plus the small micro-benchmarks
// that bench/peers/ runs on Go and Boost.Fiber with the same semantics, so
// scripts/bench-peers.sh can put the runtimes side by side.
//
//   skynet [--quick] [--reps N] [--only NAME[,NAME...]]
//
// Every case is repeated (5 times, 3 with --quick) and the median printed as
//   RESULT <benchmark> <value> <unit>
// on stdout (with a human-readable line before it); progress goes to stderr.
// Each repetition is its own tendril::run(); the clock starts inside the main
// fiber, so worker start-up is never timed.
//
// Benchmarks (names shared with bench/peers/):
//   switch               two fibers taking turns with this_fiber::yield, 1 worker;
//                        ns per switch (one round = two switches)
//   pingpong_1/_all      one int round trip over two unbuffered Channel<int>
//                        (main fiber <-> partner), 1 worker / all workers; ns
//   pingpong_buffered_1  the same over Channel<int>(2), 1 worker; ns
//   spawn_join_1/_all    spawn an empty fiber and join it, one at a time; ns per fiber
//   skynet               10-ary tree of 1,000,000 leaf fibers (1,111,111 fibers
//                        in all); each leaf sends its number to its parent's
//                        unbuffered Channel<long>, parents send the sum of their
//                        10 children up; all workers; ms for the whole tree;
//                        the total is checked against 499999500000
//   skynet_join          the same tree, parents spawn 10 children, join them and
//                        add their results (no channels); ms
//   skynet_peak          most skynet fibers alive at once, spawned and not yet
//                        finished, queued or running (one extra, untimed, counted
//                        run of the channel variant); tasks
//   skynet_peak_started  of those, most that had begun to run at once (the
//                        rest were queued, not started); tasks
//   maxrss               peak resident memory of the process (after skynet); MiB
//   park_spawn_100k/_1m  N fibers spawned, each counts itself and parks in
//                        WaitGroup::wait() on one gate; from the first spawn
//                        until the count is N; all workers; ns per fiber
//   park_wake_100k/_1m   then gate.done() once: until every fiber has returned
//                        from wait() and called done() on a second WaitGroup
//                        the main fiber waits on; ns per fiber
//   park_mem_100k/_1m    (VmRSS + VmPTE of /proc/self/status, all N parked,
//                        minus the same before the first spawn) / N; bytes
//                        per fiber
//                        The three come from the same rounds; every round runs
//                        in a fresh process (this binary with --park-child N),
//                        so no earlier case's pages are counted or reused.
//                        --quick leaves the 1M rounds out unless --only names them.
//                        TENDRIL_BENCH_PERF_CTL=<fifo>: the round writes
//                        "enable" to it as the wake starts and "disable" as
//                        it ends, for `perf record -D -1 --control fifo:<fifo>`
//                        to profile only the wake.
//
// Stacks: default settings (Options::stack_limit 256 KiB reserved per fiber,
// one page resident to start). The tree is spawned as written, ten children at
// a time; tendril runs a freshly spawned child next (runnext) and the other
// nine from the FIFO run queue, so the tree unfolds partly breadth-first and
// skynet_peak reports how many fibers were alive at the worst moment.
#include <sys/resource.h>
#include <unistd.h>

#include "bench/report/peer_args.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "samples/common/proc_status.hpp"
#include "tendril/tendril.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr long kLeaves = 1000000;
constexpr long kExpected = 499999500000L;  // 0 + 1 + ... + 999,999

template <class T>
inline void keep(T&& v) {
  asm volatile("" : : "g"(v) : "memory");
}
inline void clobber() { asm volatile("" : : : "memory"); }

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

template <class F>
double in_tendril(unsigned workers, F&& body) {
  tendril::Options o;
  o.workers = workers;  // 0: one per CPU
  double r = 0;
  tendril::run(o, [&] { r = body(); });
  return r;
}

// ---- micro-benchmarks --------------------------------------------------------

double switch_ns(long n) {
  return in_tendril(1, [n] {
    std::atomic<bool> stop{false};
    tendril::Fiber partner = tendril::spawn([&stop] {
      while (!stop.load(std::memory_order_relaxed)) tendril::this_fiber::yield();
    });
    for (int i = 0; i < 1000; ++i) tendril::this_fiber::yield();
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) tendril::this_fiber::yield();
    const double ns = ns_since(t0) / (2.0 * double(n));
    stop.store(true);
    partner.join();
    return ns;
  });
}

double pingpong_ns(unsigned workers, std::size_t capacity, long n) {
  return in_tendril(workers, [capacity, n] {
    tendril::Channel<int> ping(capacity), pong(capacity);
    tendril::Fiber partner = tendril::spawn([ping, pong]() mutable {
      while (std::optional<int> v = ping.recv()) pong.send(*v);
    });
    for (int i = 0; i < 1000; ++i) {
      ping.send(i);
      pong.recv();
    }
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) {
      ping.send(int(i));
      keep(*pong.recv());
    }
    const double ns = ns_since(t0) / double(n);
    ping.close();
    partner.join();
    return ns;
  });
}

double spawn_join_ns(unsigned workers, long n) {
  return in_tendril(workers, [n] {
    for (int i = 0; i < 100; ++i) tendril::spawn([] {}).join();
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) tendril::spawn([] { clobber(); }).join();
    return ns_since(t0) / double(n);
  });
}

// ---- skynet --------------------------------------------------------------------

// Alive-task accounting for the counted run only (Count = true): a task counts
// from just before it is spawned (its stack exists from then on, queued or
// running) until its body returns.
std::atomic<long> g_alive{0};
std::atomic<long> g_peak{0};
// Of those, the ones whose body has begun (they hold a stack page of their
// own in any runtime that gives a task its stack when it first runs).
std::atomic<long> g_started{0};
std::atomic<long> g_started_peak{0};

void raise_peak(std::atomic<long>& peak, long now) {
  long p = peak.load(std::memory_order_relaxed);
  while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
  }
}

template <bool Count>
void note_spawn() {
  if constexpr (Count) raise_peak(g_peak, g_alive.fetch_add(1, std::memory_order_relaxed) + 1);
}
template <bool Count>
struct ExitNote {
  ExitNote() {
    if constexpr (Count) raise_peak(g_started_peak, g_started.fetch_add(1, std::memory_order_relaxed) + 1);
  }
  ~ExitNote() {
    if constexpr (Count) {
      g_started.fetch_sub(1, std::memory_order_relaxed);
      g_alive.fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

// Classic skynet: the node sends its result on `out`.
template <bool Count>
void skynet_chan(tendril::Channel<long> out, long num, long size) {
  ExitNote<Count> exit_note;
  if (size == 1) {
    out.send(num);
    return;
  }
  tendril::Channel<long> rc;  // unbuffered, like the Go original
  const long sub = size / 10;
  for (long i = 0; i < 10; ++i) {
    note_spawn<Count>();
    tendril::spawn(skynet_chan<Count>, rc, num + i * sub, sub).detach();
  }
  long sum = 0;
  for (int i = 0; i < 10; ++i) sum += *rc.recv();
  out.send(sum);
}

long skynet_join(long num, long size) {
  if (size == 1) return num;
  const long sub = size / 10;
  long res[10];
  tendril::Fiber kids[10];
  for (long i = 0; i < 10; ++i)
    kids[i] = tendril::spawn([&res, i, num, sub] { res[i] = skynet_join(num + i * sub, sub); });
  long sum = 0;
  for (int i = 0; i < 10; ++i) {
    kids[i].join();
    sum += res[i];
  }
  return sum;
}

long g_total = 0;        // checked by the caller
tendril::Stats g_stats;  // after the counted run

double skynet_chan_ms(bool count) {
  return in_tendril(0, [count] {
    const auto t0 = Clock::now();
    tendril::Channel<long> out;
    if (count) {
      note_spawn<true>();
      tendril::spawn(skynet_chan<true>, out, 0L, kLeaves).detach();
    } else {
      tendril::spawn(skynet_chan<false>, out, 0L, kLeaves).detach();
    }
    g_total = *out.recv();
    const double ms = ns_since(t0) / 1e6;
    if (count) g_stats = tendril::stats();
    return ms;
  });
}

double skynet_join_ms() {
  return in_tendril(0, [] {
    const auto t0 = Clock::now();
    long total = 0;
    tendril::spawn([&total] { total = skynet_join(0, kLeaves); }).join();
    g_total = total;
    return ns_since(t0) / 1e6;
  });
}

// ---- park: many parked fibers on one gate --------------------------------------

// One round of the park cases, run in a child process of its own (this binary
// re-executed with --park-child N) so that its memory figures start from a
// process that never had fibers, and so that every round is a fresh
// tendril::run. The child spawns N fibers that each count themselves and park
// in gate.wait(); the main fiber waits (yielding) until the count is N, reads
// VmRSS/VmPTE, then calls gate.done() once and waits on a second WaitGroup
// that every fiber leaves with done() after its wait returns.
struct ParkRound {
  double spawn_ns = 0;  // first spawn until the last fiber counted itself (about to park)
  double wake_ns = 0;   // gate.done() until every fiber has called done.done()
  double rss = 0;       // VmRSS delta, bytes, all fibers parked
  double pte = 0;       // VmPTE delta, bytes
  double pages = 0;     // stats().stack_pages_mapped, all fibers parked
};

// Writes a command to perf's control fifo (perf record --control fifo:...).
void perf_control(const char* fifo, const char* cmd) {
  if (FILE* f = std::fopen(fifo, "w")) {
    std::fputs(cmd, f);
    std::fclose(f);
  }
}

double status_bytes(const char* key) { return double(sample::proc_status_field(key).value_or(0)); }

int park_child(long n) {
  tendril::Options o;
  o.workers = 0;
  // The spawn loop holds its worker for seconds; the watchdog would report it.
  o.stall_threshold = std::chrono::milliseconds(0);
  ParkRound r;
  tendril::run(o, [&r, n] {
    const double rss0 = status_bytes("VmRSS"), pte0 = status_bytes("VmPTE");
    tendril::WaitGroup gate, done;
    std::atomic<long> parked{0};
    gate.add(1);
    done.add(n);
    const long step = n >= 1000000 ? 250000 : n;
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) {
      tendril::spawn([&gate, &done, &parked] {
        parked.fetch_add(1, std::memory_order_relaxed);
        gate.wait();
        done.done();
      }).detach();
      if ((i + 1) % step == 0 && i + 1 < n) std::fprintf(stderr, "  %ld spawned\n", i + 1);
    }
    while (parked.load(std::memory_order_relaxed) < n) tendril::this_fiber::yield();
    r.spawn_ns = ns_since(t0);
    // Let the last few fibers finish parking before reading memory (untimed).
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(20));
    r.rss = status_bytes("VmRSS") - rss0;
    r.pte = status_bytes("VmPTE") - pte0;
    r.pages = double(tendril::stats().stack_pages_mapped);
    const char* perf_ctl = std::getenv("TENDRIL_BENCH_PERF_CTL");
    if (perf_ctl != nullptr) perf_control(perf_ctl, "enable\n");
    const tendril::Stats s0 = tendril::stats();
    const auto t1 = Clock::now();
    gate.done();
    done.wait();
    r.wake_ns = ns_since(t1);
    const tendril::Stats s1 = tendril::stats();
    if (s1.stack_compaction)
      std::fprintf(stderr, "  compacted when the wake began %llu; during the wake: compactions %llu, restores %llu (on touch %llu)\n",
                   (unsigned long long)s0.fibers_compacted, (unsigned long long)(s1.compactions - s0.compactions),
                   (unsigned long long)(s1.restores - s0.restores),
                   (unsigned long long)(s1.restores_on_touch - s0.restores_on_touch));
    if (perf_ctl != nullptr) perf_control(perf_ctl, "disable\n");
  });
  std::printf("PARK %.0f %.0f %.0f %.0f %.0f\n", r.spawn_ns, r.wake_ns, r.rss, r.pte, r.pages);
  return 0;
}

// Runs one round in a fresh child process; false if it failed.
bool park_round(long n, ParkRound& r) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return false;
  exe[len] = '\0';
  std::string cmd = "'";
  cmd.append(exe).append("' --park-child ").append(std::to_string(n));
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return false;
  char line[256];
  bool got = false;
  while (std::fgets(line, sizeof line, p) != nullptr)
    if (std::sscanf(line, "PARK %lf %lf %lf %lf %lf", &r.spawn_ns, &r.wake_ns, &r.rss, &r.pte, &r.pages) == 5)
      got = true;
  return pclose(p) == 0 && got;
}

// ---- driver ----------------------------------------------------------------------

using Config = bench::PeerConfig;

double median_of(std::vector<double> s) {
  std::sort(s.begin(), s.end());
  const std::size_t n = s.size();
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

void report(const char* name, const char* what, const std::vector<double>& v, const char* unit) {
  std::vector<double> s = v;
  std::sort(s.begin(), s.end());
  const std::size_t n = s.size();
  const double med = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  std::printf("tendril %-20s %-58s %10.1f %s (min %.1f, max %.1f, %zu reps)\n", name, what, med, unit, s.front(),
              s.back(), n);
  std::printf("RESULT %s %.1f %s\n", name, med, unit);
  std::fflush(stdout);
}

template <class F>
void bench_case(const Config& c, const char* name, const char* what, const char* unit, F&& f) {
  if (!c.wants(name)) return;
  std::vector<double> v;
  // One progress line per case: the runtime logs a line of its own at every run().
  std::fprintf(stderr, "tendril: %s, %d reps\n", name, c.reps);
  for (int r = 0; r < c.reps; ++r) v.push_back(f());
  report(name, what, v, unit);
}

bool check_total(const char* name) {
  if (g_total == kExpected) return true;
  std::fprintf(stderr, "\ntendril %s: WRONG TOTAL %ld (expected %ld)\n", name, g_total, kExpected);
  return false;
}

void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--quick] [--reps N] [--only NAME[,NAME...]]\n", argv0);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--park-child" && i + 1 < argc) return park_child(std::atol(argv[i + 1]));
    if (bench::parse_peer_arg(argc, argv, i, cfg)) continue;
    if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else {
      usage(argv[0]);
      return 2;
    }
  }
  cfg.finish();
  for (const char* v : {"TENDRIL_WORKERS", "TENDRIL_SPIN_US", "TENDRIL_PIN", "TENDRIL_STACK_MODE",
                        "TENDRIL_STACK_LIMIT", "TENDRIL_STACK_CACHE_BYTES"})
    if (const char* val = std::getenv(v))
      std::fprintf(stderr, "note: %s=%s is set and overrides the benchmark's Options\n", v, val);

  const long k = cfg.quick ? 1 : 5;
  unsigned all = 0;
  in_tendril(0, [&all] { return double(all = tendril::stats().workers); });
  std::printf("tendril: %u workers for \"all\"; default stacks (stack_limit %zu KiB); %s\n", all,
              tendril::Options().stack_limit >> 10, cfg.quick ? "--quick" : "full");

  bool ok = true;
  bench_case(cfg, "switch", "yield between 2 fibers, 1 worker (ns/switch)", "ns",
             [=] { return switch_ns(200000 * k); });
  bench_case(cfg, "pingpong_1", "unbuffered Channel round trip, 1 worker", "ns",
             [=] { return pingpong_ns(1, 0, 100000 * k); });
  bench_case(cfg, "pingpong_all", "unbuffered Channel round trip, all workers", "ns",
             [=] { return pingpong_ns(0, 0, 100000 * k); });
  bench_case(cfg, "pingpong_buffered_1", "Channel(2) round trip, 1 worker", "ns",
             [=] { return pingpong_ns(1, 2, 100000 * k); });
  bench_case(cfg, "spawn_join_1", "spawn + join an empty fiber, 1 worker", "ns",
             [=] { return spawn_join_ns(1, 20000 * k); });
  bench_case(cfg, "spawn_join_all", "spawn + join an empty fiber, all workers", "ns",
             [=] { return spawn_join_ns(0, 20000 * k); });
  bench_case(cfg, "skynet", "1M-leaf tree, Channel per parent, all workers (ms)", "ms", [&] {
    const double ms = skynet_chan_ms(false);
    ok = check_total("skynet") && ok;
    return ms;
  });
  bench_case(cfg, "skynet_join", "1M-leaf tree, spawn + join, all workers (ms)", "ms", [&] {
    const double ms = skynet_join_ms();
    ok = check_total("skynet_join") && ok;
    return ms;
  });
  if (cfg.wants("skynet_peak")) {
    std::fprintf(stderr, "tendril: skynet_peak, 1 counted run\n");
    g_alive = 0;
    g_peak = 0;
    g_started = 0;
    g_started_peak = 0;
    skynet_chan_ms(true);
    ok = check_total("skynet_peak") && ok;
    std::printf("tendril %-20s %-58s %10ld fibers\n", "skynet_peak", "most skynet fibers spawned, not finished (counted run)",
                g_peak.load());
    std::printf("RESULT skynet_peak %ld tasks\n", g_peak.load());
    std::printf("tendril %-20s %-58s %10ld fibers\n", "skynet_peak_started",
                "most skynet fibers begun, not finished (same run)", g_started_peak.load());
    std::printf("RESULT skynet_peak_started %ld tasks\n", g_started_peak.load());
    const double n = double(g_stats.fibers_spawned);
    std::printf("tendril counted run: %.0f fibers spawned, stack faults %.3f/fiber, stack cache hits %.0f%%, "
                "%.3g steals/fiber, %llu stack pages mapped + %llu cached at the end\n",
                n, double(g_stats.stack_faults) / n, 100.0 * double(g_stats.cache_hits) / n,
                double(g_stats.steals) / n, (unsigned long long)g_stats.stack_pages_mapped,
                (unsigned long long)g_stats.stack_cache_pages);
  }
  if (cfg.wants("skynet")) {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf("tendril %-20s %-58s %10.1f MiB\n", "maxrss", "peak resident memory of the process",
                double(ru.ru_maxrss) / 1024.0);
    std::printf("RESULT maxrss %.1f MiB\n", double(ru.ru_maxrss) / 1024.0);
  }
  for (const auto& [n, tag] : {std::pair<long, const char*>{100000, "100k"}, {1000000, "1m"}}) {
    const std::string spawn_name = std::string("park_spawn_") + tag, wake_name = std::string("park_wake_") + tag,
                      mem_name = std::string("park_mem_") + tag;
    const bool want_spawn = cfg.wants(spawn_name), want_wake = cfg.wants(wake_name), want_mem = cfg.wants(mem_name);
    if (!want_spawn && !want_wake && !want_mem) continue;
    // --quick leaves out the 1M rounds (half a minute each) unless --only asks for them.
    if (cfg.quick && n >= 1000000 && cfg.only.empty()) continue;
    std::vector<double> spawn_ns, wake_ns, mem, rss, pte, pages;
    for (int rep = 0; rep < cfg.reps; ++rep) {
      std::fprintf(stderr, "tendril: park %s, round %d/%d (fresh process)\n", tag, rep + 1, cfg.reps);
      ParkRound r;
      if (!park_round(n, r)) {
        std::fprintf(stderr, "tendril: park %s: the child process failed\n", tag);
        std::printf("RESULT error park_child_failed -\n");
        return 1;
      }
      spawn_ns.push_back(r.spawn_ns / double(n));
      wake_ns.push_back(r.wake_ns / double(n));
      mem.push_back((r.rss + r.pte) / double(n));
      rss.push_back(r.rss / double(n));
      pte.push_back(r.pte / double(n));
      pages.push_back(r.pages / double(n));
      std::fprintf(stderr, "  spawn+park %.2f s, wake %.2f s, %.0f B per fiber (RSS %.0f + PTE %.0f), %.2f stack pages\n",
                   r.spawn_ns / 1e9, r.wake_ns / 1e9, mem.back(), rss.back(), pte.back(), pages.back());
    }
    const std::string count = n >= 1000000 ? "1M" : "100k";
    if (want_spawn)
      report(spawn_name.c_str(), (count + " fibers spawned until all parked on one WaitGroup (ns/fiber)").c_str(), spawn_ns,
             "ns");
    if (want_wake)
      report(wake_name.c_str(), (count + " parked fibers woken by done(), until all finished (ns/fiber)").c_str(), wake_ns,
             "ns");
    if (want_mem) {
      report(mem_name.c_str(), (count + " parked fibers: (dVmRSS + dVmPTE) / N (bytes/fiber)").c_str(), mem, "B");
      std::printf("tendril %-20s of which RSS %.0f B, page tables %.0f B, %.2f stack pages mapped per fiber (medians)\n",
                  mem_name.c_str(), median_of(rss), median_of(pte), median_of(pages));
    }
  }
  if (!ok) {
    std::printf("RESULT error wrong_total -\n");
    return 1;
  }
  return 0;
}
