// Growable fiber stacks: the layout of stack memory and the seam in stack.hpp.
//
// fault_handler.cpp owns userfaultfd and the page pools; guard.cpp owns guard
// zones, the SIGSEGV handler of kernel mode and the overflow diagnostic;
// cache.cpp owns the free-stack cache (its design is at the top of that file).
// Measurements behind the constants below, with the commands that produce
// them: bench/results/stack-design.md.
//
// # Layout
//
// Stacks are slots carved from large reservations, never one mmap per stack.
// A reservation ("sub-arena") holds the slots of one size class owned by one
// worker: size classes are powers of two from 16 KiB to 1 GiB, and a slot of
// class C is C bytes of stack plus a guard zone of max(16 KiB, C/16) below it:
//
//     sub-arena (one VMA, MAP_NORESERVE, MADV_NOHUGEPAGE, uffd-registered)
//     +-------+---------------------+-------+---------------------+----
//     | guard |   stack slot 0      | guard |   stack slot 1      | ...
//     +-------+---------------------+-------+---------------------+----
//     base    lo0               hi0=base+stride  lo1            hi1
//
// A request for `limit` bytes is rounded up to pages and served from the
// smallest class that holds it; lo = hi - limit, and EVERYTHING in the slot
// below lo is guard (so a 140 KiB stack in the 256 KiB class has 116+16 KiB of
// guard). Only hi - kPage is mapped when stack_allocate returns.
//
//  - VMAs do not grow with the number of stacks: one reservation per (worker,
//    class) used, and uffd copies, MADV_DONTNEED and MADV_GUARD_INSTALL never
//    split it, so 1M live stacks add 0 VMAs (vm.max_map_count = 65530).
//  - Size classes live in separate reservations so small stacks are packed
//    densely: a page-table page (4 KiB, covers 2 MiB) is shared by
//    2 MiB / stride slots, about 160 B of page table per idle 64 KiB slot and
//    545 B per 256 KiB slot; a 2 MiB class costs a whole page-table page per
//    slot, and mixing it into the small classes' range would make them pay it.
//  - The spacing is also what touching many parked fibers costs: a mass
//    wake of a million reaches a million top pages. On this paravirtualized
//    guest, 272 KiB apart (the default 256 KiB limit) makes a wake 6x Go's,
//    48 KiB apart (32 KiB limit) 1.4-1.5x (bench/results/stack-density.md).
//    The cause is the hypervisor, which shadows the guest's page tables and
//    keeps only so many of them: bench/sparse_touch re-touches a million
//    resident pages for 50-80 ns each while they are at most 128 KiB apart
//    (62,500 page-table pages), and for 0.3-4 us each at 192-272 KiB
//    (94,000-133,000), where every touch may rebuild a shadow table; 100k
//    pages 272 KiB apart (13,000) cost 70 ns. No ordering or prefetching of
//    the wake gets under that: at a million fibers in the 256 KiB class the
//    page walks alone cost more than Go's whole wake (about 600 ns here).
//    On bare metal or with nested paging this is a TLB miss and a
//    two-dimensional walk, not a rebuild (bench/results/wake-prefetch.md).
//    The default stays 256 KiB: a stack cannot outgrow its class once it
//    runs, so a small default would abort deep but correct code. A server
//    of a million shallow fibers sets the limit; nothing here guesses it.
//  - Per-worker reservations route a slot's faults to its owner's uffd, whose
//    handler thread sits on the owner's CPU (see below).
//  - The reservation size is min(1 TiB, 16 TiB / workers) per (worker, class),
//    reserved lazily on the first allocation of that class by that worker;
//    at most 2^24 slots per reservation (StackSlot::index = worker<<24 | slot).
//
// Per-slot metadata (owner fiber id, limit, pages mapped, deepest fault,
// free-list link) is a 32-byte SlotMeta side table in a separate
// MAP_NORESERVE mapping that is NOT registered with the uffd, so the fault
// handler and the SIGSEGV handler can read it without faulting into the
// arena. Fiber names sit in a third table (SlotName, 32 B) written only for
// named fibers: every byte of per-slot metadata a fiber touches is a byte of
// each idle fiber's footprint (a parked fiber is about one page of RSS plus
// its share of a page-table page, plus its control block, which lives off
// the stack in runtime/sched/fiber_ctl_cache.hpp). A fourth table (8 B)
// holds each slot's owner control block pointer, for the debug tools.
//
// # Growth in uffd mode (default)
//
// Each worker has its own userfaultfd (opened through /dev/userfaultfd with
// USERFAULTFD_IOC_NEW, O_NONBLOCK; the syscall as fallback) registered in
// MISSING mode on that worker's sub-arenas, WITHOUT UFFD_FEATURE_SIGBUS and
// WITHOUT UFFD_USER_MODE_ONLY. That is the blocking mode: a fault the kernel
// takes on behalf of the fiber (read(2), recv, stat, a signal frame) waits for
// the handler and succeeds, where SIGBUS/user-mode-only modes fail with EFAULT
// or kill the process.
//
// One handler thread per worker polls that worker's uffd. stack_thread_init()
// copies the worker thread's CPU affinity to it: the faulting thread wakes the
// handler and sleeps, and a same-CPU hand-off is a local wake-up, while a
// cross-CPU one is an IPI to a (often halted) vCPU, 2-13x slower. A fiber that
// migrated to another worker still faults to its slot's owner handler
// (cross-CPU, slower, correct).
//
// Policy. A uffd fault costs about five kernel-paged pages (two context
// switches and an ioctl against one page-fault entry), so growth must take few
// faults. A fault at page P of a slot whose resident size is M pages maps
//  - one page while M < 4 (kSingleFaultPages): most server fibers stay within
//    16 KiB, and doubling from one page had left the http sample's
//    connection fibers at 4 pages instead of 3 (+33% memory per idle
//    connection);
//  - 16 pages (64 KiB, max_grow_pages) when M >= 2 and the same slot faulted
//    less than 1 ms ago (a "burst": the fiber is going deep right now; the
//    handler remembers its last 4 faulting slots, privately). 1 ms is about
//    90 faults' worth, far more than one recursion needs between two faults;
//  - otherwise n = min(M, 16) pages: past 16 KiB the stack doubles on each
//    fault, as Go doubles by copying;
// always ending at P and never below lo. With these a recursion to 64 KiB
// takes 2 faults (1.2-1.3x kernel paging) and one to 240 KiB 5 (1.1-1.2x);
// doubling alone took 5-6 to 64 KiB (2.9x). 16 pages is the size of the zero
// source, and the most a fiber that only touched a few pages of a burst
// holds until it parks: what a burst maps ahead and the fiber does not use
// does not stay. The handler notes it on the faulting worker (it knows the
// thread from UFFD_FEATURE_THREAD_ID), and when that fiber next parks, its
// worker gives back the all-zero pages below its stack pointer
// (trim_unwritten_below_sp: one mincore, a zero scan and one MADV_DONTNEED,
// once per burst). Pages are installed with UFFDIO_COPY from a static 64 KiB
// zero buffer (the kernel allocates).
//
// The handler takes no locks, calls no malloc and never touches registered
// memory: it reads the side table, issues ioctls, and updates atomics. A fault
// in the guard zone (below lo) is never resolved: the handler writes
//   tendril: fiber stack overflow: fiber <id> "<name>" exceeded its stack limit
//   of <limit> bytes: fault at 0x..., N bytes below ... (stack lo-hi)
// to stderr with write(2) and abort()s. The side table is updated before the
// ioctl that wakes the faulting thread (see account_fault_ahead).
//
// # Kernel mode (no userfaultfd, or TENDRIL_STACK_MODE=kernel)
//
// Same slots and side table on ordinary demand paging. The guard below lo is
// MADV_GUARD_INSTALL (Linux 6.13+, advice 102: guard markers, no VMA split);
// without it, mprotect(PROT_NONE), which splits VMAs (2 per stack), so
// vm.max_map_count caps live stacks near 32k: a warning says so at init. A
// SIGSEGV handler (SA_ONSTACK; each worker needs stack_thread_init() for its
// sigaltstack) prints the same overflow message for faults in a guard zone and
// otherwise chains to the previous disposition. Growth is invisible to us
// here, so stack_faults counts grown pages (seen by mincore at release and in
// stack_counters(), which scans live slots: O(live slots) syscalls).
//
// # Allocation, release, reuse
//
// Spawn order: the worker's cache magazine, its node's depot (cache.cpp), the
// arena free list, a fresh slot. A released slot that the cache does not take
// goes back to the free list of the worker that OWNS its sub-arena (to keep
// its faults on that worker's handler): a plain push on the owner, a
// push-only Treiber stack from other workers, adopted whole by the owner with
// one exchange (ABA-free). No locks on allocate/release/switch. That path is
// drop_released_slot (everything below the top page goes with one
// MADV_DONTNEED) and a push; the top page stays so reuse costs no fault.
//
// # Deferred stacks: a fiber gets its stack when it first runs
//
// A fiber spawned on a worker whose callable fits in its control block
// (FiberCtl::start_closure, 96 B, which the fiber's own Waiter uses once it
// runs) and moves without throwing has no stack until a worker picks it to
// run: the callable waits in the record, and Worker::pick_next binds a stack
// from the cache of the worker that runs it. A spawner that runs ahead of its
// children holds no page per queued child: in skynet five in six of the
// fibers alive at the peak had not begun (bench/results/stack-density.md),
// and each held a page from its spawn; now the children that run take the
// stacks those that ended gave back, from the top of the cache.
//  - Spawn still fails when the arena is full, never the first run: spawn
//    promises the fiber a slot of its class in the spawner's arena
//    (stack_defer), and a carve keeps as many slots uncarved as are promised
//    (SubArena::deferred; preparers on other workers keep a margin beyond,
//    since they read the count racily). The promise counts are written with
//    plain stores by the owner, and with a locked add only when another
//    worker runs the fiber or it is dropped unstarted. A thief whose own
//    arena is full sends the fiber to its home's inbox, where the slot is.
//  - A switch may take a cached stack in passing, lock-free, but not make a
//    fresh one: the fiber switching away may still hold the lock its park
//    releases once the switch is done, and a fresh slot is system calls
//    (UFFDIO_COPY, on this guest microseconds). Such a fiber waits in
//    Worker::unbound_next_ for the scheduler context, which makes it one and
//    runs it next. Binding fresh slots inside the switch made a 100k-waiter
//    WaitGroup's lock holders starve the other worker for 100 ms.
//  - Out of memory for the top page at the first run is waited out as a
//    fault waits it out (10 s), then the process stops with a message: the
//    spawn has returned, there is nobody left to throw to.
//  - Measured (bench/results/stack-defer.md, A/B and Go in one run):
//    skynet at the default limit 716-794 ms and 161-183 MiB peak, against
//    1,550-1,673 ms and 418-456 MiB with stacks at spawn and Go's
//    1,068-1,171 ms and 221-227 MiB. Spawn+join from the cache: within
//    noise of stacks at spawn, perhaps a few percent dearer (the callable
//    moves twice).
//  - Spawns from plain threads, and callables that do not fit, get their
//    stack at spawn as before. Stats::fibers_unstarted counts the rest; the
//    fiber dump lists them (runnable, no frames) from the record caches; the
//    gdb script, which reads only the stack arena, does not.
//
// # Idle-stack compaction (uffd mode, Options::compact_after; 1 s by default)
//
// A fiber parked longer than compact_after has the used part of its stack
// copied into a buffer sized to it (from its saved stack pointer minus the
// 128-byte red zone up to the top of the slot) and all of its pages given
// back, the top page too; the scheduler decides who and when (worker.cpp), this side
// does it (stack_compact, stack_restore). Mechanics:
//  - Out: UFFDIO_MOVE of the run [page of sp-128, hi) into the
//    staging area of the slot's owner (64 pages, registered with the
//    owner's uffd: UFFDIO_MOVE wants a destination registered with the uffd
//    it is issued on; any worker may compact any slot and takes the owner's
//    staging with a try-lock, skipping the fiber if it is busy), memcpy of
//    the live bytes from staging into a malloc'd buffer, MADV_DONTNEED of
//    staging. Resident pages below the run (dead: the fiber went deeper
//    before it parked) stay resident.
//  - Back, eagerly: the worker that switches into the fiber rebuilds the run
//    in its scratch area (zeros below sp-128, then the buffer) and installs
//    it with one UFFDIO_COPY before the fiber runs, then frees the buffer.
//  - Back, on a touch: a fault on a page of the run (a waker writing a
//    Waiter that lies on the stack, a fiber writing into a parked
//    parent's array, the fiber dump) reaches the slot owner's handler, which
//    rebuilds the whole run from the buffer in its own scratch area and
//    installs it. It reads only the side table (SlotCompact, outside the
//    arena) and the buffer; it takes no lock and allocates nothing; it never
//    frees the buffer (a worker does, at switch-in).
// Who installs the run is settled by one CAS on SlotCompact::state
// (kCompacted -> kRestoring); the loser does not copy (the winner's
// UFFDIO_COPY wakes any thread that faulted meanwhile), and a worker that
// loses waits for kResident before it frees the buffer.
//
// No write is lost. Who may write a parked fiber's stack: wakers (a Waiter
// in its park frames, where the wait keeps one there: select, and the waits
// listed in park.hpp's fiber_waiter; its FiberCtl and own Waiter are not on
// the stack), fibers or threads it lent a pointer
// to its locals (children filling a parent's array, blocking() calls), and
// the kernel (an io_uring read into a buffer on the stack). UFFDIO_MOVE
// takes each page out of the arena atomically (under its page table lock,
// with a TLB flush): a write lands before the move, and moves with the page
// into staging, or faults after it and waits for the handler. Such a fault
// may come while the move is under way (kMoving: the handler yields until
// it ends, a bounded wait: the compactor runs on its own thread stack,
// holds no lock and needs no handler for it, and no kernel work for a fiber
// runs on its return from the move, which is why compacting fibers parked
// in io_uring I/O needs DEFER_TASKRUN rings) or while the compactor copies
// from staging (kStaged: the handler copies the run back from staging, the
// compactor then drops its buffer and gives up). Copying first and
// MADV_DONTNEED after would lose a write made in between; write-protecting
// first (UFFDIO_WRITEPROTECT) would need the handler to wait for the
// compactor's copy. A page that cannot move (pinned by io_uring or O_DIRECT,
// shared with a fork child: EBUSY) stops the move; what moved is moved back
// before anyone could see it, and the fiber stays as it was.
//
// The top page goes too: the FiberCtl lives in a dense per-worker cache of
// records (fiber_ctl_cache.hpp) and the common waits park on the Waiter
// embedded in it, so what a waker, the scheduler or a joiner touches for a
// parked fiber is off the stack, and a fiber whose stack fits in one page
// (most idle ones: a few hundred bytes to 2 KiB live) is left holding only
// its buffer. Memory per parked fiber at 1M (bench/stack_compact, VmRSS +
// VmPTE, one run; bench/results/compact-memory.md): 1,782 B compacted (a
// 672 B buffer, the 448 B FiberCtl record, and the ~545 B of page tables of
// its 272 KiB slot, which giving the pages back does not free) against
// 5,164 B resident and Go's 2,722 B per parked goroutine; an idle http
// keep-alive connection 2,888 B against 5,880 B (it waits in
// TcpStream::wait_readable, its read buffer out of the live frames). The
// cost is the worker's: 27-36 us per compaction here (mostly the TLB
// shootdown by IPI that
// UFFDIO_MOVE makes for each page it takes out of a multi-threaded process;
// the staging area's give-back is shared by a batch) and 12-20 us per
// resume in a mass wake (a UFFDIO_COPY) against 1-7 us resident, once per
// idle period: a second of idleness pays for it. So the
// scheduler (worker.cpp, compact_policy.hpp) compacts in a worker's idle
// time and, while it has other work, gives compaction at most a tenth of
// it: a burst of a million fibers that all park at once is compacted over
// the idle time that follows. A fiber stops being a candidate as soon as a
// waker makes it runnable (ParkRecord::readied), not when it next runs:
// after a mass wake the fibers wait seconds in run queues, and compacting
// them then only costs a compaction and a restore each. Waking a million
// fibers parked past compact_after took 4.8-9.2 s when the compactor still
// took queued fibers and 2.9-3.9 s after, against 2.7-3.1 s with compaction
// off (one run, bench/results/wake-compaction.md). A waker that claims a
// batch of waiters before it wakes them makes each runnable as it claims it
// (CondVar::notify_all), and WaitGroup releases its waiters 64 at a time,
// so the compactor no longer finds fibers that a million-waiter walk has
// not reached yet: 12-36 compactions during such a wake instead of
// 3,000-17,000 (bench/results/wake-prefetch.md). Spawning and parking a
// million fibers with compaction at 1 s took 14.4 s and 13.9 s against 12.7 s and 12.3 s
// without, and 81 s and 78 s when compaction took what it needed
// (skynet --only park_spawn_1m, bench/results/compact-memory.md). Fibers parked
// in descriptor I/O are compacted where the kernel writes their buffers only
// from a ring's wait for completions or an io-wq thread (worker.cpp): the
// kernel's copy into a missing page is a fault the handler serves like a
// waker's. Not compacted: runs longer than 64 pages, runs with a
// never-touched page in them, pages pinned for I/O (EBUSY). gdb cannot
// read a compacted frame (a remote access to a missing page of a uffd range
// fails).
//
// Resume latency. A wake that writes into the parked fiber's stack goes
// through the fault handler (a fault round trip instead of the eager copy):
// a select's Waiter, a channel value handed into the receiver's storage,
// the kernel's copy into a read buffer with io_uring. A wake through the
// FiberCtl's own Waiter alone (WaitGroup, Mutex, Semaphore, CondVar, sleep,
// join, Scope join, epoll readiness) touches no stack page; the worker
// puts the stack back with one copy at switch-in. bench/compact_resume, one
// worker, 6 KiB of stack per fiber, one at a time (p50) against a resident
// fiber in the same run: channel send 21-31 us against 0.4-0.95 us at 1k,
// 10k and 100k fibers; socket data 32-44 us against 14-17 us (2.4-2.7x,
// io_uring) and, with the epoll wait on the FiberCtl's Waiter, 22 us against
// 8 us (2.7x; 36-38 us, 5x, while that Waiter was on the stack); a whole
// batch 28-54x (channel) and 4-6x (socket) the resident one per fiber. The
// restore is a fault round trip plus a UFFDIO_COPY (bench/results/
// compact-resume.md): cheap beside a connection's idle time, not beside a
// channel hand-off, so compact_after belongs well above the park times of
// fibers that are woken often.
//
// Buffers: glibc malloc, by the worker that compacts; freed only by
// workers (compact_run when the move fails or the handler took the pages
// back, stack_restore after the install, compact_free_buffers at shutdown);
// the fault handler only reads them. jemalloc was measured for them and
// dropped, with the build's dependency on it (bench/compact_alloc, A/B in
// one run, and bench/compact_resume with jemalloc preloaded; figures in
// bench/results/compact-alloc.md). Its size classes (four per doubling)
// cost 400-500 B more per buffer than glibc's 16-byte headers on live
// sizes spread over 256-8192 B (3,120 B: +470 B): 8,378 B per compacted
// 6 KiB fiber against 8,110 with glibc, 17,172 against 16,280 for 10 KiB
// (the whole gain of compacting it). Sized frees from its thread cache are
// faster (0.4-1.7 us against 1.4-4.4 us per free + malloc + copy), a
// dedicated arena without the cache (what a per-node arena would be) less
// so (0.7-5 us), all noise beside the tens of microseconds of a UFFDIO_MOVE
// and of a restore. Once a random half of the buffers is freed (half the
// fibers woke), glibc after malloc_trim holds 1,900 B per live buffer
// beyond its size, jemalloc after a purge 3,150-4,100 (its slabs stay
// partly used). And Debian's jemalloc has no symbol prefix: linking it
// would replace malloc in every program that links tendril.
//
// # Invariants
//  - A slot from the arena has only its top page resident when handed out
//    (plus its site's learned depth, mapped up front); a cached one has what
//    it was cached with.
//  - No page below lo is ever mapped; a fault below lo aborts the process.
//  - A slot's state goes kNever or kFree -> kLive when it is handed out and
//    kLive -> kFree when it is released: a live slot is never handed out and
//    a free one never released.
//  - A compacted run is not resident and not counted in mapped_pages; it is
//    credited back by whoever installs it, before the faulting thread wakes.
//  - SlotMeta::mapped_pages counts the resident pages of a slot in uffd mode;
//    StackCounters::stack_pages_mapped is the sum over live slots (kernel
//    mode: mincore over live slots) and StackCounters::cached_pages every
//    resident page of free slots (cached stacks + arena-free top pages), so at
//    a quiescent point (no fault in flight, queued trims issued by
//    stack_maintain) stack_pages_mapped == mincore over the live slots and
//    stack_pages_mapped + cached_pages == mincore over every slot, whatever
//    mix of cache hits, premapped learned depth and growth after reuse led
//    there (stack_cache_test: CountersMatchMincore...).
//  - The fault handler and the SIGSEGV handler read only the side tables and
//    the sub-arena descriptors (published with a release store of base).
//
// # Alternatives rejected
//  - One mmap per stack (what pthreads do): a VMA per stack, and
//    vm.max_map_count (65530) caps live fibers near 32k with guard pages.
//  - One page per fault: 60 faults to 240 KiB, 4.5x slower than doubling.
//  - Doubling without bursts: 2.9x kernel paging for a 64 KiB recursion.
//  - Per-worker page pools (TENDRIL_STACK_FILL=move): the kernel's
//    dynamic-stack RFC serves faults from per-CPU page arrays refilled in
//    schedule(). The user-space analogue is implemented: each worker has a
//    2 MiB ring of pages outside the registered range, populated with
//    MADV_POPULATE_WRITE in stack_on_switch() when below 1/4 full, and the
//    handler UFFDIO_MOVEs pages from it (UFFDIO_COPY when it is empty). It
//    loses to UFFDIO_COPY (1.8x slower at 240 KiB): UFFDIO_MOVE flushes the
//    source TLB range on every CPU running the process (IPIs), and the refill
//    is paid on the switch path anyway. It stays, off by default, until it can
//    be measured on a machine with two NUMA nodes; StackCounters::pool_* stay
//    0 without it.
//  - Copying stacks to grow them (Go): needs precise pointer maps that C++
//    frames do not have.
//
// # Known limits
//  - A frame larger than the guard zone (16 KiB, or C/16) can jump over it into
//    the slot below, like on any guard-page stack; build with
//    -fstack-clash-protection to make such frames probe each page.
//  - stack_on_switch does not pre-grow a stack at switch-in: slots never
//    shrink while live, so a resumed fiber's pages are already there.
//  - stack_high_water in uffd mode = deepest fault, or deeper if a page mapped
//    ahead by doubling holds non-zero data (zero-only writes are not seen).
#include "stack_internal.hpp"
#include "runtime/inject/fault_inject.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <numaif.h>
#include <sched.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace tendril::detail::stack_impl {

