// Growable fiber stacks (tendril issue 3).
//
// This file owns the layout of stack memory and the seam in stack.hpp;
// fault_handler.cpp owns userfaultfd and the page pool; guard.cpp owns guard
// zones, the SIGSEGV handler of kernel mode and the overflow diagnostic.
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
// Why this shape:
//  - VMAs do not grow with the number of stacks: one reservation per (worker,
//    class) used, and uffd copies, MADV_DONTNEED and MADV_GUARD_INSTALL never
//    split it. 1M live 256 KiB stacks add 0 VMAs (vm.max_map_count = 65530).
//  - Size classes live in separate reservations so small stacks are packed
//    densely: a page-table page (4 KiB, covers 2 MiB) is shared by
//    2 MiB / stride slots. Measured VmPTE per idle slot: 160 B for 64 KiB
//    stacks, 545 B for 256 KiB stacks; a 2 MiB class would cost a whole 4 KiB
//    page-table page per slot, and mixing it into the small classes' range
//    would make them pay that too.
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
// each idle fiber's footprint.
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
// cross-CPU one is an IPI to a (often halted) vCPU. A fiber that migrated to
// another worker still faults to its slot's owner handler (cross-CPU, slower,
// correct).
//
// A fault at page P of a slot whose resident size is M pages maps
//  - one page while M < 4 (kSingleFaultPages): the first 16 KiB go page by
//    page because that is where most server fibers stay (the http sample's
//    connection fibers touched 3 pages before its parser moved to the worker
//    stack, 1 since; doubling from one page had left them at 4, +33% memory
//    per idle connection);
//  - 16 pages (64 KiB, max_grow_pages) when M >= 2 and the same slot faulted
//    less than 1 ms ago (a "burst": the fiber is going deep right now; the
//    handler remembers its last 4 faulting slots, privately);
//  - otherwise n = min(M, 16) pages: past 16 KiB the stack doubles on each
//    fault, as Go doubles by copying;
// always ending at P and never below lo. Why bursts: a fault costs ~11 us
// here against ~2 us per kernel-paged page (re-measured 2026-12-01), so a
// recursion to 64 KiB must take at most 2-3 faults to stay within 1.5x of
// kernel paging. Doubling alone took 5-6 (2.9x), bursts from the third
// page 3 (1.37-1.55x), bursts from the second page 2 (1.21-1.34x); 240 KiB
// takes 5 instead of 8. What a burst maps ahead and the fiber does not use
// does not stay: the handler notes it on the faulting worker (it knows the
// thread from UFFD_FEATURE_THREAD_ID), and when that fiber next parks, its
// worker gives back the all-zero pages below its stack pointer
// (trim_unwritten_below_sp: one mincore, a zero scan and one MADV_DONTNEED,
// once per burst). A fiber that went 12 KiB deep in a burst and parked holds
// 3-4 pages, not 18 (stack_fiber_test: ParkedFibersDoNotKeepPages...).
// Pages are installed with UFFDIO_COPY
// from a static 64 KiB zero buffer (the kernel allocates).
//
// The handler takes no locks, calls no malloc and never touches registered
// memory: it reads the side table, issues ioctls, and updates atomics. A fault
// in the guard zone (below lo) is never resolved: the handler writes
//   tendril: fiber stack overflow: fiber <id> "<name>" exceeded its stack limit
//   of <limit> bytes: fault at 0x..., N bytes below ... (stack lo-hi)
// to stderr with write(2) and abort()s. The side table is updated before the
// ioctl that wakes the faulting thread (see account_fault_ahead).
//
// ## Per-worker page pools (TENDRIL_STACK_FILL=move) — measured and NOT default
//
// The kernel's dynamic-stack RFC serves faults from per-CPU page arrays
// refilled in schedule(). The user-space analogue is implemented: each worker
// has a 2 MiB ring of pages outside the registered range, populated with
// MADV_POPULATE_WRITE in stack_on_switch() when below 1/4 full, and the
// handler UFFDIO_MOVEs pages from it (falling back to UFFDIO_COPY from the
// zero buffer when it is empty). Measured here it loses to plain UFFDIO_COPY:
// UFFDIO_MOVE flushes the source TLB range on every CPU running the process
// (IPIs), and the refill is paid on the switch path anyway. So the default is
// UFFDIO_COPY + doubling, and StackCounters::pool_* stay 0 in that mode.
// TENDRIL_STACK_GROW=1..16 caps the pages per fault (default 16).
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
// Free slots are kept per (worker, class). A released slot that the stack
// cache (below) does not take goes back to the free list of the worker that
// OWNS its sub-arena (to keep its faults on that worker's handler): a plain
// push on the owner, a push-only Treiber stack from other workers, adopted
// whole by the owner with one exchange (ABA-free). No locks on
// allocate/release/switch. That path = drop_released_slot (everything below
// the top page goes with one MADV_DONTNEED) + push; the top page stays so
// reuse costs no fault.
//
// # The free-stack cache (issue 4; cache.cpp)
//
// Freed stacks are cached WITH THEIR PAGES MAPPED, so a spawn that hits the
// cache takes no page fault and no system call. Shape: sheaves and barns
// (SLUB) / magazines and depots (Bonwick):
//  - Each worker has one magazine (32 stacks) per size class. Exit pushes,
//    spawn pops (LIFO: the warmest stack), no locks, no atomics RMW.
//  - A full magazine moves to the depot of the worker's NUMA node (per node
//    and class), an empty one refills from it. Depots are taken with a
//    TRY-lock only: a busy depot counts as empty on spawn (-> arena) and as
//    full on exit (-> drop); nothing spins.
//  - Spawn order: local magazine, node depot, arena free list, fresh slot.
//    A slot cached on another worker than its owner still faults to its
//    owner's uffd handler (correct, slower).
// Locality. A stack enters node N's cache only if its resident pages are on
// N: at release the pages it will KEEP are queried with move_pages(2) in
// query mode (nodes = NULL: faults nothing in; never get_mempolicy, which
// would), in batches of 64. Foreign pages are MADV_DONTNEED'd and the slot is
// kept; if its top page was foreign it is mapped again from the releasing
// thread (UFFDIO_COPY / first touch: the new page is local). Each slot
// remembers (node, depth verified), so a stack that did not grow beyond what
// was checked is not queried again; the checks are skipped entirely on a
// single-node machine unless the topology is simulated or
// TENDRIL_STACK_NUMA_CHECK=1. node_match / node_mismatch count released
// stacks (a stack finished by a worker on another node than its pages is a
// mismatch); pages_trimmed counts the pages given back.
// Trimming. A cached stack keeps at most max(16 KiB, learned depth of its
// spawn site) (<= 1 MiB, <= its limit); deeper pages are queued in a
// per-worker batch of 16 ranges and given back with ONE process_madvise(2)
// (MADV_DONTNEED on our own pidfd, Linux 6.13+, one TLB flush on 6.16+;
// per-range madvise before that).
// Budget and adaptive size. Options::stack_cache_bytes (64 MiB,
// TENDRIL_STACK_CACHE_BYTES; 0 = off) bounds the resident pages of cached
// stacks: half split evenly over the workers' magazines, half shared by the
// depots (checked when a magazine moves). The cache grows on demand: exits
// that overflow a magazine fill depots until the budget. It shrinks by epochs
// (0.5 s of CLOCK_MONOTONIC_COARSE): each depot gives back half of the
// magazines that stayed unused for a whole epoch (its low watermark), and a
// worker's magazine with no traffic for an epoch gives back half its stacks;
// evicted stacks keep only their top page (stacks_evicted). The epoch clock is
// read by stack_maintain() (worker idle path) and every 1024 switches in
// stack_on_switch.
// Learned depth. A table of 1024 spawn sites (key = SpawnOptions::site, else
// &closure_ops<C>; open addressing, lock-free, no malloc) keeps the deepest
// page stacks from that site touched (recorded at release when the stack
// grew; in uffd mode pages mapped ahead by doubling are inspected for data),
// fading by 1/8 per epoch. Spawn prefers a cached stack at least that deep
// (looks at 8 magazine entries) and otherwise maps the missing depth up front
// from the spawning thread (UFFDIO_COPY, or MADV_POPULATE_WRITE in kernel
// mode): one call instead of several growth faults. Only depths beyond 16 KiB
// (kPremapMinPages) are premapped: the http sample's connection fibers stay in
// one page, and one of them that went 2-3 pages deep on an error path made
// every later connection of the run premap its depth (+45% stack pages at
// 10k connections in one run of two). TENDRIL_STACK_LEARN=0 turns it off.
// Prepared ahead (cache.cpp, stack_prepare_ahead). A spawn that misses the
// cache pays a first-touched page for the fresh slot's top page (~2 us here),
// on the spawning worker, while another worker may sit idle. An idle worker
// (spinning before it parks) prepares fresh stacks for a worker of its node
// whose spawns keep carving: slots of THAT worker's arena (growth faults stay
// on its handler), top pages mapped from the idle worker's thread (same
// node), 8 per call, deposited as a magazine in the node's depot where the
// spawner's next refill finds it. Demand = fresh carves + the size of each
// prepared magazine taken; at most 4 full magazines wait in a depot; pages
// count against the budget from the moment they are mapped; unused ones decay
// like any depot magazine. 1M fibers spawned by one fiber and parked, 2
// workers: 2.4-2.8 s before, 1.48-1.69 s with it, half of the top pages mapped
// by the idle worker (bench/stack_memory, 2026-12-01).
// Cache invariants:
//  - A cached stack's entry records its resident pages exactly; pages below
//    hi - extent are never resident; its top page is always resident.
//  - A stack in node N's depot or in the magazine of a worker on node N had
//    every resident page verified on N (when checks run); a spawn on node N
//    only ever takes from its own magazine and node N's depot.
//  - A stack whose trim is still queued stays in the magazine of the worker
//    whose batch holds the trim; the batch is flushed before any such stack
//    leaves (spawn of it, deposit, eviction), so no queued MADV_DONTNEED can
//    ever hit a live stack.
//  - Resident pages held by the cache <= stack_cache_bytes at all times
//    (a magazine being prepared ahead counts in depot_pages already).
//  - StackCounters::cached_pages = every resident page of free slots (cache
//    stacks plus the top pages of arena-free slots); cache_pages the cache's.
// Cache numbers (same VM, 2 vCPUs, uffd mode, loaded by concurrent builds:
// compare ratios). Command (Release build):
//   cmake -S . -B /tmp/rel -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/rel
//     --target stack_cache core_micro && /tmp/rel/bench/stack_cache
//   1M fibers through 1k live, 2 workers: hit rate 99.9% (998,967 hits,
//   1,034 misses = the first 1k stacks), 0.0000 stack faults per fiber,
//   863 ns/fiber with the cache vs 990 ns without (0.87), pthread
//   create+join 60,093 ns (70x). Site recursing 64 KiB (4 live): 3.0 growth
//   faults per fiber and 562 us/fiber without learning (kept 16 KiB, regrows
//   by uffd faults) vs 0.000 faults and 694 ns/fiber learned.
//   core_micro --benchmark_filter=SpawnJoin (median of 3, real time), with
//   TENDRIL_STACK_CACHE_BYTES=64M vs 0: 1 worker 375 vs 402 ns, 2 workers
//   524 vs 1,670 ns; SpawnJoinBatch 2 workers 8.3 vs 15.8 us per 1000.
//
// # Invariants
//  - A slot from the arena has only its top page resident when handed out
//    (plus its site's learned depth, mapped up front); a cached one has what
//    it was cached with.
//  - No page below lo is ever mapped; a fault below lo aborts the process.
//  - SlotMeta::mapped_pages counts the resident pages of a slot in uffd mode;
//    StackCounters::stack_pages_mapped is the sum over live slots (kernel
//    mode: mincore over live slots) and StackCounters::cached_pages every
//    resident page of free slots (cached stacks + arena-free top pages), so at
//    a quiescent point (no fault in flight, queued trims issued by
//    stack_maintain) stack_pages_mapped == mincore over the live slots and
//    stack_pages_mapped + cached_pages == mincore over every slot, whatever
//    mix of cache hits, premapped learned depth and growth after reuse led
//    there (stack_cache_test: CountersMatchMincore...). After any
//    grow/release sequence stack_pages_mapped returns to its baseline.
//  - The fault handler and the SIGSEGV handler read only the side tables and
//    the sub-arena descriptors (published with a release store of base).
//
// # Numbers (this VM: Firecracker, 2 vCPUs, Linux 6.18; free-page reporting
// makes every freshly allocated page expensive, and other builds were running,
// so absolute times are ~10x the quiet numbers in measured-facts.md; compare
// ratios). Command:
//   g++ -std=c++20 -O2 bench/stack_growth.cpp runtime/stack/*.cpp
//       -lboost_context -lpthread -o /tmp/stack_growth && /tmp/stack_growth 100
// Fresh stack (allocate + recurse + release), median of 5x100, ns per stack:
//                                          64 KiB    240 KiB   faults@240K
//   uffd copy, 1 page/fault, same CPU      332,000  1,065,000   60
//   uffd copy, 1 page/fault, other CPU     599,000 13,462,000   60
//   uffd copy, doubling <= 4 pages         196,000    416,000   17
//   uffd copy, doubling <= 16              216,000    234,000    7
//   uffd move from pool, 1 page/fault    1,292,000  1,405,000   60
//   uffd move from pool, doubling <= 16    844,000    422,000    7
//   kernel demand paging                   584,000    841,000   (60 pages)
//   fresh pthread (own mmap'd stack)       275,000  1,036,000
// (The default now maps single pages up to 16 KiB, then doubles up to 16:
// one fault more than the "doubling <= 16" row at 64 and at 240 KiB.)
// i.e. doubling uffd / kernel = 0.37 (64K), 0.28 (240K); uffd / pthread =
// 0.79, 0.23. Per uffd fault (same CPU, 1 page) ~18-21 us here vs ~14-36 us
// per kernel-paged page under the same load; the cross-CPU handler was 2-13x
// slower than the same-CPU one. An earlier run with the system less loaded
// gave 47 us/fault same CPU vs 359 us cross CPU at 64 KiB.
// Idle slots (stack_growth ... memory), one resident page each, 256 KiB limit:
//   RSS 4,192 B/slot (page + 64 B side table) + VmPTE 545 B/slot = 4,737 B,
//   100k and 1M slots alike, +0 VMAs in both modes; 64 KiB limit: PTE 160 B.
//   Since then SlotMeta shrank to 32 B (names moved to a table only named
//   fibers touch): a parked fiber is 4,152 B RSS + 545 B VmPTE = 4,697 B
//   all-in (bench/stack_memory, 2026-12-01).
// Fresh-stack growth as the default policy does it, whole spawn..join per
// fiber, cache and learned depth off so every fiber grows from one page
// (build-release/bench/stack_memory, "Stack growth" table; 2026-12-01):
//   64 KiB: uffd 39.3-47.0 us (2 faults) vs kernel 29.3-35.2 us: 1.21-1.34x
//   240 KiB: uffd 109-138 us (5 faults) vs kernel 93-122 us: 1.13-1.17x
//   (same day: bursts from the third page 1.37-1.55x at 64 KiB with 3
//   faults; doubling without bursts 101 us vs 35 us, 2.9x).
//   allocate (fresh slot) 5-13 us in uffd mode, ~37 us in kernel mode
//   (MADV_GUARD_INSTALL per fresh slot); release of an idle slot 30-40 ns
//   (uffd) vs ~3 us (kernel: mincore to learn the slot's size).
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
#include <sys/mman.h>
#include <unistd.h>

