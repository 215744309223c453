// Growable fiber stacks through the public API: tendril::run, spawn with
// SpawnOptions::stack_limit, this_fiber::stack_high_water() and stats().
// (stack_arena_test.cpp covers the same ground at the seam, without fibers.)
//
// Runs in both stack modes: ctest registers every test once as is ("uffd",
// userfaultfd) and once with TENDRIL_STACK_MODE=kernel (demand paging + guard
// markers). Tests read the mode from stats().stack_mode. No timing assertions.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/numa.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <alloca.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kKiB = 1024;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
// AddressSanitizer's instrumented frames carry redzones (larger than the
// frames these tests size their recursion with) and its runtime touches the
// stack below a frame: checks of frame counts and of untouched pages are made
// only in uninstrumented builds; depth, data and VMA checks run everywhere.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif

tendril::Options two_workers() {
  tendril::Options o;
  o.workers = 2;
  return o;
}

// CPUs the runtime's two workers can be pinned to (the process's affinity mask).
int cpus_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

bool page_resident(const void* addr) {
  auto p = reinterpret_cast<std::uintptr_t>(addr) & ~std::uintptr_t(kPage - 1);
  unsigned char v = 0;
  if (mincore(reinterpret_cast<void*>(p), kPage, &v) != 0) return false;
  return v & 1;
}

std::vector<std::string> maps_lines() {
  std::ifstream maps("/proc/self/maps");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(maps, line)) lines.push_back(line);
  return lines;
}

// Lines in `after` and not in `before` ("+ ...") and the reverse ("- ...").
std::string maps_diff(const std::vector<std::string>& before, const std::vector<std::string>& after) {
  std::set<std::string> b(before.begin(), before.end()), a(after.begin(), after.end());
  std::string out;
  for (const auto& l : after)
    if (!b.count(l)) out += "  + " + l + "\n";
  for (const auto& l : before)
    if (!a.count(l)) out += "  - " + l + "\n";
  return out;
}

// Polls `done` (yielding, then sleeping) until it holds or about `cap` passes.
// Only a safety net against hangs: nothing is asserted about the time taken.
template <class Pred>
bool eventually(Pred done, std::chrono::milliseconds cap = 30s) {
  const auto end = std::chrono::steady_clock::now() + cap;
  for (int i = 0; !done(); ++i) {
    if (std::chrono::steady_clock::now() > end) return done();
    if (i < 100) tendril::this_fiber::yield();
    else tendril::this_fiber::sleep_for(1ms);
  }
  return true;
}

// Sets an environment variable for its lifetime (read by tendril::run at start).
// Writes `bytes` of the calling stack (one frame, so it all happens in one go).
__attribute__((noinline)) void touch_stack_bytes(std::size_t bytes) {
  volatile char area[32 * 1024];
  for (std::size_t i = 0; i < bytes && i < sizeof area; i += 256) area[sizeof area - 1 - i] = 1;
}

struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) had_ = true, old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// Options for the "pre-cache" variant of a test: no free-stack cache, and no
// learned depth either (TENDRIL_STACK_LEARN=0), so every stack comes from its
// arena with its top page only and grows by faults, as without the cache.
// (Premapping to the learned depth would otherwise make kernel mode's high
// water, the lowest resident page, start out deep.)
tendril::Options two_workers_cache(bool cache_on) {
  tendril::Options o = two_workers();
  if (!cache_on) o.stack_cache_bytes = 0;
  return o;
}

// ---- recursion with ~1 KiB frames that carry a checksum ---------------------

constexpr std::size_t kFrameBytes = 960;  // + return address, saved regs: ~1 KiB a frame

struct DeepStats {
  std::atomic<long> bad_bytes{0};   // frame bytes that changed between fill and return
  std::atomic<int> cpu_mask{0};     // CPUs (bit per sched_getcpu()) the fibers ran on
  std::atomic<long> frames{0};
};

void note_cpu(DeepStats& st) {
  int cpu = sched_getcpu();
  if (cpu >= 0 && cpu < 31) st.cpu_mask.fetch_or(1 << cpu, std::memory_order_relaxed);
}

unsigned char pattern(unsigned seed, long depth, std::size_t i) {
  return static_cast<unsigned char>(seed * 131u + unsigned(depth) * 7u + unsigned(i) * 13u + 1u);
}

struct DeepArgs {
  unsigned seed;
  std::size_t target_high_water;  // stop recursing once stack_high_water() reaches it
  int yield_every;                // yield every n frames (0: never)
  DeepStats* st;
  void (*at_bottom)(DeepArgs&);   // called in the deepest frame (may yield)
  void* user = nullptr;           // for at_bottom
  std::size_t deepest_hw = 0;
  const void* deepest_frame = nullptr;
  long min_frames = 0;            // recurse at least this deep, whatever the high water says
  std::size_t min_depth = 0;      // and at least this many bytes below the first frame
  std::uintptr_t first_frame = 0;  // set by deep() at depth 0
  std::size_t deepest_depth = 0;  // bytes from the first frame to the deepest
};