StackRuntime g_stacks;

namespace {

constexpr std::size_t kMinGuard = 16 * 1024;
constexpr std::size_t kArenaBudget = std::size_t(16) << 40;  // 16 TiB of address space per class, split over workers
#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer maps application memory into a few fixed, smaller windows; a
// terabyte reservation does not fit there.
constexpr std::size_t kMaxArenaBytes = std::size_t(8) << 30;  // 8 GiB per (worker, class)
#else
constexpr std::size_t kMaxArenaBytes = std::size_t(1) << 40; // 1 TiB per (worker, class)
#endif
constexpr std::uint32_t kSwitchesPerTick = 1024;  // stack_on_switch runs cache_tick this often

bool g_initialized = false;

std::size_t round_up_pages(std::size_t bytes) { return (bytes + kPage - 1) & ~(kPage - 1); }

// ---- errors --------------------------------------------------------------------

// Out of memory while getting a stack, said without allocating: a
// std::bad_alloc with the operation and the errno text in a fixed buffer.
class StackOutOfMemory : public std::bad_alloc {
 public:
  StackOutOfMemory(const char* what, int err) noexcept {
    const char* text = strerrordesc_np(err);
    std::snprintf(msg_, sizeof msg_, "%s: %s (and no memory for a std::system_error)", what,
                  text != nullptr ? text : "unknown error");
  }
  const char* what() const noexcept override { return msg_; }

