// userfaultfd side of the stack subsystem: one uffd and one handler thread per
// worker, and the page pool that the handler consumes (Fill::move).
// See the design comment in arena.cpp for why it is built this way.
//
// Rules for the handler thread (it runs while a worker is blocked in a fault,
// possibly inside malloc or holding any lock): it takes no locks, calls no
// malloc, and never touches registered memory (only the side tables, the pool
// and its own pthread stack). Every fault it reads is either resolved or, if it
// is in a guard zone, reported and the process aborted: nothing ever hangs.
#include "stack_internal.hpp"
#include "runtime/inject/fault_inject.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <numaif.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

// Debian 12's headers (Linux 6.1) predate UFFDIO_MOVE (Linux 6.8).
#ifndef UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#define UFFD_FEATURE_MOVE (1 << 16)
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

namespace tendril::detail::stack_impl {

namespace {

constexpr std::size_t kZeroBytes = 64 * 1024;
constexpr unsigned kMaxCopyPages = kZeroBytes / kPage;
// Source for UFFDIO_COPY: never written, so it stays the shared zero page.
alignas(4096) const char g_zero[kZeroBytes] = {};

constexpr unsigned kPoolPages = 512;  // 2 MiB per worker
constexpr unsigned kPoolLowWater = kPoolPages / 4;

int open_uffd() noexcept {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
    if (fd >= 0) return fd;
  }
  return int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));  // needs vm.unprivileged_userfaultfd or CAP_SYS_PTRACE
}

// UFFDIO_COPY of `pages` zero pages at dst. Returns pages mapped; EAGAIN
// (mm changing under us) is retried, EEXIST returns the partial count.
unsigned copy_zero_pages(int uffd, char* dst, unsigned pages) noexcept {
  unsigned done = 0;
  while (done < pages) {
    struct uffdio_copy c {};
    c.dst = reinterpret_cast<std::uintptr_t>(dst + done * kPage);
    c.src = reinterpret_cast<std::uintptr_t>(g_zero);
    c.len = std::min<unsigned>(pages - done, kMaxCopyPages) * kPage;
    int r;
    if (const int e = injected_fault(FaultPoint::uffd_copy)) {
      errno = e;
      r = -1;
    } else {
      r = ioctl(uffd, UFFDIO_COPY, &c);
    }
    if (c.copy > 0) done += unsigned(c.copy / kPage);
    if (r == 0) continue;
    if (errno == EAGAIN) continue;
    break;  // EEXIST or a real error: report what was mapped
  }
  return done;
}

// UFFDIO_MOVE of up to `pages` pool pages to dst (one contiguous ring run).
unsigned move_pool_pages(WorkerStacks& w, char* dst, unsigned pages) noexcept {
  PagePool& p = w.pool;
  std::uint64_t consumed = p.consumed.load(std::memory_order_relaxed);
  std::uint64_t avail = p.produced.load(std::memory_order_acquire) - consumed;
  unsigned at = unsigned(consumed % p.pages);
  unsigned n = unsigned(std::min<std::uint64_t>({pages, avail, std::uint64_t(p.pages - at)}));
  if (n == 0) return 0;
  struct uffdio_move m {};
  m.dst = reinterpret_cast<std::uintptr_t>(dst);
  m.src = reinterpret_cast<std::uintptr_t>(p.base + std::size_t(at) * kPage);
  m.len = std::size_t(n) * kPage;
  ioctl(w.uffd, UFFDIO_MOVE, &m);
  unsigned moved = m.move > 0 ? unsigned(m.move / kPage) : 0;
  // Pages are consumed in ring order; pages a partial move left behind stay at
  // the head of the ring for the next fault.
  p.consumed.store(consumed + moved, std::memory_order_release);
  return moved;
}

// How long a fault waits for the kernel to find a page (UFFDIO_COPY failing
// with ENOMEM) before the process stops.
constexpr unsigned kOutOfMemoryWaitMs = 10000;

[[noreturn]] void die_out_of_memory(const char* page) noexcept {
  char msg[160];
  const int n = std::snprintf(msg, sizeof msg,
                              "tendril: out of memory: no page for a fiber's stack at %p (UFFDIO_COPY: ENOMEM for "
                              "%u ms)\n", static_cast<const void*>(page), kOutOfMemoryWaitMs);
  (void)!::write(STDERR_FILENO, msg, n > 0 ? std::size_t(n) : 0);
  std::abort();
}