// Recurses until the fiber's high-water mark reaches the target, then checks
// every frame's bytes on the way back up. Returns the number of frames.
__attribute__((noinline)) long deep(DeepArgs& a, long depth) {
  unsigned char frame[kFrameBytes];
  for (std::size_t i = 0; i < sizeof frame; ++i) frame[i] = pattern(a.seed, depth, i);
  asm volatile("" : : "r"(frame) : "memory");
  long below;
  std::size_t hw = tendril::this_fiber::stack_high_water();
  if (depth == 0) a.first_frame = reinterpret_cast<std::uintptr_t>(frame);
  const std::size_t below_first = a.first_frame - reinterpret_cast<std::uintptr_t>(frame);
  // A stack reused from the free-stack cache still holds its previous user's
  // frames (and may be premapped to its spawn site's learned depth), so its
  // high water can start out deep: min_frames and min_depth force real
  // recursion there.
  if (hw < a.target_high_water || depth + 1 < a.min_frames || below_first < a.min_depth) {
    if (a.yield_every != 0 && depth % a.yield_every == 0) {
      note_cpu(*a.st);
      tendril::this_fiber::yield();  // may move to the other worker mid-recursion
    }
    below = deep(a, depth + 1);
  } else {
    a.deepest_hw = hw;
    a.deepest_frame = frame;
    a.deepest_depth = below_first;
    if (a.at_bottom != nullptr) a.at_bottom(a);
    below = 0;
  }
  asm volatile("" : : "r"(frame) : "memory");
  long bad = 0;
  for (std::size_t i = 0; i < sizeof frame; ++i) bad += frame[i] != pattern(a.seed, depth, i);
  if (bad != 0) a.st->bad_bytes.fetch_add(bad, std::memory_order_relaxed);
  a.st->frames.fetch_add(1, std::memory_order_relaxed);
  return below + 1;
}

}  // namespace

// ---- 1. deep recursion in many fibers on both workers ------------------------

namespace {
std::atomic<int> g_both_cpu_cap_hits{0};

void yield_until_both_cpus_seen(DeepArgs& a) {
  note_cpu(*a.st);
  // Stay deep (stack fully grown) until both workers' CPUs have run some of
  // these fibers; generous cap, no timing involved.
  for (int i = 0; i < 20000 && __builtin_popcount(a.st->cpu_mask.load()) < 2; ++i) {
    tendril::this_fiber::yield();
    note_cpu(*a.st);
  }
  if (__builtin_popcount(a.st->cpu_mask.load()) < 2) g_both_cpu_cap_hits.fetch_add(1);
}
}  // namespace

TEST(StackFiber, DeepRecursionNearTheLimitInManyFibersOnBothWorkers) {
  constexpr int kFibers = 64;
  constexpr std::size_t kLimit = 256 * kKiB;
  DeepStats st;
  std::vector<std::size_t> deepest(kFibers);
  std::vector<long> frames(kFibers);
  std::vector<std::size_t> depth(kFibers);
  std::string mode;
  tendril::run(two_workers(), [&] {
    mode = tendril::stats().stack_mode;
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i) {
      fibers.push_back(tendril::spawn(
          tendril::SpawnOptions{"deep-" + std::to_string(i), kLimit},
          [&, i] {
            DeepArgs a{unsigned(i) + 1, kLimit - 16 * kKiB, 32, &st, yield_until_both_cpus_seen};
            // Fibers that start after others have ended run on their cached
            // stacks, whose high water is deep already: recurse for real
            // (measured by frame addresses, which ASan may move to its fake
            // stack).
            if (!kAsan) a.min_depth = kLimit - 32 * kKiB;
            frames[i] = deep(a, 0);
            deepest[i] = a.deepest_hw;
            depth[i] = a.deepest_depth;
          }));
    }
    for (auto& f : fibers) f.join();
  });
  SCOPED_TRACE("stack mode " + mode);
  EXPECT_EQ(st.bad_bytes.load(), 0);
  for (int i = 0; i < kFibers; ++i) {
    EXPECT_GE(deepest[i], kLimit - 16 * kKiB) << "fiber " << i;
    EXPECT_LE(deepest[i], kLimit) << "fiber " << i;
    // ~1 KiB frames: at least half as many as KiB of depth.
    if (!kAsan) {
      EXPECT_GE(depth[i], kLimit - 32 * kKiB) << "fiber " << i;
      EXPECT_GE(frames[i], long((kLimit - 32 * kKiB) / (2 * kKiB))) << "fiber " << i;
    }
  }
  if (cpus_available() >= 2) {
    EXPECT_GE(__builtin_popcount(st.cpu_mask.load()), 2) << "CPU mask " << st.cpu_mask.load();
  }
  EXPECT_EQ(tendril::stats().fibers_live, 0u);
}

// ---- 2. the kernel writes into a stack page that is not mapped yet -----------

namespace {

// Calls fn(page) with `page` a whole page of this fiber's stack deeper than
// anything the fiber has touched or had mapped for it: below its high-water
// mark plus the 16 pages uffd mode may map ahead of a fault (and a margin).
// The page lies inside an alloca'd region nothing writes to; fn's own frames
// go below the region, so the page stays untouched until fn lets the kernel
// write into it.
template <class Fn>
__attribute__((noinline)) void with_page_beyond_high_water(Fn&& fn) {
  const std::size_t gap = tendril::this_fiber::stack_high_water() + 64 * kKiB + 16 * kKiB;
  char* region = static_cast<char*>(alloca(gap + 4 * kPage));
  asm volatile("" : : "r"(region) : "memory");
  auto page = (reinterpret_cast<std::uintptr_t>(region) + 2 * kPage - 1) & ~std::uintptr_t(kPage - 1);
  fn(reinterpret_cast<char*>(page));
  asm volatile("" : : "r"(region) : "memory");
}

struct SyscallResult {
  bool was_resident = true;
  bool resident_after = false;
  long rc = -1;
  int err = 0;
  alignas(16) char bytes[256] = {};  // what the kernel wrote into the page
};

constexpr std::size_t kSyscallFiberLimit = 512 * kKiB;

// Runs call(page) on a fiber named `name`, with `page` a stack page not mapped
// yet (with_page_beyond_high_water), and records whether the page was resident
// before and after, the call's result and errno, and the first n bytes of the
// page.
template <class Call>
SyscallResult syscall_into_fresh_page(const char* name, std::size_t n, Call call) {
  SyscallResult r;
  tendril::run(two_workers(), [&] {
    tendril::spawn(tendril::SpawnOptions{name, kSyscallFiberLimit}, [&] {
      with_page_beyond_high_water([&](char* page) {
        r.was_resident = page_resident(page);
        r.rc = call(page);
        r.err = errno;
        r.resident_after = page_resident(page);
        std::memcpy(r.bytes, page, std::min(n, sizeof r.bytes));
      });
    }).join();
  });
  return r;
}

}  // namespace

