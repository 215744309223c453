// Memory and time of growable fiber stacks, through the public API. Plain
// program; every measurement runs in a child
// process of its own (this binary re-executed with --child ...), so that
// runs do not see each other's pages, and the stack mode is chosen with
// TENDRIL_STACK_MODE in the child's environment.
//
//   build/bench/stack_memory [--quick] [--markdown FILE]
//
// 1. Memory per idle (parked) fiber at 100k and 1M fibers (256 KiB limit,
//    and 1M with a 64 KiB limit; each parked in Channel::recv): (VmRSS + VmPTE delta of /proc/self/status)
//    / N, plus stats().stack_pages_mapped / N and the system-wide /proc/meminfo
//    deltas (KernelStack, SUnreclaim, PageTables; noisy if anything else runs).
//    Beside it, pthreads: 10k and 30k parked threads with default 8 MiB
//    stacks, whose real cost includes their kernel stacks, slab objects and
//    page tables: all-in = dRSS + dKernelStack + dSUnreclaim + dPageTables.
//    Target: <= 4.6 KiB per fiber all-in.
// 2. Time to spawn and park 1M fibers (target <= 2 s; Go here: 1.95 s).
// 3. Stack growth: a fresh fiber (spawn, recurse to 64 KiB / 240 KiB with
//    ~1 KiB frames, exit, join) in uffd and kernel mode, and a fresh pthread
//    with its own freshly mmap'd stack; per-fiber time minus the same with no
//    recursion, stack_faults per fiber, ratios (target: uffd within 1.5x of
//    kernel demand paging). A released stack is shrunk to its top page, so
//    every fiber here grows on pages that are not mapped (the faults column
//    shows it).
// 4. A calibration line: the cost of a first touch of a fresh anonymous page
//    right now (it dominates spawning fresh stacks; on a loaded VM it can be
//    10-50x the quiet figure).
//
// --quick: 100k fibers / 10k threads only, fewer repetitions.
// Progress goes to stderr, the table to stdout (and to FILE with --markdown).
#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <linux/futex.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

#include "bench/report/table.hpp"
#include "samples/common/proc_status.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;
constexpr std::size_t kKiB = 1024;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void progress(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void progress(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "[stack_memory %d] ", int(getpid()));
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

// ---- /proc ---------------------------------------------------------------------

// A "Key:   123 kB" field of /proc/self/status or /proc/meminfo, in bytes; -1
// if missing.
long long proc_kb_field(const char* file, const char* key) {
  const auto v = sample::proc_field(file, key);
  return v ? static_cast<long long>(*v) : -1;
}

struct MemSnap {
  long long rss, pte, kstack, sunreclaim, pagetables;
};

MemSnap mem_snap() {
  return {proc_kb_field("/proc/self/status", "VmRSS"), proc_kb_field("/proc/self/status", "VmPTE"),
          proc_kb_field("/proc/meminfo", "KernelStack"), proc_kb_field("/proc/meminfo", "SUnreclaim"),
          proc_kb_field("/proc/meminfo", "PageTables")};
}

// Child results: "key value" lines on stdout.
void emit(const char* key, double v) { std::printf("%s %.6f\n", key, v); }

void emit_mem(const MemSnap& a, const MemSnap& b, long n) {
  emit("n", double(n));
  emit("rss_per", double(b.rss - a.rss) / double(n));
  emit("pte_per", double(b.pte - a.pte) / double(n));
  emit("kstack_per", double(b.kstack - a.kstack) / double(n));
  emit("sunreclaim_per", double(b.sunreclaim - a.sunreclaim) / double(n));
  emit("pagetables_per", double(b.pagetables - a.pagetables) / double(n));
}

// ---- children: idle fibers -------------------------------------------------------

int child_fibers(long n, std::size_t limit) {
  tendril::run([n, limit] {
    {
      // Warm-up: workers' and threads' first allocations (malloc arenas, I/O
      // poller). In another (small) size class, so that every measured
      // fiber gets a fresh slot (a released slot keeps its top page, and
      // reusing warm-up slots would hide that page from the delta).
      tendril::Channel<int> warm;
      std::atomic<int> started{0};
      for (int i = 0; i < 2000; ++i)
        tendril::spawn(tendril::SpawnOptions{"warm", limit == 32 * kKiB ? 16 * kKiB : 32 * kKiB},
                       [warm, &started]() mutable {
          started.fetch_add(1);
          (void)warm.recv();
        }).detach();
      while (started.load() < 2000) tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
      warm.close();
      while (tendril::stats().fibers_live > 1) tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
    }
    const int vmas0 = sample::vma_count();
    const MemSnap m0 = mem_snap();
    tendril::Channel<int> gate;
    std::atomic<long> started{0}, finished{0};
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) {
      tendril::spawn(tendril::SpawnOptions{"", limit}, [gate, &started, &finished]() mutable {
        started.fetch_add(1, std::memory_order_relaxed);
        (void)gate.recv();
        finished.fetch_add(1, std::memory_order_relaxed);
      }).detach();
      if (i % 100000 == 99999) progress("  %ld fibers spawned (%.1f s)", i + 1, seconds_since(t0));
    }
    const double spawn_loop = seconds_since(t0);
    while (started.load() < n) tendril::this_fiber::sleep_for(std::chrono::microseconds(200));
    const double spawn_park = seconds_since(t0);
    const MemSnap m1 = mem_snap();
    const int vmas1 = sample::vma_count();
    const tendril::Stats s = tendril::stats();
    emit_mem(m0, m1, n);
    emit("spawn_loop_s", spawn_loop);
    emit("spawn_park_s", spawn_park);
    emit("stack_pages_per", double(s.stack_pages_mapped) / double(n));
    emit("vmas_added", double(vmas1 - vmas0));
    emit("prepared_share", double(s.stacks_prepared) / double(n));
    const auto t1 = Clock::now();
    gate.close();
    while (finished.load() < n) tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
    emit("wake_finish_s", seconds_since(t1));
  });
  return 0;
}

