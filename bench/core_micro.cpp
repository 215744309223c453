// Core micro-benchmarks (Google Benchmark): tendril vs pthreads, in one run.
//
//   core_micro [--benchmark_filter=REGEX] [--benchmark_min_time=0.2] ...
//
// Every tendril benchmark calls tendril::run() itself and runs its timing loop
// inside the main fiber, after the workers are up and the partner fibers are
// spawned and warmed, so neither thread start-up nor run()'s teardown is timed.
// (Google Benchmark calls each function several times while it sizes the
// iteration count; each call is a fresh run(), untimed.) Times are wall-clock
// (UseRealTime) because a fiber may migrate between worker threads, which
// makes per-thread CPU time meaningless; CPU columns are whole-process CPU.
//
// Counters:
//   ops/iter   units of work per iteration (2 switches per yield round,
//              1000 fibers per batch)
//   t/op       wall time per unit (seconds, SI-prefixed: "85n" = 85 ns)
//   sw/op, wake/op, steal/op  tendril::stats() deltas per unit
// After the runs, a ratio table pairs each tendril case with its pthread
// equivalent (pthread time / tendril time: > 1 means tendril is faster).
#include <benchmark/benchmark.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/report/core_common.hpp"
#include "tendril/tendril.hpp"

namespace {

using bench::Placement;

// Runs body() as tendril's main fiber with `workers` workers.
template <class F>
void in_tendril(unsigned workers, F&& body) {
  tendril::Options o;
  o.workers = workers;
  tendril::run(o, [&] { body(); });
}

void set_unit_counters(benchmark::State& st, double ops_per_iter) {
  const double ops = ops_per_iter * double(st.iterations());
  st.counters["ops/iter"] = benchmark::Counter(ops_per_iter);
  st.counters["t/op"] = benchmark::Counter(ops, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
void set_stats_counters(benchmark::State& st, const tendril::Stats& a, const tendril::Stats& b,
                        double ops_per_iter) {
  const bench::StatsDelta d = bench::stats_delta(a, b, ops_per_iter * double(st.iterations()));
  st.counters["sw/op"] = d.switches;
  st.counters["wake/op"] = d.wakeups;
  st.counters["steal/op"] = d.steals;
}

// ---- (a) yield between two fibers -------------------------------------------

void BM_TendrilYield(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    std::atomic<bool> stop{false};
    tendril::Fiber partner = tendril::spawn([&stop] {
      while (!stop.load(std::memory_order_relaxed)) tendril::this_fiber::yield();
    });
    for (int i = 0; i < 1000; ++i) tendril::this_fiber::yield();  // warm up
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) tendril::this_fiber::yield();
    const tendril::Stats b = tendril::stats();
    stop.store(true);
    partner.join();
    // One iteration = main yields to the partner and the partner yields back.
    set_unit_counters(st, 2);
    set_stats_counters(st, a, b, 2);
  });
}

// The pthread analogue of a switch: two threads on one CPU taking turns with
// sched_yield (each yield hands the CPU to the other runnable thread).
void BM_PthreadSchedYield(benchmark::State& st) {
  const auto cpus = bench::placement_cpus(Placement::kSame);
  const cpu_set_t old = bench::pin_self(cpus.first);
  std::atomic<bool> stop{false};
  std::thread partner([&] {
    bench::pin_self(cpus.second);
    while (!stop.load(std::memory_order_relaxed)) sched_yield();
  });
  for (int i = 0; i < 1000; ++i) sched_yield();
  for (auto _ : st) sched_yield();
  stop.store(true);
  partner.join();
  bench::restore_affinity(old);
  set_unit_counters(st, 2);
}

// ---- (b) unbuffered channel ping-pong ---------------------------------------

// A channel round trip between the main fiber and a partner on `workers`
// workers; with `pinned`, both inside a this_fiber::NoMigrate.
void channel_ping_pong(benchmark::State& st, unsigned workers, bool pinned) {
  in_tendril(workers, [&] {
    std::optional<tendril::this_fiber::NoMigrate> stay;
    if (pinned) stay.emplace();
    tendril::Channel<int> ping, pong;
    tendril::Fiber partner = tendril::spawn([ping, pong, pinned]() mutable {
      std::optional<tendril::this_fiber::NoMigrate> stay;
      if (pinned) stay.emplace();
      while (std::optional<int> v = ping.recv()) pong.send(*v);
    });
    for (int i = 0; i < 1000; ++i) {
      ping.send(i);
      pong.recv();
    }
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) {
      ping.send(1);
      benchmark::DoNotOptimize(pong.recv());
    }
    const tendril::Stats b = tendril::stats();
    ping.close();
    partner.join();
    set_unit_counters(st, 1);
    set_stats_counters(st, a, b, 1);
  });
}