// Maps [dst, dst + pages*kPage); the last page is the faulting one and must
// end up mapped (by us or by a racing resolver). Returns pages we mapped.
unsigned map_pages(WorkerStacks& w, char* dst, unsigned pages) noexcept {
  unsigned done = 0;
  if (g_stacks.fill == Fill::move) done = move_pool_pages(w, dst, pages);
  if (done < pages) done += copy_zero_pages(w.uffd, dst + done * kPage, pages - done);
  if (done < pages) {
    // Something in the run already exists: make sure at least the faulting page does.
    char* fault_page = dst + (pages - 1) * kPage;
    unsigned one = copy_zero_pages(w.uffd, fault_page, 1);
    // Out of memory: waking the thread unmapped would only bring the same
    // fault straight back (a spin). Wait for memory as the kernel's own page
    // fault path would, and stop with a message if none comes.
    for (unsigned waited_ms = 0; one == 0 && errno == ENOMEM; ++waited_ms) {
      if (waited_ms == kOutOfMemoryWaitMs) die_out_of_memory(fault_page);
      const timespec ms{0, 1000000};
      nanosleep(&ms, nullptr);
      one = copy_zero_pages(w.uffd, fault_page, 1);
    }
    if (one == 0) {
      struct uffdio_range r {reinterpret_cast<std::uintptr_t>(fault_page), kPage};
      ioctl(w.uffd, UFFDIO_WAKE, &r);
    }
    return done + one;
  }
  return done;
}

// Faults of one slot that follow each other within g_stacks.burst_ns (1 ms by
// default, TENDRIL_STACK_BURST_US; 0 turns bursts off) come from a fiber
// that is recursing right now (a fault costs ~11 us here, kernel paging
// ~2.3 us per page, so a recursion to 64 KiB must take at most ~3 faults to
// stay within 1.5x of kernel paging). The handler remembers the last few
// slots it served; only it reads or writes this, so it needs no atomics.
constexpr unsigned kRecentFaults = 4;

struct RecentFaults {
  const SlotMeta* slot[kRecentFaults] = {};
  std::uint64_t ns[kRecentFaults] = {};
  unsigned next = 0;

  // True if `m` faulted less than g_stacks.burst_ns before `now`; records this fault.
  bool note_and_check_burst(const SlotMeta* m, std::uint64_t now) noexcept {
    bool burst = false;
    for (unsigned i = 0; i < kRecentFaults; ++i)
      if (slot[i] == m) {
        burst = now - ns[i] < g_stacks.burst_ns;
        ns[i] = now;
        return burst;
      }
    slot[next] = m;
    ns[next] = now;
    next = (next + 1) % kRecentFaults;
    return burst;
  }
};

std::uint64_t monotonic_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO: no lock, no system call
  return std::uint64_t(ts.tv_sec) * 1'000'000'000u + std::uint64_t(ts.tv_nsec);
}

// How many pages to map for a fault at `page`:
//  - one page while the stack is shallow (most server fibers stay within a
//    few pages, and a page mapped ahead is memory each of their thousands
//    keeps);
//  - a second fault in a burst (see RecentFaults) means the fiber is going
//    deep right now: map the most one fault may (max_grow_pages, 64 KiB),
//    and keep doing so while the burst lasts (64 KiB then takes 2 faults);
//  - otherwise double the stack (as Go does when it copies one), from 4 pages on.
// Always capped by max_grow_pages and the room left above the slot's limit.
// What was mapped ahead and not used does not stay: when the fiber next
// parks, its worker gives back the never-written pages below its stack
// pointer (trim_unwritten_below_sp in arena.cpp); such pages are not learned
// as depth either (deepest_written_page), and the cache trims at release.
unsigned pages_for_fault(const SlotMeta& m, char* page, char* lo, bool burst) noexcept {
  const unsigned mapped = m.mapped_pages.load(std::memory_order_relaxed);
  unsigned want;
  if (burst && mapped >= kBurstFaultPages) want = g_stacks.max_grow_pages;
  else if (mapped < kSingleFaultPages) want = 1;
  else want = mapped;
  want = std::min(want, g_stacks.max_grow_pages);
  unsigned room = unsigned((page - lo) / kPage) + 1;
  return std::min(want, room);
}

