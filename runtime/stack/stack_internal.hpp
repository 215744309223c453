// Private declarations shared by the files of runtime/stack/. Nothing outside
// runtime/stack/ includes this; the scheduler sees only stack.hpp.
// The design is described at the top of arena.cpp.
#pragma once

#include "stack.hpp"
#include "tendril/detail/assert.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <pthread.h>
#include <sys/uio.h>

namespace tendril::detail::stack_impl {

constexpr std::size_t kPage = 4096;
// Below this many resident pages a fault maps one page; from there on the
// stack doubles per fault, and a stack of kBurstFaultPages or more that faults
// again within a burst grows by the most one fault may (see pages_for_fault).
constexpr unsigned kSingleFaultPages = 4;
constexpr unsigned kBurstFaultPages = 2;
// A spawn site's learned depth is premapped only beyond this many pages.
constexpr unsigned kPremapMinPages = 4;
constexpr unsigned kMinClassShift = 14;  // smallest size class: 16 KiB
constexpr unsigned kNumClasses = 17;     // 16 KiB .. 1 GiB, powers of two
constexpr unsigned kSlotBits = 24;       // StackSlot::index = worker << 24 | slot
constexpr unsigned kMaxWorkers = 256;    // 32 - kSlotBits bits of worker
constexpr std::uint32_t kMaxSlotsPerArena = 1u << kSlotBits;

enum class Mode { uffd, kernel };
enum class Fill { copy, move };  // how the fault handler supplies pages

enum SlotState : std::uint32_t { kNever = 0, kLive = 1, kFree = 2 };

// Per-slot side table, kept in ordinary (unregistered) memory so that the uffd
// handler and the SIGSEGV handler can read it without faulting into the arena.
// 32 bytes: every live fiber touches its entry, so each byte here is a byte of
// every idle fiber's footprint. The fiber's name lives in a third table
// (SubArena::names) that only named fibers touch.
struct alignas(32) SlotMeta {
  std::atomic<std::uint64_t> fiber_id;
  std::atomic<std::uint32_t> limit_pages;    // usable pages: lo = hi - limit_pages*kPage
  std::atomic<std::uint32_t> mapped_pages;   // resident pages in [lo, hi) (uffd mode)
  std::atomic<std::uint32_t> deepest_fault;  // deepest faulting page, in pages from hi
  std::atomic<std::uint16_t> state;          // SlotState
  std::atomic<std::uint16_t> named;          // 1: names[slot] holds the owner's name
  std::uint32_t next_free;                   // free-list link: slot number + 1, 0 = end
  std::uint32_t guard_pages;                 // kernel mode: guard installed on [base, base+guard)
};
static_assert(sizeof(SlotMeta) == 32);

constexpr std::size_t kSlotNameBytes = 32;  // names longer than 31 bytes are cut
struct SlotName {
  char text[kSlotNameBytes];
};

// Per-slot state of idle-stack compaction, a side table next to SlotMeta
// that only compacted slots touch (MAP_NORESERVE). The compacted run is
// [hi - pages * kPage, hi), the top page included; the buffer holds
// its bytes from `skip` on (what lies below the fiber's stack pointer minus
// the red zone is dead and comes back as zeros). `state` is the one word the
// worker that compacts, the worker that restores and the fault handler
// settle the slot with (see the design comment in arena.cpp):
//   kResident -> kMoving (compactor; pages on their way out, handler waits)
//   kMoving -> kStaged (compactor; pages in its staging area, handler may copy back)
//   kStaged -> kCompacted (compactor; buffer published) or -> kRestoring (handler)
//   kCompacted -> kRestoring (the switching-in worker or the handler, by CAS)
//   kRestoring -> kResident (whoever restores; the buffer is then unused, and
//     only a worker frees it)
enum CompactState : std::uint32_t { kResident = 0, kMoving, kStaged, kCompacted, kRestoring };
struct SlotCompact {
  std::atomic<std::uint32_t> state;
  // Pages in the compacted run. Atomic because the fault handler reads it
  // before it can claim the run (to tell a fault in the run from growth
  // below it), while a later compaction of the same slot may write it.
  std::atomic<std::uint32_t> pages;
  std::uint32_t skip;       // bytes at the bottom of the run not saved
  std::uint32_t staged_at;  // first page of the run in the owner's staging area (while kMoving / kStaged)
  char* buf;                // (pages * kPage - skip) bytes, malloc'd by a worker
};
static_assert(sizeof(SlotCompact) == 24);
// Longest run one compaction handles.
constexpr unsigned kMaxCompactPages = 64;
// A worker's staging area: compactions of its slots move their runs to
// successive places in it and leave them there once copied, so that one
// MADV_DONTNEED (one TLB shootdown) gives back the pages of many of them
// (stack_release_staged_pages).
constexpr unsigned kStagingPages = 4 * kMaxCompactPages;

// Per-slot state of the free-stack cache, a second side table next
// to SlotMeta (so SlotMeta keeps its 32 bytes). Touched only by the thread that
// holds the slot (allocating / releasing worker); hand-offs go through the
// depot lock, the arena free lists or the scheduler. base_pages is also read by
// stack_counters() in kernel mode, hence atomic.
struct SlotCacheMeta {
  const void* site;                         // spawn site of the current / last user
  std::atomic<std::uint32_t> base_pages;    // resident pages when handed out
  std::uint32_t extent_pages;               // no page below hi - extent is resident (while free/handed out)
  std::uint32_t checked_pages;              // pages [hi - checked, hi) verified on node `node`
  std::int16_t node;                        // -1: unknown
  std::uint16_t pad;
};
static_assert(sizeof(SlotCacheMeta) == 24);

// One reservation: the slots of one size class owned by one worker. All of it
// is a single VMA (registered with that worker's uffd in uffd mode).
struct SubArena {
  std::atomic<char*> base{nullptr};  // published once, read by the fault handlers
  std::size_t bytes = 0;
  std::size_t class_bytes = 0;       // largest limit served by this class
  std::size_t stride = 0;            // class_bytes + minimum guard
  std::uint32_t capacity = 0;        // slots that fit
  SlotMeta* meta = nullptr;          // capacity entries, MAP_NORESERVE
  SlotCacheMeta* cmeta = nullptr;    // capacity entries, MAP_NORESERVE
  SlotName* names = nullptr;         // capacity entries, MAP_NORESERVE; touched by named fibers only
  SlotCompact* compact = nullptr;    // capacity entries, MAP_NORESERVE; touched by compacted slots only
  // The owner's control block (stack_set_owner's ctl), capacity entries,
  // MAP_NORESERVE: how the fiber dump and gdb get from a live slot to its
  // FiberCtl, which lives off the stack.
  std::atomic<const void*>* ctl = nullptr;
  std::atomic<std::uint32_t> carved{0};  // slots handed out at least once (bump pointer)
  // Fibers spawned on the owner that get their stack when they first run
  // (stack_defer): the arena keeps that many slots uncarved for them, so
  // carved + deferred() <= capacity. Three counts so that the owner's spawn
  // and bind, the common pair, write with plain stores; only a fiber bound
  // or dropped on another worker pays a locked add.
  std::atomic<std::uint32_t> deferred_promised{0};    // owner only
  std::atomic<std::uint32_t> deferred_kept_here{0};   // owner only
  std::atomic<std::uint32_t> deferred_kept_away{0};   // other workers
  std::uint32_t deferred() const noexcept {
    // Read on another thread the counts may disagree for a moment (a kept
    // promise seen before it was made): never below zero.
    const auto d = std::int32_t(deferred_promised.load(std::memory_order_relaxed) -
                                deferred_kept_here.load(std::memory_order_relaxed) -
                                deferred_kept_away.load(std::memory_order_relaxed));
    return d > 0 ? std::uint32_t(d) : 0;
  }
  std::uint32_t local_free = 0;      // owner-only free list (slot + 1)
  std::uint32_t local_count = 0;
  std::atomic<std::uint32_t> remote_free{0};  // push-only Treiber stack fed by other workers