// ---- children: idle pthreads -----------------------------------------------------

std::atomic<int> g_gate{0};
std::atomic<long> g_threads_started{0};

void* parked_thread(void*) {
  g_threads_started.fetch_add(1);
  while (g_gate.load() == 0)
    syscall(SYS_futex, reinterpret_cast<int*>(&g_gate), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
  return nullptr;
}

int child_threads(long n) {
  // Warm-up: one thread created and joined (glibc's first-thread set-up).
  pthread_t t;
  pthread_create(&t, nullptr, [](void*) -> void* { return nullptr; }, nullptr);
  pthread_join(t, nullptr);
  std::vector<pthread_t> threads;
  threads.reserve(std::size_t(n));
  const MemSnap m0 = mem_snap();
  const auto t0 = Clock::now();
  int err = 0;
  for (long i = 0; i < n; ++i) {
    err = pthread_create(&t, nullptr, parked_thread, nullptr);  // default attributes: 8 MiB stack
    if (err != 0) break;
    threads.push_back(t);
    if (i % 5000 == 4999) progress("  %ld threads created (%.1f s)", i + 1, seconds_since(t0));
  }
  const long made = long(threads.size());
  if (made < n) progress("  pthread_create failed after %ld threads: %s", made, std::strerror(err));
  while (g_threads_started.load() < made) usleep(1000);
  const double create_park = seconds_since(t0);
  const MemSnap m1 = mem_snap();
  emit_mem(m0, m1, made);
  emit("spawn_park_s", create_park);
  g_gate.store(1);
  syscall(SYS_futex, reinterpret_cast<int*>(&g_gate), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
  for (pthread_t th : threads) pthread_join(th, nullptr);
  return 0;
}

// ---- children: stack growth ------------------------------------------------------

// Recurses with ~1 KiB frames (each written) until `depth` bytes below `top`.
__attribute__((noinline)) long grow_to(const char* top, std::size_t depth) {
  volatile char frame[960];
  frame[0] = 1;
  frame[sizeof frame - 1] = 1;
  if (std::size_t(top - const_cast<const char*>(&frame[0])) >= depth) return 1;
  return grow_to(top, depth) + frame[0] + frame[sizeof frame - 1] - 1;
}

__attribute__((noinline)) long grow_from_here(std::size_t depth) {
  char here;
  asm volatile("" : : "r"(&here) : "memory");
  return depth == 0 ? 0 : grow_to(&here, depth);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

constexpr std::size_t kGrowDepths[] = {0, 64 * kKiB, 240 * kKiB};
constexpr const char* kGrowNames[] = {"base", "64k", "240k"};

// One batch: `reps` fibers (spawn, grow to `depth`, exit, join) in a run in
// `mode`; ns per fiber and stack_faults per fiber.
void fiber_growth_batch(const std::string& mode, int reps, std::size_t depth, std::vector<double>& ns,
                        double& faults) {
  tendril::Options o;
  o.workers = 1;  // the fiber and its fault handler on one CPU, as a spawner's child would be
  o.stack_mode = mode;
  // A FRESH stack each time: with no cache (and no learned depth, set by the
  // parent through TENDRIL_STACK_LEARN=0) a released slot keeps only its top
  // page, so every fiber below grows from one page.
  o.stack_cache_bytes = 0;
  tendril::run(o, [&] {
    // Warm-up: the arena and the (one) slot every fiber below reuses.
    for (int i = 0; i < 4; ++i) tendril::spawn([] { grow_from_here(8 * kKiB); }).join();
    const std::uint64_t f0 = tendril::stats().stack_faults;
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) tendril::spawn([depth] { grow_from_here(depth); }).join();
    ns.push_back(seconds_since(t0) * 1e9 / reps);
    faults = double(tendril::stats().stack_faults - f0) / reps;
  });
}

struct PthreadJob {
  std::size_t depth;
};

void* pthread_grow(void* arg) {
  grow_from_here(static_cast<PthreadJob*>(arg)->depth);
  return nullptr;
}

// A fresh pthread on a freshly mmap'd stack (glibc would otherwise reuse a
// cached, already-grown stack): mmap, create, grow, exit, join, munmap.
void pthread_growth_batch(int reps, std::size_t depth, std::vector<double>& ns) {
  constexpr std::size_t kStack = 8 * 1024 * kKiB;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    void* mem = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                     -1, 0);
    if (mem == MAP_FAILED) std::exit(1);
    madvise(mem, kStack, MADV_NOHUGEPAGE);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, mem, kStack);
    PthreadJob job{depth};
    pthread_t t;
    if (pthread_create(&t, &attr, pthread_grow, &job) != 0) std::exit(1);
    pthread_join(t, nullptr);
    pthread_attr_destroy(&attr);
    munmap(mem, kStack);
  }
  ns.push_back(seconds_since(t0) * 1e9 / reps);
}