 private:
  char msg_[160];
};

// A std::system_error naming `what`, with errno err. With no address space
// or heap left (RLIMIT_AS), its message may find no memory: then a
// StackOutOfMemory that still names `what`.
[[noreturn]] void throw_stack_error(int err, const char* what) {
  try {
    throw std::system_error(err, std::generic_category(), what);
  } catch (const std::bad_alloc&) {
    // the message's allocation failed; thrown below, outside the handler
  }
  throw StackOutOfMemory(what, err);
}

// ---- size classes ------------------------------------------------------------

unsigned class_for(std::size_t limit_bytes) {
  // The smallest power of two >= limit_bytes, counted from 16 KiB.
  const unsigned shift = limit_bytes <= 1 ? 0 : unsigned(std::bit_width(limit_bytes - 1));
  const unsigned cls = shift > kMinClassShift ? shift - kMinClassShift : 0;
  if (cls >= kNumClasses) throw std::bad_alloc();
  return cls;
}

std::size_t class_bytes(unsigned cls) { return std::size_t(1) << (kMinClassShift + cls); }

// The guard zone below the biggest stack of a class: 1/16 of it, at least 16 KiB
// (frames larger than the guard can jump over it; see the design comment).
std::size_t class_guard(unsigned cls) { return std::max(kMinGuard, class_bytes(cls) / 16); }

// ---- reservations ------------------------------------------------------------

void* map_noreserve(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void unmap_side_tables(SubArena& a) {
  if (a.meta) munmap(a.meta, std::size_t(a.capacity) * sizeof(SlotMeta));
  if (a.cmeta) munmap(a.cmeta, std::size_t(a.capacity) * sizeof(SlotCacheMeta));
  if (a.names) munmap(a.names, std::size_t(a.capacity) * sizeof(SlotName));
  if (a.compact) munmap(a.compact, std::size_t(a.capacity) * sizeof(SlotCompact));
  if (a.ctl) munmap(a.ctl, std::size_t(a.capacity) * sizeof(*a.ctl));
  a.compact = nullptr;
  a.ctl = nullptr;
  a.meta = nullptr;
  a.cmeta = nullptr;
  a.names = nullptr;
}

void reserve_arena(WorkerStacks& w, SubArena& a, unsigned cls) {
  a.class_bytes = class_bytes(cls);
  a.stride = a.class_bytes + class_guard(cls);
  a.capacity = std::uint32_t(std::min<std::size_t>(g_stacks.arena_bytes / a.stride, kMaxSlotsPerArena));
  a.bytes = std::size_t(a.capacity) * a.stride;
  char* base = nullptr;
  if (const int e = injected_fault(FaultPoint::arena_reserve)) errno = e;
  else base = static_cast<char*>(map_noreserve(a.bytes));
  if (!base) throw_stack_error(errno, "tendril: reserving stack arena");
  madvise(base, a.bytes, MADV_NOHUGEPAGE);  // one touch must not commit 2 MiB
  a.meta = static_cast<SlotMeta*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotMeta)));
  a.cmeta = static_cast<SlotCacheMeta*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotCacheMeta)));
  a.names = static_cast<SlotName*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotName)));
  if (g_stacks.compact) a.compact = static_cast<SlotCompact*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotCompact)));
  a.ctl = static_cast<std::atomic<const void*>*>(map_noreserve(std::size_t(a.capacity) * sizeof(*a.ctl)));
  bool ok = a.meta != nullptr && a.cmeta != nullptr && a.names != nullptr && a.ctl != nullptr && (!g_stacks.compact || a.compact != nullptr) && (g_stacks.mode != Mode::uffd || uffd_register_range(w, base, a.bytes));
  if (!ok) {
    int err = errno;
    munmap(base, a.bytes);
    unmap_side_tables(a);
    throw_stack_error(err, "tendril: registering stack arena");
  }
  a.base.store(base, std::memory_order_release);  // now visible to the fault handlers
}

SubArena& arena_for(WorkerStacks& w, unsigned cls) {
  SubArena& a = w.arenas[cls];
  if (!a.base.load(std::memory_order_relaxed)) reserve_arena(w, a, cls);
  return a;
}

void release_arena(SubArena& a) {
  char* base = a.base.exchange(nullptr);
  if (base) munmap(base, a.bytes);
  unmap_side_tables(a);
  a.~SubArena();
  new (&a) SubArena();
}

// ---- free lists --------------------------------------------------------------
// A slot goes back to the free list of the worker that owns its sub-arena, so
// its faults keep going to that worker's (same-CPU) handler. Frees from the
// owner are a plain push; frees from other workers use a push-only Treiber
// stack, which the owner takes whole with one exchange (so no ABA).

void push_local(SubArena& a, std::uint32_t slot) {
  a.meta[slot].next_free = a.local_free;
  a.local_free = slot + 1;
  ++a.local_count;
}

void push_remote(SubArena& a, std::uint32_t slot) {
  std::uint32_t head = a.remote_free.load(std::memory_order_relaxed);
  do a.meta[slot].next_free = head;
  while (!a.remote_free.compare_exchange_weak(head, slot + 1, std::memory_order_release, std::memory_order_relaxed));
}

void adopt_remote_frees(SubArena& a) {
  std::uint32_t head = a.remote_free.exchange(0, std::memory_order_acquire);
  while (head) {
    std::uint32_t next = a.meta[head - 1].next_free;
    push_local(a, head - 1);
    head = next;
  }
}

bool pop_free(SubArena& a, std::uint32_t* slot) {
  if (!a.local_free) adopt_remote_frees(a);
  if (!a.local_free) return false;
  *slot = a.local_free - 1;
  a.local_free = a.meta[*slot].next_free;
  --a.local_count;
  return true;
}

