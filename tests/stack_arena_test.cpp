// Tests of the growable stack arena through the seam (runtime/stack/stack.hpp),
// in both modes. Plain threads act as workers; Boost.Context runs code on slots.
// No timing assertions.
#include <gtest/gtest.h>

#include "tests/numa.hpp"
#include "tests/scale.hpp"

#include <arpa/inet.h>
#include <atomic>
#include <csignal>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <sys/socket.h>
#include <sys/stat.h>
#include <thread>
#include <vector>

// ---- helpers: run code on a StackSlot with Boost.Context, recurse to a given
// depth, pin "worker" threads, read /proc.

#include "../runtime/stack/stack.hpp"

#include <boost/context/detail/fcontext.hpp>

#include <cstdio>
#include <fstream>
#include <functional>
#include <pthread.h>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace stack_test {

using namespace tendril::detail;
namespace bctx = boost::context::detail;

struct OnStack {
  std::function<void()> fn;
  bctx::fcontext_t back = nullptr;
};

inline void trampoline(bctx::transfer_t t) {
  auto* job = static_cast<OnStack*>(t.data);
  job->back = t.fctx;
  job->fn();
  bctx::jump_fcontext(job->back, nullptr);
}

// Runs fn on the stack in `slot` and comes back when it returns.
inline void run_on(const StackSlot& slot, std::function<void()> fn) {
  OnStack job{std::move(fn)};
  bctx::fcontext_t c = bctx::make_fcontext(slot.hi, slot.limit, trampoline);
  bctx::jump_fcontext(c, &job);
}

// Recurses with ~1 KiB frames until the frame is below `stop`; returns a value
// that depends on every frame so nothing is optimised away.
__attribute__((noinline)) inline long recurse_to(const char* stop, long depth) {
  volatile char frame[1000];
  frame[0] = char(depth);
  frame[sizeof frame - 1] = char(depth);
  if (const_cast<const char*>(&frame[0]) <= stop) return frame[0];
  long below = recurse_to(stop, depth + 1);
  return below + frame[sizeof frame - 1];
}

inline long expected_recurse_sum(long frames) {
  long s = 0;
  for (long d = 0; d < frames; ++d) s += char(d);
  return s;
}

inline void pin_to_cpu(unsigned i) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(i % unsigned(sysconf(_SC_NPROCESSORS_ONLN)), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

inline int vma_count() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) ++n;
  return n;
}

// VMAs that overlap [lo, hi): the arena's own, unaffected by what a
// sanitizer's allocator maps elsewhere in the process.
inline int vma_count_in(const char* lo, const char* hi) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    unsigned long start = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &start, &end) != 2) continue;
    if (start < reinterpret_cast<std::uintptr_t>(hi) && end > reinterpret_cast<std::uintptr_t>(lo)) ++n;
  }
  return n;
}

inline bool page_resident(const void* addr) {
  auto p = reinterpret_cast<std::uintptr_t>(addr) & ~std::uintptr_t(4095);
  unsigned char v = 0;
  if (mincore(reinterpret_cast<void*>(p), 4096, &v) != 0) return false;
  return v & 1;
}

inline std::size_t resident_in(const char* lo, const char* hi) {
  std::size_t n = 0;
  for (const char* p = lo; p < hi; p += 4096) n += page_resident(p);
  return n;
}

}  // namespace stack_test

using namespace stack_test;

namespace {

constexpr std::size_t kLimit = 256 * 1024;
constexpr std::size_t kPageSize = 4096;
constexpr std::size_t kCacheKeep = 16 * 1024;  // what the stack cache keeps of a stack with no learned depth

class StackArena : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // One plain thread stands in for both workers: keep it on one CPU (and
    // so one NUMA node), as a worker is.
    pin_ = std::make_unique<tendril_test::PinToCurrentCpu>();
    StackTopology t;
    t.worker_node = tendril_test::node_of_calling_thread;
    stack_set_topology_for_testing(&t);
    StackConfig c = stack_config(tendril::Options{}.with_environment(), 1);  // TENDRIL_STACK_FILL etc.
    c.default_limit = kLimit;
    c.workers = 2;
    c.mode = GetParam();
    stack_init(c);
    stack_thread_init(0);
  }
  void TearDown() override {
    stack_shutdown();
    stack_set_topology_for_testing(nullptr);
    pin_.reset();
  }
  std::unique_ptr<tendril_test::PinToCurrentCpu> pin_;
};

