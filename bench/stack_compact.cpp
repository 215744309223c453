// Memory per parked fiber with and without idle-stack compaction
// (Options::compact_after), in one run: each measurement runs in a forked
// child of its own, alternating compaction off / on, so they do not see each
// other's pages.
//
//   build/bench/stack_compact [fibers=100000] [rounds=2] [workers=1] [used=0,2048,6144]
//
// Each fiber writes `used` bytes of its stack (a buffer below its first
// frame: 0 = the top page only, 2 KiB, 6 KiB) and parks on one WaitGroup.
// Memory per fiber = delta (VmRSS + VmPTE) from before the spawns to when
// every fiber is parked and, with compaction on, compacted (fibers_compacted
// stops growing), divided by the fibers; beside it the bytes held in
// compaction buffers per fiber. Then one done() wakes them all; the wake time
// shows what restoring costs (every waiter is touched: its Waiter lives in
// its park's frame, below the top page, so the first touch of a compacted
// fiber goes through the fault handler).
#include <tendril/tendril.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "bench/report/in_child.hpp"
#include "samples/common/proc_status.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  double bytes_per_fiber = 0;
  double buffer_bytes_per_fiber = 0;
  double compacted = 0;  // fraction of fibers compacted
  double stack_pages = 0;  // stats().stack_pages_mapped per fiber
  double park_s = 0;     // spawn + park (+ compaction) until measured
  double wake_ns = 0;    // per fiber: done() until all joined
};

std::uint64_t rss_pte() {
  return sample::proc_status_field("VmRSS").value_or(0) + sample::proc_status_field("VmPTE").value_or(0);
}

std::atomic<std::size_t> g_arrived{0};

__attribute__((noinline)) void use_stack_and_park(std::size_t used, const tendril::WaitGroup& gate) {
  if (used == 0) {
    g_arrived.fetch_add(1, std::memory_order_relaxed);
    gate.wait();
    return;
  }
  auto* buf = static_cast<volatile char*>(__builtin_alloca(used));
  for (std::size_t i = 0; i < used; i += 64) buf[i] = char(i);
  g_arrived.fetch_add(1, std::memory_order_relaxed);
  gate.wait();
  asm volatile("" : : "r"(buf) : "memory");
}

Result measure(std::size_t fibers, std::size_t used, bool compact, unsigned workers) {
  tendril::Options o;
  o.workers = workers;
  o.compact_after = compact ? std::chrono::milliseconds(50) : std::chrono::milliseconds(0);
  Result r;
  tendril::run(o, [&] {
    tendril::WaitGroup gate;
    gate.add(1);
    const std::uint64_t before = rss_pte();
    const auto t0 = Clock::now();
    std::vector<tendril::Fiber> fs;
    fs.reserve(fibers);
    for (std::size_t i = 0; i < fibers; ++i) fs.push_back(tendril::spawn([&] { use_stack_and_park(used, gate); }));
    // Every fiber at its park, then (compaction on) until fibers_compacted stops growing.
    while (g_arrived.load(std::memory_order_relaxed) < fibers) tendril::this_fiber::sleep_for(std::chrono::milliseconds(10));
    std::uint64_t last = 0;
    for (int stable = 0, i = 0; stable < 3 && i < 600; ++i) {
      tendril::this_fiber::sleep_for(std::chrono::milliseconds(100));
      // (main's own stack is compacted and restored around its sleeps: a
      // change of one or two is not progress.)
      const std::uint64_t now = tendril::stats().fibers_compacted;
      stable = now <= last + fibers / 1000 ? stable + 1 : 0;
      last = now;
    }
    r.park_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const tendril::Stats st = tendril::stats();
    const std::uint64_t after = rss_pte();
    r.bytes_per_fiber = double(after - before) / double(fibers);
    r.buffer_bytes_per_fiber = double(st.compact_bytes) / double(fibers);
    r.compacted = double(st.fibers_compacted) / double(fibers);
    r.stack_pages = double(st.stack_pages_mapped) / double(fibers);
    const auto t1 = Clock::now();
    gate.done();
    for (auto& f : fs) f.join();
    r.wake_ns = std::chrono::duration<double, std::nano>(Clock::now() - t1).count() / double(fibers);
  });
  return r;
}

Result in_child(std::size_t fibers, std::size_t used, bool compact, unsigned workers) {
  return bench::measure_in_child<Result>([&] { return measure(fibers, used, compact, workers); });
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t fibers = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 2;
  const unsigned workers = argc > 3 ? unsigned(std::atoi(argv[3])) : 1;
  std::vector<std::size_t> sizes{0, 2048, 6144};
  if (argc > 4) {
    sizes.clear();
    for (const char* p = argv[4]; *p != 0;) {
      char* end = nullptr;
      sizes.push_back(std::strtoull(p, &end, 10));
      if (end == p || sizes.back() > 64 * 1024) {
        std::fprintf(stderr, "stack_compact: used must be a comma-separated list of byte counts up to 65536\n");
        return 2;
      }
      p = *end == ',' ? end + 1 : end;
    }
  }
  if (fibers == 0 || rounds < 1 || workers < 1) {
    std::fprintf(stderr, "usage: %s [fibers>0] [rounds>0] [workers>0] [used,...]\n", argv[0]);
    return 2;
  }
  std::printf("# %zu parked fibers, %u worker(s), compact_after 50 ms when on; per fiber: VmRSS+VmPTE delta\n", fibers,
              workers);
  std::printf("| stack used | compaction | B/fiber | buffer B/fiber | stack pages/fiber | compacted | spawn+park s | wake ns/fiber |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (std::size_t used : sizes)
    for (int round = 0; round < rounds; ++round)
      for (bool compact : {false, true}) {
        const Result r = in_child(fibers, used, compact, workers);
        std::printf("| %zu B | %s | %.0f | %.0f | %.2f | %.0f%% | %.2f | %.0f |\n", used, compact ? "on" : "off",
                    r.bytes_per_fiber, r.buffer_bytes_per_fiber, r.stack_pages, r.compacted * 100, r.park_s, r.wake_ns);
        std::fflush(stdout);
      }
  return 0;
}
