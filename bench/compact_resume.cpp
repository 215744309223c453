// Resume latency of a compacted fiber against a resident one, in one run:
// each measurement runs in a forked child of its own, alternating compaction
// off / on (Options::compact_after), so they do not see each other's pages.
//
//   build/bench/compact_resume [fibers=1000,10000] [rounds=2] [wake=chan,sock]
//                              [used=6144] [workers=1] [compact_ms=1]
//
// N fibers each write `used` bytes of stack (a buffer below their first
// frame, so that there is a page below the top one to compact: the top page
// is never compacted) and park, each on a channel recv of its own (`chan`) or
// on a tendril::io::read of a socketpair of its own (`sock`). The main fiber
// waits until they are all parked and, with compaction on, until
// stats().fibers_compacted reaches N. Then:
//  - one by one: main stamps the time, sends it on the fiber's channel (or
//    writes it into the fiber's socket with write(2)) and waits for the
//    fiber's ack; the fiber, back from its recv / read, takes the difference
//    to its own clock reading: wake -> running again. Median and p99.
//  - after every fiber parked (and was compacted) again: the whole batch,
//    one send / write per fiber in a row, until the last fiber ran; ns per
//    fiber.
// Also the memory per parked fiber once parked (and compacted): delta
// (VmRSS + VmPTE) from before the spawns, divided by N, and the bytes held in
// compaction buffers per fiber. A compacted fiber woken by a channel send is
// put back by its worker when it switches to it, with no fault (the sender
// builds the value in the Waiter's hand-off buffer, in the receiver's
// FiberCtl, when it fits there, as the 8-byte stamp does); one woken by
// socket data is put back by the fault handler with io_uring (the kernel's copy into the read
// buffer on the stack), not with epoll (the readiness wake-up touches only
// the FiberCtl's Waiter; the fiber reads after its worker put the stack
// back): "touch restores/fiber" counts them, 1 per wake. TENDRIL_IO=epoll
// picks the epoll backend. Socket fibers take two descriptors each: their
// count is capped by RLIMIT_NOFILE (raised to its hard limit here).
#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/report/in_child.hpp"
#include "samples/common/proc_status.hpp"

namespace {

std::int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::uint64_t rss_pte() {
  return sample::proc_status_field("VmRSS").value_or(0) + sample::proc_status_field("VmPTE").value_or(0);
}

struct Config {
  std::size_t fibers;
  bool sock;
  bool compact;
  std::size_t used;
  unsigned workers;
  int compact_ms;
};

struct Result {
  double p50_ns = 0, p99_ns = 0;      // one at a time: wake -> running again
  double batch_ns = 0;                // whole batch, per fiber
  double bytes_per_fiber = 0;         // VmRSS + VmPTE delta once parked (and compacted)
  double buffer_bytes_per_fiber = 0;  // compact_bytes / N
  double compacted = 0;               // fraction compacted before the one-by-one wake
  double compacted_batch = 0;         // ... and before the batch wake
  double restores_on_touch = 0;       // per fiber, over both wakes
  bool ok = false;
};

// Everything the fibers and main share (lives on the child's heap).
struct Bench {
  Config cfg;
  std::vector<tendril::Channel<std::int64_t>> wake;  // chan: one per fiber
  std::vector<int> rfd, wfd;                         // sock: one socketpair per fiber
  tendril::Channel<char> ack{1};
  std::vector<std::int64_t> lat;                     // one-by-one wake, per fiber
  std::atomic<std::size_t> arrived{0};
  std::atomic<std::size_t> batch_left{0};
  std::atomic<std::int64_t> batch_end{0};
};

// Blocks until woken; returns the waker's time stamp. The stamp lands in a
// local of this frame, deep in the fiber's stack: with compaction on, in the
// compacted run.
__attribute__((noinline)) std::int64_t wait_for_wake(Bench& b, std::size_t i) {
  std::int64_t stamp = 0;
  if (b.cfg.sock) {
    if (tendril::io::read(b.rfd[i], &stamp, sizeof stamp) != sizeof stamp) std::abort();
  } else {
    stamp = b.wake[i].recv().value_or(0);
  }
  return stamp;
}

__attribute__((noinline)) void use_stack_and_wait(Bench& b, std::size_t i) {
  auto* buf = static_cast<volatile char*>(__builtin_alloca(b.cfg.used + 1));
  for (std::size_t k = 0; k < b.cfg.used; k += 64) buf[k] = char(k);
  b.arrived.fetch_add(1, std::memory_order_relaxed);
  // One by one.
  std::int64_t t0 = wait_for_wake(b, i);
  b.lat[i] = now_ns() - t0;
  b.ack.send(1);
  // The batch.
  t0 = wait_for_wake(b, i);
  const std::int64_t t1 = now_ns();
  std::int64_t end = b.batch_end.load(std::memory_order_relaxed);
  while (t1 > end && !b.batch_end.compare_exchange_weak(end, t1, std::memory_order_relaxed)) {
  }
  if (b.batch_left.fetch_sub(1, std::memory_order_acq_rel) == 1) b.ack.send(1);
  asm volatile("" : : "r"(buf) : "memory");
}

// Until every fiber is parked and (compaction on) compacted, or 60 s.
double settle(Bench& b) {
  const std::size_t n = b.cfg.fibers;
  while (b.arrived.load(std::memory_order_relaxed) < n) tendril::this_fiber::sleep_for(std::chrono::milliseconds(5));
  if (!b.cfg.compact) {
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(20));
    return 0;
  }
  const std::int64_t give_up = now_ns() + 60 * std::int64_t(1000000000);
  while (tendril::stats().fibers_compacted < n && now_ns() < give_up)
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(5));
  // (main's own stack may be among the compacted ones: at most N)
  return double(std::min<std::uint64_t>(tendril::stats().fibers_compacted, n)) / double(n);
}