void BM_TendrilChannelPingPong(benchmark::State& st) { channel_ping_pong(st, unsigned(st.range(0)), false); }

// ---- buffered channel stream -------------------------------------------
// The main fiber sends into a channel of capacity 64 that a partner drains:
// mostly values left in the buffer and taken from it, with a park when one
// side runs ahead. Per value sent.

void BM_TendrilChannelBuffered(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    tendril::Channel<int> ch(64);
    tendril::Fiber partner = tendril::spawn([ch]() mutable {
      long sum = 0;
      while (std::optional<int> v = ch.recv()) sum += *v;
      benchmark::DoNotOptimize(sum);
    });
    for (int i = 0; i < 1000; ++i) ch.send(i);
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) ch.send(1);
    const tendril::Stats b = tendril::stats();
    ch.close();
    partner.join();
    set_unit_counters(st, 1);
    set_stats_counters(st, a, b, 1);
  });
}

// ---- select: the ping-pong above with the reply taken by select ------------
// Arg 1: channels in the select (1: the reply channel only; 2: also one that
// never has a value). Same round trip as BM_TendrilChannelPingPong.

void BM_TendrilSelectPingPong(benchmark::State& st) {
  const int nchannels = int(st.range(1));
  in_tendril(unsigned(st.range(0)), [&] {
    tendril::Channel<int> ping, pong, idle;
    tendril::Fiber partner = tendril::spawn([ping, pong]() mutable {
      while (std::optional<int> v = ping.recv()) pong.send(*v);
    });
    int got = 0;
    auto round_trip = [&] {
      ping.send(1);
      if (nchannels == 1) {
        tendril::select(tendril::case_recv(pong, [&](std::optional<int> v) { got = *v; }));
      } else {
        tendril::select(tendril::case_recv(pong, [&](std::optional<int> v) { got = *v; }),
                        tendril::case_recv(idle, [&](std::optional<int>) { got = -1; }));
      }
      benchmark::DoNotOptimize(got);
    };
    for (int i = 0; i < 1000; ++i) round_trip();
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) round_trip();
    const tendril::Stats b = tendril::stats();
    ping.close();
    partner.join();
    set_unit_counters(st, 1);
    set_stats_counters(st, a, b, 1);
  });
}

// ---- mutex + condvar ping-pong: fibers (tendril) and threads (std) ----------

void BM_TendrilMutexCondVarPingPong(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    bench::TurnPair<tendril::Mutex, tendril::CondVar> p;
    tendril::Fiber partner = tendril::spawn([&p] { p.partner_loop(); });
    for (int i = 0; i < 1000; ++i) p.round_trip();
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) p.round_trip();
    const tendril::Stats b = tendril::stats();
    p.finish();
    partner.join();
    set_unit_counters(st, 1);
    set_stats_counters(st, a, b, 1);
  });
}

// The same ping-pong with both fibers in a tendril::Scope, so every park is
// interruptible (publishes its Interrupt); with a deadline (arg 1) each park
// also arms the timer for it. Against BM_TendrilMutexCondVarPingPong: what a
// cancellable park costs.
void BM_TendrilMutexCondVarPingPongInScope(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    bench::TurnPair<tendril::Mutex, tendril::CondVar> p;  // outlives both children
    std::optional<tendril::Scope> scope;
    if (st.range(1) != 0) scope.emplace(std::chrono::hours(1)); else scope.emplace();
    scope->spawn([&] {
      scope->spawn([&p] { p.partner_loop(); });
      for (int i = 0; i < 1000; ++i) p.round_trip();
      const tendril::Stats a = tendril::stats();
      for (auto _ : st) p.round_trip();
      const tendril::Stats b = tendril::stats();
      p.finish();
      set_unit_counters(st, 1);
      set_stats_counters(st, a, b, 1);
    });
    scope->join();
  });
}

// (d) std::mutex + std::condition_variable ping-pong between two pthreads.
// Arg: 0 unpinned, 1 same CPU, 2 across CPUs.
void BM_PthreadMutexCondVarPingPong(benchmark::State& st) {
  const auto place = static_cast<Placement>(st.range(0));
  const auto cpus = bench::placement_cpus(place);
  const cpu_set_t old = bench::pin_self(cpus.first);
  bench::TurnPair<std::mutex, std::condition_variable> p;
  std::thread partner([&] {
    bench::pin_self(cpus.second);
    p.partner_loop();
  });
  for (int i = 0; i < 100; ++i) p.round_trip();
  for (auto _ : st) p.round_trip();
  p.finish();
  partner.join();
  bench::restore_affinity(old);
  set_unit_counters(st, 1);
  st.SetLabel(bench::placement_name(place));
}

