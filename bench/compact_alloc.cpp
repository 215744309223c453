// Allocators for idle-stack compaction buffers, A/B in one run: glibc malloc
// against jemalloc (its default arena with the thread cache, and a dedicated
// arena without it: mallocx / sdallocx with MALLOCX_ARENA | MALLOCX_TCACHE_NONE).
// Each measurement runs in a forked child of its own, the allocators
// alternating, so RSS figures do not see each other's pages.
//
//   build/bench/compact_alloc [buffers=100000] [rounds=2]
//
// The compactor's pattern (runtime/stack/arena.cpp, compact_run): a buffer
// sized to a fiber's live stack bytes below its top page, filled with one
// memcpy from the staging area, freed when the fiber is restored, often on
// the other side of many other compactions. Per allocator and size mix:
//  - fill: N buffers allocated and copied into (ns per alloc + copy); memory
//    held = delta VmRSS + VmPTE over the sum of the sizes asked for, per buffer;
//  - churn: 2N times a random buffer freed (restore) and another allocated
//    with a new size (compaction of another fiber): ns per free + alloc +
//    copy, and the overhead per live buffer afterwards (fragmentation);
//  - half woken: a random half freed; the overhead per buffer still live
//    (what the allocator keeps of the freed half is spread over them), and
//    the same after giving free pages back (glibc malloc_trim(0), jemalloc
//    arena.<i>.purge, which its decay does by itself within 10 s).
// Size mixes: "mixed" live sizes uniform in [256, 8192] bytes (what fibers
// a few frames deep leave below their top page), "3120" (bench/stack_compact's
// 6 KiB fiber: its buffer is 3,120 bytes).
//
// This program is linked with jemalloc, which then serves malloc for the
// whole process; the glibc variant calls glibc's allocator by its own entry
// points (__libc_malloc / __libc_free), which nothing else here uses.
#include <jemalloc/jemalloc.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/report/in_child.hpp"
#include "samples/common/proc_status.hpp"

extern "C" void* __libc_malloc(std::size_t);
extern "C" void __libc_free(void*);

namespace {

using Clock = std::chrono::steady_clock;

enum class Alloc { glibc, je_tcache, je_arena };
const char* name(Alloc a) {
  switch (a) {
    case Alloc::glibc: return "glibc malloc";
    case Alloc::je_tcache: return "jemalloc mallocx (tcache)";
    case Alloc::je_arena: return "jemalloc own arena, no tcache";
  }
  return "?";
}

struct Allocator {
  Alloc kind;
  int flags = 0;
  unsigned arena = 0;
  explicit Allocator(Alloc k) : kind(k) {
    if (k != Alloc::je_arena) return;
    std::size_t len = sizeof arena;
    if (mallctl("arenas.create", &arena, &len, nullptr, 0) != 0) {
      std::fprintf(stderr, "mallctl arenas.create failed\n");
      std::exit(1);
    }
    flags = MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE;
  }
  void* get(std::size_t n) const {
    return kind == Alloc::glibc ? __libc_malloc(n) : mallocx(n, flags);
  }
  // Free pages back to the kernel: what a runtime could do now and then
  // (glibc: malloc_trim; jemalloc does it itself over dirty_decay_ms, 10 s).
  void give_back() const {
    if (kind == Alloc::glibc) {
      malloc_trim(0);
      return;
    }
    if (kind == Alloc::je_tcache) mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
    const std::string purge =
        "arena." + std::to_string(kind == Alloc::je_arena ? unsigned(arena) : unsigned(MALLCTL_ARENAS_ALL)) + ".purge";
    mallctl(purge.c_str(), nullptr, nullptr, nullptr, 0);
  }
  void put(void* p, std::size_t n) const {
    if (kind == Alloc::glibc) __libc_free(p);
    else sdallocx(p, n, flags);
  }
};

std::int64_t rss_pte() {
  return std::int64_t(sample::proc_status_field("VmRSS").value_or(0) + sample::proc_status_field("VmPTE").value_or(0));
}

struct Result {
  double fill_ns = 0, fill_over = 0;    // per buffer: ns; held bytes beyond the sizes asked for
  double churn_ns = 0, churn_over = 0;
  double half_over = 0;                 // after freeing a random half: per buffer still live
  double purged_over = 0;               // ... and after giving free pages back (trim / purge)
  double size_avg = 0;
};

Result measure(Alloc kind, std::size_t n, std::size_t fixed) {
  static char staging[64 * 4096];
  std::memset(staging, 0x5a, sizeof staging);
  const Allocator a(kind);
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::size_t> mixed(256, 8192);
  auto size = [&] { return fixed ? fixed : mixed(rng); };
  std::vector<char*> buf(n);
  std::vector<std::size_t> len(n);
  // Warm the allocator's own bookkeeping so the first buffer does not pay it.
  a.put(a.get(64), 64);
  Result r;
  const std::int64_t base = rss_pte();
  std::size_t sum = 0;
  auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    len[i] = size();
    buf[i] = static_cast<char*>(a.get(len[i]));
    std::memcpy(buf[i], staging, len[i]);
    sum += len[i];
  }
  r.fill_ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(n);
  r.fill_over = double(rss_pte() - base - std::int64_t(sum)) / double(n);
  r.size_avg = double(sum) / double(n);

  std::uniform_int_distribution<std::size_t> pick(0, n - 1);
  const std::size_t ops = 2 * n;
  t0 = Clock::now();
  for (std::size_t k = 0; k < ops; ++k) {
    const std::size_t i = pick(rng);
    a.put(buf[i], len[i]);
    sum -= len[i];
    len[i] = size();
    buf[i] = static_cast<char*>(a.get(len[i]));
    std::memcpy(buf[i], staging, len[i]);
    sum += len[i];
  }
  r.churn_ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(ops);
  r.churn_over = double(rss_pte() - base - std::int64_t(sum)) / double(n);

  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (std::size_t k = 0; k < n / 2; ++k) {
    const std::size_t i = order[k];
    a.put(buf[i], len[i]);
    sum -= len[i];
    buf[i] = nullptr;
  }
  r.half_over = double(rss_pte() - base - std::int64_t(sum)) / double(n - n / 2);
  a.give_back();
  r.purged_over = double(rss_pte() - base - std::int64_t(sum)) / double(n - n / 2);
  for (std::size_t i = 0; i < n; ++i)
    if (buf[i]) a.put(buf[i], len[i]);
  return r;
}

Result in_child(Alloc kind, std::size_t n, std::size_t fixed) {
  return bench::measure_in_child<Result>([&] { return measure(kind, n, fixed); });
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 2;
  std::printf("# %zu compaction buffers; per buffer: ns, and bytes held (VmRSS + VmPTE) beyond the sizes asked for\n", n);
  std::printf("| sizes | allocator | avg size B | fill ns | fill overhead B | churn ns | churn overhead B | "
              "half freed: overhead B | then trimmed / purged B |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (std::size_t fixed : {std::size_t(0), std::size_t(3120)})
    for (int round = 0; round < rounds; ++round)
      for (Alloc kind : {Alloc::glibc, Alloc::je_tcache, Alloc::je_arena}) {
        const Result r = in_child(kind, n, fixed);
        std::printf("| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
                    fixed ? std::to_string(fixed).c_str() : "mixed 256-8192", name(kind), r.size_avg, r.fill_ns,
                    r.fill_over, r.churn_ns, r.churn_over, r.half_over, r.purged_over);
        std::fflush(stdout);
      }
  return 0;
}