void wake_one(Bench& b, std::size_t i, std::int64_t stamp) {
  if (b.cfg.sock) {
    if (::write(b.wfd[i], &stamp, sizeof stamp) != sizeof stamp) std::abort();
  } else {
    b.wake[i].send(stamp);
  }
}

Result measure(const Config& cfg) {
  Bench b;
  b.cfg = cfg;
  b.lat.assign(cfg.fibers, 0);
  if (cfg.sock) {
    b.rfd.resize(cfg.fibers);
    b.wfd.resize(cfg.fibers);
    for (std::size_t i = 0; i < cfg.fibers; ++i) {
      int p[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0) {
        std::perror("socketpair");
        std::exit(1);
      }
      b.rfd[i] = p[0];
      b.wfd[i] = p[1];
    }
  } else {
    for (std::size_t i = 0; i < cfg.fibers; ++i) b.wake.emplace_back(0);
  }
  tendril::Options o;
  o.workers = cfg.workers;
  o.compact_after = std::chrono::milliseconds(cfg.compact ? cfg.compact_ms : 0);
  o.stall_threshold = std::chrono::milliseconds(0);
  Result r;
  tendril::run(o, [&] {
    const std::uint64_t before = rss_pte();
    const std::uint64_t touch0 = tendril::stats().restores_on_touch;
    std::vector<tendril::Fiber> fs;
    fs.reserve(cfg.fibers);
    for (std::size_t i = 0; i < cfg.fibers; ++i) fs.push_back(tendril::spawn([&b, i] { use_stack_and_wait(b, i); }));
    r.compacted = settle(b);
    r.bytes_per_fiber = double(rss_pte() - before) / double(cfg.fibers);
    r.buffer_bytes_per_fiber = double(tendril::stats().compact_bytes) / double(cfg.fibers);
    for (std::size_t i = 0; i < cfg.fibers; ++i) {
      wake_one(b, i, now_ns());
      (void)b.ack.recv();
    }
    b.arrived.store(0);
    // Every fiber is parked again once it acked; wait for its compaction.
    b.arrived.store(cfg.fibers);
    r.compacted_batch = settle(b);
    b.batch_left.store(cfg.fibers);
    const std::int64_t t0 = now_ns();
    for (std::size_t i = 0; i < cfg.fibers; ++i) wake_one(b, i, t0);
    (void)b.ack.recv();
    r.batch_ns = double(b.batch_end.load() - t0) / double(cfg.fibers);
    for (auto& f : fs) f.join();
    r.restores_on_touch = double(tendril::stats().restores_on_touch - touch0) / double(cfg.fibers);
  });
  std::vector<std::int64_t> l = b.lat;
  std::sort(l.begin(), l.end());
  r.p50_ns = double(l[l.size() / 2]);
  r.p99_ns = double(l[std::min(l.size() - 1, l.size() * 99 / 100)]);
  for (std::size_t i = 0; i < b.rfd.size(); ++i) {
    close(b.rfd[i]);
    close(b.wfd[i]);
  }
  r.ok = true;
  return r;
}