// ---- (c) spawn + join ------------------------------------------------------

void BM_TendrilSpawnJoin(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    for (int i = 0; i < 100; ++i) tendril::spawn([] {}).join();
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) {
      tendril::Fiber f = tendril::spawn([] { benchmark::ClobberMemory(); });
      f.join();
    }
    const tendril::Stats b = tendril::stats();
    set_unit_counters(st, 1);
    set_stats_counters(st, a, b, 1);
  });
}

constexpr int kBatch = 1000;

void BM_TendrilSpawnJoinBatch(benchmark::State& st) {
  in_tendril(unsigned(st.range(0)), [&] {
    std::vector<tendril::Fiber> fibers;
    fibers.reserve(kBatch);
    auto batch = [&] {
      for (int i = 0; i < kBatch; ++i) fibers.push_back(tendril::spawn([] { benchmark::ClobberMemory(); }));
      for (tendril::Fiber& f : fibers) f.join();
      fibers.clear();
    };
    batch();  // warm up
    const tendril::Stats a = tendril::stats();
    for (auto _ : st) batch();
    const tendril::Stats b = tendril::stats();
    set_unit_counters(st, kBatch);
    set_stats_counters(st, a, b, kBatch);
  });
}

// (e) pthread create + join.
void BM_PthreadCreateJoin(benchmark::State& st) {
  for (auto _ : st) {
    std::thread t([] { benchmark::ClobberMemory(); });
    t.join();
  }
  set_unit_counters(st, 1);
}

void BM_PthreadCreateJoinBatch(benchmark::State& st) {
  std::vector<std::thread> threads;
  threads.reserve(kBatch);
  for (auto _ : st) {
    for (int i = 0; i < kBatch; ++i) threads.emplace_back([] { benchmark::ClobberMemory(); });
    for (std::thread& t : threads) t.join();
    threads.clear();
  }
  set_unit_counters(st, kBatch);
}

// ---- (f) uncontended mutex -------------------------------------------------

void BM_TendrilMutexUncontended(benchmark::State& st) {
  in_tendril(1, [&] {
    tendril::Mutex m;
    for (auto _ : st) {
      m.lock();
      benchmark::ClobberMemory();
      m.unlock();
    }
    set_unit_counters(st, 1);
  });
}

void BM_TendrilMutexUncontendedThread(benchmark::State& st) {
  tendril::Mutex m;  // from a plain thread, outside run()
  for (auto _ : st) {
    m.lock();
    benchmark::ClobberMemory();
    m.unlock();
  }
  set_unit_counters(st, 1);
}

void BM_StdMutexUncontended(benchmark::State& st) {
  std::mutex m;
  for (auto _ : st) {
    m.lock();
    benchmark::ClobberMemory();
    m.unlock();
  }
  set_unit_counters(st, 1);
}

// ---- fiber-local storage vs thread_local ------------------------------------

tendril::FiberLocal<long> g_fiber_local;
thread_local long g_thread_local = 0;

// get() on a value made already, in a fiber (arg 1) or on a plain thread (0).
void BM_FiberLocalGet(benchmark::State& st) {
  auto loop = [&] {
    ++*g_fiber_local;  // made here, untimed
    for (auto _ : st) {
      long& v = g_fiber_local.get();
      benchmark::DoNotOptimize(v);
      ++v;
    }
  };
  if (st.range(0) != 0) {
    in_tendril(1, loop);
  } else {
    loop();
  }
  set_unit_counters(st, 1);
}

// The same read-and-increment of a thread_local (the compiler may keep its
// address across iterations: what a fiber must not do across a park).
void BM_ThreadLocalAccess(benchmark::State& st) {
  auto loop = [&] {
    for (auto _ : st) {
      long& v = g_thread_local;
      benchmark::DoNotOptimize(v);
      ++v;
    }
  };
  if (st.range(0) != 0) {
    in_tendril(1, loop);
  } else {
    loop();
  }
  set_unit_counters(st, 1);
}

// ---- NoMigrate: park/wake round trip, pinned and not ------------------------

// Unbuffered channel ping-pong (as BM_TendrilChannelPingPong) with both
// fibers inside a NoMigrate (pinned:1) or not (pinned:0).
void BM_NoMigratePingPong(benchmark::State& st) {
  channel_ping_pong(st, unsigned(st.range(0)), st.range(1) != 0);
}

