// Peer: the tendril peer micro-benchmarks and skynet on Boost.Fiber
// (Boost 1.74). Same cases, names, units and output as bench/skynet.cpp (see
// bench/peers/README.md):
//
//   peers_boost_fiber [--quick] [--reps N] [--only NAME[,NAME...]]
//
// "1 worker" cases run on a fresh std::thread with Boost.Fiber's default
// scheduler (round_robin, one thread). "all" cases run on
// algo::work_stealing over std::thread::hardware_concurrency() threads (the
// main thread plus helpers whose main fiber waits on a fiber condition
// variable, as in Boost's own work_stealing example). A process can set up
// work_stealing only once (it keeps static state), so the "all" cases share one
// pool that is built after the one-thread cases. Idle work_stealing threads
// spin (suspend = false, the default), like tendril's and Go's idle workers do
// for a while.
//
// Fibers use Boost.Fiber's default stack (fixedsize_stack, 128 KiB malloc'ed
// per fiber) and the default launch policy (post: the new fiber is queued, the
// spawner keeps running). skynet_peak reports how many fibers that leaves
// alive at once.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/context/stack_traits.hpp>
#include <boost/fiber/all.hpp>
#include <boost/fiber/algo/work_stealing.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench/report/peer_args.hpp"

namespace {

namespace bf = boost::fibers;
using Clock = std::chrono::steady_clock;
constexpr long kLeaves = 1000000;
constexpr long kExpected = 499999500000L;

template <class T>
inline void keep(T&& v) {
  asm volatile("" : : "g"(v) : "memory");
}
inline void clobber() { asm volatile("" : : : "memory"); }

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

// Runs body() on a new thread (so with a fresh round_robin scheduler).
template <class F>
double on_fresh_thread(F&& body) {
  double r = 0;
  std::thread([&] { r = body(); }).join();
  return r;
}

// ---- micro-benchmarks ----------------------------------------------------------

double switch_ns(long n) {
  return on_fresh_thread([n] {
    bool stop = false;  // one thread: no atomics needed
    bf::fiber partner([&stop] {
      while (!stop) boost::this_fiber::yield();
    });
    for (int i = 0; i < 1000; ++i) boost::this_fiber::yield();
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) boost::this_fiber::yield();
    const double ns = ns_since(t0) / (2.0 * double(n));
    stop = true;
    partner.join();
    return ns;
  });
}

template <class Chan>
double pingpong_body(Chan& ping, Chan& pong, long n) {
  bf::fiber partner([&] {
    int v = 0;
    while (ping.pop(v) == bf::channel_op_status::success) pong.push(v);
  });
  int v = 0;
  for (int i = 0; i < 1000; ++i) {
    ping.push(i);
    pong.pop(v);
  }
  const auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    ping.push(int(i));
    pong.pop(v);
    keep(v);
  }
  const double ns = ns_since(t0) / double(n);
  ping.close();
  partner.join();
  return ns;
}

// Round trip between two fibers (main fiber of the thread and a partner).
double pingpong_unbuffered_ns(long n) {
  return on_fresh_thread([n] {
    bf::unbuffered_channel<int> ping, pong;
    return pingpong_body(ping, pong, n);
  });
}
double pingpong_buffered_ns(long n) {
  return on_fresh_thread([n] {
    bf::buffered_channel<int> ping(2), pong(2);  // capacity: a power of two, at least 2
    return pingpong_body(ping, pong, n);
  });
}

double spawn_join_body(long n) {
  for (int i = 0; i < 100; ++i) bf::fiber([] {}).join();
  const auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) bf::fiber([] { clobber(); }).join();
  return ns_since(t0) / double(n);
}
double spawn_join_ns(long n) {
  return on_fresh_thread([n] { return spawn_join_body(n); });
}

// ---- skynet ------------------------------------------------------------------------

std::atomic<long> g_alive{0};
std::atomic<long> g_peak{0};
bool g_count = false;  // set only between runs
// --launch dispatch: children start at once (the parent waits in the ready
// queue), so the tree unfolds depth-first; default post.
bf::launch g_launch = bf::launch::post;