Result in_child(const Config& cfg) {
  return bench::measure_in_child<Result>([&] { return measure(cfg); });
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t from = 0;
  for (;;) {
    const std::size_t comma = s.find(',', from);
    out.push_back(s.substr(from, comma - from));
    if (comma == std::string::npos) return out;
    from = comma + 1;
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fibers_arg = argc > 1 ? argv[1] : "1000,10000";
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 2;
  const std::string wake_arg = argc > 3 ? argv[3] : "chan,sock";
  const std::size_t used = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 6144;
  const unsigned workers = argc > 5 ? unsigned(std::atoi(argv[5])) : 1;
  const int compact_ms = argc > 6 ? std::atoi(argv[6]) : 1;
  // Two descriptors per socket fiber.
  rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  std::printf("# %zu B of stack used per fiber, %u worker(s), compact_after %d ms when on; "
              "wake -> running again, one at a time (p50, p99) and as a batch (ns per fiber)\n",
              used, workers, compact_ms);
  std::printf("| fibers | wake | compaction | p50 ns | p99 ns | batch ns/fiber | B/fiber parked | buffer B/fiber | "
              "compacted | touch restores/fiber |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  struct Key {
    std::size_t n;
    bool sock;
    bool operator<(const Key& o) const { return n != o.n ? n < o.n : sock < o.sock; }
  };
  std::map<Key, std::vector<Result>> off, on;
  for (const std::string& n_text : split(fibers_arg)) {
    const std::size_t n = std::strtoull(n_text.c_str(), nullptr, 10);
    for (const std::string& wake : split(wake_arg)) {
      const bool sock = wake == "sock";
      if (sock && 2 * n + 64 > nofile.rlim_cur) {
        std::printf("| %zu | sock | - | skipped: RLIMIT_NOFILE %llu < 2 descriptors per fiber |\n", n,
                    (unsigned long long)nofile.rlim_cur);
        continue;
      }
      for (int round = 0; round < rounds; ++round)
        for (bool compact : {false, true}) {
          const Result r = in_child(Config{n, sock, compact, used, workers, compact_ms});
          if (!r.ok) continue;
          (compact ? on : off)[Key{n, sock}].push_back(r);
          std::printf("| %zu | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f%% / %.0f%% | %.2f |\n", n,
                      wake.c_str(), compact ? "on" : "off", r.p50_ns, r.p99_ns, r.batch_ns, r.bytes_per_fiber,
                      r.buffer_bytes_per_fiber, r.compacted * 100, r.compacted_batch * 100, r.restores_on_touch);
          std::fflush(stdout);
        }
    }
  }
  std::printf("\n# compacted / resident, medians over the rounds of this run\n");
  std::printf("| fibers | wake | p50 | p99 | batch | B/fiber parked |\n|---|---|---|---|---|---|\n");
  for (const auto& [key, rs_on] : on) {
    const std::vector<Result>& rs_off = off[key];
    auto med = [](const std::vector<Result>& rs, double Result::*f) {
      std::vector<double> v;
      for (const Result& r : rs) v.push_back(r.*f);
      return median(v);
    };
    auto ratio = [&](double Result::*f) {
      const double d = med(rs_off, f);
      return d > 0 ? med(rs_on, f) / d : 0.0;
    };
    std::printf("| %zu | %s | %.2fx | %.2fx | %.2fx | %.2fx |\n", key.n, key.sock ? "sock" : "chan",
                ratio(&Result::p50_ns), ratio(&Result::p99_ns), ratio(&Result::batch_ns),
                ratio(&Result::bytes_per_fiber));
  }
  return 0;
}