// Recurses to within `margin` bytes of the slot's limit and checks the result.
void recurse_near_limit(const StackSlot& s, std::size_t margin) {
  long got = 0;
  const char* stop = s.lo + margin;
  run_on(s, [&] { got = recurse_to(stop, 0); });
  // Each frame is at least 1000 bytes, so depth is bounded; just check it ran deep.
  std::size_t slack = margin + 4 * kPageSize;
  EXPECT_GE(stack_high_water(s), s.limit > slack ? s.limit - slack : kPageSize);
  (void)got;
}

TEST_P(StackArena, ReportsItsMode) { EXPECT_EQ(stack_counters().mode, GetParam()); }

TEST_P(StackArena, FreshSlotHasOnlyTopPage) {
  StackSlot s = stack_allocate(0, kLimit);
  EXPECT_EQ(s.limit, kLimit);
  EXPECT_EQ(s.hi - s.lo, std::ptrdiff_t(kLimit));
  EXPECT_TRUE(page_resident(s.hi - 1));
  EXPECT_EQ(resident_in(s.lo, s.hi), 1u);
  EXPECT_EQ(stack_high_water(s), kPageSize);
  stack_release(0, s);
}

TEST_P(StackArena, LimitsAreRoundedToPagesAndClassesWork) {
  for (std::size_t limit : {std::size_t(5000), std::size_t(64 * 1024), std::size_t(200 * 1024), std::size_t(1 << 20)}) {
    StackSlot s = stack_allocate(0, limit);
    EXPECT_EQ(s.limit % kPageSize, 0u);
    EXPECT_GE(s.limit, limit);
    EXPECT_LT(s.limit, limit + kPageSize);
    recurse_near_limit(s, s.limit >= 64 * 1024 ? 3 * kPageSize : kPageSize);
    stack_release(0, s);
  }
}

TEST_P(StackArena, DeepRecursionInManyStacksOnTwoWorkers) {
  constexpr int kStacksPerWorker = 64;
  std::atomic<int> done{0};
  auto worker = [&](unsigned w) {
    pin_to_cpu(w);
    stack_thread_init(w);
    std::vector<StackSlot> slots;
    for (int i = 0; i < kStacksPerWorker; ++i) slots.push_back(stack_allocate(w, kLimit));
    for (int round = 0; round < 2; ++round)
      for (auto& s : slots) {
        long got = -1;
        run_on(s, [&] { got = recurse_to(s.lo + 3 * kPageSize, 0); });
        EXPECT_GE(stack_high_water(s), kLimit - 8 * kPageSize);
        EXPECT_NE(got, -1);
      }
    for (auto& s : slots) stack_release(w, s);
    done.fetch_add(1);
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  EXPECT_EQ(done.load(), 2);
  StackCounters c = stack_counters();
  EXPECT_EQ(c.stack_pages_mapped, 0u);  // nothing live
  EXPECT_GE(c.stack_faults, 2u * kStacksPerWorker);
}

// --- the kernel writes into a stack page that is not mapped yet ---------------

// Passes fn a whole page inside a 5-page stack buffer that nothing has
// touched: calls made from here put their frames below the buffer, so the
// page stays unmapped until the kernel writes into it.
template <class Fn>
__attribute__((noinline)) void with_untouched_deep_buffer(Fn fn) {
  char buf[5 * 4096];
  asm volatile("" : : "r"(buf) : "memory");
  auto page = (reinterpret_cast<std::uintptr_t>(buf) + 4095) & ~std::uintptr_t(4095);
  fn(reinterpret_cast<char*>(page));
}

TEST_P(StackArena, ReadFromPipeIntoUnmappedPage) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const char msg[] = "hello from the pipe";
  ASSERT_EQ(write(fds[1], msg, sizeof msg), ssize_t(sizeof msg));
  StackSlot s = stack_allocate(0, kLimit);
  bool was_resident = true;
  ssize_t got = -1;
  char copy[sizeof msg] = {};
  run_on(s, [&] {
    with_untouched_deep_buffer([&](char* buf) {
      was_resident = page_resident(buf);
      got = read(fds[0], buf, sizeof msg);
      std::memcpy(copy, buf, sizeof msg);
    });
  });
  EXPECT_FALSE(was_resident);
  EXPECT_EQ(got, ssize_t(sizeof msg));
  EXPECT_STREQ(copy, msg);
  stack_release(0, s);
  close(fds[0]);
  close(fds[1]);
}