namespace tendril::detail::stack_impl {

Runtime g_rt;

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
constexpr unsigned kDefaultGrowPages = 16;
constexpr long kDefaultBurstUs = 1000;  // see pages_for_fault: ~90 faults' worth here
constexpr std::uint32_t kSwitchesPerTick = 1024;  // stack_on_switch runs cache_tick this often

bool g_initialized = false;

std::size_t round_up_pages(std::size_t bytes) { return (bytes + kPage - 1) & ~(kPage - 1); }

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
  a.meta = nullptr;
  a.cmeta = nullptr;
  a.names = nullptr;
}

void reserve_arena(Worker& w, SubArena& a, unsigned cls) {
  a.class_bytes = class_bytes(cls);
  a.stride = a.class_bytes + class_guard(cls);
  a.capacity = std::uint32_t(std::min<std::size_t>(g_rt.arena_bytes / a.stride, kMaxSlotsPerArena));
  a.bytes = std::size_t(a.capacity) * a.stride;
  char* base = nullptr;
  if (const int e = injected_fault(FaultPoint::arena_reserve)) errno = e;
  else base = static_cast<char*>(map_noreserve(a.bytes));
  if (!base) throw std::system_error(errno, std::generic_category(), "tendril: reserving stack arena");
  madvise(base, a.bytes, MADV_NOHUGEPAGE);  // one touch must not commit 2 MiB
  a.meta = static_cast<SlotMeta*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotMeta)));
  a.cmeta = static_cast<SlotCacheMeta*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotCacheMeta)));
  a.names = static_cast<SlotName*>(map_noreserve(std::size_t(a.capacity) * sizeof(SlotName)));
  bool ok = a.meta != nullptr && a.cmeta != nullptr && a.names != nullptr && (g_rt.mode != Mode::uffd || uffd_register_range(w, base, a.bytes));
  if (!ok) {
    int err = errno;
    munmap(base, a.bytes);
    unmap_side_tables(a);
    throw std::system_error(err, std::generic_category(), "tendril: registering stack arena");
  }
  a.base.store(base, std::memory_order_release);  // now visible to the fault handlers
}