// A task counts from just before it is spawned until its body returns.
void note_spawn() {
  if (!g_count) return;
  const long now = g_alive.fetch_add(1, std::memory_order_relaxed) + 1;
  long p = g_peak.load(std::memory_order_relaxed);
  while (now > p && !g_peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
  }
}
struct ExitNote {
  ~ExitNote() {
    if (g_count) g_alive.fetch_sub(1, std::memory_order_relaxed);
  }
};

// Children send on the parent's unbuffered channel. The channel is shared
// (shared_ptr) because a child may still be inside push() when the parent has
// received and returned.
using LongChan = bf::unbuffered_channel<long>;
void skynet_chan(std::shared_ptr<LongChan> out, long num, long size) {
  ExitNote exit_note;
  if (size == 1) {
    out->push(num);
    return;
  }
  auto rc = std::make_shared<LongChan>();
  const long sub = size / 10;
  for (long i = 0; i < 10; ++i) {
    note_spawn();
    bf::fiber(g_launch, skynet_chan, rc, num + i * sub, sub).detach();
  }
  long sum = 0;
  for (int i = 0; i < 10; ++i) sum += rc->value_pop();
  out->push(sum);
}

long skynet_join(long num, long size) {
  if (size == 1) return num;
  const long sub = size / 10;
  long res[10];
  bf::fiber kids[10];
  for (long i = 0; i < 10; ++i) kids[i] = bf::fiber(g_launch, [&res, i, num, sub] { res[i] = skynet_join(num + i * sub, sub); });
  long sum = 0;
  for (int i = 0; i < 10; ++i) {
    kids[i].join();
    sum += res[i];
  }
  return sum;
}

long g_total = 0;

// Run on the work-stealing pool's main thread. The root is a fiber of its own
// (the main fiber of a thread can never migrate).
double skynet_chan_ms() {
  const auto t0 = Clock::now();
  auto out = std::make_shared<LongChan>();
  note_spawn();
  bf::fiber(skynet_chan, out, 0L, kLeaves).detach();
  g_total = out->value_pop();
  return ns_since(t0) / 1e6;
}
double skynet_join_ms() {
  const auto t0 = Clock::now();
  long total = 0;
  bf::fiber([&total] { total = skynet_join(0, kLeaves); }).join();
  g_total = total;
  return ns_since(t0) / 1e6;
}

// ---- the work-stealing pool ----------------------------------------------------------

class StealingPool {
 public:
  explicit StealingPool(unsigned n) : n_(n) {
    for (unsigned i = 1; i < n_; ++i)
      helpers_.emplace_back([this] {
        bf::use_scheduling_algorithm<bf::algo::work_stealing>(n_);
        std::unique_lock<bf::mutex> lk(m_);
        cv_.wait(lk, [this] { return done_; });
      });
    bf::use_scheduling_algorithm<bf::algo::work_stealing>(n_);  // returns once all n_ threads joined in
  }
  ~StealingPool() {
    {
      std::lock_guard<bf::mutex> g(m_);
      done_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : helpers_) t.join();
  }

 private:
  unsigned n_;
  std::vector<std::thread> helpers_;
  bf::mutex m_;
  bf::condition_variable cv_;
  bool done_ = false;
};

// Ping-pong across the pool: both ends are spawned fibers (so both may migrate,
// like tendril's and Go's), the main fiber joins them.
double pingpong_stealing_ns(long n) {
  double ns = 0;
  bf::fiber([&ns, n] {
    bf::unbuffered_channel<int> ping, pong;
    ns = pingpong_body(ping, pong, n);
  }).join();
  return ns;
}
double spawn_join_stealing_ns(long n) {
  double ns = 0;
  bf::fiber([&ns, n] { ns = spawn_join_body(n); }).join();
  return ns;
}

// ---- driver ----------------------------------------------------------------------------

using Config = bench::PeerConfig;

template <class F>
void bench_case(const Config& c, const char* name, const char* what, const char* unit, F&& f) {
  if (!c.wants(name)) return;
  std::fprintf(stderr, "boost.fiber: %s, %d reps\n", name, c.reps);
  std::vector<double> v;
  for (int r = 0; r < c.reps; ++r) v.push_back(f());
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  std::printf("boost   %-20s %-58s %10.1f %s (min %.1f, max %.1f, %zu reps)\n", name, what, med, unit, v.front(),
              v.back(), n);
  std::printf("RESULT %s %.1f %s\n", name, med, unit);
  std::fflush(stdout);
}