  char* slot_base(std::uint32_t slot) const { return base.load(std::memory_order_relaxed) + slot * stride; }
  char* slot_hi(std::uint32_t slot) const { return slot_base(slot) + stride; }
};

// Page pool for Fill::move: a ring of pre-populated pages outside the arena.
// Single producer (the worker, in stack_on_switch) and single consumer (that
// worker's fault handler thread); no locks.
struct PagePool {
  char* base = nullptr;
  std::uint32_t pages = 0;                 // ring size
  std::atomic<std::uint64_t> produced{0};  // pages ever populated (worker writes)
  std::atomic<std::uint64_t> consumed{0};  // pages ever moved out (handler writes)
  std::uint32_t low_water = 0;
};

// Counters are per worker so neither the handler nor the worker shares a
// cache line with another worker; stack_counters() sums them. Signed because a
// slot allocated on one worker may be released (and debited) on another.
// Each counter has exactly one writer, so it is bumped with a relaxed load and
// store instead of a locked read-modify-write (allocate and release are on the
// spawn path). stack_counters() sums the two sides.
struct alignas(64) WorkerStackCounters {  // written by the worker (or, for the
                                     // plain-thread index, under its mutex)
  std::atomic<std::int64_t> faults{0};        // kernel mode: growth seen at release
  std::atomic<std::int64_t> live_pages{0};
  std::atomic<std::int64_t> cached_pages{0};
  std::atomic<std::int64_t> pool_refills{0};
};
struct alignas(64) HandlerStackCounters {  // written by the worker's fault handler thread
  std::atomic<std::int64_t> faults{0};
  std::atomic<std::int64_t> live_pages{0};
  std::atomic<std::int64_t> restores{0};  // compacted runs it put back
};
struct alignas(64) CompactCounters {  // written by the worker (TENDRIL_STACK_COMPACT_COUNTERS)
#define TENDRIL_COMPACT_COUNTER(storage, field, doc) std::atomic<std::int64_t> storage{0};
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_COMPACT_COUNTER)
#undef TENDRIL_COMPACT_COUNTER
};