TEST(StackFiber, ReadFromPipeIntoUnmappedStackPage) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const char msg[] = "hello from the pipe, onto a page nobody mapped";
  ASSERT_EQ(write(fds[1], msg, sizeof msg), ssize_t(sizeof msg));
  const SyscallResult r = syscall_into_fresh_page(
      "pipe-reader", sizeof msg, [&](char* page) { return long(read(fds[0], page, sizeof msg)); });
  EXPECT_FALSE(r.was_resident);
  EXPECT_EQ(r.rc, long(sizeof msg)) << "errno " << r.err;
  EXPECT_STREQ(r.bytes, msg);
  EXPECT_TRUE(r.resident_after);
  close(fds[0]);
  close(fds[1]);
}

TEST(StackFiber, RecvFromSocketIntoUnmappedStackPage) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const char msg[] = "socketpair payload for a missing stack page";
  ASSERT_EQ(send(sv[1], msg, sizeof msg, 0), ssize_t(sizeof msg));
  const SyscallResult r = syscall_into_fresh_page(
      "sock-reader", sizeof msg, [&](char* page) { return long(recv(sv[0], page, sizeof msg, 0)); });
  EXPECT_FALSE(r.was_resident);
  EXPECT_EQ(r.rc, long(sizeof msg)) << "errno " << r.err;
  EXPECT_STREQ(r.bytes, msg);
  EXPECT_TRUE(r.resident_after);
  close(sv[0]);
  close(sv[1]);
}

TEST(StackFiber, StatIntoUnmappedStackPage) {
  struct stat want {};
  ASSERT_EQ(stat("/proc/self/exe", &want), 0);
  const SyscallResult r = syscall_into_fresh_page("stat-caller", sizeof(struct stat), [&](char* page) {
    return long(stat("/proc/self/exe", reinterpret_cast<struct stat*>(page)));
  });
  struct stat got {};
  std::memcpy(&got, r.bytes, sizeof got);
  EXPECT_FALSE(r.was_resident);
  EXPECT_EQ(r.rc, 0) << "errno " << r.err;
  EXPECT_EQ(got.st_ino, want.st_ino);
  EXPECT_EQ(got.st_dev, want.st_dev);
  EXPECT_EQ(got.st_size, want.st_size);
  EXPECT_TRUE(r.resident_after);
}

// ---- 3. a signal frame lands on fresh stack pages ----------------------------

