// Stack growth benchmark for runtime/stack. Plain program.
//
//   g++ -std=c++20 -O2 bench/stack_growth.cpp runtime/stack/*.cpp
//       -lboost_context -lpthread -o /tmp/stack_growth && /tmp/stack_growth [iterations] [growth|memory]
//
// 1. A fresh stack (allocate, recurse to 64 KiB or 240 KiB, release) in uffd
//    mode for several fill mechanisms / pages-per-fault, in kernel mode, and a
//    fresh pthread whose stack is a fresh mmap; ns per stack, per fault, ratios.
// 2. Memory per idle slot (VmRSS + VmPTE deltas) at 100k and 1M slots.
// Times on a 2-vCPU VM are noisy: read the medians, compare the ratios.
#include "../runtime/stack/stack.hpp"
#include "samples/common/proc_status.hpp"

#include <boost/context/detail/fcontext.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <pthread.h>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <vector>

using namespace tendril::detail;
namespace bctx = boost::context::detail;

namespace {

using Clock = std::chrono::steady_clock;

struct Job {
  std::function<void()> fn;
  bctx::fcontext_t back = nullptr;
};
void trampoline(bctx::transfer_t t) {
  auto* job = static_cast<Job*>(t.data);
  job->back = t.fctx;
  job->fn();
  bctx::jump_fcontext(job->back, nullptr);
}
void run_on(const StackSlot& s, std::function<void()> fn) {
  Job job{std::move(fn)};
  bctx::jump_fcontext(bctx::make_fcontext(s.hi, s.limit, trampoline), &job);
}

__attribute__((noinline)) long recurse_to(const char* stop, long depth) {
  volatile char frame[1000];
  frame[0] = char(depth);
  frame[sizeof frame - 1] = char(depth);
  if (const_cast<const char*>(&frame[0]) <= stop) return frame[0];
  return recurse_to(stop, depth + 1) + frame[sizeof frame - 1];
}

// Recurses `depth` bytes below the current frame.
long recurse_depth(std::size_t depth) {
  auto* here = static_cast<const char*>(__builtin_frame_address(0));
  return recurse_to(here - depth, 0);
}

void pin(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % unsigned(sysconf(_SC_NPROCESSORS_ONLN)), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Result {
  double ns_per_stack = 0;
  double faults_per_stack = 0;
  double ns_prefaulted = 0;
};

// Median over `reps` batches of `iters` fresh stacks each.
Result time_fresh_stacks(std::size_t depth, int iters, int reps) {
  std::vector<double> per;
  std::uint64_t f0 = stack_counters().stack_faults;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
      StackSlot s = stack_allocate(0, 256 * 1024);
      stack_on_switch(0, nullptr, &s);  // as the scheduler does before resuming a fiber (refills the pool)
      run_on(s, [&] { recurse_depth(depth); });
      stack_release(0, s);
    }
    per.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / iters);
  }
  Result res;
  res.ns_per_stack = median(per);
  res.faults_per_stack = double(stack_counters().stack_faults - f0) / (double(iters) * reps);
  // Same work on a stack that is already grown: what the recursion costs without faults.
  StackSlot s = stack_allocate(0, 256 * 1024);
  run_on(s, [&] { recurse_depth(depth); });
  std::vector<double> pre;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) run_on(s, [&] { recurse_depth(depth); });
    pre.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / iters);
  }
  stack_release(0, s);
  res.ns_prefaulted = median(pre);
  return res;
}

double time_fresh_pthreads(std::size_t depth, int iters, int reps) {
  constexpr std::size_t kStack = 256 * 1024 + 64 * 1024;
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
      void* mem = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstack(&attr, mem, kStack);
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(0, &set);
      pthread_attr_setaffinity_np(&attr, sizeof set, &set);
      pthread_t t;
      pthread_create(&t, &attr, [](void* d) -> void* {
        recurse_depth(*static_cast<std::size_t*>(d));
        return nullptr;
      }, &depth);
      pthread_join(t, nullptr);
      pthread_attr_destroy(&attr);
      munmap(mem, kStack);
    }
    per.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / iters);
  }
  return median(per);
}

void init_mode(const char* mode, const char* fill, const char* grow) {
  StackConfig c;
  c.workers = 2;
  c.mode = mode;
  c.fill_move = std::strcmp(fill, "move") == 0;
  c.max_grow_pages = unsigned(std::stoul(grow));
  stack_init(c);
}

// Places worker 0's fault handler on `cpu` (stack_thread_init copies the
// calling thread's affinity to the handler).
void place_handler_on(unsigned cpu) {
  std::thread([cpu] {
    pin(cpu);
    stack_thread_init(0);
  }).join();
}