// The slot's side table is updated BEFORE the ioctl that wakes the faulting
// thread: once woken, the fiber may finish and be released (reading
// mapped_pages) on another worker before this handler runs again.
void account_fault_ahead(WorkerStacks& w, SlotMeta& m, char* hi, char* page, unsigned pages) noexcept {
  std::uint32_t depth = std::uint32_t((hi - page) / kPage);
  if (depth > m.deepest_fault.load(std::memory_order_relaxed)) m.deepest_fault.store(depth, std::memory_order_relaxed);
  m.mapped_pages.fetch_add(pages, std::memory_order_release);
  add_single_writer(w.handler_counters.faults, 1);
  add_single_writer(w.handler_counters.live_pages, pages);
}

// Rare: part of the run already existed. Racy against a release of the slot,
// but only when the fault hit an already-present page run.
void account_shortfall(WorkerStacks& w, SlotMeta& m, unsigned missing) noexcept {
  if (!missing) return;
  m.mapped_pages.fetch_sub(missing, std::memory_order_relaxed);
  add_single_writer(w.handler_counters.live_pages, -std::int64_t(missing));
}

// Pages mapped ahead of a fiber may go unused: the worker running it (the
// faulting thread) checks when the fiber next parks. Bounded by the number of
// workers; a thread that is not a worker (tests) is simply not found.
WorkerStacks* worker_of_thread(std::uint32_t ptid) noexcept {
  for (unsigned i = 0; i < g_stacks.workers; ++i)
    if (std::uint32_t(g_stacks.w[i].tid.load(std::memory_order_relaxed)) == ptid) return &g_stacks.w[i];
  return nullptr;
}

// UFFDIO_COPY allocates on the node the issuing thread's memory policy says,
// by default the node of the CPU it runs on: this handler's, which sits with
// the slot's owner. A fiber stolen by a worker of another node would grow its
// stack with foreign pages (then released when it exits, as mismatched). So
// the handler points its own policy at the faulting worker's node first; a
// system call only when that node changes. Not a worker (a plain thread):
// the handler's own node.
struct HandlerPolicy {
  int node = -1;  // node the policy prefers now; -1: the default (local)

  void follow(const WorkerStacks* faulter) noexcept {
    const int want = faulter ? faulter->cache.node() : -1;
    if (want == node) return;
    unsigned long mask[kMaxNodes / (8 * sizeof(unsigned long))] = {};
    long r;
    if (want < 0) {
      r = syscall(SYS_set_mempolicy, MPOL_DEFAULT, nullptr, 0ul);
    } else {
      mask[unsigned(want) / (8 * sizeof(unsigned long))] |= 1ul << (unsigned(want) % (8 * sizeof(unsigned long)));
      r = syscall(SYS_set_mempolicy, MPOL_PREFERRED, mask, (unsigned long)(kMaxNodes + 1));
    }
    if (r == 0) node = want;
  }
};

// A fault on a page of a compacted run (a waker writing a Waiter on the
// parked fiber's stack, a fiber writing into a parked parent's array, a
// debugger): the
// whole run comes back with its content. True if the fault is dealt with.
// The only wait is for the compactor's kMoving step, which is one
// UFFDIO_MOVE ioctl and a store by a worker on its own thread stack: it never
// needs this handler, holds no lock and does not allocate, so it ends.
bool serve_compacted(WorkerStacks& w, const Located& loc, char* page) noexcept {
  SlotCompact* table = loc.arena->compact;
  if (table == nullptr) return false;
  SlotCompact& c = table[loc.slot];
  for (;;) {
    std::uint32_t s = c.state.load(std::memory_order_acquire);
    if (s == kResident) return false;
    char* run_lo = loc.hi - std::size_t(c.pages.load(std::memory_order_relaxed)) * kPage;
    if (page < run_lo) return false;  // growth below the run, or an old message
    switch (s) {
      case kMoving:
        sched_yield();  // the compactor may share our CPU
        continue;
      case kRestoring:
        return true;  // whoever restores wakes the faulting thread with its UFFDIO_COPY
      case kStaged:
      case kCompacted: {
        if (!c.state.compare_exchange_strong(s, kRestoring, std::memory_order_acq_rel)) continue;
        const std::uint32_t pages = c.pages.load(std::memory_order_relaxed);  // ours now
        // Counted first: the woken fiber may run and be released at once.
        loc.arena->meta[loc.slot].mapped_pages.fetch_add(pages, std::memory_order_relaxed);
        add_single_writer(w.handler_counters.live_pages, pages);
        if (s == kStaged) {
          // The compactor reads staging until it sees kResident.
          uffd_install_pages(w.uffd, run_lo, w.staging + std::size_t(c.staged_at) * kPage, pages);
        } else {
          // Counted before the install wakes the toucher, like the pages
          // above: it may read stats() at once.
          add_single_writer(w.handler_counters.restores, 1);
          compact_rebuild(c, w.handler_scratch);
          uffd_install_pages(w.uffd, run_lo, w.handler_scratch, pages);
        }
        c.state.store(kResident, std::memory_order_release);
        return true;
      }
      default:
        return true;
    }
  }
}