TEST_P(StackArena, RecvFromSocketIntoUnmappedPage) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const char msg[] = "datagram-ish payload";
  ASSERT_EQ(send(sv[1], msg, sizeof msg, 0), ssize_t(sizeof msg));
  StackSlot s = stack_allocate(0, kLimit);
  bool was_resident = true;
  ssize_t got = -1;
  char copy[sizeof msg] = {};
  run_on(s, [&] {
    with_untouched_deep_buffer([&](char* buf) {
      was_resident = page_resident(buf);
      got = recv(sv[0], buf, sizeof msg, 0);
      std::memcpy(copy, buf, sizeof msg);
    });
  });
  EXPECT_FALSE(was_resident);
  EXPECT_EQ(got, ssize_t(sizeof msg));
  EXPECT_STREQ(copy, msg);
  stack_release(0, s);
  close(sv[0]);
  close(sv[1]);
}

TEST_P(StackArena, StatIntoUnmappedPage) {
  struct stat want {};
  ASSERT_EQ(stat("/proc/self/exe", &want), 0);
  StackSlot s = stack_allocate(0, kLimit);
  bool was_resident = true;
  int rc = -1;
  struct stat got {};
  run_on(s, [&] {
    with_untouched_deep_buffer([&](char* buf) {
      was_resident = page_resident(buf);
      rc = stat("/proc/self/exe", reinterpret_cast<struct stat*>(buf));
      std::memcpy(&got, buf, sizeof got);
    });
  });
  EXPECT_FALSE(was_resident);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(got.st_ino, want.st_ino);
  EXPECT_EQ(got.st_size, want.st_size);
  stack_release(0, s);
}

// --- a signal frame lands on a fresh page -------------------------------------

std::atomic<int> g_signal_seen{0};
void on_usr1(int) {
  volatile char use_stack[2048];
  use_stack[0] = 1;
  g_signal_seen.fetch_add(use_stack[0]);
}

TEST_P(StackArena, SignalDeliveredWhileRunningOnFreshPage) {
  struct sigaction sa {}, old{};
  sa.sa_handler = on_usr1;  // no SA_ONSTACK: the frame goes on the fiber stack
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  g_signal_seen = 0;
  StackSlot s = stack_allocate(0, kLimit);
  run_on(s, [&] { with_untouched_deep_buffer([&](char*) { raise(SIGUSR1); }); });
  EXPECT_EQ(g_signal_seen.load(), 1);
  stack_release(0, s);
  sigaction(SIGUSR1, &old, nullptr);
}