// Batches of the three contenders interleaved (uffd, kernel, pthread, uffd,
// ...), so that load drifting on a shared machine hits them alike. The
// process is pinned to one CPU: tendril's single worker and its uffd handler
// run there, and so do the pthreads.
int child_growth(int reps, int batches) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int first = 0;
    while (first < CPU_SETSIZE && !CPU_ISSET(first, &set)) ++first;
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  setenv("TENDRIL_STACK_LEARN", "0", 1);  // see fiber_growth_batch: fresh stacks only
  std::vector<double> ns[3][3];  // [uffd, kernel, pthread][depth]
  double faults[2][3] = {};
  for (int b = 0; b < batches; ++b) {
    progress("  growth batch %d/%d", b + 1, batches);
    for (int d = 0; d < 3; ++d) {
      fiber_growth_batch("uffd", reps, kGrowDepths[d], ns[0][d], faults[0][d]);
      fiber_growth_batch("kernel", reps, kGrowDepths[d], ns[1][d], faults[1][d]);
      pthread_growth_batch(std::max(1, reps / 2), kGrowDepths[d], ns[2][d]);
    }
  }
  const char* who[] = {"uffd", "kernel", "pthread"};
  for (int m = 0; m < 3; ++m)
    for (int d = 0; d < 3; ++d) {
      std::string k = std::string(who[m]) + "_ns_" + kGrowNames[d];
      emit(k.c_str(), median(ns[m][d]));
      if (m < 2) {
        k = std::string(who[m]) + "_faults_" + kGrowNames[d];
        emit(k.c_str(), faults[m][d]);
      }
    }
  return 0;
}