void resolve_fault(WorkerStacks& w, RecentFaults& recent, HandlerPolicy& policy, std::uintptr_t addr,
                   std::uint32_t ptid) noexcept {
  Located loc = locate_in_worker(w, addr);
  char* page = reinterpret_cast<char*>(addr & ~(kPage - 1));
  if (!loc.found()) {
    // Cannot happen (this uffd covers only w's arenas and its staging area,
    // which nobody reads while empty); never leave the thread hanging.
    copy_zero_pages(w.uffd, page, 1);
    return;
  }
  if (page < loc.lo) report_overflow_and_abort(loc, addr);
  if (g_stacks.compact && serve_compacted(w, loc, page)) return;
  SlotMeta& m = loc.arena->meta[loc.slot];
  const bool burst = recent.note_and_check_burst(&m, monotonic_ns());
  unsigned n = pages_for_fault(m, page, loc.lo, burst);
  account_fault_ahead(w, m, loc.hi, page, n);
  WorkerStacks* faulter = (n > 1 || g_stacks.place_for_faulter) ? worker_of_thread(ptid) : nullptr;
  // Before the wake-up: the fiber may park right after. The faulting worker
  // checks, when the fiber next parks, what it did not use.
  if (n > 1 && faulter) faulter->trim_on_park.store(true, std::memory_order_relaxed);
  if (g_stacks.place_for_faulter) policy.follow(faulter);
  unsigned mapped = map_pages(w, page - (n - 1) * kPage, n);
  account_shortfall(w, m, n - std::min(n, mapped));
}

void* handler_main(void* arg) noexcept {
  WorkerStacks& w = *static_cast<WorkerStacks*>(arg);
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // signals belong to the workers
  struct pollfd fds[2] = {{w.uffd, POLLIN, 0}, {w.stop_fd, POLLIN, 0}};
  struct uffd_msg msgs[16];
  RecentFaults recent;
  HandlerPolicy policy;
  for (;;) {
    if (poll(fds, 2, -1) < 0) continue;  // EINTR
    if (fds[1].revents) break;
    ssize_t n = read(w.uffd, msgs, sizeof msgs);
    if (n <= 0) continue;  // EAGAIN: another reader or a spurious wake-up
    for (ssize_t i = 0; i < n / ssize_t(sizeof msgs[0]); ++i)
      if (msgs[i].event == UFFD_EVENT_PAGEFAULT) resolve_fault(w, recent, policy, msgs[i].arg.pagefault.address, msgs[i].arg.pagefault.feat.ptid);
  }
  return nullptr;
}

}  // namespace

bool uffd_open_and_register_api(WorkerStacks& w) noexcept {
  int fd = open_uffd();
  if (fd < 0) return false;
  struct uffdio_api api {};
  api.api = UFFD_API;
  // THREAD_ID: the handler tells the faulting worker to trim what it mapped
  // ahead (see resolve_fault), and allocates on the faulting worker's node
  // (HandlerPolicy).
  api.features = UFFD_FEATURE_THREAD_ID | (g_stacks.fill == Fill::move || g_stacks.compact ? UFFD_FEATURE_MOVE : 0);
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    close(fd);
    if (g_stacks.compact) {
      // Compaction moves pages out with UFFDIO_MOVE (Linux 6.8+).
      g_stacks.compact = false;
      log_line("idle-stack compaction needs UFFDIO_MOVE (Linux 6.8+): compaction is off");
      return uffd_open_and_register_api(w);
    }
    if (g_stacks.fill != Fill::move) return false;
    // UFFDIO_MOVE is Linux 6.8+. A failed UFFDIO_API leaves the descriptor
    // unusable: open another, for UFFDIO_COPY.
    g_stacks.fill = Fill::copy;
    log_line("TENDRIL_STACK_FILL=move needs UFFDIO_MOVE (Linux 6.8+); stack faults use UFFDIO_COPY");
    return uffd_open_and_register_api(w);
  }
  w.uffd = fd;
  return true;
}