bool g_ok = true;
void check_total(const char* name) {
  if (g_total == kExpected) return;
  std::fprintf(stderr, "boost.fiber %s: WRONG TOTAL %ld (expected %ld)\n", name, g_total, kExpected);
  g_ok = false;
}

void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--quick] [--reps N] [--only NAME[,NAME...]] [--launch post|dispatch]\n", argv0);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (bench::parse_peer_arg(argc, argv, i, cfg)) continue;
    if (a == "--launch" && i + 1 < argc) {
      const std::string v = argv[++i];
      if (v != "post" && v != "dispatch") {
        usage(argv[0]);
        return 2;
      }
      g_launch = v == "post" ? bf::launch::post : bf::launch::dispatch;
    } else if (a == "-h" || a == "--help") {
      usage(argv[0]);
      return 0;
    } else {
      usage(argv[0]);
      return 2;
    }
  }
  cfg.finish();
  const long k = cfg.quick ? 1 : 5;
  const unsigned all = std::max(1u, std::thread::hardware_concurrency());
  std::printf("boost.fiber: Boost %d.%d, work_stealing over %u threads for \"all\"; default stack %zu KiB; %s\n",
              BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000, all,
              boost::context::stack_traits::default_size() >> 10, cfg.quick ? "--quick" : "full");

  bench_case(cfg, "switch", "this_fiber::yield between 2 fibers, 1 thread (ns/switch)", "ns",
             [=] { return switch_ns(200000 * k); });
  bench_case(cfg, "pingpong_1", "unbuffered_channel round trip, 1 thread", "ns",
             [=] { return pingpong_unbuffered_ns(100000 * k); });
  bench_case(cfg, "pingpong_buffered_1", "buffered_channel(2) round trip, 1 thread", "ns",
             [=] { return pingpong_buffered_ns(100000 * k); });
  bench_case(cfg, "spawn_join_1", "fiber + join, 1 thread", "ns", [=] { return spawn_join_ns(20000 * k); });

  const bool any_all = cfg.wants("pingpong_all") || cfg.wants("spawn_join_all") || cfg.wants("skynet") ||
                       cfg.wants("skynet_join") || cfg.wants("skynet_peak");
  if (any_all) {
    StealingPool pool(all);
    bench_case(cfg, "pingpong_all", "unbuffered_channel round trip, work_stealing", "ns",
               [=] { return pingpong_stealing_ns(100000 * k); });
    bench_case(cfg, "spawn_join_all", "fiber + join, work_stealing", "ns",
               [=] { return spawn_join_stealing_ns(20000 * k); });
    bench_case(cfg, "skynet", "1M-leaf tree, channel per parent, work_stealing (ms)", "ms", [] {
      const double ms = skynet_chan_ms();
      check_total("skynet");
      return ms;
    });
    bench_case(cfg, "skynet_join", "1M-leaf tree, fiber + join, work_stealing (ms)", "ms", [] {
      const double ms = skynet_join_ms();
      check_total("skynet_join");
      return ms;
    });
    if (cfg.wants("skynet_peak")) {
      std::fprintf(stderr, "boost.fiber: skynet_peak, 1 counted run\n");
      g_count = true;
      skynet_chan_ms();
      g_count = false;
      check_total("skynet_peak");
      std::printf("boost   %-20s %-58s %10ld fibers\n", "skynet_peak",
                  "most skynet fibers spawned, not finished (counted run)", g_peak.load());
      std::printf("RESULT skynet_peak %ld tasks\n", g_peak.load());
    }
  }
  if (cfg.wants("skynet")) {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::printf("boost   %-20s %-58s %10.1f MiB\n", "maxrss", "peak resident memory of the process",
                double(ru.ru_maxrss) / 1024.0);
    std::printf("RESULT maxrss %.1f MiB\n", double(ru.ru_maxrss) / 1024.0);
  }
  if (!g_ok) {
    std::printf("RESULT error wrong_total -\n");
    return 1;
  }
  std::fflush(stdout);
  return 0;
}
