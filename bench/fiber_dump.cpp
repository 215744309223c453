// Cost of the fiber dump: N fibers parked on one WaitGroup, one dump written
// to /dev/null, while a ticker fiber yields on the workers. Reports the dump's
// time (and per fiber) and how long the workers were held: the longest gap
// between two ticks during the dump, beside the longest gap in an equal
// stretch just before it (the ratio says what the dump costs the workers).
//
//   build/bench/fiber_dump                 # 100k and 1M fibers
//   build/bench/fiber_dump --quick         # 10k and 100k
//   build/bench/fiber_dump --md out.md     # also a Markdown table
#include <fcntl.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/report/table.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  long fibers = 0;
  double dump_s = 0;
  double us_per_fiber = 0;
  double gap_before_ms = 0;
  double gap_during_ms = 0;
};

// Longest gap between ticks of a yielding fiber while `busy` is true.
struct Ticker {
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> max_gap_ns{0};
  std::atomic<bool> reset{false};
  void run() {
    auto last = Clock::now();
    while (!stop.load(std::memory_order_relaxed)) {
      tendril::this_fiber::yield();
      const auto now = Clock::now();
      const std::int64_t gap = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
      last = now;
      if (reset.exchange(false)) {
        max_gap_ns.store(0);
        continue;
      }
      if (gap > max_gap_ns.load(std::memory_order_relaxed)) max_gap_ns.store(gap, std::memory_order_relaxed);
    }
  }
  double take_max_ms() {
    const double ms = double(max_gap_ns.load()) / 1e6;
    reset.store(true);
    return ms;
  }
};

Row measure(long n) {
  Row row;
  row.fibers = n;
  tendril::Options o;
  o.stall_threshold = std::chrono::milliseconds(0);  // the spawn loop would count as one
  tendril::run(o, [&] {
    tendril::WaitGroup gate, done;
    gate.add(1);
    for (long i = 0; i < n; ++i) {
      done.add(1);
      tendril::spawn([=]() mutable {
        gate.wait();
        done.done();
      }).detach();
      if (i % 100000 == 99999) std::fprintf(stderr, "  %ld fibers parked\r", i + 1);
    }
    Ticker ticker;
    auto t = tendril::spawn([&] { ticker.run(); });
    const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    // A stretch as long as the dump, without it: the baseline gap.
    const auto t0 = Clock::now();
    tendril::dump_fibers(devnull);
    const auto t1 = Clock::now();
    row.gap_during_ms = ticker.take_max_ms();
    tendril::this_fiber::sleep_for(t1 - t0);
    row.gap_before_ms = ticker.take_max_ms();
    close(devnull);
    ticker.stop = true;
    t.join();
    gate.done();
    done.wait();
    row.dump_s = std::chrono::duration<double>(t1 - t0).count();
    row.us_per_fiber = row.dump_s * 1e6 / double(n);
  });
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  const char* md = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--md") == 0 && i + 1 < argc) md = argv[++i];
    else {
      std::fprintf(stderr, "usage: fiber_dump [--quick] [--md FILE]\n");
      return 2;
    }
  }
  bench::Table t;
  t.header = {"fibers", "dump (s)", "us per fiber", "longest worker gap during dump (ms)",
              "same stretch without dump (ms)", "ratio"};
  for (long n : quick ? std::vector<long>{10000, 100000} : std::vector<long>{100000, 1000000}) {
    std::fprintf(stderr, "fiber_dump: %ld fibers...\n", n);
    const Row r = measure(n);
    t.rows.push_back({std::to_string(r.fibers), bench::cell(r.dump_s, "%.2f"), bench::cell(r.us_per_fiber, "%.1f"),
                      bench::cell(r.gap_during_ms, "%.2f"), bench::cell(r.gap_before_ms, "%.2f"),
                      bench::cell(r.gap_before_ms > 0 ? r.gap_during_ms / r.gap_before_ms : 0, "%.2fx")});
  }
  std::printf("%s", bench::render(t, false).c_str());
  if (md != nullptr) {
    if (FILE* f = std::fopen(md, "w")) {
      std::fprintf(f, "%s", bench::render(t, true).c_str());
      std::fclose(f);
    }
  }
}