namespace {

// Raw system calls: no call instruction, so nothing is pushed below the
// caller's stack pointer before the kernel builds the signal frame there.
#if defined(__x86_64__)
#define STACK_FIBER_RAW_SYSCALL 1
__attribute__((always_inline)) inline long raw_syscall3(long n, long a, long b, long c) {
  long ret;
  asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
#define STACK_FIBER_RAW_SYSCALL 1
__attribute__((always_inline)) inline long raw_syscall3(long n, long a, long b, long c) {
  register long x8 asm("x8") = n;
  register long x0 asm("x0") = a;
  register long x1 asm("x1") = b;
  register long x2 asm("x2") = c;
  asm volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
  return x0;
}
#else
#define STACK_FIBER_RAW_SYSCALL 0
#endif

std::atomic<int> g_signals{0};
std::atomic<std::uintptr_t> g_handler_local{0};
volatile unsigned char g_handler_wrote = 0;
unsigned char g_vec[4];  // mincore output: must not live on the stack under test

void on_usr1(int) {
  volatile unsigned char scratch[1500];  // the handler uses the fiber stack too
  for (std::size_t i = 0; i < sizeof scratch; i += 64) scratch[i] = static_cast<unsigned char>(i);
  g_handler_local.store(reinterpret_cast<std::uintptr_t>(&scratch[0]), std::memory_order_relaxed);
  g_handler_wrote = scratch[64] + 1;
  g_signals.fetch_add(1, std::memory_order_relaxed);
}

struct SignalResult {
  std::uintptr_t sp = 0;          // (about) the stack pointer when the signal was sent
  int pages_resident_before = -1; // of the 3 pages just below sp
  int pages_resident_after = -1;
  long rc = -1;
  int seen_after_return = 0;
  bool continued = false;
  long frames_after = 0;
};

// Moves the stack pointer beyond everything mapped for this fiber, checks
// that the 3 pages below it are not resident, and sends SIGUSR1 to this thread
// from right there: the kernel writes the signal frame (and the handler then
// runs) on pages that do not exist yet.
__attribute__((noinline)) void signal_at_fresh_depth(SignalResult& r) {
  const long pid = getpid();
  const long tid = gettid();
  const std::size_t gap = tendril::this_fiber::stack_high_water() + 64 * kKiB + 16 * kKiB;
  char* region = static_cast<char*>(alloca(gap));
  asm volatile("" : : "r"(region) : "memory");
  const std::uintptr_t sp = reinterpret_cast<std::uintptr_t>(region);
  const std::uintptr_t probe = ((sp - 1) & ~std::uintptr_t(kPage - 1)) - 2 * kPage;
#if STACK_FIBER_RAW_SYSCALL
  long mc = raw_syscall3(SYS_mincore, long(probe), long(3 * kPage), reinterpret_cast<long>(g_vec));
  int before = mc == 0 ? (g_vec[0] & 1) + (g_vec[1] & 1) + (g_vec[2] & 1) : -1;
  long rc = raw_syscall3(SYS_tgkill, pid, tid, SIGUSR1);
  mc = raw_syscall3(SYS_mincore, long(probe), long(3 * kPage), reinterpret_cast<long>(g_vec));
  int after = mc == 0 ? (g_vec[0] & 1) + (g_vec[1] & 1) + (g_vec[2] & 1) : -1;
#else
  int before = -1, after = -1;
  long rc = pthread_kill(pthread_self(), SIGUSR1);
  (void)pid;
  (void)tid;
#endif
  asm volatile("" : : "r"(region) : "memory");
  r.sp = sp;
  r.pages_resident_before = before;
  r.pages_resident_after = after;
  r.rc = rc;
}

}  // namespace

TEST(StackFiber, SignalFrameOnFreshStackPagesOfAFiber) {
  struct sigaction sa {}, old{};
  sa.sa_handler = on_usr1;  // no SA_ONSTACK: the frame goes on the fiber's stack
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  g_signals = 0;
  g_handler_local = 0;
  g_handler_wrote = 0;
  SignalResult r;
  DeepStats st;
  tendril::run(two_workers(), [&] {
    tendril::spawn(tendril::SpawnOptions{"signalled", 512 * kKiB}, [&] {
      signal_at_fresh_depth(r);
      r.seen_after_return = g_signals.load();
      // The fiber goes on: grow the stack further and check its frames.
      DeepArgs a{7, 300 * kKiB, 0, &st, nullptr};
      r.frames_after = deep(a, 0);
      r.continued = true;
    }).join();
  });
  sigaction(SIGUSR1, &old, nullptr);
  EXPECT_EQ(r.rc, 0);
  EXPECT_EQ(g_signals.load(), 1);
  EXPECT_EQ(r.seen_after_return, 1);
  EXPECT_NE(g_handler_wrote, 0);
  EXPECT_TRUE(r.continued);
  EXPECT_GT(r.frames_after, 200);
  EXPECT_EQ(st.bad_bytes.load(), 0);
#if STACK_FIBER_RAW_SYSCALL
  if (!kAsan) {
    EXPECT_EQ(r.pages_resident_before, 0) << "the pages below the fiber's stack pointer were already there";
  }
  EXPECT_GE(r.pages_resident_after, 1);
  if (!kTsan) {  // TSan defers handlers to its own safe points
    // The handler's frame was on this fiber's stack, just below where the
    // signal was sent, i.e. below the signal frame.
    const std::uintptr_t local = g_handler_local.load();
    EXPECT_LT(local, r.sp);
    EXPECT_GT(local, r.sp - 64 * kKiB);
  }
#endif
}

// ---- 4. overflow: the process dies naming the fiber --------------------------

namespace {
volatile bool g_keep_recursing = true;  // volatile: the recursion is not provably infinite

__attribute__((noinline)) long recurse_forever(long depth) {
  volatile char frame[512];
  frame[0] = char(depth);
  if (!g_keep_recursing) return 0;
  return recurse_forever(depth + 1) + frame[0];
}
}  // namespace

TEST(StackFiber, OverflowDiesNamingTheFiberAndItsLimit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        tendril::run(two_workers(), [] {
          tendril::spawn(tendril::SpawnOptions{"deep-one", 64 * kKiB}, [] { recurse_forever(0); }).join();
        });
      },
      "fiber [0-9]+ \"deep-one\" exceeded its stack limit of 65536 bytes");
}

// ---- 5. a million parked fibers add no VMAs ----------------------------------
//
// Time: spawning and parking 1M fibers takes ~2 s on a quiet machine, but each
// fresh stack costs one first-touched page, and on a loaded VM a first touch
// can cost 20-80 us (1M of them: over a minute). So the spawn loop has a time
// budget: it stops early if the budget runs out, says so, and the VMA check
// is made with the fibers parked by then (at least 100k, or the test fails).