SubArena& arena_for(Worker& w, unsigned cls) {
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
bool try_carve_slot(SubArena& a, std::uint32_t* slot) noexcept {
  std::uint32_t n = a.carved.load(std::memory_order_relaxed);
  do {
    if (n >= a.capacity) return false;
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
  if (!try_carve_slot(a, &n)) throw StackArenaFull(a.class_bytes, a.capacity);
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
    throw std::system_error(errno, std::generic_category(),
                            g_rt.guard_madvise ? "tendril: MADV_GUARD_INSTALL" : "tendril: mprotect guard (vm.max_map_count?)");
  m.guard_pages = std::uint32_t(guard / kPage);
}

void map_top_page(Worker& owner, char* hi) {
  char* top = hi - kPage;
  if (g_rt.mode == Mode::uffd) {
    if (!uffd_map_top_page(owner, top)) throw std::system_error(errno, std::generic_category(), "tendril: UFFDIO_COPY");
  } else {
    *reinterpret_cast<volatile char*>(top) = 0;  // ordinary demand paging
  }
}

// Limit, guard and top page of a slot never used before; `owner` owns its
// arena (its uffd maps the page), the calling thread's node gets the page.
void init_fresh_slot(Worker& owner, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  SlotMeta& m = a.meta[slot];
  reset_owner(m);
  m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  if (g_rt.mode == Mode::kernel) {
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

void prepare_fresh_slot(Worker& w, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  init_fresh_slot(w, a, slot, limit_pages);
  add_single_writer(w.counters.live_pages, 1);
}

// A reused slot still has its top page: no fault, no syscall unless the limit changed.
void prepare_reused_slot(Worker& w, SubArena& a, std::uint32_t slot, std::uint32_t limit_pages) {
  SlotMeta& m = a.meta[slot];
  reset_owner(m);
  if (m.limit_pages.load(std::memory_order_relaxed) != limit_pages) {
    if (g_rt.mode == Mode::kernel) move_guard(a, slot, limit_pages);
    m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  }
  add_single_writer(w.counters.cached_pages, -std::int64_t(1));
  add_single_writer(w.counters.live_pages, 1);
}

// A slot from the stack cache keeps the pages it was cached with (no fault,
// no syscall). Only if a smaller limit now puts some of them below lo (rare)
// is it first shrunk to its top page.
std::uint32_t prepare_cached_slot(Worker& w, const SlotRef& r, std::uint32_t limit_pages, const CacheEntry& e) {
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
    if (g_rt.mode == Mode::uffd) m.mapped_pages.store(1, std::memory_order_relaxed);
  }
  if (m.limit_pages.load(std::memory_order_relaxed) != limit_pages) {
    if (g_rt.mode == Mode::kernel) move_guard(a, r.slot, limit_pages);
    m.limit_pages.store(limit_pages, std::memory_order_relaxed);
  }
  add_single_writer(w.counters.live_pages, resident);
  return resident;
}

// Learned depth: map [hi - want, hi - have) ahead of use, from this thread
// (so on this node), with one ioctl / madvise instead of growth faults.
std::uint32_t premap(Worker& w, const SlotRef& r, std::uint32_t have, std::uint32_t want) {
  char* hi = r.arena->slot_hi(r.slot);
  char* lo = hi - std::size_t(want) * kPage;
  std::uint32_t n = want - have;
  if (g_rt.mode == Mode::uffd) {
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
void drop_released_slot(Worker& releaser, const SlotRef& r, std::uint32_t resident, std::uint32_t extent) {
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
                  m.deepest_fault.load(std::memory_order_relaxed) + g_rt.max_grow_pages - 1);
}

// A fault handler mapped pages ahead of the fiber now parking (a burst, or
// doubling) and it may not have used them all. Below its stack pointer
// nothing is live, so a resident page there that is still all zeros was
// mapped ahead and never written: give back every page below the deepest
// written one. Runs on the parking fiber's own stack, before the switch, so
// only pages a safe margin below this frame are touched; the deepest fault
// (and so stack_high_water) is unchanged. uffd mode only: kernel mode never
// maps ahead.
void trim_unwritten_below_sp(Worker& w, const StackSlot& s) noexcept {
  if (g_rt.mode != Mode::uffd) return;
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

std::string chosen_mode_name(const StackConfig& config) {
  if (!config.mode.empty()) return config.mode;
  const char* env = std::getenv("TENDRIL_STACK_MODE");
  return env && *env ? env : "uffd";
}

void read_tuning_from_env() {
  const char* fill = std::getenv("TENDRIL_STACK_FILL");
  g_rt.fill = fill && std::strcmp(fill, "move") == 0 ? Fill::move : Fill::copy;
  const char* grow = std::getenv("TENDRIL_STACK_GROW");
  long pages = grow ? std::strtol(grow, nullptr, 10) : kDefaultGrowPages;
  g_rt.max_grow_pages = unsigned(std::clamp(pages, 1L, 16L));  // 16 = the 64 KiB zero source
  const char* burst = std::getenv("TENDRIL_STACK_BURST_US");
  const long burst_us = burst && *burst ? std::strtol(burst, nullptr, 10) : kDefaultBurstUs;
  g_rt.burst_ns = std::uint64_t(std::max(0L, burst_us)) * 1000;
  const char* learn = std::getenv("TENDRIL_STACK_LEARN");
  g_rt.learn_depth = !(learn && std::strcmp(learn, "0") == 0);
}

bool start_uffd_workers() {
  for (unsigned i = 0; i < g_rt.workers; ++i) {
    Worker& w = g_rt.w[i];
    if (!uffd_open_and_register_api(w)) return false;
    if (g_rt.fill == Fill::move && !pool_create(w.pool)) return false;
    if (g_rt.fill == Fill::move) pool_refill(w);
    if (!handler_start(w, i)) return false;
  }
  return true;
}

void stop_uffd_workers() {
  for (unsigned i = 0; i < g_rt.workers; ++i) {
    handler_stop(g_rt.w[i]);
    pool_destroy(g_rt.w[i].pool);
  }
}

void start_kernel_mode() {
  g_rt.mode = Mode::kernel;
  g_rt.guard_madvise = guard_probe_madvise();
  if (!g_rt.guard_madvise)
    log_line("warning: MADV_GUARD_INSTALL unavailable (Linux < 6.13); stack guards use mprotect, "
             "which costs 2 VMAs per stack: vm.max_map_count limits live stacks");
  guard_install_signal_handler();
  guard_thread_altstack();
}

// StackConfig::workers is the scheduler's worker count + 1 (one index shared
// by plain threads): the line names the scheduler's count.
void log_mode() {
  char line[240];
  char workers[64];
  std::snprintf(workers, sizeof workers, "%u workers (+1 index for plain threads)", g_rt.workers - 1);
  if (g_rt.mode == Mode::uffd)
    std::snprintf(line, sizeof line,
                  "stacks: mode=uffd (userfaultfd, fill=%s, 1 page per fault up to %u KiB, then doubling up to %u "
                  "pages, %u pages per fault in bursts), %s",
                  g_rt.fill == Fill::move ? "move" : "copy", unsigned(kSingleFaultPages * kPage / 1024),
                  g_rt.max_grow_pages, g_rt.burst_ns ? g_rt.max_grow_pages : 0u, workers);
  else
    std::snprintf(line, sizeof line, "stacks: mode=kernel (demand paging, guards by %s), %s",
                  g_rt.guard_madvise ? "MADV_GUARD_INSTALL" : "mprotect", workers);
  log_line(line);
}

void kernel_mode_scan(std::int64_t* pages, std::int64_t* growth) {
  for (unsigned i = 0; i < g_rt.workers; ++i)
    for (SubArena& a : g_rt.w[i].arenas) {
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
  Worker& owner = g_rt.w[ref >> kSlotBits];
  return {&owner, &owner.arenas[cls], ref & (kMaxSlotsPerArena - 1)};
}

bool arena_prepare_fresh_slot(Worker& preparer, Worker& owner, unsigned cls, std::uint32_t limit_pages,
                              CacheEntry* entry) noexcept {
  SubArena& a = owner.arenas[cls];
  std::uint32_t slot;
  if (a.base.load(std::memory_order_acquire) == nullptr || !try_carve_slot(a, &slot)) return false;
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
  *entry = CacheEntry{std::uint32_t(&owner - g_rt.w) << kSlotBits | slot, 1, 1, 0};
  return true;
}

// A slot goes back to the free list of the worker that owns its sub-arena
// (a plain push on the owner, the Treiber stack from anyone else).
void arena_free_slot(Worker& releaser, const SlotRef& r) noexcept {
  if (r.owner == &releaser) push_local(*r.arena, r.slot);
  else push_remote(*r.arena, r.slot);
}

std::uint32_t resident_pages_in(char* lo, char* hi) noexcept { return resident_pages(lo, hi); }

Located locate_in_worker(Worker& w, std::uintptr_t addr) noexcept {
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
  for (unsigned i = 0; i < g_rt.workers; ++i) {
    Located loc = locate_in_worker(g_rt.w[i], addr);
    if (loc.found()) return loc;
  }
  return {};
}

}  // namespace tendril::detail::stack_impl

namespace tendril::detail {

using namespace stack_impl;

void stack_init(const StackConfig& config) {
  if (g_initialized) stack_shutdown();
  std::string mode = chosen_mode_name(config);
  if (mode != "uffd" && mode != "kernel") throw std::invalid_argument("tendril: stack mode must be uffd or kernel: " + mode);
  g_rt = Runtime{};
  g_rt.workers = std::clamp(config.workers, 1u, kMaxWorkers);
  g_rt.arena_bytes = std::min(kMaxArenaBytes, kArenaBudget / g_rt.workers);
  read_tuning_from_env();
  g_rt.w = new Worker[g_rt.workers];
  g_rt.mode = Mode::uffd;
  if (mode == "kernel" || !start_uffd_workers()) {
    if (mode == "uffd") log_line("userfaultfd unavailable (no /dev/userfaultfd access or seccomp); falling back to kernel mode");
    stop_uffd_workers();
    start_kernel_mode();
  }
  cache_init(config.cache_bytes);
  g_initialized = true;
  log_mode();
}

void stack_shutdown() noexcept {
  if (!g_initialized) return;
  if (g_rt.mode == Mode::uffd) stop_uffd_workers();  // handlers first: they read the arenas
  else guard_remove_signal_handler();
  cache_shutdown();
  for (unsigned i = 0; i < g_rt.workers; ++i)
    for (SubArena& a : g_rt.w[i].arenas) release_arena(a);
  delete[] g_rt.w;
  g_rt = Runtime{};
  g_initialized = false;
}

StackSlot stack_allocate(unsigned worker, std::size_t limit) { return stack_allocate(worker, limit, nullptr); }

StackSlot stack_allocate(unsigned worker, std::size_t limit, const void* site) {
  if (!g_initialized || worker >= g_rt.workers) throw std::system_error(EINVAL, std::generic_category(), "tendril: stack_allocate");
  std::size_t bytes = round_up_pages(std::max<std::size_t>(limit, kPage));
  unsigned cls = class_for(bytes);
  Worker& w = g_rt.w[worker];
  std::uint32_t limit_pages = std::uint32_t(bytes / kPage);
  std::uint32_t want = site && g_rt.learn_depth ? std::min(site_depth_pages(site), limit_pages) : 0;
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
  r.arena->meta[r.slot].state.store(kLive, std::memory_order_release);
  char* hi = r.arena->slot_hi(r.slot);
  return StackSlot{hi - bytes, hi, bytes, std::uint32_t(r.owner - g_rt.w) << kSlotBits | r.slot};
}

void stack_release(unsigned worker, const StackSlot& slot) noexcept {
  const unsigned cls = class_for(slot.limit);
  SlotRef r = decode_ref(slot.index, cls);
  Worker& releaser = g_rt.w[worker];
  SlotMeta& m = r.arena->meta[r.slot];
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  const std::uint32_t base = cm.base_pages.load(std::memory_order_relaxed);
  std::uint32_t resident, extent = cm.extent_pages, depth = 0;
  if (g_rt.mode == Mode::uffd) {
    resident = m.mapped_pages.load(std::memory_order_acquire);
    if (resident > base) {  // it grew: the handler mapped up to max_grow_pages below the deepest fault
      std::uint32_t deepest = m.deepest_fault.load(std::memory_order_relaxed);
      std::uint32_t ahead = deepest_mapped_ahead(m);
      extent = std::max(extent, ahead);
      if (cm.site && g_rt.learn_depth) depth = deepest_written_page(slot.hi, deepest, ahead);
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
  if (depth && cm.site && g_rt.learn_depth) site_record(cm.site, depth);
  m.state.store(kFree, std::memory_order_release);
  if (cache_enabled() && cache_put(releaser, worker, r, cls, resident, extent)) return;
  drop_released_slot(releaser, r, resident, extent);
}

void stack_set_owner(const StackSlot& slot, std::uint64_t fiber_id, const char* name) noexcept {
  SlotRef r = decode(slot);
  SlotMeta& m = r.arena->meta[r.slot];
  m.fiber_id.store(fiber_id, std::memory_order_relaxed);
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
  Worker& w = g_rt.w[worker];
  if (parking != nullptr && w.trim_on_park.load(std::memory_order_relaxed)) {
    w.trim_on_park.store(false, std::memory_order_relaxed);
    trim_unwritten_below_sp(w, *parking);
  }
  if ((++w.cache.switches & (kSwitchesPerTick - 1)) == 0) cache_tick(worker, false);
  if (g_rt.fill != Fill::move || g_rt.mode != Mode::uffd) return;
  PagePool& p = w.pool;
  std::uint64_t avail = p.produced.load(std::memory_order_relaxed) - p.consumed.load(std::memory_order_relaxed);
  if (avail < p.low_water) pool_refill(w);
}

std::size_t stack_high_water(const StackSlot& slot) noexcept {
  SlotRef r = decode(slot);
  SlotMeta& m = r.arena->meta[r.slot];
  char* lowest = lowest_resident_page(slot.lo, slot.hi);
  if (g_rt.mode == Mode::kernel) return std::size_t(slot.hi - lowest);
  // uffd mode: pages below the deepest fault may have been mapped ahead of use;
  // count them only if something was written there.
  char* deepest = slot.hi - std::size_t(m.deepest_fault.load(std::memory_order_relaxed)) * kPage;
  for (char* p = lowest; p < deepest; p += kPage)
    if (!page_is_zero(p)) return std::size_t(slot.hi - p);
  return std::size_t(slot.hi - deepest);
}

StackCounters stack_counters() {
  StackCounters c;
  c.mode = g_rt.mode == Mode::uffd ? "uffd" : "kernel";
  std::int64_t faults = 0, live = 0, cached = 0, refills = 0, pool = 0;
  std::int64_t cc[11] = {};
  for (unsigned i = 0; g_initialized && i < g_rt.workers; ++i) {
    WorkerCounters& k = g_rt.w[i].counters;
    const HandlerCounters& h = g_rt.w[i].handler_counters;
    faults += k.faults.load(std::memory_order_relaxed) + h.faults.load(std::memory_order_relaxed);
    live += k.live_pages.load(std::memory_order_relaxed) + h.live_pages.load(std::memory_order_relaxed);
    cached += k.cached_pages.load(std::memory_order_relaxed);
    refills += k.pool_refills.load(std::memory_order_relaxed);
    const CacheCounters& q = g_rt.w[i].cache.counters;
    const std::atomic<std::int64_t>* qs[11] = {&q.hits,       &q.misses,        &q.cached,        &q.dropped,
                                               &q.evicted,    &q.node_match,    &q.node_mismatch, &q.pages_trimmed,
                                               &q.stacks,     &q.pages,         &q.prepared};
    for (int j = 0; j < 11; ++j) cc[j] += qs[j]->load(std::memory_order_relaxed);
    PagePool& p = g_rt.w[i].pool;
    pool += std::int64_t(p.produced.load() - p.consumed.load());
  }
  if (g_initialized && g_rt.mode == Mode::kernel) {
    live = 0;  // the kernel does not tell us about faults: look at the page tables
    kernel_mode_scan(&live, &faults);
  }
  c.stack_faults = std::uint64_t(std::max<std::int64_t>(faults, 0));
  c.stack_pages_mapped = std::uint64_t(std::max<std::int64_t>(live, 0));
  c.cached_pages = std::uint64_t(std::max<std::int64_t>(cached, 0));
  c.pool_refills = std::uint64_t(refills);
  c.pool_pages = std::uint64_t(pool);
  std::uint64_t* out[11] = {&c.cache_hits,  &c.cache_misses, &c.stacks_cached, &c.stacks_dropped,
                            &c.stacks_evicted, &c.node_match, &c.node_mismatch, &c.pages_trimmed,
                            &c.cache_stacks, &c.cache_pages, &c.stacks_prepared};
  for (int j = 0; j < 11; ++j) *out[j] = std::uint64_t(std::max<std::int64_t>(cc[j], 0));
  return c;
}

void stack_thread_init(unsigned worker) noexcept {
  guard_thread_altstack();
  if (g_initialized && worker < g_rt.workers) g_rt.w[worker].tid.store(int(gettid()), std::memory_order_relaxed);
  if (g_initialized) cache_thread_init(worker);
  if (g_initialized && g_rt.mode == Mode::uffd && worker < g_rt.workers) handler_place_like_current_thread(g_rt.w[worker]);
}

}  // namespace tendril::detail