inline void add_single_writer(std::atomic<std::int64_t>& c, std::int64_t delta) noexcept {
  c.store(c.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}
inline void bump_single_writer(std::atomic<std::uint32_t>& c) noexcept {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// ---- the free-stack cache (cache.cpp) ----------------------------------------
constexpr unsigned kMagSlots = 32;      // stacks per magazine
constexpr unsigned kTrimBatch = 16;     // ranges per batched MADV_DONTNEED
constexpr unsigned kMaxNodes = 64;

struct CacheEntry {
  std::uint32_t ref;     // StackSlot::index of the slot (owner << 24 | slot)
  std::uint16_t pages;   // resident pages it holds
  std::uint16_t extent : 15;  // depth (pages from hi) below which nothing is resident
  std::uint16_t pending : 1;  // its trim is still in the worker's TrimBatch
};
static_assert(sizeof(CacheEntry) == 8);

struct Magazine {
  Magazine* next = nullptr;
  std::uint32_t count = 0;
  std::uint32_t pages = 0;  // sum of e[i].pages
  bool prepared = false;    // filled ahead by an idle worker (see stack_prepare_ahead)
  CacheEntry e[kMagSlots];
};

// Full and empty magazines of one (node, class). Taken with a try-lock only:
// a busy depot counts as empty (allocate) or full (release).
struct alignas(64) Depot {
  std::atomic<bool> busy{false};
  std::atomic<std::uint32_t> nfull_hint{0};  // racy peek, to skip an empty depot without the lock
  Magazine* full = nullptr;
  std::uint32_t nfull = 0;
  Magazine* empty = nullptr;
  std::uint32_t nempty = 0;
  std::uint32_t min_full = 0;  // low watermark of nfull since the last decay
  std::uint64_t pages = 0;     // resident pages in the full magazines
  bool try_lock() noexcept { return !busy.load(std::memory_order_relaxed) && !busy.exchange(true, std::memory_order_acquire); }
  // Requires the lock. The caller accounts depot_pages.
  void push_full(Magazine* m) noexcept {
    m->next = full;
    full = m;
    ++nfull;
    pages += m->pages;
    nfull_hint.store(nfull, std::memory_order_relaxed);
  }
  void unlock() noexcept { busy.store(false, std::memory_order_release); }
};

struct alignas(64) CacheCounters {  // single writer: the worker index that owns it
#define TENDRIL_CACHE_COUNTER(storage, field, doc) std::atomic<std::int64_t> storage{0};
  TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_CACHE_COUNTER)
#undef TENDRIL_CACHE_COUNTER
  std::atomic<std::int64_t> stacks{0};  // gauge (deltas; summed over workers): stacks in the cache
};

struct TrimBatch {
  struct iovec v[kTrimBatch];
  unsigned n = 0;
};

struct WorkerCache {
  Magazine* mag[kNumClasses] = {};
  std::uint64_t local_pages = 0;             // pages in this worker's magazines
  std::uint32_t activity[kNumClasses] = {};  // cache operations per class
  std::uint32_t activity_seen[kNumClasses] = {};
  // Set by the worker's own thread at start, read by idle workers of other
  // threads (stack_prepare_ahead): hence atomic.
  std::atomic<std::int32_t> node_{0};
  int node() const noexcept { return node_.load(std::memory_order_relaxed); }
  void set_node(int n) noexcept { node_.store(n, std::memory_order_relaxed); }
  std::uint32_t switches = 0;
  std::uint64_t epoch = 0;  // last epoch this worker decayed its magazines in
  TrimBatch batch;
  CacheCounters counters;
  // Stacks prepared ahead (cache.cpp, cache_prepare_ahead). The owner bumps
  // `demand` by one per fresh slot it had to carve and by a magazine's count
  // per prepared magazine it took; idle workers of its node read it.
  std::atomic<std::uint32_t> demand{0};
  std::atomic<std::uint32_t> demand_cls{0};    // class and limit of its latest fresh carve
  std::atomic<std::uint32_t> demand_limit{0};  // (pages)
  std::uint32_t demand_seen[kMaxWorkers] = {};  // per other worker: demand already answered
  Magazine* ahead = nullptr;                    // magazine being prepared; its pages count in depot_pages
  unsigned ahead_cls = 0;
};

struct alignas(64) WorkerStacks {
  SubArena arenas[kNumClasses];
  int uffd = -1;
  int stop_fd = -1;  // eventfd that tells the handler thread to exit
  pthread_t handler{};
  bool handler_running = false;
  PagePool pool;
  WorkerStackCounters counters;
  HandlerStackCounters handler_counters;
  WorkerCache cache;
  // The worker thread (set by stack_thread_init), so that a fault handler can
  // tell which worker a faulting thread is; and that worker's note, set by a
  // handler that mapped pages ahead of one of its fibers, to trim what the
  // fiber did not use when it parks (see trim_unwritten_below_sp).
  std::atomic<int> tid{0};
  std::atomic<bool> trim_on_park{false};
  // Compaction. `staging` (kStagingPages) is registered with this worker's
  // uffd (UFFDIO_MOVE needs a registered destination); its first
  // `staging_used` pages hold runs already copied out (dead, given back
  // together) and the run of a compaction under way. The scratch areas
  // (kMaxCompactPages) are not registered: the worker's and the handler's,
  // to rebuild pages for UFFDIO_COPY.
  char* staging = nullptr;
  // Held (try-lock only) by whichever worker is compacting a slot of this
  // worker's arenas or giving back its staged pages: any worker may compact
  // any slot, through the owner's staging area and uffd. The fault handler
  // never takes it. staging_used is read and written only under it.
  std::atomic<bool> staging_busy{false};
  std::uint32_t staging_used = 0;
  char* scratch = nullptr;
  char* handler_scratch = nullptr;
  CompactCounters compact_counters;
};

struct StackRuntime {
  Mode mode = Mode::kernel;
  Fill fill = Fill::copy;
  unsigned workers = 0;
  unsigned max_grow_pages = 1;  // pages mapped per fault at most (doubling up to this)
  std::uint64_t burst_ns = 0;   // faults of one slot this close together are a burst (Options::stack_burst)
  std::size_t arena_bytes = 0;  // reservation size per (worker, class)
  bool guard_madvise = false;   // kernel mode: MADV_GUARD_INSTALL works
  bool learn_depth = true;      // learned depth per spawn site (Options::stack_learn_depth)
  // uffd mode: the handler allocates the pages of a fault on the faulting
  // worker's NUMA node, not its own (the slot owner's): a stolen fiber's stack
  // grows on the node it runs on. Where there is more than one node, unless
  // Options::stack_place says otherwise.
  bool place_for_faulter = false;
  bool compact = false;         // idle-stack compaction is on (uffd mode with UFFDIO_MOVE)
  bool defer = true;            // stacks may be bound at a fiber's first run (Options::stack_defer)
  WorkerStacks* w = nullptr;
};

extern StackRuntime g_stacks;

// Where an address falls in the arenas.
struct Located {
  WorkerStacks* worker = nullptr;
  SubArena* arena = nullptr;
  std::uint32_t slot = 0;
  char* hi = nullptr;
  char* lo = nullptr;
  bool found() const { return arena != nullptr; }
};

Located locate_in_worker(WorkerStacks& w, std::uintptr_t addr) noexcept;
Located locate_any(std::uintptr_t addr) noexcept;

// fault_handler.cpp
bool uffd_open_and_register_api(WorkerStacks& w) noexcept;
bool uffd_register_range(WorkerStacks& w, char* base, std::size_t bytes) noexcept;
bool uffd_map_top_page(WorkerStacks& w, char* page) noexcept;
// Maps zero pages into [lo, lo + pages*kPage) ahead of use (pages that
// already exist are skipped). Returns the pages it mapped.
unsigned uffd_populate(WorkerStacks& w, char* lo, unsigned pages) noexcept;
bool handler_start(WorkerStacks& w, unsigned index) noexcept;
// Compaction's userfaultfd operations (fault_handler.cpp). Moves `pages`
// pages at src (a slot of w's arenas) to w's staging area from its page
// `at` on; returns the pages moved (a prefix).
unsigned uffd_move_to_staging(WorkerStacks& w, unsigned at, char* src, unsigned pages) noexcept;
// Moves them back (a compaction that gave up before anyone could see it).
void uffd_move_from_staging(WorkerStacks& w, unsigned at, char* dst, unsigned pages) noexcept;
// Installs `pages` pages at dst from src (UFFDIO_COPY through `uffd`); waits
// out ENOMEM like a fault does, and aborts if the content cannot be put back.
void uffd_install_pages(int uffd, char* dst, const char* src, unsigned pages) noexcept;
// Rebuilds the compacted run of `c` into `scratch` (zeros, then the buffer).
void compact_rebuild(const SlotCompact& c, char* scratch) noexcept;
void handler_stop(WorkerStacks& w) noexcept;
void handler_place_like_current_thread(WorkerStacks& w) noexcept;
bool pool_create(PagePool& p) noexcept;
void pool_destroy(PagePool& p) noexcept;
void pool_refill(WorkerStacks& w) noexcept;

// cache.cpp. The arena side (arena.cpp) calls these.
struct SlotRef {
  WorkerStacks* owner;
  SubArena* arena;
  std::uint32_t slot;
};
// `numa_check`: check page locality even on a one-node machine.
void cache_init(std::size_t budget_bytes, bool numa_check) noexcept;
void cache_shutdown() noexcept;
void cache_thread_init(unsigned worker) noexcept;
bool cache_enabled() noexcept;
// Takes a cached slot of class `cls` for worker w, preferring one mapped at
// least `want_pages` deep. On success *entry describes it; the slot is out
// of the cache (gauges settled) but not yet prepared.
bool cache_take(WorkerStacks& w, unsigned cls, std::uint32_t want_pages, CacheEntry* entry) noexcept;
// Offers slot `r`, released on worker `releaser` (state already kFree, live
// pages already debited; `resident` pages are resident in it, none deeper
// than `extent` pages below hi) to the releaser's cache. Returns false if the
// cache refused it: the caller then shrinks it and frees it to its arena.
bool cache_put(WorkerStacks& releaser, const SlotRef& r, unsigned cls, std::uint32_t resident, std::uint32_t extent) noexcept;
std::uint32_t site_depth_pages(const void* site) noexcept;
// Records that worker w had to carve a fresh slot of class cls (a page
// fault's worth of work on its spawn path): idle workers prepare ahead.
void cache_note_fresh_carve(WorkerStacks& w, unsigned cls, std::uint32_t limit_pages) noexcept;
void site_record(const void* site, std::uint32_t pages) noexcept;
void cache_tick(unsigned worker, bool flush) noexcept;
unsigned cache_nodes() noexcept;  // NUMA nodes the cache tells apart
std::uint64_t cache_now_ns() noexcept;
// arena.cpp services the cache uses.
void arena_free_slot(WorkerStacks& releaser, const SlotRef& r) noexcept;  // push a free slot (top page only) to its arena
SlotRef decode_ref(std::uint32_t ref, unsigned cls) noexcept;
// Carves a fresh slot of class cls from owner's arena and maps its top page,
// from the calling (preparing) worker; the slot is left free, for the cache.
// False if the arena is not reserved yet or is full, or the page could not be
// mapped. Counts the page as cached on `preparer`.
bool arena_prepare_fresh_slot(WorkerStacks& preparer, WorkerStacks& owner, unsigned cls, std::uint32_t limit_pages,
                              CacheEntry* entry) noexcept;
std::uint32_t resident_pages_in(char* lo, char* hi) noexcept;

// guard.cpp
bool guard_probe_madvise() noexcept;
bool guard_set(char* base, std::size_t old_guard, std::size_t new_guard) noexcept;
void guard_install_signal_handler() noexcept;
void guard_remove_signal_handler() noexcept;
void guard_thread_altstack() noexcept;
[[noreturn]] void report_overflow_and_abort(const Located& loc, std::uintptr_t addr) noexcept;
void log_line(const char* text) noexcept;

}  // namespace tendril::detail::stack_impl