// Entering and leaving a NoMigrate (the outermost: it counts the pinned fiber).
void BM_NoMigrateEnterExit(benchmark::State& st) {
  in_tendril(1, [&] {
    for (auto _ : st) {
      tendril::this_fiber::NoMigrate stay;
      benchmark::ClobberMemory();
    }
    set_unit_counters(st, 1);
  });
}

// Tendril benchmarks: wall time, whole-process CPU.
#define TENDRIL_BM(fn) BENCHMARK(fn)->UseRealTime()->MeasureProcessCPUTime()->Unit(benchmark::kNanosecond)

TENDRIL_BM(BM_TendrilYield)->ArgName("workers")->Arg(1)->Arg(2);
BENCHMARK(BM_PthreadSchedYield)->UseRealTime()->Unit(benchmark::kNanosecond);
TENDRIL_BM(BM_TendrilChannelPingPong)->ArgName("workers")->Arg(1)->Arg(2);
TENDRIL_BM(BM_TendrilChannelBuffered)->ArgName("workers")->Arg(1)->Arg(2);
TENDRIL_BM(BM_TendrilSelectPingPong)->ArgNames({"workers", "channels"})->ArgsProduct({{1, 2}, {1, 2}});
TENDRIL_BM(BM_TendrilMutexCondVarPingPong)->ArgName("workers")->Arg(1)->Arg(2);
TENDRIL_BM(BM_TendrilMutexCondVarPingPongInScope)->ArgNames({"workers", "deadline"})->ArgsProduct({{1, 2}, {0, 1}});
BENCHMARK(BM_PthreadMutexCondVarPingPong)->UseRealTime()->Unit(benchmark::kNanosecond)
    ->ArgName("place")->Arg(int(Placement::kFree))->Arg(int(Placement::kSame))->Arg(int(Placement::kAcross));
TENDRIL_BM(BM_TendrilSpawnJoin)->ArgName("workers")->Arg(1)->Arg(2);
TENDRIL_BM(BM_TendrilSpawnJoinBatch)->ArgName("workers")->Arg(1)->Arg(2);
BENCHMARK(BM_PthreadCreateJoin)->UseRealTime()->Unit(benchmark::kNanosecond);
BENCHMARK(BM_PthreadCreateJoinBatch)->UseRealTime()->Unit(benchmark::kMicrosecond);
TENDRIL_BM(BM_TendrilMutexUncontended);
BENCHMARK(BM_TendrilMutexUncontendedThread)->Unit(benchmark::kNanosecond);
BENCHMARK(BM_StdMutexUncontended)->Unit(benchmark::kNanosecond);
TENDRIL_BM(BM_FiberLocalGet)->ArgName("in_fiber")->Arg(1)->Arg(0);
TENDRIL_BM(BM_ThreadLocalAccess)->ArgName("in_fiber")->Arg(1)->Arg(0);
TENDRIL_BM(BM_NoMigratePingPong)->ArgNames({"workers", "pinned"})
    ->Args({1, 0})->Args({1, 1})->Args({2, 0})->Args({2, 1});
TENDRIL_BM(BM_NoMigrateEnterExit);

// ---- ratio table -----------------------------------------------------------

// Prints as usual and remembers ns per unit for each benchmark (the last
// iteration run, or the "median" aggregate when repetitions are used).
class CapturingReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> ns_per_op;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      std::string name = r.run_name.str();
      for (const char* suffix : {"/process_time", "/real_time"})
        if (auto pos = name.find(suffix); pos != std::string::npos) name.erase(pos, std::strlen(suffix));
      double ops = 1;
      if (auto it = r.counters.find("ops/iter"); it != r.counters.end() && it->second.value > 0)
        ops = it->second.value;
      const double ns = r.GetAdjustedRealTime() * to_ns(r.time_unit) / ops;
      if (r.run_type == Run::RT_Aggregate || !ns_per_op.count(name + "#median")) ns_per_op[name] = ns;
      if (r.run_type == Run::RT_Aggregate) ns_per_op[name + "#median"] = ns;
    }
  }

 private:
  static double to_ns(benchmark::TimeUnit u) {
    switch (u) {
      case benchmark::kNanosecond: return 1;
      case benchmark::kMicrosecond: return 1e3;
      case benchmark::kMillisecond: return 1e6;
      case benchmark::kSecond: return 1e9;
    }
    return 1;
  }
};