bool uffd_register_range(WorkerStacks& w, char* base, std::size_t bytes) noexcept {
  struct uffdio_register reg {};
  reg.range.start = reinterpret_cast<std::uintptr_t>(base);
  reg.range.len = bytes;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(w.uffd, UFFDIO_REGISTER, &reg) != 0) return false;
  return (reg.ioctls & (1ull << _UFFDIO_COPY)) != 0;
}

unsigned uffd_move_to_staging(WorkerStacks& w, unsigned at, char* src, unsigned pages) noexcept {
  char* const dst = w.staging + std::size_t(at) * kPage;
  struct uffdio_move m {};
  m.dst = reinterpret_cast<std::uintptr_t>(dst);
  m.src = reinterpret_cast<std::uintptr_t>(src);
  m.len = std::size_t(pages) * kPage;
  unsigned moved = 0;
  for (int tries = 0; moved < pages && tries < 8; ++tries) {
    m.dst = reinterpret_cast<std::uintptr_t>(dst + std::size_t(moved) * kPage);
    m.src = reinterpret_cast<std::uintptr_t>(src + std::size_t(moved) * kPage);
    m.len = std::size_t(pages - moved) * kPage;
    m.move = 0;
    const int r = ioctl(w.uffd, UFFDIO_MOVE, &m);
    if (m.move > 0) moved += unsigned(m.move / kPage);
    if (r == 0 || errno != EAGAIN) break;  // EBUSY (pinned, shared after fork), ENOENT (a hole): stop
  }
  return moved;
}

void uffd_move_from_staging(WorkerStacks& w, unsigned at, char* dst, unsigned pages) noexcept {
  char* const src = w.staging + std::size_t(at) * kPage;
  unsigned moved = 0;
  while (moved < pages) {
    struct uffdio_move m {};
    m.dst = reinterpret_cast<std::uintptr_t>(dst + std::size_t(moved) * kPage);
    m.src = reinterpret_cast<std::uintptr_t>(src + std::size_t(moved) * kPage);
    m.len = std::size_t(pages - moved) * kPage;
    const int r = ioctl(w.uffd, UFFDIO_MOVE, &m);
    if (m.move > 0) moved += unsigned(m.move / kPage);
    if (r != 0 && errno != EAGAIN) {
      // The destination was free a moment ago and only we fill it: copy what
      // is left instead of losing it.
      uffd_install_pages(w.uffd, dst + std::size_t(moved) * kPage, src + std::size_t(moved) * kPage,
                         pages - moved);
      return;
    }
  }
}

void uffd_install_pages(int uffd, char* dst, const char* src, unsigned pages) noexcept {
  unsigned done = 0;
  unsigned waited_ms = 0;
  while (done < pages) {
    struct uffdio_copy c {};
    c.dst = reinterpret_cast<std::uintptr_t>(dst + std::size_t(done) * kPage);
    c.src = reinterpret_cast<std::uintptr_t>(src + std::size_t(done) * kPage);
    c.len = std::size_t(pages - done) * kPage;
    const int r = ioctl(uffd, UFFDIO_COPY, &c);
    if (c.copy > 0) done += unsigned(c.copy / kPage);
    if (r == 0 || errno == EAGAIN) continue;
    if (errno == EEXIST) {  // cannot happen while we hold kRestoring; keep what is there
      ++done;
      continue;
    }
    if (errno == ENOMEM && waited_ms++ < kOutOfMemoryWaitMs) {
      const timespec ms{0, 1000000};
      nanosleep(&ms, nullptr);
      continue;
    }
    char msg[160];
    const int n = std::snprintf(msg, sizeof msg, "tendril: cannot put a compacted fiber stack back at %p (UFFDIO_COPY: %s)\n",
                                static_cast<void*>(dst + std::size_t(done) * kPage), std::strerror(errno));
    (void)!::write(STDERR_FILENO, msg, n > 0 ? std::size_t(n) : 0);
    std::abort();
  }
}