// The owner carves on its spawn path, and an idle worker of its node may carve
// from the same arena to prepare stacks ahead for it (cache_prepare_ahead).
// `keep` slots must stay uncarved: those promised to deferred fibers.
bool try_carve_slot(SubArena& a, std::uint32_t* slot, std::uint32_t keep) noexcept {
  std::uint32_t n = a.carved.load(std::memory_order_relaxed);
  do {
    if (std::uint64_t(n) + keep >= a.capacity) return false;
  } while (!a.carved.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel, std::memory_order_relaxed));
  *slot = n;
  return true;
}

// Every slot of a sub-arena holds a live fiber's stack: a std::bad_alloc that
// says which arena ran out.
class StackArenaFull : public std::bad_alloc {
 public:
  StackArenaFull(std::size_t class_bytes, std::uint32_t slots) noexcept {
    std::snprintf(msg_, sizeof msg_, "tendril::spawn: the worker's stack arena for stacks up to %zu KiB is full (%u "
                  "live fibers hold all its slots)", class_bytes >> 10, slots);
  }
  const char* what() const noexcept override { return msg_; }

 private:
  char msg_[160];
};

std::uint32_t carve_slot(SubArena& a) {
  std::uint32_t n;
  if (!try_carve_slot(a, &n, a.deferred())) throw StackArenaFull(a.class_bytes, a.capacity);
  return n;
}

// ---- slot preparation --------------------------------------------------------

void reset_owner(SlotMeta& m) {
  m.fiber_id.store(0, std::memory_order_relaxed);
  m.named.store(0, std::memory_order_relaxed);
  m.deepest_fault.store(1, std::memory_order_relaxed);
}

// Kernel mode: the guard is everything in the slot below lo.
void move_guard(SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  SlotMeta& m = a.meta[slot];
  std::size_t guard = a.stride - std::size_t(limit_pages) * kPage;
  if (!guard_set(a.slot_base(slot), std::size_t(m.guard_pages) * kPage, guard))
    throw_stack_error(errno, g_stacks.guard_madvise ? "tendril: MADV_GUARD_INSTALL" : "tendril: mprotect guard (vm.max_map_count?)");
  m.guard_pages = std::uint32_t(guard / kPage);
}

void map_top_page(WorkerStacks& owner, char* hi) {
  char* top = hi - kPage;
  if (g_stacks.mode == Mode::uffd) {
    if (!uffd_map_top_page(owner, top)) throw_stack_error(errno, "tendril: UFFDIO_COPY");
  } else {
    *reinterpret_cast<volatile char*>(top) = 0;  // ordinary demand paging
  }
}

// Limit, guard and top page of a slot never used before; `owner` owns its
// arena (its uffd maps the page), the calling thread's node gets the page.
void init_fresh_slot(WorkerStacks& owner, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  SlotMeta& m = a.meta[slot];
  reset_owner(m);
  m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  if (g_stacks.mode == Mode::kernel) {
    m.guard_pages = 0;
    move_guard(a, slot, limit_pages);
  }
  map_top_page(owner, a.slot_hi(slot));
  m.mapped_pages.store(1, std::memory_order_relaxed);
  SlotCacheMeta& cm = a.cmeta[slot];
  cm.extent_pages = 1;
  cm.checked_pages = 0;
  cm.node = -1;
}

void prepare_fresh_slot(WorkerStacks& w, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  init_fresh_slot(w, a, slot, limit_pages);
  add_single_writer(w.counters.live_pages, 1);
}

// A reused slot still has its top page: no fault, no syscall unless the limit changed.
void prepare_reused_slot(WorkerStacks& w, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  SlotMeta& m = a.meta[slot];
  reset_owner(m);
  if (m.limit_pages.load(std::memory_order_relaxed) != limit_pages) {
    if (g_stacks.mode == Mode::kernel) move_guard(a, slot, limit_pages);
    m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  }
  add_single_writer(w.counters.cached_pages, -std::int64_t(1));
  add_single_writer(w.counters.live_pages, 1);
}

// A slot from the stack cache keeps the pages it was cached with (no fault,
// no syscall). Only if a smaller limit now puts some of them below lo (rare)
// is it first shrunk to its top page.
std::uint32_t prepare_cached_slot(WorkerStacks& w, const SlotRef& r, std::uint32_t limit_pages, const CacheEntry& e) {
  SubArena& a = *r.arena;
  SlotMeta& m = a.meta[r.slot];
  SlotCacheMeta& cm = a.cmeta[r.slot];
  std::uint32_t resident = e.pages;
  reset_owner(m);
  if (e.extent > limit_pages) {
    char* hi = a.slot_hi(r.slot);
    madvise(hi - std::size_t(e.extent) * kPage, std::size_t(e.extent - 1) * kPage, MADV_DONTNEED);
    add_single_writer(w.cache.counters.pages_trimmed, resident - 1);
    resident = 1;
    cm.extent_pages = 1;
    cm.checked_pages = std::min<std::uint32_t>(cm.checked_pages, 1);
    if (g_stacks.mode == Mode::uffd) m.mapped_pages.store(1, std::memory_order_relaxed);
  }
  if (m.limit_pages.load(std::memory_order_relaxed) != limit_pages) {
    if (g_stacks.mode == Mode::kernel) move_guard(a, r.slot, limit_pages);
    m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  }
  add_single_writer(w.counters.live_pages, resident);
  return resident;
}

// Learned depth: map [hi - want, hi - have) ahead of use, from this thread
// (so on this node), with one ioctl / madvise instead of growth faults.
std::uint32_t premap(WorkerStacks& w, const SlotRef& r, std::uint32_t have, std::uint32_t want) {
  char* hi = r.arena->slot_hi(r.slot);
  char* lo = hi - std::size_t(want) * kPage;
  std::uint32_t n = want - have;
  if (g_stacks.mode == Mode::uffd) {
    n = uffd_populate(*r.owner, lo, n);
    r.arena->meta[r.slot].mapped_pages.fetch_add(n, std::memory_order_relaxed);
  } else if (madvise(lo, std::size_t(n) * kPage, MADV_POPULATE_WRITE) != 0) {
    for (char* p = lo; p < hi - std::size_t(have) * kPage; p += kPage) __atomic_fetch_add(p, 0, __ATOMIC_RELAXED);
  }
  add_single_writer(w.counters.live_pages, n);
  return n;
}

// ---- release -----------------------------------------------------------------

// Resident pages in [lo, hi); *lowest (if given) = the lowest resident page or hi.
std::uint32_t resident_pages(char* lo, char* hi, char** lowest = nullptr) {
  unsigned char vec[256];
  std::uint32_t count = 0;
  for (char* p = lo; p < hi; p += sizeof vec * kPage) {
    std::size_t len = std::min<std::size_t>(hi - p, sizeof vec * kPage);
    if (mincore(p, len, vec) != 0) break;
    for (std::size_t i = 0; i < len / kPage; ++i) {
      if ((vec[i] & 1) && lowest && count == 0) *lowest = p + i * kPage;
      count += vec[i] & 1;
    }
  }
  return count;
}

// Drops every page below the top one, so a free slot costs one page.
void drop_pages_below_top(char* lo, char* hi) { madvise(lo, std::size_t(hi - kPage - lo), MADV_DONTNEED); }

// Returns a released slot (live pages already debited) to one page and its
// arena's free list: the path when the cache is off or refuses the stack.
void drop_released_slot(WorkerStacks& releaser, const SlotRef& r, std::uint32_t resident, std::uint32_t extent) {
  SubArena& a = *r.arena;
  SlotMeta& m = a.meta[r.slot];
  SlotCacheMeta& cm = a.cmeta[r.slot];
  char* hi = a.slot_hi(r.slot);
  char* lo = hi - std::size_t(m.limit_pages.load(std::memory_order_relaxed)) * kPage;
  if (resident > 1 || extent > 1) drop_pages_below_top(lo, hi);
  m.mapped_pages.store(1, std::memory_order_relaxed);
  cm.extent_pages = 1;
  cm.checked_pages = std::min<std::uint32_t>(cm.checked_pages, 1);
  add_single_writer(releaser.counters.cached_pages, 1);
  add_single_writer(releaser.cache.counters.dropped, 1);
  arena_free_slot(releaser, r);
}

SlotRef decode(const StackSlot& s) { return decode_ref(s.index, class_for(s.limit)); }

// ---- high water --------------------------------------------------------------

char* lowest_resident_page(char* lo, char* hi) {
  unsigned char vec[256];
  for (char* p = lo; p < hi; p += sizeof vec * kPage) {
    std::size_t len = std::min<std::size_t>(hi - p, sizeof vec * kPage);
    if (mincore(p, len, vec) != 0) return hi - kPage;
    for (std::size_t i = 0; i < len / kPage; ++i)
      if (vec[i] & 1) return p + i * kPage;
  }
  return hi - kPage;
}

// Reads stack memory below a fiber's stack pointer, which AddressSanitizer may
// still have poisoned from frames left by a context switch.
__attribute__((no_sanitize_address)) bool page_is_zero(const char* page) {
  auto* w = reinterpret_cast<const std::uint64_t*>(page);
  for (std::size_t i = 0; i < kPage / 8; ++i)
    if (w[i]) return false;
  return true;
}

// uffd mode, learned depth: the fault handler maps up to max_grow_pages below
// a faulting page, so the fiber may have used pages below its deepest fault
// without faulting. Returns the depth (pages from hi) of the deepest page in
// (deepest, ahead] that is resident and holds data, else `deepest`.
std::uint32_t deepest_written_page(char* hi, std::uint32_t deepest, std::uint32_t ahead) {
  if (ahead <= deepest) return deepest;
  unsigned char vec[64];
  std::uint32_t n = std::min<std::uint32_t>(ahead - deepest, sizeof vec);
  char* lo = hi - std::size_t(deepest + n) * kPage;
  if (mincore(lo, std::size_t(n) * kPage, vec) != 0) return deepest;
  for (std::uint32_t i = 0; i < n; ++i)  // vec[0] is the deepest page
    if ((vec[i] & 1) && !page_is_zero(lo + std::size_t(i) * kPage)) return deepest + n - i;
  return deepest;
}