// The strict form: the kernel must write the whole signal frame onto stack
// pages that are not mapped (uffd: it waits for the handler to map them).
TEST_P(StackArena, SignalFrameOnUnmappedStackPages) {
  StackSlot frame_stack = stack_allocate(0, kLimit);
  char* alt = frame_stack.lo + 64 * 1024;  // 64 KiB of slot, never touched
  ASSERT_EQ(resident_in(alt, alt + 64 * 1024), 0u);
  stack_t ss{}, old_ss{};
  ss.ss_sp = alt;
  ss.ss_size = 64 * 1024;
  ASSERT_EQ(sigaltstack(&ss, &old_ss), 0);
  struct sigaction sa {}, old{};
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  g_signal_seen = 0;
  StackSlot s = stack_allocate(0, kLimit);
  run_on(s, [&] { raise(SIGUSR1); });
  EXPECT_EQ(g_signal_seen.load(), 1);
  EXPECT_GT(resident_in(alt, alt + 64 * 1024), 0u);
  sigaction(SIGUSR1, &old, nullptr);
  sigaltstack(&old_ss, nullptr);
  stack_release(0, s);
  stack_release(0, frame_stack);
}

// --- overflow -----------------------------------------------------------------

volatile bool g_keep_recursing = true;  // volatile so the recursion is not provably infinite

__attribute__((noinline)) long recurse_forever(long depth) {
  volatile char frame[512];
  frame[0] = char(depth);
  if (!g_keep_recursing) return 0;
  return recurse_forever(depth + 1) + frame[0];
}

TEST_P(StackArena, OverflowDiesWithFiberNameAndLimit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        StackSlot s = stack_allocate(0, 64 * 1024);
        stack_set_owner(s, 4242, "overflow-victim");
        run_on(s, [] { recurse_forever(0); });
      },
      "fiber stack overflow: fiber 4242 \"overflow-victim\" exceeded its stack limit of 65536 bytes: fault at 0x");
}

TEST_P(StackArena, OverflowOnSecondWorkerThreadDiesWithMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::thread t([] {
          pin_to_cpu(1);
          stack_thread_init(1);
          StackSlot s = stack_allocate(1, 128 * 1024);
          stack_set_owner(s, 7, "on-worker-1");
          run_on(s, [] { recurse_forever(0); });
        });
        t.join();
      },
      "fiber 7 \"on-worker-1\" exceeded its stack limit of 131072 bytes");
}

// --- scale: VMAs do not grow with the number of stacks ------------------------

// The fallback of kernel mode before Linux 6.13: guards by mprotect, which
// split the arena into 2 VMAs per live stack, so vm.max_map_count caps live
// stacks. Running into the cap is a std::system_error that names it, not a
// crash; releasing the stacks gives the VMAs back.
void mprotect_guards_cost_two_vmas_and_the_cap_is_an_error() {
  const int before = vma_count();
  std::vector<StackSlot> slots;
  std::string error;
  constexpr int kBound = 200000;  // more than vm.max_map_count / 2 anywhere this runs
  try {
    while (int(slots.size()) < kBound) slots.push_back(stack_allocate(0, kLimit));
  } catch (const std::system_error& e) {
    error = e.what();
  }
  const int peak = vma_count();
  ASSERT_FALSE(error.empty()) << slots.size() << " stacks did not reach vm.max_map_count";
  EXPECT_NE(error.find("max_map_count"), std::string::npos) << error;
  EXPECT_GE(peak - before, int(slots.size()));        // the guards split the arena...
  EXPECT_LE(peak - before, 2 * int(slots.size()) + 8);  // ...2 VMAs per stack at most
  for (auto& s : slots) stack_release(0, s);
  // Free slots keep their guards (the next spawn costs no mprotect), so the
  // cap stays, but the released stacks serve new spawns.
  StackSlot s = stack_allocate(0, kLimit);
  recurse_near_limit(s, 4 * kPageSize);
  stack_release(0, s);
}