TEST(StackFiber, MillionParkedFibersAddNoVmas) {
  if (const char* m = std::getenv("TENDRIL_STACK_MODE");
      m && std::string(m) == "kernel" && !tendril_test::guard_madvise_available())
    GTEST_SKIP() << "kernel mode guards stacks with mprotect before Linux 6.13 (2 VMAs per stack, capped by "
                    "vm.max_map_count); StackArena.ManySlotsDoNotAddVmas/kernel tests that fallback";
  // 64 KiB stacks: the test is about VMAs (slots carved from one reservation
  // per worker and size class), not about the default 256 KiB limit. Slots of
  // the 64 KiB class are 80 KiB apart instead of 272 KiB, so the million top
  // pages share page-table pages 3.4x more densely; first touches of pages
  // spread over 272 GiB cost ~20 us each on this VM (shadow page tables):
  // ~300 s for 1M, the ctest timeout.
  constexpr std::size_t kParkedLimit = 64 * kKiB;
  const tendril::SpawnOptions parked_opts{"parked", kParkedLimit};
  // Under sanitizers: 50,000 (ASan), and 6,000 under TSan, which registers
  // every fiber as a thread and dies beyond 8,128 of them.
  int n = kTsan ? 6000 : kSanitized ? 50000 : 1000000;
  if (const char* e = std::getenv("STACK_FIBER_PARKED")) n = std::atoi(e);  // for local experiments
  const int n_required = std::min(n, 100000);
  constexpr auto kSpawnBudget = 90s;
  std::vector<std::string> before, parked, released;
  std::uint64_t live_before = 0, live_parked = 0, live_after = 0, pages_parked = 0;
  std::atomic<int> started{0}, finished{0};
  int spawned = 0;
  bool all_parked = false, all_finished = false, all_released = false;
  double spawn_seconds = 0, release_seconds = 0;
  std::string mode;
  // The spawn loop holds its worker for seconds: a stall report would unwind
  // with libdw and allocate, and (under ASan) its allocator regions would be
  // counted as VMAs. Stalls are not what this test measures.
  tendril::Options no_watchdog = two_workers();
  no_watchdog.stall_threshold = std::chrono::milliseconds(0);
  // Compaction off: it would give back the page each parked fiber holds
  // (checked below) once they have been idle for compact_after, and it
  // adds VMAs of its own to nothing but costs a million compactions here.
  no_watchdog.compact_after = std::chrono::milliseconds(0);
  tendril::run(no_watchdog, [&] {
    mode = tendril::stats().stack_mode;
    // Warm-up: the same kind of fibers, parked and released, spawned from
    // fibers on both workers, so that what is reserved once per run (each
    // worker's 64 KiB-class stack arena and its side tables: 3 VMAs per worker,
    // malloc arenas of threads' first allocations, the I/O poller) is there
    // before the baseline is taken.
    {
      tendril::Channel<int> warm;
      std::atomic<int> warm_started{0}, spawner_cpus{0};
      int warm_spawned = 0;
      for (int batch = 0; batch < 50 && (batch < 2 || __builtin_popcount(spawner_cpus.load()) < 2); ++batch) {
        std::vector<tendril::Fiber> spawners;
        for (int i = 0; i < 32; ++i)
          spawners.push_back(tendril::spawn([warm, &warm_started, &spawner_cpus, parked_opts] {
            for (int k = 0; k < 4; ++k) tendril::this_fiber::yield();  // let the other worker steal some
            const int cpu = sched_getcpu();
            if (cpu >= 0 && cpu < 31) spawner_cpus.fetch_or(1 << cpu);
            tendril::spawn(parked_opts, [warm, &warm_started]() mutable {
              warm_started.fetch_add(1);
              (void)warm.recv();
            }).detach();
          }));
        for (auto& f : spawners) f.join();
        warm_spawned += 32;
      }
      eventually([&] { return warm_started.load() == warm_spawned; });
      warm.close();
      eventually([&] { return tendril::stats().fibers_live == 1; });
    }
    live_before = tendril::stats().fibers_live;
    before = maps_lines();

    tendril::Channel<int> gate;
    const auto t0 = std::chrono::steady_clock::now();
    for (; spawned < n; ++spawned) {
      if (spawned % 4096 == 0 && std::chrono::steady_clock::now() - t0 > kSpawnBudget) break;
      tendril::spawn(parked_opts, [gate, &started, &finished]() mutable {
        started.fetch_add(1, std::memory_order_relaxed);
        (void)gate.recv();  // parks until close()
        finished.fetch_add(1, std::memory_order_relaxed);
      }).detach();
    }
    all_parked = eventually([&] { return started.load() == spawned; }, 60s);
    spawn_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    parked = maps_lines();
    // One snapshot only: in kernel mode stats() scans every live stack (mincore).
    const tendril::Stats s = tendril::stats();
    live_parked = s.fibers_live;
    pages_parked = s.stack_pages_mapped;

    const auto t1 = std::chrono::steady_clock::now();
    gate.close();  // wakes every parked fiber; each returns and is released
    all_finished = eventually([&] { return finished.load() == spawned; }, 90s);
    all_released = eventually([&] { return tendril::stats().fibers_live == live_before; }, 30s);
    release_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    live_after = tendril::stats().fibers_live;
    released = maps_lines();
  });
  SCOPED_TRACE("stack mode " + mode);
  std::cout << "[ info ] " << spawned << " fibers spawned and parked in " << spawn_seconds << " s (" << mode
            << " mode); VMAs " << before.size() << " -> " << parked.size() << " parked -> " << released.size()
            << " released; stack pages mapped while parked: " << pages_parked << "; woken and released in "
            << release_seconds << " s\n";
  if (spawned < n)
    std::cout << "[ info ] the spawn budget ran out after " << spawned << " of " << n
              << " fibers (slow first touches of fresh pages on this machine?)\n";
  ASSERT_GE(spawned, n_required);
  ASSERT_TRUE(all_parked) << started.load() << " of " << spawned << " fibers started";
  EXPECT_EQ(live_parked, live_before + std::uint64_t(spawned));
  // One resident page per parked fiber (plus main's own pages).
  EXPECT_GE(pages_parked, std::uint64_t(spawned));
  // One page per parked fiber (ASan's larger first frames reach a second).
  EXPECT_LE(pages_parked, std::uint64_t(spawned) * (kAsan ? 2 : 1) + 256);
  // Every stack is a slot in the per-(worker, size class) arena that the
  // warm-up already reserved: 0 VMAs per fiber, whatever the mode (kernel
  // mode's guards are MADV_GUARD_INSTALL markers, which split nothing), so
  // normally the count is unchanged. The slack covers what may still appear
  // once per run: a worker's 64 KiB-class stack arena + its side tables (3 VMAs)
  // if the warm-up did not manage to spawn from both workers, a new glibc
  // malloc arena (2 VMAs: heap + PROT_NONE reserve) for a thread's first
  // allocation. One mprotect guard per stack would be 2 VMAs per fiber.
  // (TSan maps state of its own for every fiber, ~4 VMAs each: there only the
  // other invariants are checked.)
  const long grown = long(parked.size()) - long(before.size());
  if (!kTsan) {
    EXPECT_LE(grown, 8) << "VMAs grew by " << grown << " with " << spawned << " parked fibers:\n"
                        << maps_diff(before, parked);
  }
  if (grown != 0 && !kTsan) std::cout << "[ info ] mappings that changed:\n" << maps_diff(before, parked);
  EXPECT_TRUE(all_finished) << finished.load() << " of " << spawned << " fibers woke up";
  EXPECT_TRUE(all_released);
  EXPECT_EQ(live_after, live_before);
  if (!kTsan) {
    EXPECT_LE(long(released.size()) - long(before.size()), 8) << maps_diff(before, released);
  }
}