// The deepest page (from hi) a fault handler may have mapped for a slot:
// up to max_grow_pages below its deepest fault, never below its limit.
std::uint32_t deepest_mapped_ahead(const SlotMeta& m) {
  return std::min(m.limit_pages.load(std::memory_order_relaxed),
                  m.deepest_fault.load(std::memory_order_relaxed) + g_stacks.max_grow_pages - 1);
}

// A fault handler mapped pages ahead of the fiber now parking (a burst, or
// doubling) and it may not have used them all. Below its stack pointer
// nothing is live, so a resident page there that is still all zeros was
// mapped ahead and never written: give back every page below the deepest
// written one. Runs on the parking fiber's own stack, before the switch, so
// only pages a safe margin below this frame are touched; the deepest fault
// (and so stack_high_water) is unchanged. uffd mode only: kernel mode never
// maps ahead.
void trim_unwritten_below_sp(WorkerStacks& w, const StackSlot& s) noexcept {
  if (g_stacks.mode != Mode::uffd) return;
  char here;
  asm volatile("" : : "r"(&here) : "memory");
  char* sp = &here;
  if (sp <= s.lo || sp > s.hi) return;
  // 2 KiB below this frame: room for the frames of the calls below (mincore,
  // madvise) and of the context switch that follows, whatever a sanitizer
  // adds to them.
  char* limit = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(sp) - 2048) & ~(kPage - 1));
  SlotRef r = decode(s);
  SlotMeta& m = r.arena->meta[r.slot];
  // Nothing is resident below what the handler may have mapped ahead of the
  // deepest fault, or below the depth premapped at spawn.
  const std::uint32_t ahead = std::max(r.arena->cmeta[r.slot].extent_pages, deepest_mapped_ahead(m));
  char* bottom = std::max({s.lo, s.hi - std::size_t(ahead) * kPage, limit - std::size_t(64) * kPage});
  if (bottom >= limit) return;
  unsigned char vec[64];
  const std::size_t n = std::size_t(limit - bottom) / kPage;
  if (mincore(bottom, n * kPage, vec) != 0) return;
  std::size_t cut = 0, resident = 0;  // pages [bottom, bottom + cut) go
  for (; cut < n; ++cut) {
    if (!(vec[cut] & 1)) continue;
    if (!page_is_zero(bottom + cut * kPage)) break;
    ++resident;
  }
  if (resident == 0) return;
  if (madvise(bottom, cut * kPage, MADV_DONTNEED) != 0) return;
  m.mapped_pages.fetch_sub(std::uint32_t(resident), std::memory_order_relaxed);
  add_single_writer(w.counters.live_pages, -std::int64_t(resident));
  add_single_writer(w.cache.counters.pages_trimmed, std::int64_t(resident));
}

// ---- init helpers ------------------------------------------------------------

void apply_tuning(const StackConfig& config) {
  g_stacks.fill = config.fill_move ? Fill::move : Fill::copy;
  g_stacks.max_grow_pages = std::clamp(config.max_grow_pages, 1u, 16u);  // 16 = the 64 KiB zero source
  g_stacks.burst_ns = config.burst_ns;
  g_stacks.learn_depth = config.learn_depth;
  g_stacks.compact = config.compact;
  g_stacks.defer = config.defer;
}

// The staging area (registered: UFFDIO_MOVE's destination) and the two
// scratch areas (not registered) of one worker's compactions.
bool compact_areas_create(WorkerStacks& w) {
  const std::size_t staging_bytes = std::size_t(kStagingPages) * kPage;
  const std::size_t scratch_bytes = std::size_t(kMaxCompactPages) * kPage;
  w.staging = static_cast<char*>(map_noreserve(staging_bytes));
  w.scratch = static_cast<char*>(map_noreserve(scratch_bytes));
  w.handler_scratch = static_cast<char*>(map_noreserve(scratch_bytes));
  w.staging_used = 0;
  if (!w.staging || !w.scratch || !w.handler_scratch) return false;
  madvise(w.staging, staging_bytes, MADV_NOHUGEPAGE);  // UFFDIO_MOVE moves small pages only
  return uffd_register_range(w, w.staging, staging_bytes);
}

void compact_areas_destroy(WorkerStacks& w) {
  if (w.staging) munmap(w.staging, std::size_t(kStagingPages) * kPage);
  for (char** p : {&w.scratch, &w.handler_scratch})
    if (*p) munmap(*p, std::size_t(kMaxCompactPages) * kPage);
  w.staging = w.scratch = w.handler_scratch = nullptr;
  w.staging_used = 0;
}

// Buffers of fibers still compacted when the runtime stops.
void compact_free_buffers() {
  for (unsigned i = 0; i < g_stacks.workers; ++i)
    for (SubArena& a : g_stacks.w[i].arenas) {
      if (!a.base.load(std::memory_order_acquire) || !a.compact) continue;
      const std::uint32_t carved = a.carved.load(std::memory_order_acquire);
      for (std::uint32_t s = 0; s < carved; ++s) {
        std::free(a.compact[s].buf);
        a.compact[s].buf = nullptr;
      }
    }
}

// After cache_init (which knows the nodes): where the handler allocates.
void choose_fault_placement(const std::string& place) {
  g_stacks.place_for_faulter = place.empty() ? cache_nodes() > 1 : place == "faulter";
}

bool start_uffd_workers() {
  for (unsigned i = 0; i < g_stacks.workers; ++i) {
    WorkerStacks& w = g_stacks.w[i];
    if (!uffd_open_and_register_api(w)) return false;
    if (g_stacks.fill == Fill::move && !pool_create(w.pool)) return false;
    if (g_stacks.fill == Fill::move) pool_refill(w);
    if (!handler_start(w, i)) return false;
  }
  for (unsigned i = 0; g_stacks.compact && i < g_stacks.workers; ++i)
    if (!compact_areas_create(g_stacks.w[i])) {
      g_stacks.compact = false;
      log_line("idle-stack compaction: cannot set up its staging areas: compaction is off");
    }
  // The scheduler settles a compaction against a switch-in with
  // membarrier(PRIVATE_EXPEDITED) (worker.cpp), which needs registering.
  if (g_stacks.compact && syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) {
    g_stacks.compact = false;
    log_line("idle-stack compaction needs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): compaction is off");
  }
  return true;
}

void stop_uffd_workers() {
  for (unsigned i = 0; i < g_stacks.workers; ++i) {
    handler_stop(g_stacks.w[i]);
    pool_destroy(g_stacks.w[i].pool);
    compact_areas_destroy(g_stacks.w[i]);
  }
}

void start_kernel_mode() {
  g_stacks.mode = Mode::kernel;
  g_stacks.compact = false;  // nothing can put a page's content back on a touch
  g_stacks.guard_madvise = guard_probe_madvise();
  if (!g_stacks.guard_madvise)
    log_line("warning: MADV_GUARD_INSTALL unavailable (Linux < 6.13); stack guards use mprotect, "
             "which costs 2 VMAs per stack: vm.max_map_count limits live stacks");
  guard_install_signal_handler();
  guard_thread_altstack();
}

// StackConfig::workers is the scheduler's worker count + 1 (one index shared
// by plain threads): the line names the scheduler's count.
void log_mode() {
  char line[320];
  char workers[64];
  std::snprintf(workers, sizeof workers, "%u workers (+1 index for plain threads)", g_stacks.workers - 1);
  if (g_stacks.mode == Mode::uffd)
    std::snprintf(line, sizeof line,
                  "stacks: mode=uffd (userfaultfd, fill=%s, 1 page per fault up to %u KiB, then doubling up to %u "
                  "pages, %u pages per fault in bursts%s, idle-stack compaction %s), %s",
                  g_stacks.fill == Fill::move ? "move" : "copy", unsigned(kSingleFaultPages * kPage / 1024),
                  g_stacks.max_grow_pages, g_stacks.burst_ns ? g_stacks.max_grow_pages : 0u,
                  g_stacks.place_for_faulter ? ", pages on the faulting worker's node" : "",
                  g_stacks.compact ? "on" : "off", workers);
  else
    std::snprintf(line, sizeof line, "stacks: mode=kernel (demand paging, guards by %s, idle-stack compaction off), %s",
                  g_stacks.guard_madvise ? "MADV_GUARD_INSTALL" : "mprotect", workers);
  log_line(line);
}

void kernel_mode_scan(std::int64_t* pages, std::int64_t* growth) {
  for (unsigned i = 0; i < g_stacks.workers; ++i)
    for (SubArena& a : g_stacks.w[i].arenas) {
      if (!a.base.load(std::memory_order_acquire)) continue;
      std::uint32_t carved = a.carved.load(std::memory_order_acquire);
      for (std::uint32_t s = 0; s < carved; ++s) {
        SlotMeta& m = a.meta[s];
        if (m.state.load(std::memory_order_acquire) != kLive) continue;
        char* hi = a.slot_hi(s);
        std::uint32_t r = resident_pages(hi - std::size_t(m.limit_pages.load()) * kPage, hi);
        std::uint32_t base = a.cmeta[s].base_pages.load(std::memory_order_relaxed);
        *pages += r;
        *growth += r > base ? r - base : 0;
      }
    }
}

}  // namespace

SlotRef decode_ref(std::uint32_t ref, unsigned cls) noexcept {
  WorkerStacks& owner = g_stacks.w[ref >> kSlotBits];
  return {&owner, &owner.arenas[cls], ref & (kMaxSlotsPerArena - 1)};
}