TEST_P(StackArena, ManySlotsDoNotAddVmas) {
  if (std::string(GetParam()) == "kernel" && !tendril_test::guard_madvise_available()) {
    mprotect_guards_cost_two_vmas_and_the_cap_is_an_error();
    return;
  }
  // 200k; fewer under sanitizers (TSan's arena is 8 GiB per class).
  constexpr int kSlots = static_cast<int>(stress_count(200000));
  std::vector<StackSlot> slots;
  slots.reserve(kSlots);
  slots.push_back(stack_allocate(0, kLimit));  // reserves the sub-arena
  int before = vma_count();
  for (int i = 1; i < kSlots; ++i) slots.push_back(stack_allocate(0, kLimit));
  int after = vma_count();
  const char* lo = slots.front().lo;
  const char* hi = slots.front().hi;
  for (const auto& s : slots) {
    lo = std::min<const char*>(lo, s.lo);
    hi = std::max<const char*>(hi, s.hi);
  }
  // All the slots live in one VMA (guards included), whatever the mode.
  EXPECT_EQ(vma_count_in(lo, hi), 1);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // And nothing else grew with them (sanitizer allocators map regions of their own).
  EXPECT_LE(after - before, 2) << "VMAs grew from " << before << " to " << after;
#else
  (void)before;
  (void)after;
#endif
  EXPECT_EQ(stack_counters().stack_pages_mapped, std::uint64_t(kSlots));
  // The slots are really usable.
  for (int i : {0, kSlots / 2, kSlots - 1}) recurse_near_limit(slots[i], 4 * kPageSize);
  for (auto& s : slots) stack_release(0, s);
  EXPECT_EQ(vma_count_in(lo, hi), 1);  // releasing splits nothing either
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  EXPECT_EQ(vma_count() - before, after - before);  // sanitizer runtimes map regions of their own
#endif
}

// --- release gives pages back -------------------------------------------------

TEST_P(StackArena, GrowAndReleaseLeaksNoPages) {
  constexpr int kSlots = 32;
  std::vector<StackSlot> slots;
  StackCounters base;
  for (int round = 0; round < 4; ++round) {
    if (round == 1) base = stack_counters();  // after round 0 every slot is cached with its top page
    slots.clear();
    for (int i = 0; i < kSlots; ++i) slots.push_back(stack_allocate(i % 2, kLimit));
    for (auto& s : slots) recurse_near_limit(s, 16 * kPageSize);
    EXPECT_GE(stack_counters().stack_pages_mapped, std::uint64_t(kSlots) * 8);
    for (std::size_t i = 0; i < slots.size(); ++i) stack_release(i % 2, slots[i]);  // some cross-worker
    // Released stacks now go to the free-stack cache, which keeps up
    // to 16 KiB of each (no learned depth here) and trims the rest in batches;
    // stack_maintain issues the pending trims.
    stack_maintain(0);
    stack_maintain(1);
    for (auto& s : slots) EXPECT_EQ(resident_in(s.lo, s.hi - kCacheKeep), 0u);
  }
  StackCounters end = stack_counters();
  EXPECT_EQ(end.stack_pages_mapped, base.stack_pages_mapped);
  EXPECT_EQ(end.cached_pages, base.cached_pages);
}

TEST_P(StackArena, CrossWorkerReleaseReturnsSlotToOwner) {
  // With the free-stack cache on, the slot would stay cached on
  // worker 1; this test is about the arena's own free lists, so it runs with
  // the cache off (tests/stack_cache_test.cpp covers cached cross-worker reuse).
  stack_shutdown();
  StackConfig c = stack_config(tendril::Options{}.with_environment(), 1);  // TENDRIL_STACK_FILL etc.
  c.default_limit = kLimit;
  c.workers = 2;
  c.mode = GetParam();
  c.cache_bytes = 0;
  stack_init(c);
  stack_thread_init(0);
  StackSlot a = stack_allocate(0, kLimit);
  std::thread([&] { stack_release(1, a); }).join();
  StackSlot b = stack_allocate(0, kLimit);
  EXPECT_EQ(b.index, a.index);
  EXPECT_EQ(b.hi, a.hi);
  stack_release(0, b);
}

TEST_P(StackArena, ReusedSlotWithDifferentLimitMovesItsGuard) {
  StackSlot small = stack_allocate(0, 140 * 1024);  // class 256 KiB
  recurse_near_limit(small, 3 * kPageSize);
  stack_release(0, small);
  StackSlot big = stack_allocate(0, kLimit);
  EXPECT_EQ(big.hi, small.hi);  // same slot
  recurse_near_limit(big, 3 * kPageSize);  // would hit the old guard if it stayed
  stack_release(0, big);
}