// ---- 6. stacks that grew and were released leave no pages behind -------------
//
// Run twice. With the free-stack cache off (Options::stack_cache_bytes = 0,
// and TENDRIL_STACK_LEARN=0: see two_workers_cache) a
// released stack goes back to its arena with its top page only: the deepest
// frames' pages are not resident afterwards. With the cache on (default), a
// released stack is cached with its pages up to its spawn site's learned depth
// (by design), so instead: stack_pages_mapped (live stacks only) returns to
// its baseline after each round, and live + cached pages stay within the
// baseline + the cache budget.

namespace {
struct GrowResult {
  std::string mode;
  std::vector<std::uint64_t> after_round, while_deep, cache_pages_after;
  std::vector<int> deep_pages_resident;
  std::vector<bool> sampled_with_all_deep;
  std::size_t cache_budget = 0;
  std::uint64_t stacks_cached = 0;  // releases the cache took, over the whole run
};

// Uses `bytes` of the calling fiber's stack, so that its pages are mapped
// before a test takes its baseline and later calls cannot grow it.
__attribute__((noinline)) void pre_grow_own_stack(std::size_t bytes) {
  volatile char area[16 * 1024];
  for (std::size_t i = 0; i < bytes && i < sizeof area; i += 512) area[sizeof area - 1 - i] = 1;
}

GrowResult grow_then_exit(bool cache_on, DeepStats& st) {
  static constexpr int kFibers = 32;
  constexpr int kRounds = 5;
  constexpr std::size_t kLimit = 256 * kKiB;
  struct Round {
    std::atomic<int> at_bottom{0};
    std::atomic<int> left_early{0};
    std::atomic<std::uint64_t> mapped_while_deep{0};
  };
  GrowResult res;
  const ScopedEnv learn("TENDRIL_STACK_LEARN", cache_on ? "1" : "0");
  const tendril::Options o = two_workers_cache(cache_on);
  res.cache_budget = o.stack_cache_bytes;
  tendril::run(o, [&] {
    // main's own stack is part of stack_pages_mapped: grow it now, so that a
    // slow run (sanitizers, a loaded machine) reaching a deeper path in main
    // later (timers, parking) cannot move the baseline.
    pre_grow_own_stack(16 * kKiB);
    res.mode = tendril::stats().stack_mode;
    const std::uint64_t live0 = tendril::stats().fibers_live;
    for (int round = 0; round < kRounds; ++round) {
      std::vector<const void*> deepest(kFibers);
      Round rs;
      std::vector<tendril::Fiber> fibers;
      for (int i = 0; i < kFibers; ++i)
        fibers.push_back(tendril::spawn(tendril::SpawnOptions{"grower", kLimit}, [&, i] {
          DeepArgs a{unsigned(round * 100 + i), kLimit - 32 * kKiB, 16, &st, [](DeepArgs& a) {
                       // The last fiber to get deep samples the counter while
                       // all of them are grown; the others wait for it (a
                       // fiber on a cached stack gets here at once, so the
                       // wait is bounded by time, not by a count of yields).
                       auto& rs = *static_cast<Round*>(a.user);
                       if (rs.at_bottom.fetch_add(1) + 1 == kFibers)
                         rs.mapped_while_deep = tendril::stats().stack_pages_mapped;
                       if (!eventually([&] { return rs.mapped_while_deep.load() != 0; }, 60s)) rs.left_early.fetch_add(1);
                     }};
          a.user = &rs;
          a.min_frames = cache_on ? 192 : 0;  // really use a reused stack (~192 KiB of checked frames)
          deep(a, 0);
          deepest[i] = a.deepest_frame;
        }));
      for (auto& f : fibers) f.join();
      res.while_deep.push_back(rs.mapped_while_deep.load());
      res.sampled_with_all_deep.push_back(rs.left_early.load() == 0);
      // join() returns once the fiber has finished; its stack is released
      // just after, on whichever worker ran it last.
      eventually([&] { return tendril::stats().fibers_live == live0; });
      std::uint64_t mapped = tendril::stats().stack_pages_mapped;
      if (round == 0) {
        // Settle: a release may still be in flight on the other worker (a
        // fiber counts as finished just before its stack is released).
        std::uint64_t prev = ~std::uint64_t{0};
        for (int i = 0; i < 200 && mapped != prev; ++i) {
          tendril::this_fiber::sleep_for(5ms);
          prev = mapped;
          mapped = tendril::stats().stack_pages_mapped;
        }
      } else {
        eventually([&] { return (mapped = tendril::stats().stack_pages_mapped) == res.after_round[0]; }, 10s);
      }
      res.after_round.push_back(mapped);
      res.cache_pages_after.push_back(tendril::stats().stack_cache_pages);
      int resident = 0;
      for (const void* p : deepest) resident += page_resident(p);
      res.deep_pages_resident.push_back(resident);
    }
    res.stacks_cached = tendril::stats().stacks_cached;
  });
  return res;
}
}  // namespace

