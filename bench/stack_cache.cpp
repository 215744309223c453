// Free-stack cache benchmark. Plain program:
//   stack_cache [--quick]
// 1. Spawn/exit churn through tendril::run: N fibers through W concurrently
//    live (default 1M through 1k), with the cache (default budget) and without
//    it (stack_cache_bytes = 0): ns per spawn+join, cache hit rate, stack
//    faults per fiber; pthread create+join beside it.
// 2. A spawn site that recurses 64 KiB: stack faults per fiber before
//    learning (TENDRIL_STACK_LEARN=0) and after.
#include <pthread.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>

#include "tendril/fiber.hpp"
#include "tendril/runtime.hpp"
#include "tendril/stats.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct ChurnResult {
  double ns_per_fiber = 0;
  double hit_rate = 0;
  double faults_per_fiber = 0;
  double steady_faults_per_fiber = 0;  // second half of the run
  tendril::Stats stats;
};

ChurnResult churn(std::size_t cache_bytes, long fibers, long window) {
  tendril::Options o;
  o.stack_cache_bytes = cache_bytes;
  ChurnResult r;
  tendril::run(o, [&] {
    std::deque<tendril::Fiber> live;
    tendril::Stats s0 = tendril::stats(), mid{};
    auto t0 = Clock::now();
    for (long i = 0; i < fibers; ++i) {
      if (i == fibers / 2) mid = tendril::stats();
      live.push_back(tendril::spawn([] {}));
      if (long(live.size()) == window) {
        live.front().join();
        live.pop_front();
      }
    }
    for (auto& f : live) f.join();
    auto t1 = Clock::now();
    tendril::Stats s1 = tendril::stats();
    r.ns_per_fiber = std::chrono::duration<double, std::nano>(t1 - t0).count() / double(fibers);
    double hits = double(s1.cache_hits - s0.cache_hits), misses = double(s1.cache_misses - s0.cache_misses);
    r.hit_rate = hits + misses > 0 ? hits / (hits + misses) : 0;
    r.faults_per_fiber = double(s1.stack_faults - s0.stack_faults) / double(fibers);
    r.steady_faults_per_fiber = double(s1.stack_faults - mid.stack_faults) / double(fibers - fibers / 2);
    r.stats = s1;
  });
  return r;
}

void* nothing(void*) { return nullptr; }

double pthread_ns(long n) {
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    pthread_t t;
    if (pthread_create(&t, nullptr, nothing, nullptr) != 0) std::abort();
    pthread_join(t, nullptr);
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(n);
}

__attribute__((noinline)) long recurse_bytes(std::size_t bytes) {
  volatile char frame[1000];
  frame[0] = 1;
  if (bytes <= sizeof frame) return frame[0];
  return recurse_bytes(bytes - sizeof frame) + frame[0];
}

struct DeepResult {
  double first_faults = 0;   // the first fiber of the site
  double later_faults = 0;   // per fiber, the rest
  double ns_per_fiber = 0;   // the rest
};

const char g_deep_site = 0;

DeepResult deep_site(bool learn, long fibers) {
  setenv("TENDRIL_STACK_LEARN", learn ? "1" : "0", 1);
  tendril::Options o;
  DeepResult r;
  tendril::run(o, [&] {
    tendril::SpawnOptions so;
    so.site = &g_deep_site;
    auto body = [] { recurse_bytes(64 * 1024); };
    std::uint64_t f0 = tendril::stats().stack_faults;
    tendril::spawn(so, body).join();
    std::uint64_t f1 = tendril::stats().stack_faults;
    // Four live at a time, so fresh slots are exercised as well as cached ones.
    auto t0 = Clock::now();
    std::deque<tendril::Fiber> live;
    for (long i = 0; i < fibers; ++i) {
      live.push_back(tendril::spawn(so, body));
      if (live.size() == 4) {
        live.front().join();
        live.pop_front();
      }
    }
    for (auto& f : live) f.join();
    auto t1 = Clock::now();
    std::uint64_t f2 = tendril::stats().stack_faults;
    r.first_faults = double(f1 - f0);
    r.later_faults = double(f2 - f1) / double(fibers);
    r.ns_per_fiber = std::chrono::duration<double, std::nano>(t1 - t0).count() / double(fibers);
  });
  unsetenv("TENDRIL_STACK_LEARN");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const long fibers = quick ? 100000 : 1000000;
  const long window = 1000;
  const long threads = quick ? 2000 : 20000;
  const long deep = quick ? 2000 : 20000;

  ChurnResult on = churn(std::size_t(64) << 20, fibers, window);
  ChurnResult off = churn(0, fibers, window);
  double pt = pthread_ns(threads);
  std::printf("churn: %ld fibers through %ld live, %u workers, stack mode %s\n", fibers, window, on.stats.workers,
              on.stats.stack_mode.c_str());
  std::printf("  %-22s %10s %9s %12s %14s\n", "", "ns/fiber", "hit rate", "faults/fiber", "steady faults");
  std::printf("  %-22s %10.1f %8.1f%% %12.4f %14.4f\n", "cache on (64 MiB)", on.ns_per_fiber, on.hit_rate * 100,
              on.faults_per_fiber, on.steady_faults_per_fiber);
  std::printf("  %-22s %10.1f %8.1f%% %12.4f %14.4f\n", "cache off", off.ns_per_fiber, off.hit_rate * 100,
              off.faults_per_fiber, off.steady_faults_per_fiber);
  std::printf("  %-22s %10.1f\n", "pthread create+join", pt);
  std::printf("  cache counters: hits %llu misses %llu cached %llu dropped %llu evicted %llu trimmed pages %llu "
              "node match %llu mismatch %llu\n",
              (unsigned long long)on.stats.cache_hits, (unsigned long long)on.stats.cache_misses,
              (unsigned long long)on.stats.stacks_cached, (unsigned long long)on.stats.stacks_dropped,
              (unsigned long long)on.stats.stacks_evicted, (unsigned long long)on.stats.pages_trimmed,
              (unsigned long long)on.stats.node_match, (unsigned long long)on.stats.node_mismatch);
  std::printf("  ratios: cache on / off = %.2f, cache on / pthread = %.4f (pthread is %.0fx slower)\n",
              on.ns_per_fiber / off.ns_per_fiber, on.ns_per_fiber / pt, pt / on.ns_per_fiber);

  DeepResult before = deep_site(false, deep);
  DeepResult after = deep_site(true, deep);
  std::printf("site recursing 64 KiB, %ld fibers (4 live):\n", deep);
  std::printf("  %-22s %12s %14s %10s\n", "", "first fiber", "faults/fiber", "ns/fiber");
  std::printf("  %-22s %12.0f %14.3f %10.0f\n", "not learned", before.first_faults, before.later_faults,
              before.ns_per_fiber);
  std::printf("  %-22s %12.0f %14.3f %10.0f\n", "learned depth", after.first_faults, after.later_faults,
              after.ns_per_fiber);
  std::printf("  ratio learned / not learned: faults %.3f, time %.2f\n",
              before.later_faults > 0 ? after.later_faults / before.later_faults : 0.0,
              after.ns_per_fiber / before.ns_per_fiber);
  return 0;
}