// ---- parent ----------------------------------------------------------------------

using Result = std::map<std::string, double>;

// Runs this binary with `args` (and TENDRIL_STACK_MODE=mode if given), parses
// its "key value" stdout lines.
Result run_child(const std::vector<std::string>& args, const std::string& mode) {
  int out[2];
  if (pipe(out) != 0) return {};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "TENDRIL_STACK_MODE=", 19) != 0) env_s.emplace_back(*e);
  if (!mode.empty()) env_s.push_back("TENDRIL_STACK_MODE=" + mode);
  std::vector<char*> envp, argv;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  std::vector<std::string> a = args;
  for (auto& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  Result r;
  if (rc != 0) {
    close(out[0]);
    progress("posix_spawn failed: %s", std::strerror(rc));
    return r;
  }
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0) text.append(buf, std::size_t(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) progress("child %s failed (status %d)", args[1].c_str(), status);
  std::istringstream in(text);
  std::string key;
  double v;
  while (in >> key >> v) r[key] = v;
  return r;
}

double get(const Result& r, const char* k) {
  auto it = r.find(k);
  return it == r.end() ? -1 : it->second;
}

// First touch of fresh private anonymous pages, ns per page (slot-like stride).
double first_touch_ns(long pages, std::size_t stride) {
  char* p = static_cast<char*>(mmap(nullptr, pages * stride, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (p == MAP_FAILED) return -1;
  madvise(p, pages * stride, MADV_NOHUGEPAGE);
  const auto t0 = Clock::now();
  for (long i = 0; i < pages; ++i) p[i * stride] = 1;
  const double ns = seconds_since(t0) * 1e9 / double(pages);
  munmap(p, pages * stride);
  return ns;
}

std::string fmt(const char* f, double v) {
  char b[256];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

using bench::render;
using bench::Table;

int parent(bool quick, const char* markdown_file) {
  std::string report_text, report_md;
  auto section = [&](const std::string& title, const Table& t, const std::string& note) {
    report_text += "\n" + title + "\n" + render(t, false) + note;
    report_md += "\n### " + title + "\n\n" + render(t, true) + (note.empty() ? "" : "\n" + note);
  };

  progress("calibration: first touch of fresh pages");
  const double touch4k = first_touch_ns(20000, kPage);
  const double touch_slot = first_touch_ns(20000, 256 * kKiB + 16 * kKiB);
  char calib[512];
  std::snprintf(calib, sizeof calib,
                "Machine now: first touch of a fresh anonymous page %.0f ns (contiguous), %.0f ns "
                "(272 KiB apart, i.e. one page-table page per 7 pages); load average at start: %s",
                touch4k, touch_slot, [] {
                  static char la[64] = "?";
                  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
                    if (!std::fgets(la, sizeof la, f)) la[0] = 0;
                    std::fclose(f);
                    la[strcspn(la, "\n")] = 0;
                  }
                  return la;
                }());
  report_text += std::string(calib) + "\n";
  report_md += std::string(calib) + "\n";

  // ---- 1 and 2: idle tasks ----
  struct IdleRow {
    std::string what;
    Result r;
    bool thread;
  };
  std::vector<IdleRow> idle;
  struct FiberRun {
    long n;
    std::string mode;
    long limit_kib;
  };
  std::vector<FiberRun> fiber_runs = {{100000, "uffd", 256}, {100000, "kernel", 256}};
  if (!quick) {
    fiber_runs.push_back({1000000, "uffd", 256});
    // Denser slots (64 KiB limit: 80 KiB stride instead of 272 KiB): same
    // pages, 3.4x fewer page-table pages.
    fiber_runs.push_back({1000000, "uffd", 64});
  }
  for (auto& fr : fiber_runs) {
    progress("idle fibers: %ld parked, %s mode, %ld KiB limit", fr.n, fr.mode.c_str(), fr.limit_kib);
    Result r = run_child({"--child", "fibers", std::to_string(fr.n), std::to_string(fr.limit_kib * 1024)}, fr.mode);
    idle.push_back({"tendril fibers, " + fr.mode + ", " + std::to_string(fr.n / 1000) + "k" +
                        (fr.limit_kib != 256 ? ", " + std::to_string(fr.limit_kib) + " KiB limit" : ""),
                    r, false});
  }
  std::vector<long> thread_runs = {10000};
  if (!quick) thread_runs.push_back(30000);
  for (long n : thread_runs) {
    progress("idle pthreads: %ld parked (8 MiB default stacks)", n);
    Result r = run_child({"--child", "threads", std::to_string(n)}, "");
    idle.push_back({"pthreads, " + std::to_string(long(get(r, "n")) / 1000) + "k (" +
                        std::to_string(long(get(r, "n"))) + " made)",
                    r, true});
  }
  Table mem{{"idle task", "RSS B", "VmPTE B", "RSS+PTE B", "KernelStack B", "SUnreclaim B", "PageTables B",
             "all-in B", "stack pages", "vs target 4.6 KiB"},
            {}};
  double fiber_allin_100k = 0, thread_allin = 0;
  for (auto& row : idle) {
    const Result& r = row.r;
    const double rss = get(r, "rss_per"), pte = get(r, "pte_per"), ks = get(r, "kstack_per"),
                 su = get(r, "sunreclaim_per"), pt = get(r, "pagetables_per");
    // Fibers: RSS + VmPTE (the process's own page tables; the system-wide
    // deltas are shown but are noise-level for fibers). Threads: add the
    // kernel's per-thread memory; PageTables (system) includes VmPTE.
    const double allin = row.thread ? rss + ks + std::max(0.0, su) + pt : rss + pte;
    if (!row.thread && fiber_allin_100k == 0) fiber_allin_100k = allin;
    if (row.thread) thread_allin = allin;
    mem.rows.push_back({row.what, fmt("%.0f", rss), fmt("%.0f", pte), fmt("%.0f", rss + pte), fmt("%.0f", ks),
                        fmt("%.0f", su), fmt("%.0f", pt), fmt("%.0f", allin),
                        row.thread ? "-" : fmt("%.3f", get(r, "stack_pages_per")),
                        row.thread ? fmt("%.1fx", allin / (4.6 * 1024)) : fmt("%.2fx", allin / (4.6 * 1024))});
  }
  std::string mem_note =
      "all-in: fibers = dRSS + dVmPTE of the process; pthreads = dRSS + dKernelStack + dSUnreclaim + "
      "dPageTables (system-wide /proc/meminfo deltas; PageTables includes VmPTE).\n" +
      fmt("pthread / fiber (all-in, 100k uffd fibers): %.1fx\n", thread_allin / fiber_allin_100k);
  section("Memory per idle task (parked), bytes", mem, mem_note);

  Table spawn{{"spawn + park", "N", "spawn loop s", "spawn+park s", "ns/task", "VMAs added", "wake+finish s",
               "stacks prepared ahead"},
              {}};
  for (auto& row : idle) {
    const Result& r = row.r;
    const double n = get(r, "n");
    spawn.rows.push_back({row.what, fmt("%.0f", n), row.thread ? "-" : fmt("%.3f", get(r, "spawn_loop_s")),
                          fmt("%.3f", get(r, "spawn_park_s")), fmt("%.0f", get(r, "spawn_park_s") * 1e9 / n),
                          row.thread ? "-" : fmt("%.0f", get(r, "vmas_added")),
                          row.thread ? "-" : fmt("%.3f", get(r, "wake_finish_s")),
                          row.thread ? "-" : fmt("%.0f%%", 100 * get(r, "prepared_share"))});
  }
  section("Time to spawn and park (target: 1M fibers <= 2 s; Go here: 1.95 s)", spawn,
          fmt("Each fresh stack costs at least one first-touched page (%.0f ns each on this machine right now) "
              "and its share of a page-table page.\n",
              touch_slot) +
              "One fiber spawns them all (2 workers); stacks prepared ahead = the share whose top page the "
              "other, idle, worker mapped (stack_prepare_ahead).\n");

  // ---- 3: growth ----
  const int reps = quick ? 100 : 200, batches = quick ? 3 : 7;
  progress("stack growth: uffd mode, kernel mode and pthreads, interleaved (%d per batch, %d batches)", reps,
           batches);
  Result g = run_child({"--child", "growth", std::to_string(reps), std::to_string(batches)}, "");
  Table grow{{"fresh stack grown to", "uffd ns", "kernel ns", "pthread ns", "uffd faults", "kernel pages",
              "uffd/kernel", "uffd/pthread"},
             {}};
  auto gv = [&](const char* who, const char* what, const char* depth) {
    return get(g, (std::string(who) + "_" + what + "_" + depth).c_str());
  };
  for (const char* d : {"64k", "240k"}) {
    const double u = gv("uffd", "ns", d) - gv("uffd", "ns", "base"), k = gv("kernel", "ns", d) - gv("kernel", "ns", "base"),
                 p = gv("pthread", "ns", d) - gv("pthread", "ns", "base");
    grow.rows.push_back({std::string(std::strcmp(d, "64k") == 0 ? "64 KiB" : "240 KiB") + ", growth only",
                         fmt("%.0f", u), fmt("%.0f", k), fmt("%.0f", p), fmt("%.1f", gv("uffd", "faults", d)),
                         fmt("%.1f", gv("kernel", "faults", d)), fmt("%.2f", u / k), fmt("%.2f", u / p)});
  }
  for (const char* d : {"64k", "240k"}) {
    const double u = gv("uffd", "ns", d), k = gv("kernel", "ns", d), p = gv("pthread", "ns", d);
    grow.rows.push_back({std::string(std::strcmp(d, "64k") == 0 ? "64 KiB" : "240 KiB") + ", whole (spawn..join)",
                         fmt("%.0f", u), fmt("%.0f", k), fmt("%.0f", p), "", "", fmt("%.2f", u / k),
                         fmt("%.2f", u / p)});
  }
  {
    const double u = gv("uffd", "ns", "base"), k = gv("kernel", "ns", "base"), p = gv("pthread", "ns", "base");
    grow.rows.push_back({"no growth (spawn..join)", fmt("%.0f", u), fmt("%.0f", k), fmt("%.0f", p),
                         fmt("%.1f", gv("uffd", "faults", "base")), fmt("%.1f", gv("kernel", "faults", "base")),
                         fmt("%.2f", u / k), fmt("%.2f", u / p)});
  }
  section("Stack growth of a fresh fiber, ns per fiber (median; target uffd/kernel <= 1.5)", grow,
          "One CPU, 1 worker; stack cache and learned depth off, so every fiber starts with one mapped page "
          "(released stacks shrink to it). uffd faults = stats().stack_faults per fiber (one page per fault up "
          "to 16 KiB, then doubling; 16 pages per fault in a burst); kernel pages = pages "
          "grown per fiber, counted at release. pthread: mmap a fresh 8 MiB stack, create, join, munmap. "
          "growth only = whole minus no growth; medians over interleaved batches.\n");

  std::fputs(report_text.c_str(), stdout);
  if (markdown_file != nullptr) {
    std::ofstream md(markdown_file);
    md << "## stack_memory" << (quick ? " (--quick)" : "") << "\n\n" << report_md;
    progress("markdown written to %s", markdown_file);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "--child") == 0) {
    const std::string kind = argv[2];
    const long a = argc > 3 ? std::atol(argv[3]) : 0, b = argc > 4 ? std::atol(argv[4]) : 0;
    if (kind == "fibers") return child_fibers(a, b != 0 ? std::size_t(b) : 256 * kKiB);
    if (kind == "threads") return child_threads(a);
    if (kind == "growth") return child_growth(int(a), int(b));
    return 2;
  }
  bool quick = false;
  const char* md = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--markdown") == 0 && i + 1 < argc) md = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--markdown FILE]\n", argv[0]);
      return 2;
    }
  }
  return parent(quick, md);
}