struct Busy {
  std::atomic<bool> stop{false};
  std::thread t;
  void start(unsigned cpu) {
    t = std::thread([this, cpu] {
      pin(cpu);
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  ~Busy() {
    stop = true;
    if (t.joinable()) t.join();
  }
};

void report_growth(int iters, int reps) {
  struct Variant {
    const char* label;
    const char* mode;
    const char* fill;
    const char* grow;
    int handler_cpu;  // -1: same CPU as the worker (CPU 0)
    bool busy_other_cpu;
  };
  const Variant variants[] = {
      {"uffd copy, 1 page/fault, handler same CPU", "uffd", "copy", "1", 0, false},
      {"uffd copy, 1 page/fault, handler other CPU", "uffd", "copy", "1", 1, false},
      {"uffd copy, doubling <= 4 pages/fault", "uffd", "copy", "4", 0, false},
      {"uffd copy, doubling <= 16 pages/fault", "uffd", "copy", "16", 0, false},
      {"uffd move from pool, 1 page/fault", "uffd", "move", "1", 0, false},
      {"uffd move from pool, doubling <= 16", "uffd", "move", "16", 0, false},
      {"uffd move, doubling <= 16, busy thread on CPU1", "uffd", "move", "16", 0, true},
      {"uffd copy, doubling <= 16, busy thread on CPU1", "uffd", "copy", "16", 0, true},
      {"kernel demand paging", "kernel", "copy", "1", 0, false},
  };
  for (std::size_t depth : {std::size_t(64 * 1024), std::size_t(240 * 1024)}) {
    std::printf("\n== fresh stack recursing to %zu KiB (%d stacks x %d reps, median) ==\n", depth / 1024, iters, reps);
    double pthread_ns = time_fresh_pthreads(depth, iters, reps);
    double kernel_ns = 0;
    std::vector<std::pair<std::string, Result>> rows;
    for (const Variant& v : variants) {
      init_mode(v.mode, v.fill, v.grow);
      pin(0);
      stack_thread_init(0);
      if (v.handler_cpu >= 0) place_handler_on(unsigned(v.handler_cpu));
      Busy busy;
      if (v.busy_other_cpu) busy.start(1);
      Result r = time_fresh_stacks(depth, iters, reps);
      stack_shutdown();
      if (std::string(v.mode) == "kernel") kernel_ns = r.ns_per_stack;
      rows.emplace_back(v.label, r);
    }
    std::printf("%-50s %12s %8s %12s %12s %9s %9s\n", "variant", "ns/stack", "faults", "ns/fault*", "prefaulted", "/kernel", "/pthread");
    for (auto& [label, r] : rows) {
      double per_fault = r.faults_per_stack > 0 ? (r.ns_per_stack - r.ns_prefaulted) / r.faults_per_stack : 0;
      std::printf("%-50s %12.0f %8.1f %12.0f %12.0f %9.2f %9.2f\n", label.c_str(), r.ns_per_stack, r.faults_per_stack, per_fault,
                  r.ns_prefaulted, r.ns_per_stack / kernel_ns, r.ns_per_stack / pthread_ns);
    }
    std::printf("%-50s %12.0f\n", "pthread, fresh mmap'd stack (create+run+join)", pthread_ns);
    std::printf("(* ns/fault = (ns/stack - prefaulted) / faults; includes allocate+release; kernel mode counts grown pages as faults)\n");
  }
}

// A /proc/self/status field in KiB (its kB fields), or -1.
long status_kib(const char* key) {
  const auto v = sample::proc_status_field(key);
  return v ? static_cast<long>(*v / 1024) : -1;
}

void report_idle_memory(const char* mode, std::size_t limit, std::size_t count) {
  StackConfig c;
  c.workers = 1;
  c.mode = mode;
  stack_init(c);
  std::vector<StackSlot> slots;
  slots.reserve(count);
  slots.push_back(stack_allocate(0, limit));
  long rss0 = status_kib("VmRSS"), pte0 = status_kib("VmPTE");
  int vma0 = sample::vma_count();
  auto t0 = Clock::now();
  for (std::size_t i = 1; i < count; ++i) slots.push_back(stack_allocate(0, limit));
  double alloc_ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(count - 1);
  long rss = status_kib("VmRSS") - rss0, pte = status_kib("VmPTE") - pte0;
  int vmas = sample::vma_count() - vma0;
  t0 = Clock::now();
  for (auto& s : slots) stack_release(0, s);
  double release_ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(count);
  std::printf("%-7s limit %4zu KiB  %8zu slots: RSS %6.0f B/slot  PTE %5.0f B/slot  total %6.0f B/slot  VMAs +%d  "
              "allocate %5.0f ns  release %5.0f ns\n",
              mode, limit / 1024, count, rss * 1024.0 / double(count - 1), pte * 1024.0 / double(count - 1),
              (rss + pte) * 1024.0 / double(count - 1), vmas, alloc_ns, release_ns);
  stack_shutdown();
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 300;
  int reps = 5;
  pin(0);
  bool growth = argc <= 2 || std::strcmp(argv[2], "memory") != 0;
  bool memory = argc <= 2 || std::strcmp(argv[2], "growth") != 0;
  if (growth) report_growth(iters, reps);
  if (!memory) return 0;
  std::printf("\n== memory per idle slot (one touched page each; the metadata side table is included in RSS) ==\n");
  for (const char* mode : {"uffd", "kernel"})
    for (std::size_t count : {std::size_t(100000), std::size_t(1000000)}) report_idle_memory(mode, 256 * 1024, count);
  for (const char* mode : {"uffd", "kernel"}) report_idle_memory(mode, 64 * 1024, 100000);
  return 0;
}