TEST(StackFiber, GrowThenExitLeavesNoPagesMapped) {
  constexpr int kFibers = 32;
  for (bool cache_on : {false, true}) {
    SCOPED_TRACE(cache_on ? "stack cache on (default budget)" : "stack cache off (stack_cache_bytes = 0)");
    DeepStats st;
    const GrowResult r = grow_then_exit(cache_on, st);
    SCOPED_TRACE("stack mode " + r.mode);
    const int rounds = int(r.after_round.size());
    ASSERT_EQ(rounds, 5);
    EXPECT_EQ(st.bad_bytes.load(), 0);
    // While grown, the stacks held their pages (each reached 224 KiB = 56
    // pages), whether they grew by faults, were premapped to the learned
    // depth or came from the cache with their pages.
    for (int i = 0; i < rounds; ++i) {
      EXPECT_TRUE(r.sampled_with_all_deep[i]) << "a fiber left before the sample in round " << i;
      EXPECT_GE(r.while_deep[i], std::uint64_t(kFibers) * 50) << "while deep in round " << i;
    }
    // After each round stack_pages_mapped (live stacks only) is back to its
    // baseline: only main's pages remain. Round 0 is the warm-up: main's own
    // stack may still grow during it.
    for (int i = 1; i < rounds; ++i) EXPECT_EQ(r.after_round[i], r.after_round[0]) << "after round " << i;
    EXPECT_LE(r.after_round[0], 64u);  // main's stack at most: 256 KiB
    EXPECT_GE(r.after_round[0], 4u);   // main pre-grew 16 KiB
    if (!cache_on) {
      // A released stack keeps its top page only (in its arena's free list).
      for (int i = 0; i < rounds; ++i) {
        EXPECT_EQ(r.deep_pages_resident[i], 0) << "deepest frames' pages still resident after round " << i;
        EXPECT_EQ(r.cache_pages_after[i], 0u) << "after round " << i;
      }
    } else {
      // Cached stacks keep pages (that is the point), but live + cached stay
      // within the baseline + the cache budget.
      const std::uint64_t budget_pages = r.cache_budget / kPage;
      for (int i = 0; i < rounds; ++i) {
        EXPECT_LE(r.after_round[i] + r.cache_pages_after[i], r.after_round[0] + budget_pages) << "after round " << i;
      }
      // The cache did take the stacks (it may have given them back since: in a
      // slow run whole cache epochs pass between rounds).
      EXPECT_GT(r.stacks_cached, 0u);
    }
  }
}

// ---- 7. the fault handler vs fibers that exit while others fault -------------
//
// Run with the free-stack cache off (and learned depth off), where each faulter gets a stack from the
// arena (top page only) and grows it by faults while churn fibers release
// stacks (MADV_DONTNEED), and with the cache on (default), where releases go
// to the cache (batched trims) and faulters may get cached or premapped
// stacks: they recurse a fixed number of checked frames then (a reused
// stack's high water starts deep), and the first ones still grow by faults.

namespace {
struct FaultsResult {
  std::string mode;
  long deep_done = 0, churn_done = 0, wrong_frames = 0, bad_bytes = 0;
  tendril::Stats stats;
};

FaultsResult faults_while_others_exit(bool cache_on) {
  constexpr int kDeepDrivers = 8;
  constexpr int kDeepIterations = kSanitized ? 10 : 40;
  constexpr int kChurnDrivers = 8;
  constexpr int kChurnIterations = kSanitized ? 300 : 2000;
  constexpr std::size_t kLimit = 256 * kKiB;
  DeepStats st;
  std::atomic<long> deep_done{0}, churn_done{0}, wrong_frames{0};
  FaultsResult res;
  const ScopedEnv learn("TENDRIL_STACK_LEARN", cache_on ? "1" : "0");
  const tendril::Options o = two_workers_cache(cache_on);
  tendril::run(o, [&] {
    res.mode = tendril::stats().stack_mode;
    std::vector<tendril::Fiber> drivers;
    for (int d = 0; d < kDeepDrivers; ++d)
      drivers.push_back(tendril::spawn([&, d] {
        for (int it = 0; it < kDeepIterations; ++it) {
          // Cache off: a fresh fiber each time, so its stack grows (faults) from one page.
          long frames = 0;
          tendril::spawn(tendril::SpawnOptions{"faulter", kLimit}, [&, d, it] {
            DeepArgs a{unsigned(d * 1000 + it), 192 * kKiB, 24, &st, nullptr};
            a.min_frames = cache_on ? 160 : 0;
            frames = deep(a, 0);
          }).join();
          if (frames < 150) wrong_frames.fetch_add(1);
          deep_done.fetch_add(1);
        }
      }));
    for (int d = 0; d < kChurnDrivers; ++d)
      drivers.push_back(tendril::spawn([&, d] {
        for (int it = 0; it < kChurnIterations; ++it) {
          // Exits at once, or after touching a few pages (so its release
          // drops pages with MADV_DONTNEED while other slots fault).
          const std::size_t touch = (it % 3 == 0) ? 0 : (4 + it % 5) * kPage;
          auto f = tendril::spawn(tendril::SpawnOptions{"churn", kLimit}, [&, touch, d, it] {
            if (touch != 0) {
              DeepArgs a{unsigned(d + it), touch, 0, &st, nullptr};
              a.min_frames = cache_on ? long(touch / kKiB) : 0;
              deep(a, 0);
            }
            churn_done.fetch_add(1, std::memory_order_relaxed);
          });
          if (it % 2 == 0) f.join(); else f.detach();
          if (it % 16 == 0) tendril::this_fiber::yield();
        }
      }));
    for (auto& f : drivers) f.join();
    eventually([&] { return churn_done.load() == long(kChurnDrivers) * kChurnIterations; });
  });
  res.deep_done = deep_done.load();
  res.churn_done = churn_done.load();
  res.wrong_frames = wrong_frames.load();
  res.bad_bytes = st.bad_bytes.load();
  res.stats = tendril::stats();  // the finished run's counters
  return res;
}
}  // namespace

TEST(StackFiber, FaultsWhileOtherFibersExitAndRespawn) {
  constexpr long kDeepTotal = 8L * (kSanitized ? 10 : 40);
  constexpr long kChurnTotal = 8L * (kSanitized ? 300 : 2000);
  for (bool cache_on : {false, true}) {
    SCOPED_TRACE(cache_on ? "stack cache on (default budget)" : "stack cache off (stack_cache_bytes = 0)");
    const FaultsResult r = faults_while_others_exit(cache_on);
    SCOPED_TRACE("stack mode " + r.mode);
    EXPECT_EQ(r.deep_done, kDeepTotal);
    EXPECT_EQ(r.churn_done, kChurnTotal);
    EXPECT_EQ(r.wrong_frames, 0);
    EXPECT_EQ(r.bad_bytes, 0);
    EXPECT_EQ(r.stats.fibers_live, 0u);
    EXPECT_GT(r.stats.stack_faults, 0u);
    if (cache_on) EXPECT_GT(r.stats.cache_hits, 0u);
    else EXPECT_EQ(r.stats.cache_hits, 0u);
  }
}