TEST_P(StackArena, OwnerNamesAreTruncated) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        StackSlot s = stack_allocate(0, 64 * 1024);
        stack_set_owner(s, 77, "a-very-long-fiber-name-that-goes-on-and-on-and-on");
        run_on(s, [] { recurse_forever(0); });
      },
      "fiber 77 \"a-very-long-fiber-name-that-goe\" exceeded");  // the first 31 bytes
}

// Names live in a side table that unnamed fibers never touch: a slot reused by
// an unnamed fiber must not report its previous owner's name.
TEST_P(StackArena, ReusedSlotDoesNotReportThePreviousOwnersName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        StackSlot first = stack_allocate(0, 64 * 1024);
        stack_set_owner(first, 1, "previous-owner");
        stack_release(0, first);
        StackSlot s = stack_allocate(0, 64 * 1024);
        if (s.hi != first.hi) std::abort();  // not the same slot: the test would prove nothing
        stack_set_owner(s, 2, "");
        run_on(s, [] { recurse_forever(0); });
      },
      "fiber stack overflow: fiber 2 \"\" exceeded its stack limit");
}

// --- concurrency: faults while other stacks are released ----------------------

TEST_P(StackArena, HandlerSurvivesReleasesWhileOthersFault) {
  std::atomic<bool> stop{false};
  std::mutex m;
  std::vector<StackSlot> handoff;  // slots allocated on worker 0, released on worker 1
  std::thread faulter([&] {
    pin_to_cpu(0);
    stack_thread_init(0);
    for (int i = 0; i < 300; ++i) {
      StackSlot s = stack_allocate(0, kLimit);
      run_on(s, [&] { recurse_to(s.lo + (i % 50 + 2) * kPageSize, 0); });
      if (i % 3 == 0) {
        std::lock_guard<std::mutex> g(m);
        handoff.push_back(s);
      } else {
        stack_release(0, s);
      }
    }
    stop = true;
  });
  std::thread releaser([&] {
    pin_to_cpu(1);
    stack_thread_init(1);
    while (!stop.load()) {
      StackSlot s = stack_allocate(1, 64 * 1024);
      run_on(s, [&] { recurse_to(s.lo + 2 * kPageSize, 0); });
      stack_release(1, s);
      std::vector<StackSlot> mine;
      {
        std::lock_guard<std::mutex> g(m);
        mine.swap(handoff);
      }
      for (auto& h : mine) stack_release(1, h);
    }
  });
  faulter.join();
  releaser.join();
  for (auto& h : handoff) stack_release(1, h);
  EXPECT_EQ(stack_counters().stack_pages_mapped, 0u);
}

TEST_P(StackArena, ReinitAfterShutdown) {
  StackSlot s = stack_allocate(0, kLimit);
  recurse_near_limit(s, 3 * kPageSize);
  stack_release(0, s);
  stack_shutdown();
  StackConfig c = stack_config(tendril::Options{}.with_environment(), 1);  // TENDRIL_STACK_FILL etc.
  c.workers = 1;
  c.mode = GetParam();
  stack_init(c);
  StackSlot t = stack_allocate(0, kLimit);
  recurse_near_limit(t, 3 * kPageSize);
  stack_release(0, t);
}

INSTANTIATE_TEST_SUITE_P(Modes, StackArena, ::testing::Values("uffd", "kernel"),
                         [](const auto& info) { return std::string(info.param); });

// --- uffd growth policy (pages_for_fault in fault_handler.cpp) -------------------
// The burst window is set in StackConfig (TENDRIL_STACK_BURST_US): a huge
// window makes every run of faults a burst, 0 makes none, so the expected fault
// counts do not depend on how fast this machine is.