bool arena_prepare_fresh_slot(WorkerStacks& preparer, WorkerStacks& owner, unsigned cls, std::uint32_t limit_pages,
                              CacheEntry* entry) noexcept {
  SubArena& a = owner.arenas[cls];
  std::uint32_t slot;
  // The owner's deferrals are not ordered with this carve: keep a margin
  // beyond them, so that racing preparers never eat a promised slot.
  constexpr std::uint32_t kPreparerMargin = 64;
  if (a.base.load(std::memory_order_acquire) == nullptr ||
      !try_carve_slot(a, &slot, a.deferred() + kPreparerMargin))
    return false;
  try {
    init_fresh_slot(owner, a, slot, limit_pages);
  } catch (...) {
    // No page (or no guard): hand the carved slot to its owner's free list,
    // which expects a top page; map-less slots are rare enough to just leak
    // the slot number (its address space stays reserved, nothing resident).
    return false;
  }
  a.meta[slot].state.store(kFree, std::memory_order_relaxed);
  add_single_writer(preparer.counters.cached_pages, 1);
  *entry = CacheEntry{std::uint32_t(&owner - g_stacks.w) << kSlotBits | slot, 1, 1, 0};
  return true;
}

// A slot goes back to the free list of the worker that owns its sub-arena
// (a plain push on the owner, the Treiber stack from anyone else).
void arena_free_slot(WorkerStacks& releaser, const SlotRef& r) noexcept {
  if (r.owner == &releaser) push_local(*r.arena, r.slot);
  else push_remote(*r.arena, r.slot);
}

std::uint32_t resident_pages_in(char* lo, char* hi) noexcept { return resident_pages(lo, hi); }

Located locate_in_worker(WorkerStacks& w, std::uintptr_t addr) noexcept {
  Located loc;
  for (SubArena& a : w.arenas) {
    auto base = reinterpret_cast<std::uintptr_t>(a.base.load(std::memory_order_acquire));
    if (!base || addr < base || addr >= base + a.bytes) continue;
    loc.worker = &w;
    loc.arena = &a;
    loc.slot = std::uint32_t((addr - base) / a.stride);
    loc.hi = a.slot_hi(loc.slot);
    loc.lo = loc.hi - std::size_t(a.meta[loc.slot].limit_pages.load(std::memory_order_relaxed)) * kPage;
    return loc;
  }
  return loc;
}

Located locate_any(std::uintptr_t addr) noexcept {
  for (unsigned i = 0; i < g_stacks.workers; ++i) {
    Located loc = locate_in_worker(g_stacks.w[i], addr);
    if (loc.found()) return loc;
  }
  return {};
}

}  // namespace tendril::detail::stack_impl