// ---- 8. high water and fault counters ----------------------------------------

namespace {
struct HighWaterTrace {
  std::vector<std::size_t> hw;        // stack_high_water() at each frame
  std::vector<std::uintptr_t> addr;   // address of each frame's buffer
};

__attribute__((noinline)) void trace_high_water(HighWaterTrace& t, int frames_left) {
  volatile char frame[kFrameBytes];
  frame[0] = 1;
  frame[sizeof frame - 1] = 1;
  t.hw.push_back(tendril::this_fiber::stack_high_water());
  t.addr.push_back(reinterpret_cast<std::uintptr_t>(&frame[0]));
  if (frames_left > 0) trace_high_water(t, frames_left - 1);
  frame[0] = frame[0] + 1;
}
}  // namespace

// Fibers that went 12 KiB deep in one go (a burst: the handler maps 64 KiB
// at the second fault) and then park keep what they wrote, not the burst.
TEST(StackFiber, ParkedFibersDoNotKeepPagesABurstMappedAhead) {
  const ScopedEnv burst("TENDRIL_STACK_BURST_US", "60000000");  // every run of faults is a burst
  const ScopedEnv learn("TENDRIL_STACK_LEARN", "0");            // every fiber starts from one page
  constexpr int kFibers = 200;
  std::uint64_t per_fiber_x100 = 0, trimmed = 0;
  std::string mode;
  tendril::run(two_workers(), [&] {
    mode = tendril::stats().stack_mode;
    tendril::WaitGroup parked, release;
    parked.add(kFibers);
    release.add(1);
    const std::uint64_t base = tendril::stats().stack_pages_mapped;
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i)
      fibers.push_back(tendril::spawn([&] {
        touch_stack_bytes(12 * kKiB);
        parked.done();
        release.wait();  // parks at a shallow depth
      }));
    parked.wait();
    tendril::this_fiber::sleep_for(2ms);  // the last ones reach their park
    per_fiber_x100 = (tendril::stats().stack_pages_mapped - base) * 100 / kFibers;
    trimmed = tendril::stats().pages_trimmed;
    release.done();
    for (auto& f : fibers) f.join();
  });
  SCOPED_TRACE("stack mode " + mode);
  // 12 KiB of frames: 4 pages at most (5 in sanitizer builds' bigger frames),
  // not the 18 a burst maps.
  EXPECT_LE(per_fiber_x100, 500u);
  if (mode == "uffd") {
    EXPECT_GE(per_fiber_x100, 200u);
    EXPECT_GT(trimmed, std::uint64_t(kFibers) * 8);
  }
}

TEST(StackFiber, HighWaterGrowsWithDepthAndFaultsAreCounted) {
  constexpr int kFrames = 240;  // ~240 KiB
  HighWaterTrace t;
  t.hw.reserve(kFrames + 1);
  t.addr.reserve(kFrames + 1);
  std::size_t hw_at_start = 0, hw_at_end = 0;
  std::uint64_t faults_before = 0, faults_in_fiber = 0, faults_after = 0;
  std::string mode;
  bool counted_after_join = false;
  tendril::run(two_workers(), [&] {
    mode = tendril::stats().stack_mode;
    faults_before = tendril::stats().stack_faults;
    tendril::spawn(tendril::SpawnOptions{"tracer", 512 * kKiB}, [&] {
      hw_at_start = tendril::this_fiber::stack_high_water();
      trace_high_water(t, kFrames);
      hw_at_end = tendril::this_fiber::stack_high_water();
      faults_in_fiber = tendril::stats().stack_faults;
    }).join();
    // Kernel mode counts a stack's growth when the stack is released (or
    // scans live stacks); either way it is visible once the fiber is gone.
    counted_after_join = eventually([&] { return tendril::stats().stack_faults > faults_before; }, 10s);
    faults_after = tendril::stats().stack_faults;
  });
  SCOPED_TRACE("stack mode " + mode);
  EXPECT_EQ(tendril::this_fiber::stack_high_water(), 0u);  // not on a fiber
  EXPECT_GE(hw_at_start, kPage);
  EXPECT_EQ(hw_at_start % kPage, 0u);
  ASSERT_EQ(t.hw.size(), std::size_t(kFrames + 1));
  for (std::size_t i = 1; i < t.hw.size(); ++i) {
    EXPECT_GE(t.hw[i], t.hw[i - 1]) << "frame " << i;
    // Each frame is at least as deep as the previous one plus its buffer, and
    // the mark covers it: high water >= (depth below frame 0) + frame 0's depth.
    const std::size_t below_first = t.addr[0] - t.addr[i];
    EXPECT_GE(t.hw[i], below_first) << "frame " << i;
  }
  // Strictly greater over every 8 frames (8 KiB > a page).
  for (std::size_t i = 8; i < t.hw.size(); i += 8) EXPECT_GT(t.hw[i], t.hw[i - 8]) << "frame " << i;
  EXPECT_GE(t.hw.back(), std::size_t(kFrames) * kFrameBytes);
  EXPECT_GE(hw_at_end, t.hw.back());
  EXPECT_LE(hw_at_end, 512 * kKiB);
  if (mode == "uffd") {
    // The handler counts each fault as it resolves it; doubling keeps the
    // count well below one per page (~60 pages grown).
    EXPECT_GT(faults_in_fiber, faults_before);
    EXPECT_LE(faults_in_fiber - faults_before, 64u + 16u);
  }
  EXPECT_TRUE(counted_after_join);
  EXPECT_GT(faults_after, faults_before);
}
