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
//   maxrss               peak resident memory of the process (after skynet); MiB
//
// Stacks: default settings (Options::stack_limit 256 KiB reserved per fiber,
// one page resident to start). The tree is spawned as written, ten children at
// a time; tendril runs a freshly spawned child next (runnext) and the other
// nine from the FIFO run queue, so the tree unfolds partly breadth-first and
// skynet_peak reports how many fibers were alive at the worst moment.
#include <sys/resource.h>

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

template <bool Count>
void note_spawn() {
  if constexpr (Count) {
    const long now = g_alive.fetch_add(1, std::memory_order_relaxed) + 1;
    long p = g_peak.load(std::memory_order_relaxed);
    while (now > p && !g_peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
}
template <bool Count>
struct ExitNote {
  ~ExitNote() {
    if constexpr (Count) g_alive.fetch_sub(1, std::memory_order_relaxed);
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

// ---- driver ----------------------------------------------------------------------

using Config = bench::PeerConfig;

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
    skynet_chan_ms(true);
    ok = check_total("skynet_peak") && ok;
    std::printf("tendril %-20s %-58s %10ld fibers\n", "skynet_peak", "most skynet fibers spawned, not finished (counted run)",
                g_peak.load());
    std::printf("RESULT skynet_peak %ld tasks\n", g_peak.load());
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
  if (!ok) {
    std::printf("RESULT error wrong_total -\n");
    return 1;
  }
  return 0;
}