void print_ratio_table(const CapturingReporter& rep) {
  struct Pair {
    const char* what;
    const char* tendril;
    const char* pthread;
    double target;
  };
  const Pair pairs[] = {
      {"switch (yield, 1 worker) vs sched_yield same CPU", "BM_TendrilYield/workers:1",
       "BM_PthreadSchedYield", 0},
      {"switch (yield, 2 workers) vs sched_yield same CPU", "BM_TendrilYield/workers:2",
       "BM_PthreadSchedYield", 0},
      {"channel ping-pong (1 w) vs mutex+cv same CPU", "BM_TendrilChannelPingPong/workers:1",
       "BM_PthreadMutexCondVarPingPong/place:1", bench::kTargetPingPongNs},
      {"channel ping-pong (2 w) vs mutex+cv unpinned", "BM_TendrilChannelPingPong/workers:2",
       "BM_PthreadMutexCondVarPingPong/place:0", bench::kTargetPingPongNs},
      {"channel ping-pong (2 w) vs mutex+cv across CPUs", "BM_TendrilChannelPingPong/workers:2",
       "BM_PthreadMutexCondVarPingPong/place:2", bench::kTargetPingPongNs},
      {"fiber mutex+cv (1 w) vs thread mutex+cv same CPU",
       "BM_TendrilMutexCondVarPingPong/workers:1",
       "BM_PthreadMutexCondVarPingPong/place:1", 0},
      {"fiber mutex+cv (2 w) vs thread mutex+cv unpinned",
       "BM_TendrilMutexCondVarPingPong/workers:2",
       "BM_PthreadMutexCondVarPingPong/place:0", 0},
      {"spawn+join one at a time (1 w) vs pthread", "BM_TendrilSpawnJoin/workers:1",
       "BM_PthreadCreateJoin", bench::kTargetSpawnJoinNs},
      {"spawn+join one at a time (2 w) vs pthread", "BM_TendrilSpawnJoin/workers:2",
       "BM_PthreadCreateJoin", bench::kTargetSpawnJoinNs},
      {"spawn 1000 then join (1 w) vs pthread", "BM_TendrilSpawnJoinBatch/workers:1",
       "BM_PthreadCreateJoinBatch", bench::kTargetSpawnJoinNs},
      {"spawn 1000 then join (2 w) vs pthread", "BM_TendrilSpawnJoinBatch/workers:2",
       "BM_PthreadCreateJoinBatch", bench::kTargetSpawnJoinNs},
      {"uncontended lock/unlock (fiber) vs std::mutex", "BM_TendrilMutexUncontended",
       "BM_StdMutexUncontended", 0},
      {"uncontended lock/unlock (thread) vs std::mutex", "BM_TendrilMutexUncontendedThread",
       "BM_StdMutexUncontended", 0},
  };
  bench::Table t;
  t.header = {"comparison", "tendril ns/op", "pthread ns/op", "pthread/tendril", "target", "meets"};
  for (const Pair& p : pairs) {
    auto get = [&](const char* n) -> double {
      auto it = rep.ns_per_op.find(n);
      return it == rep.ns_per_op.end() ? -1 : it->second;
    };
    const double a = get(p.tendril), b = get(p.pthread);
    if (a < 0 && b < 0) continue;  // filtered out
    std::string target = p.target > 0 ? "<= " + bench::fmt_ns(p.target) : "";
    std::string meets = p.target > 0 && a > 0 ? (a <= p.target ? "yes" : "NO") : "";
    t.rows.push_back({p.what, a > 0 ? bench::fmt_ns(a) : "-", b > 0 ? bench::fmt_ns(b) : "-",
                      a > 0 && b > 0 ? bench::fmt_ratio(b / a) : "-", target, meets});
  }
  if (t.rows.empty()) return;
  std::printf("\nRatios (same run; ns per unit: switch, round trip, fiber/thread, lock+unlock):\n");
  bench::print_text(t, stdout);
  std::printf("\n%s:\n", bench::kPeerNote);
  bench::Table peers;
  peers.header = {"", "Go 1.19", "Boost.Fiber 1.74", "pthreads"};
  for (const bench::Peer& p : bench::peers()) peers.rows.push_back({p.what, p.go, p.bfiber, p.pthread});
  bench::print_text(peers, stdout);
  const tendril::Stats s = tendril::stats();
  std::printf("\nstack provider: %s%s\n", s.stack_mode.c_str(),
              s.stack_mode == "simple" ? " (dev mmap-per-stack: spawn numbers are pessimistic)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::warn_env_overrides(stderr);
  CapturingReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  std::fflush(stdout);
  print_ratio_table(rep);
  benchmark::Shutdown();
  return 0;
}