namespace tendril::detail {

using namespace stack_impl;

void stack_init(const StackConfig& config) {
  if (g_initialized) stack_shutdown();
  const std::string mode = config.mode.empty() ? "uffd" : config.mode;
  if (mode != "uffd" && mode != "kernel") throw std::invalid_argument("tendril: stack mode must be uffd or kernel: " + mode);
  g_stacks = StackRuntime{};
  g_stacks.workers = std::clamp(config.workers, 1u, kMaxWorkers);
  g_stacks.arena_bytes = std::min(kMaxArenaBytes, kArenaBudget / g_stacks.workers);
  apply_tuning(config);
  g_stacks.w = new WorkerStacks[g_stacks.workers];
  g_stacks.mode = Mode::uffd;
  if (mode == "kernel" || !start_uffd_workers()) {
    if (mode == "uffd") log_line("userfaultfd unavailable (no /dev/userfaultfd access or seccomp); falling back to kernel mode");
    stop_uffd_workers();
    start_kernel_mode();
  }
  cache_init(config.cache_bytes, config.numa_check);
  choose_fault_placement(config.place);
  g_initialized = true;
  log_mode();
}

void stack_shutdown() noexcept {
  if (!g_initialized) return;
  if (g_stacks.mode == Mode::uffd) stop_uffd_workers();  // handlers first: they read the arenas
  else guard_remove_signal_handler();
  cache_shutdown();
  compact_free_buffers();
  for (unsigned i = 0; i < g_stacks.workers; ++i)
    for (SubArena& a : g_stacks.w[i].arenas) release_arena(a);
  delete[] g_stacks.w;
  g_stacks = StackRuntime{};
  g_initialized = false;
}

StackSlot stack_allocate(unsigned worker, std::size_t limit) { return stack_allocate(worker, limit, nullptr); }

namespace {

// stack_allocate; with `cache_only`, false instead of a slot from the arena
// when the cache has none (nothing but the cache's lock-free take then).
bool allocate_stack(unsigned worker, std::size_t limit, const void* site, bool cache_only, StackSlot* out) {
  if (!g_initialized || worker >= g_stacks.workers) throw std::system_error(EINVAL, std::generic_category(), "tendril: stack_allocate");
  std::size_t bytes = round_up_pages(std::max<std::size_t>(limit, kPage));
  unsigned cls = class_for(bytes);
  WorkerStacks& w = g_stacks.w[worker];
  std::uint32_t limit_pages = std::uint32_t(bytes / kPage);
  std::uint32_t want = site && g_stacks.learn_depth ? std::min(site_depth_pages(site), limit_pages) : 0;
  // Only deep sites are premapped. Within 16 KiB, growth costs a few faults
  // at most, while a premapped page is memory that every fiber of the site
  // keeps, whatever it needs: one connection fiber that went deep on an error
  // path must not make ten thousand others each map pages they never touch.
  if (want <= kPremapMinPages) want = 0;
  SlotRef r;
  std::uint32_t resident, extent;
  CacheEntry e;
  if (cache_enabled() && cache_take(w, cls, want, &e)) {
    r = decode_ref(e.ref, cls);
    resident = prepare_cached_slot(w, r, limit_pages, e);
    extent = r.arena->cmeta[r.slot].extent_pages;
  } else {
    if (cache_only) return false;
    add_single_writer(w.cache.counters.misses, 1);
    SubArena& a = arena_for(w, cls);
    std::uint32_t slot;
    if (pop_free(a, &slot)) {
      prepare_reused_slot(w, a, slot, limit_pages);
    } else {
      slot = carve_slot(a);
      prepare_fresh_slot(w, a, slot, limit_pages);
      cache_note_fresh_carve(w, cls, limit_pages);
    }
    r = SlotRef{&w, &a, slot};
    resident = extent = 1;
  }
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  cm.site = site;
  if (want > extent) {
    resident += premap(w, r, extent, want);
    cm.extent_pages = want;
  }
  cm.base_pages.store(resident, std::memory_order_relaxed);
  TENDRIL_ASSERT(r.arena->meta[r.slot].state.load(std::memory_order_relaxed) != kLive,
                 "a live stack slot is never handed out again");
  TENDRIL_ASSERT(resident >= 1, "a slot handed out has its top page resident");
  r.arena->meta[r.slot].state.store(kLive, std::memory_order_release);
  char* hi = r.arena->slot_hi(r.slot);
  *out = StackSlot{hi - bytes, hi, bytes, std::uint32_t(r.owner - g_stacks.w) << kSlotBits | r.slot};
  return true;
}

}  // namespace

StackSlot stack_allocate(unsigned worker, std::size_t limit, const void* site) {
  StackSlot slot;
  allocate_stack(worker, limit, site, /*cache_only=*/false, &slot);
  return slot;
}

namespace {

// As long as a fault waits for a page before the process stops.
constexpr unsigned kDeferredOutOfMemoryWaitMs = 10000;

[[noreturn]] void die_no_deferred_stack(const char* why) noexcept {
  char msg[320];
  const int n = std::snprintf(msg, sizeof msg,
                              "tendril: no stack for a fiber at its first run, on the worker that kept room for it: "
                              "%s\n", why);
  (void)!::write(STDERR_FILENO, msg, n > 0 ? std::min(std::size_t(n), sizeof msg - 1) : 0);
  std::abort();
}

SubArena& deferral_arena(unsigned worker, std::size_t limit) {
  return arena_for(g_stacks.w[worker], class_for(round_up_pages(std::max<std::size_t>(limit, kPage))));
}

}  // namespace

bool stack_defer(unsigned worker, std::size_t limit) {
  if (!g_initialized || !g_stacks.defer || worker >= g_stacks.workers) return false;
  SubArena& a = deferral_arena(worker, limit);
  // Only the owner promises, and only the owner carves without a margin:
  // this check races with no other promise and with no carve of its own.
  if (std::uint64_t(a.carved.load(std::memory_order_relaxed)) + a.deferred() + 1 > a.capacity) return false;
  bump_single_writer(a.deferred_promised);
  return true;
}

void stack_cancel_deferred(unsigned reserved_on, std::size_t limit) noexcept {
  deferral_arena(reserved_on, limit).deferred_kept_away.fetch_add(1, std::memory_order_relaxed);
}

bool stack_allocate_deferred(unsigned worker, unsigned reserved_on, std::size_t limit, const void* site,
                             bool cache_only, StackSlot* out) noexcept {
  SubArena& promised = deferral_arena(reserved_on, limit);
  if (cache_only) {
    // No carve, so the room kept is not needed for it: settled after.
    bool got = false;
    try {
      got = allocate_stack(worker, limit, site, /*cache_only=*/true, out);
    } catch (...) {
    }
    if (got) {
      if (worker == reserved_on) bump_single_writer(promised.deferred_kept_here);
      else promised.deferred_kept_away.fetch_add(1, std::memory_order_relaxed);
    }
    return got;
  }
  if (worker == reserved_on) {
    // The promise is settled first: the carve below keeps room only for the
    // other deferred fibers, so it finds the slot kept for this one.
    bump_single_writer(promised.deferred_kept_here);
    // Out of memory for its top page: wait as a fault does (the fiber has
    // been spawned; there is nobody to hand the error to), then stop.
    for (unsigned waited_ms = 0;; ++waited_ms) {
      try {
        *out = stack_allocate(worker, limit, site);
        return true;
      } catch (const std::system_error& e) {
        if (e.code().value() != ENOMEM || waited_ms == kDeferredOutOfMemoryWaitMs) die_no_deferred_stack(e.what());
      } catch (const std::exception& e) {
        die_no_deferred_stack(e.what());
      }
      const timespec ms{0, 1000000};
      nanosleep(&ms, nullptr);
    }
  }
  try {
    *out = stack_allocate(worker, limit, site);
  } catch (...) {
    return false;  // this worker's arena is full: the room is on the fiber's home worker
  }
  promised.deferred_kept_away.fetch_add(1, std::memory_order_relaxed);
  return true;
}

std::uint64_t stack_deferred_count() noexcept {
  std::uint64_t n = 0;
  for (unsigned i = 0; g_initialized && i < g_stacks.workers; ++i)
    for (const SubArena& a : g_stacks.w[i].arenas) n += a.deferred();
  return n;
}

void stack_follow_to_node(unsigned worker, const StackSlot& slot, const void* sp) noexcept {
  if (cache_nodes() < 2 || slot.lo == nullptr) return;  // no stack yet: it gets one where it first runs
  WorkerStacks& w = g_stacks.w[worker];
  const int node = w.cache.node();
  const SlotRef r = decode_ref(slot.index, class_for(slot.limit));
  // Resident pages hang from the top: the live frames above sp, what the
  // fiber was handed (its learned depth), and in uffd mode what it grew.
  std::uint32_t depth = std::uint32_t((slot.hi - static_cast<const char*>(sp) + kPage - 1) / kPage);
  depth = std::max(depth, r.arena->cmeta[r.slot].base_pages.load(std::memory_order_relaxed));
  if (g_stacks.mode == Mode::uffd) {
    depth = std::max(depth, r.arena->meta[r.slot].mapped_pages.load(std::memory_order_relaxed));
  } else {  // the kernel keeps no count for us: ask mincore
    depth = std::max(depth, std::uint32_t((slot.hi - lowest_resident_page(slot.lo, slot.hi)) / kPage));
  }
  depth = std::min<std::uint32_t>(depth, std::uint32_t(slot.limit / kPage));
  constexpr unsigned kBatch = 64;
  void* pages[kBatch];
  int nodes[kBatch], status[kBatch];
  std::int64_t moved = 0;
  for (std::uint32_t d = 0; d < depth; d += kBatch) {
    const unsigned n = std::min<std::uint32_t>(kBatch, depth - d);
    for (unsigned i = 0; i < n; ++i) {
      pages[i] = slot.hi - std::size_t(d + i + 1) * kPage;
      nodes[i] = node;
    }
    // Pages not resident report -ENOENT and are not faulted in.
    if (move_pages(0, n, pages, nodes, status, MPOL_MF_MOVE) < 0) break;
    for (unsigned i = 0; i < n; ++i) moved += status[i] == node;
  }
  add_single_writer(w.cache.counters.pages_moved, moved);
}

void stack_release(unsigned worker, const StackSlot& slot) noexcept {
  const unsigned cls = class_for(slot.limit);
  SlotRef r = decode_ref(slot.index, cls);
  WorkerStacks& releaser = g_stacks.w[worker];
  SlotMeta& m = r.arena->meta[r.slot];
  TENDRIL_ASSERT(m.state.load(std::memory_order_relaxed) == kLive,
                 "only a live stack slot is released (released twice, or never handed out)");
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  const std::uint32_t base = cm.base_pages.load(std::memory_order_relaxed);
  std::uint32_t resident, extent = cm.extent_pages, depth = 0;
  if (g_stacks.mode == Mode::uffd) {
    resident = m.mapped_pages.load(std::memory_order_acquire);
    if (resident > base) {  // it grew: the handler mapped up to max_grow_pages below the deepest fault
      std::uint32_t deepest = m.deepest_fault.load(std::memory_order_relaxed);
      std::uint32_t ahead = deepest_mapped_ahead(m);
      extent = std::max(extent, ahead);
      if (cm.site && g_stacks.learn_depth) depth = deepest_written_page(slot.hi, deepest, ahead);
    }
    add_single_writer(releaser.counters.live_pages, -std::int64_t(resident));
  } else {
    char* lowest = slot.hi;
    resident = resident_pages(slot.lo, slot.hi, &lowest);  // growth is invisible to us until now
    if (resident > base) {
      add_single_writer(releaser.counters.faults, resident - base);
      depth = std::uint32_t((slot.hi - lowest) / kPage);
      extent = std::max(extent, depth);
    }
    add_single_writer(releaser.counters.live_pages, -std::int64_t(base));
  }
  if (depth && cm.site && g_stacks.learn_depth) site_record(cm.site, depth);
  m.state.store(kFree, std::memory_order_release);
  if (cache_enabled() && cache_put(releaser, r, cls, resident, extent)) return;
  drop_released_slot(releaser, r, resident, extent);
}

void stack_prefetch_release(const StackSlot& slot) noexcept {
  // The scheduler read `slot` racily: check it before decoding (class_for
  // throws on a limit no class holds).
  if (slot.limit == 0 || slot.limit > class_bytes(kNumClasses - 1) || (slot.index >> kSlotBits) >= g_stacks.workers)
    return;
  const SlotRef r = decode(slot);
  if (r.arena->meta == nullptr || r.arena->cmeta == nullptr) return;
  __builtin_prefetch(&r.arena->meta[r.slot], 1);
  __builtin_prefetch(&r.arena->cmeta[r.slot], 1);
}

void stack_set_owner(const StackSlot& slot, std::uint64_t fiber_id, const char* name, const void* ctl) noexcept {
  SlotRef r = decode(slot);
  SlotMeta& m = r.arena->meta[r.slot];
  // Before the id: a reader that sees the new id sees this block's pointer
  // (and validates the block by its id anyway).
  r.arena->ctl[r.slot].store(ctl, std::memory_order_relaxed);
  m.fiber_id.store(fiber_id, std::memory_order_release);
  // Unnamed fibers (most) never touch the names table: its pages stay unmapped.
  // strnlen + memcpy: no byte-at-a-time strncpy padding on the spawn path.
  const std::size_t n = name != nullptr ? strnlen(name, kSlotNameBytes - 1) : 0;
  if (n == 0) return;
  char* text = r.arena->names[r.slot].text;
  std::memcpy(text, name, n);
  text[n] = '\0';
  m.named.store(1, std::memory_order_release);
}

void stack_on_switch(unsigned worker, const StackSlot* parking, const StackSlot* /*next*/) noexcept {
  WorkerStacks& w = g_stacks.w[worker];
  if (parking != nullptr && w.trim_on_park.load(std::memory_order_relaxed)) {
    w.trim_on_park.store(false, std::memory_order_relaxed);
    trim_unwritten_below_sp(w, *parking);
  }
  if ((++w.cache.switches & (kSwitchesPerTick - 1)) == 0) cache_tick(worker, false);
  if (g_stacks.fill != Fill::move || g_stacks.mode != Mode::uffd) return;
  PagePool& p = w.pool;
  std::uint64_t avail = p.produced.load(std::memory_order_relaxed) - p.consumed.load(std::memory_order_relaxed);
  if (avail < p.low_water) pool_refill(w);
}

bool stack_compaction_enabled() noexcept { return g_initialized && g_stacks.compact; }

namespace {
constexpr std::size_t kRedZone = 128;  // x86-64 SysV: leaf code may use 128 bytes below sp
}  // namespace

namespace {

// Gives back the pages of the runs already copied out of w's staging area
// (held by the caller): one MADV_DONTNEED, one TLB shootdown for all of them.
void give_back_staged_pages(WorkerStacks& w) noexcept {
  if (w.staging_used == 0) return;
  madvise(w.staging, std::size_t(w.staging_used) * kPage, MADV_DONTNEED);
  w.staging_used = 0;
}

// Compacts the run [run_lo, run_lo + pages * kPage) of slot r through its
// owner's staging area (held by the caller). Counts on worker w.
bool compact_run(WorkerStacks& w, const SlotRef& r, char* run_lo, unsigned pages, std::size_t skip) noexcept {
  WorkerStacks& owner = *r.owner;
  const std::size_t bytes = std::size_t(pages) * kPage - skip;
  char* buf = static_cast<char*>(std::malloc(bytes));
  if (buf == nullptr) return false;
  if (owner.staging_used + pages > kStagingPages) give_back_staged_pages(owner);
  const unsigned at = owner.staging_used;
  char* const staged = owner.staging + std::size_t(at) * kPage;
  SlotCompact& c = r.arena->compact[r.slot];
  SlotMeta& m = r.arena->meta[r.slot];
  c.pages.store(pages, std::memory_order_relaxed);
  c.skip = std::uint32_t(skip);
  c.staged_at = at;
  c.buf = nullptr;
  c.state.store(kMoving, std::memory_order_seq_cst);
  // Atomic per page: a write lands before the move (and is moved with the
  // page) or faults after it (and waits for the handler): none is lost.
  const unsigned moved = uffd_move_to_staging(owner, at, run_lo, pages);
  m.mapped_pages.fetch_sub(moved, std::memory_order_relaxed);
  add_single_writer(w.counters.live_pages, -std::int64_t(moved));
  if (moved < pages) {  // pinned or shared page: put back what moved, before anyone could look
    uffd_move_from_staging(owner, at, run_lo, moved);
    m.mapped_pages.fetch_add(moved, std::memory_order_relaxed);
    add_single_writer(w.counters.live_pages, moved);
    c.state.store(kResident, std::memory_order_release);
    std::free(buf);
    return false;
  }
  c.state.store(kStaged, std::memory_order_release);
  std::memcpy(buf, staged + skip, bytes);  // staging is ours: nobody writes it
  c.buf = buf;
  std::uint32_t was_staged = kStaged;
  const bool published = c.state.compare_exchange_strong(was_staged, kCompacted, std::memory_order_acq_rel);
  if (!published) {
    // Touched meanwhile: the handler is copying the pages back from staging.
    while (c.state.load(std::memory_order_acquire) != kResident) sched_yield();
    c.buf = nullptr;
    std::free(buf);
  }
  // The staged pages are dead either way (copied out, or copied back by the
  // handler's UFFDIO_COPY); they go with the next give-back.
  owner.staging_used = at + pages;
  if (!published) return false;
  add_single_writer(w.compact_counters.compactions, 1);
  add_single_writer(w.compact_counters.compacted, 1);
  add_single_writer(w.compact_counters.compact_bytes, std::int64_t(bytes));
  return true;
}

}  // namespace

void stack_release_staged_pages() noexcept {
  if (!g_stacks.compact) return;
  for (unsigned i = 0; i < g_stacks.workers; ++i) {
    WorkerStacks& owner = g_stacks.w[i];
    // A worker that holds it gives its pages back when it is done (it calls
    // this too); never wait for it.
    if (owner.staging == nullptr || owner.staging_busy.load(std::memory_order_relaxed) ||
        owner.staging_busy.exchange(true, std::memory_order_acquire))
      continue;
    give_back_staged_pages(owner);
    owner.staging_busy.store(false, std::memory_order_release);
  }
}

CompactResult stack_compact(unsigned worker, const StackSlot& slot, const void* sp) noexcept {
  if (!g_stacks.compact || worker >= g_stacks.workers) return CompactResult::skipped;
  WorkerStacks& w = g_stacks.w[worker];
  const SlotRef r = decode(slot);
  WorkerStacks& owner = *r.owner;
  if (r.arena->compact == nullptr || owner.staging == nullptr) return CompactResult::skipped;
  char* const stack_pointer = static_cast<char*>(const_cast<void*>(sp));
  if (stack_pointer <= slot.lo || stack_pointer > slot.hi) return CompactResult::skipped;
  char* const live = std::max(stack_pointer - kRedZone, slot.lo);
  char* const run_hi = slot.hi;  // the whole used stack, top page included
  char* const run_lo = reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(live) & ~(kPage - 1));
  if (run_lo >= run_hi) return CompactResult::skipped;
  const unsigned pages = unsigned((run_hi - run_lo) / kPage);
  if (pages > kMaxCompactPages) return CompactResult::skipped;
  // A page of the run the fiber never touched (a big frame it skipped over)
  // would stop the move half way: leave such stacks alone.
  if (resident_pages(run_lo, run_hi) != pages) return CompactResult::skipped;
  // The owner's staging area: the move must go through the uffd that serves
  // the slot. Another worker compacting a slot of the same owner: skip.
  if (owner.staging_busy.load(std::memory_order_relaxed) || owner.staging_busy.exchange(true, std::memory_order_acquire))
    return CompactResult::retry;
  const bool done = compact_run(w, r, run_lo, pages, std::size_t(live - run_lo));
  owner.staging_busy.store(false, std::memory_order_release);
  return done ? CompactResult::compacted : CompactResult::skipped;
}