class StackGrowthPolicy : public ::testing::Test {
 protected:
  void init_with_burst_window(const char* us) {
    StackConfig c = stack_config(tendril::Options{}.with_environment(), 1);  // TENDRIL_STACK_FILL etc.
    c.workers = 1;
    c.mode = "uffd";
    c.cache_bytes = 0;
    c.burst_ns = std::uint64_t(std::stoull(us)) * 1000;
    stack_init(c);
    stack_thread_init(0);
  }
  void TearDown() override { stack_shutdown(); }

  // Faults taken by a fresh 256 KiB stack whose frames reach `depth` bytes below its top.
  static std::uint64_t faults_to_reach(std::size_t depth, std::size_t* resident) {
    StackSlot s = stack_allocate(0, kLimit);
    const std::uint64_t before = stack_counters().stack_faults;
    run_on(s, [&] { recurse_to(s.hi - depth, 0); });
    const std::uint64_t faults = stack_counters().stack_faults - before;
    *resident = resident_in(s.lo, s.hi);
    stack_release(0, s);
    return faults;
  }
};

TEST_F(StackGrowthPolicy, ShallowStacksGrowOnePageAtATimeOutsideBursts) {
  init_with_burst_window("0");
  std::size_t resident = 0;
  // Frames reach into the third page: two faults, and not a page more.
  EXPECT_EQ(faults_to_reach(2 * kPageSize + 1500, &resident), 2u);
  EXPECT_EQ(resident, 3u);
}

TEST_F(StackGrowthPolicy, ARecursionGrowsBy64KiBPerFaultInABurst) {
  init_with_burst_window("60000000");
  std::size_t resident = 0;
  // 1 -> 2 pages, then 16 pages per fault: 64 KiB takes 2 faults.
  EXPECT_EQ(faults_to_reach(64 * 1024 - 2048, &resident), 2u);
  EXPECT_EQ(resident, 18u);
  EXPECT_EQ(faults_to_reach(240 * 1024, &resident), 5u);  // 2, 18, 34, 50, then up to the limit
}

// What a burst mapped and the fiber did not write is given back when it parks
// (the scheduler calls stack_on_switch with the parking fiber's stack, on
// that stack).
TEST_F(StackGrowthPolicy, PagesMappedAheadAndUnusedAreGivenBackWhenTheFiberParks) {
  init_with_burst_window("60000000");
  const std::uint64_t mapped0 = stack_counters().stack_pages_mapped;
  StackSlot s = stack_allocate(0, kLimit);
  std::size_t grown = 0, parked = 0, high_water = 0;
  run_on(s, [&] {
    recurse_to(s.hi - (2 * kPageSize + 1500), 0);  // into the third page, in a burst
    grown = resident_in(s.lo, s.hi);
    stack_on_switch(0, &s, nullptr);  // "parks", back at a shallow depth
    parked = resident_in(s.lo, s.hi);
    high_water = stack_high_water(s);
  });
  EXPECT_EQ(grown, 18u);  // the burst mapped 16 pages at the second fault
  EXPECT_GE(parked, 2u);  // the pages written stay...
  EXPECT_LE(parked, 3u);  // ...the unused ones went (the third page is below this frame, written or not)
  EXPECT_GE(high_water, 2 * kPageSize);  // the deepest extent is still known
  EXPECT_EQ(stack_counters().stack_pages_mapped - mapped0, resident_in(s.lo, s.hi));
  EXPECT_GE(stack_counters().pages_trimmed, 15u);
  // Nothing is trimmed without a burst to trim after.
  const std::size_t before = resident_in(s.lo, s.hi);
  run_on(s, [&] { stack_on_switch(0, &s, nullptr); });
  EXPECT_EQ(resident_in(s.lo, s.hi), before);
  stack_release(0, s);
}

TEST_F(StackGrowthPolicy, WithoutBurstsAStackDoublesFromFourPages) {
  init_with_burst_window("0");
  std::size_t resident = 0;
  // 1 -> 2 -> 3 -> 4 pages one at a time, then 8, 16: 64 KiB takes 5 faults.
  EXPECT_EQ(faults_to_reach(64 * 1024 - 2048, &resident), 5u);
  EXPECT_EQ(resident, 16u);
}

}  // namespace