void compact_rebuild(const SlotCompact& c, char* scratch) noexcept {
  std::memset(scratch, 0, c.skip);
  std::memcpy(scratch + c.skip, c.buf, std::size_t(c.pages.load(std::memory_order_relaxed)) * kPage - c.skip);
}

bool uffd_map_top_page(WorkerStacks& w, char* page) noexcept { return copy_zero_pages(w.uffd, page, 1) == 1; }

// Learned depth: UFFDIO_COPY from the calling thread, so the pages
// come from its node; pages that already exist are stepped over.
unsigned uffd_populate(WorkerStacks& w, char* lo, unsigned pages) noexcept {
  unsigned mapped = 0;
  for (unsigned at = 0; at < pages;) {
    unsigned n = copy_zero_pages(w.uffd, lo + std::size_t(at) * kPage, pages - at);
    mapped += n;
    at += n;
    if (at < pages) ++at;  // EEXIST (or an error) at page `at`: skip it
  }
  return mapped;
}

bool handler_start(WorkerStacks& w, unsigned index) noexcept {
  w.stop_fd = eventfd(0, EFD_CLOEXEC);
  if (w.stop_fd < 0) return false;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  bool ok = pthread_create(&w.handler, &attr, handler_main, &w) == 0;
  pthread_attr_destroy(&attr);
  if (!ok) return false;
  char name[16];
  std::snprintf(name, sizeof name, "tendril-uffd%u", index);
  pthread_setname_np(w.handler, name);
  w.handler_running = true;
  return true;
}

void handler_stop(WorkerStacks& w) noexcept {
  if (w.handler_running) {
    std::uint64_t one = 1;
    (void)!write(w.stop_fd, &one, sizeof one);
    pthread_join(w.handler, nullptr);
    w.handler_running = false;
  }
  if (w.stop_fd >= 0) close(w.stop_fd);
  if (w.uffd >= 0) close(w.uffd);
  w.stop_fd = w.uffd = -1;
}

// The faulting thread wakes the handler and then sleeps; if the handler is
// allowed on the same CPU the hand-off costs a local wake-up instead of an IPI.
void handler_place_like_current_thread(WorkerStacks& w) noexcept {
  if (!w.handler_running) return;
  cpu_set_t set;
  if (pthread_getaffinity_np(pthread_self(), sizeof set, &set) != 0) return;
  pthread_setaffinity_np(w.handler, sizeof set, &set);
}

bool pool_create(PagePool& p) noexcept {
  void* mem = mmap(nullptr, kPoolPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) return false;
  madvise(mem, kPoolPages * kPage, MADV_NOHUGEPAGE);  // UFFDIO_MOVE moves small pages only
  p.base = static_cast<char*>(mem);
  p.pages = kPoolPages;
  p.low_water = kPoolLowWater;
  p.produced.store(0);
  p.consumed.store(0);
  return true;
}

void pool_destroy(PagePool& p) noexcept {
  if (p.base) munmap(p.base, std::size_t(p.pages) * kPage);
  p.base = nullptr;
}

// WorkerStacks side: populate every empty ring page in at most two madvise calls.
// The pool is outside the registered arena, so MADV_POPULATE_WRITE is an
// ordinary kernel fill and never goes through the uffd.
void pool_refill(WorkerStacks& w) noexcept {
  PagePool& p = w.pool;
  std::uint64_t produced = p.produced.load(std::memory_order_relaxed);
  std::uint64_t target = p.consumed.load(std::memory_order_acquire) + p.pages;
  while (produced < target) {
    unsigned at = unsigned(produced % p.pages);
    unsigned n = unsigned(std::min<std::uint64_t>(target - produced, p.pages - at));
    if (madvise(p.base + std::size_t(at) * kPage, std::size_t(n) * kPage, MADV_POPULATE_WRITE) != 0) break;
    produced += n;
    p.produced.store(produced, std::memory_order_release);
  }
  add_single_writer(w.counters.pool_refills, 1);
}

}  // namespace tendril::detail::stack_impl