void stack_restore(unsigned worker, const StackSlot& slot) noexcept {
  WorkerStacks& w = g_stacks.w[worker];
  const SlotRef r = decode(slot);
  SlotCompact& c = r.arena->compact[r.slot];
  SlotMeta& m = r.arena->meta[r.slot];
  for (;;) {
    std::uint32_t s = c.state.load(std::memory_order_acquire);
    if (s == kResident) break;  // the fault handler put it back already
    if (s == kCompacted && c.state.compare_exchange_strong(s, kRestoring, std::memory_order_acq_rel)) {
      const std::uint32_t pages = c.pages.load(std::memory_order_relaxed);
      m.mapped_pages.fetch_add(pages, std::memory_order_relaxed);
      add_single_writer(w.counters.live_pages, pages);
      compact_rebuild(c, w.scratch);
      uffd_install_pages(r.owner->uffd, slot.hi - std::size_t(pages) * kPage, w.scratch, pages);
      c.state.store(kResident, std::memory_order_release);
      add_single_writer(w.compact_counters.restores, 1);
      break;
    }
    sched_yield();  // kRestoring: the handler (maybe on our CPU) is at it
  }
  add_single_writer(w.compact_counters.compacted, -1);
  add_single_writer(w.compact_counters.compact_bytes, -std::int64_t(std::size_t(c.pages.load(std::memory_order_relaxed)) * kPage - c.skip));
  std::free(c.buf);
  c.buf = nullptr;
}

std::size_t stack_high_water(const StackSlot& slot) noexcept {
  if (slot.lo == nullptr) return 0;  // a fiber that has not run yet has no stack
  SlotRef r = decode(slot);
  SlotMeta& m = r.arena->meta[r.slot];
  char* lowest = lowest_resident_page(slot.lo, slot.hi);
  if (g_stacks.mode == Mode::kernel) return std::size_t(slot.hi - lowest);
  // uffd mode: pages below the deepest fault may have been mapped ahead of use;
  // count them only if something was written there.
  char* deepest = slot.hi - std::size_t(m.deepest_fault.load(std::memory_order_relaxed)) * kPage;
  for (char* p = lowest; p < deepest; p += kPage)
    if (!page_is_zero(p)) return std::size_t(slot.hi - p);
  return std::size_t(slot.hi - deepest);
}

// The cache counters of all workers, summed (gauges are deltas: a worker's
// part may be negative, the sum is not).
struct CacheSums {
#define TENDRIL_CACHE_SUM(storage, field, doc) std::int64_t storage = 0;
  TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_CACHE_SUM)
#undef TENDRIL_CACHE_SUM
  std::int64_t stacks = 0;

  void add(const CacheCounters& q) noexcept {
#define TENDRIL_CACHE_ADD(storage, field, doc) storage += q.storage.load(std::memory_order_relaxed);
    TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_CACHE_ADD)
#undef TENDRIL_CACHE_ADD
    stacks += q.stacks.load(std::memory_order_relaxed);
  }
  void store(StackCounters& c) const noexcept {
#define TENDRIL_CACHE_STORE(storage, field, doc) c.field = std::uint64_t(std::max<std::int64_t>(storage, 0));
    TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_CACHE_STORE)
#undef TENDRIL_CACHE_STORE
    c.cache_stacks = std::uint64_t(std::max<std::int64_t>(stacks, 0));
  }
};

StackCounters stack_counters() {
  StackCounters c;
  c.mode = g_stacks.mode == Mode::uffd ? "uffd" : "kernel";
  c.compaction = g_initialized && g_stacks.compact;
  std::int64_t faults = 0, live = 0, cached = 0, refills = 0, pool = 0;
  CacheSums sums;
#define TENDRIL_COMPACT_SUM(storage, field, doc) std::int64_t compact_##storage = 0;
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_COMPACT_SUM)
#undef TENDRIL_COMPACT_SUM
  for (unsigned i = 0; g_initialized && i < g_stacks.workers; ++i) {
    WorkerStackCounters& k = g_stacks.w[i].counters;
    const HandlerStackCounters& h = g_stacks.w[i].handler_counters;
    faults += k.faults.load(std::memory_order_relaxed) + h.faults.load(std::memory_order_relaxed);
    live += k.live_pages.load(std::memory_order_relaxed) + h.live_pages.load(std::memory_order_relaxed);
    cached += k.cached_pages.load(std::memory_order_relaxed);
    refills += k.pool_refills.load(std::memory_order_relaxed);
    sums.add(g_stacks.w[i].cache.counters);
#define TENDRIL_COMPACT_ADD(storage, field, doc) \
  compact_##storage += g_stacks.w[i].compact_counters.storage.load(std::memory_order_relaxed);
    TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_COMPACT_ADD)
#undef TENDRIL_COMPACT_ADD
    compact_restores += h.restores.load(std::memory_order_relaxed);
    compact_touch_restores += h.restores.load(std::memory_order_relaxed);
    PagePool& p = g_stacks.w[i].pool;
    pool += std::int64_t(p.produced.load() - p.consumed.load());
  }
  if (g_initialized && g_stacks.mode == Mode::kernel) {
    live = 0;  // the kernel does not tell us about faults: look at the page tables
    kernel_mode_scan(&live, &faults);
  }
  c.stack_faults = std::uint64_t(std::max<std::int64_t>(faults, 0));
  c.stack_pages_mapped = std::uint64_t(std::max<std::int64_t>(live, 0));
  c.cached_pages = std::uint64_t(std::max<std::int64_t>(cached, 0));
  c.pool_refills = std::uint64_t(refills);
  c.pool_pages = std::uint64_t(pool);
  sums.store(c);
#define TENDRIL_COMPACT_STORE(storage, field, doc) c.field = std::uint64_t(std::max<std::int64_t>(compact_##storage, 0));
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_COMPACT_STORE)
#undef TENDRIL_COMPACT_STORE
  return c;
}

void stack_thread_init(unsigned worker) noexcept {
  guard_thread_altstack();
  if (g_initialized && worker < g_stacks.workers) g_stacks.w[worker].tid.store(int(gettid()), std::memory_order_relaxed);
  if (g_initialized) cache_thread_init(worker);
  if (g_initialized && g_stacks.mode == Mode::uffd && worker < g_stacks.workers) handler_place_like_current_thread(g_stacks.w[worker]);
}

void stack_for_each_live(void (*fn)(const LiveStack& s, void* arg), void* arg) noexcept {
  for (unsigned i = 0; g_initialized && i < g_stacks.workers; ++i)
    for (SubArena& a : g_stacks.w[i].arenas) {
      if (!a.base.load(std::memory_order_acquire)) continue;
      const std::uint32_t carved = a.carved.load(std::memory_order_acquire);
      for (std::uint32_t s = 0; s < carved; ++s) {
        const SlotMeta& m = a.meta[s];
        if (m.state.load(std::memory_order_acquire) != kLive) continue;
        LiveStack ls;
        char* hi = a.slot_hi(s);
        const std::size_t bytes = std::size_t(m.limit_pages.load(std::memory_order_relaxed)) * kPage;
        ls.slot = StackSlot{hi - bytes, hi, bytes, std::uint32_t(i) << kSlotBits | s};
        ls.fiber_id = m.fiber_id.load(std::memory_order_acquire);
        ls.ctl = a.ctl[s].load(std::memory_order_relaxed);
        if (g_stacks.mode == Mode::uffd) {
          ls.mapped_pages = m.mapped_pages.load(std::memory_order_relaxed);
          ls.high_water = std::size_t(std::max(1u, m.deepest_fault.load(std::memory_order_relaxed))) * kPage;
        } else {
          char* lowest = hi;
          ls.mapped_pages = resident_pages(ls.slot.lo, hi, &lowest);
          ls.high_water = std::size_t(hi - lowest);
        }
        fn(ls, arg);
      }
    }
}

}  // namespace tendril::detail
