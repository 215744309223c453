// The NUMA-aware free-stack cache: magazines and depots, the locality checks,
// batched trimming, the adaptive decay and the table of learned stack depths
// per spawn site. The stack layout it caches is described at the top of
// arena.cpp; measurements: bench/results/stack-design.md.
//
// # Shape
//
// Freed stacks are cached WITH THEIR PAGES MAPPED, so a spawn that hits the
// cache takes no page fault and no system call. Shape: sheaves and barns
// (SLUB) / magazines and depots (Bonwick):
//  - Each worker has one magazine (32 stacks) per size class. Exit pushes,
//    spawn pops (LIFO: the warmest stack), no locks, no atomic RMW.
//  - A full magazine moves to the depot of the worker's NUMA node (per node
//    and class), an empty one refills from it. Depots are taken with a
//    TRY-lock only: a busy depot counts as empty on spawn (-> arena) and as
//    full on exit (-> drop); nothing spins.
//  - A slot cached on another worker than its owner still faults to its
//    owner's uffd handler (correct, slower).
//
// # Locality
//
// A stack enters node N's cache only if its resident pages are on N: at
// release the pages it will KEEP are queried with move_pages(2) in query mode
// (nodes = NULL: faults nothing in; never get_mempolicy, which would), in
// batches of 64. Foreign pages are MADV_DONTNEED'd and the slot is kept; if
// its top page was foreign it is mapped again from the releasing thread
// (UFFDIO_COPY / first touch: the new page is local). Each slot remembers
// (node, depth verified), so a stack that did not grow beyond what was checked
// is not queried again; the checks are skipped entirely on a single-node
// machine unless the topology is simulated or Options::stack_numa_check is
// set. node_match / node_mismatch count released stacks (a stack finished by a
// worker on another node than its pages is a mismatch); pages_trimmed counts
// the pages given back.
//
// # Trimming
//
// A cached stack keeps at most max(16 KiB, learned depth of its spawn site)
// (<= 1 MiB, <= its limit): 16 KiB is where most server fibers stay, 1 MiB
// bounds what one deep site can pin. Deeper pages are queued in a per-worker
// batch of 16 ranges and given back with ONE process_madvise(2) (MADV_DONTNEED
// on our own pidfd, Linux 6.13+, one TLB flush on 6.16+; per-range madvise
// before that).
//
// # Budget and adaptive size
//
// Options::stack_cache_bytes (64 MiB; 0 = off) bounds the resident pages of
// cached stacks: half split evenly over the workers' magazines, half shared by
// the depots (checked when a magazine moves). The cache grows on demand: exits
// that overflow a magazine fill depots until the budget. It shrinks by epochs
// (0.5 s of CLOCK_MONOTONIC_COARSE): each depot gives back half of the
// magazines that stayed unused for a whole epoch (its low watermark), and a
// worker's magazine with no traffic for an epoch gives back half its stacks;
// evicted stacks keep only their top page (stacks_evicted). Halving per epoch
// empties an idle cache within a few seconds while a burst that returns
// within half a second finds it warm. The epoch clock is read by
// stack_maintain() (worker idle path) and every 1024 switches in
// stack_on_switch.
//
// # Learned depth
//
// A table of 1024 spawn sites (key = SpawnOptions::site, else
// &closure_ops<C>; open addressing, lock-free, no malloc) keeps the deepest
// page stacks from that site touched (recorded at release when the stack
// grew; in uffd mode pages mapped ahead by doubling are inspected for data),
// fading by 1/8 per epoch. Spawn prefers a cached stack at least that deep
// (looks at 8 magazine entries) and otherwise maps the missing depth up front
// from the spawning thread (UFFDIO_COPY, or MADV_POPULATE_WRITE in kernel
// mode): one call instead of several growth faults. Only depths beyond 16 KiB
// (kPremapMinPages) are premapped: one connection fiber of the http sample
// that went 2-3 pages deep on an error path otherwise made every later
// connection premap that depth (+45% stack pages at 10k connections).
// Options::stack_learn_depth = false turns it off.
//
// # Prepared ahead (stack_prepare_ahead)
//
// A spawn that misses the cache pays a first-touched page for the fresh
// slot's top page, on the spawning worker, while another worker may sit idle.
// An idle worker (spinning before it parks) prepares fresh stacks for a worker
// of its node whose spawns keep carving: slots of THAT worker's arena (growth
// faults stay on its handler), top pages mapped from the idle worker's thread
// (same node), 8 per call, deposited as a magazine in the node's depot where
// the spawner's next refill finds it. Demand = fresh carves + the size of each
// prepared magazine taken; at most 4 full magazines wait in a depot; pages
// count against the budget from the moment they are mapped; unused ones decay
// like any depot magazine. Spawning 1M parked fibers from one fiber on 2
// workers takes about 0.6x the time it takes without.
//
// # Invariants
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
//    stacks plus the top pages of arena-free slots); stack_cache_pages the
//    cache's.
//
// # Alternatives rejected
//  - Giving every freed stack's pages back at exit (the arena alone): each
//    spawn then pays a fault or a system call; with the cache spawn+join on
//    two workers costs a third of that.
//  - A global lock-protected free list: cross-CPU cache-line traffic on every
//    spawn and exit; magazines make the common case worker-local.
//  - get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR) for the locality check: it
//    faults the page in; move_pages in query mode does not.
#include "stack_internal.hpp"

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <new>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace tendril::detail::stack_impl {

namespace {

constexpr std::uint32_t kKeepPages = 4;         // a cached stack keeps at least 16 KiB...
constexpr std::uint32_t kMaxKeepPages = 256;    // ...and at most 1 MiB (learned depth)
constexpr unsigned kSites = 1024;               // learned-depth table entries (power of two)
constexpr unsigned kSiteProbes = 8;
constexpr unsigned kPreferScan = 8;             // magazine entries looked at for a deep-enough stack
constexpr unsigned kQueryBatch = 64;            // pages per move_pages call

struct Site {
  std::atomic<std::uintptr_t> key{0};
  std::atomic<std::uint32_t> depth{0};  // pages
};

struct Cache {
  bool enabled = false;
  bool check = false;          // run the locality checks
  unsigned nodes = 1;
  std::uint64_t local_cap = 0;  // pages a worker's magazines may hold
  std::uint64_t depot_cap = 0;  // pages all depots together may hold
  Depot* depots = nullptr;      // nodes * kNumClasses
  std::atomic<std::int64_t> depot_pages{0};
  std::atomic<std::uint64_t> decayed_epoch{0};
  int pidfd = -1;
  std::atomic<bool> pmadv_ok{true};
};

Cache g_cache;
Site g_sites[kSites];

StackTopology g_topo;  // test override (members may be null)
std::uint64_t (*g_clock)() = nullptr;

// ---- topology ----------------------------------------------------------------

long real_query_pages(unsigned long count, void** pages, int* status) {
  return move_pages(0, count, pages, nullptr, status, 0);  // query mode: faults nothing in
}

unsigned real_nodes() {
  if (numa_available() < 0) return 1;
  int n = numa_num_configured_nodes();
  return unsigned(std::clamp(n, 1, int(kMaxNodes)));
}

// getcpu(2) gives the node directly (libnuma's numa_node_of_cpu allocates a
// cache it never frees).
int node_of_current_cpu() {
  unsigned cpu = 0, node = 0;
  if (getcpu(&cpu, &node) != 0) return 0;
  return int(node);
}

int clamp_node(int n) { return std::clamp(n, 0, int(g_cache.nodes) - 1); }

long query_pages(unsigned long count, void** pages, int* status) {
  return (g_topo.query_pages ? g_topo.query_pages : real_query_pages)(count, pages, status);
}

Depot& depot(int node, unsigned cls) { return g_cache.depots[unsigned(node) * kNumClasses + cls]; }

// ---- learned depth per spawn site --------------------------------------------

unsigned site_hash(const void* site) {
  auto k = reinterpret_cast<std::uintptr_t>(site);
  k ^= k >> 29;
  k *= 0xbf58476d1ce4e5b9ull;
  k ^= k >> 32;
  return unsigned(k) & (kSites - 1);
}

// ---- batched trimming --------------------------------------------------------

void clear_pending(WorkerCache& c) {
  for (Magazine* m : c.mag)
    if (m)
      for (std::uint32_t i = 0; i < m->count; ++i) m->e[i].pending = 0;
}

void flush_batch(WorkerCache& c) {
  TrimBatch& b = c.batch;
  if (b.n == 0) return;
  bool done = false;
  if (g_cache.pidfd >= 0 && g_cache.pmadv_ok.load(std::memory_order_relaxed)) {
    // One call (and, on Linux 6.16+, one TLB flush) for the whole batch.
    std::size_t total = 0;
    for (unsigned i = 0; i < b.n; ++i) total += b.v[i].iov_len;
    long r = syscall(SYS_process_madvise, g_cache.pidfd, b.v, b.n, MADV_DONTNEED, 0u);
    if (r == long(total)) done = true;
    else if (r < 0 && (errno == EINVAL || errno == ENOSYS || errno == EPERM || errno == EBADF) &&
             g_cache.pmadv_ok.exchange(false, std::memory_order_relaxed))  // Linux < 6.13: per-range madvise
      log_line("process_madvise(MADV_DONTNEED) unavailable (Linux < 6.13); cached stacks are trimmed with one "
               "madvise per range");
  }
  if (!done)
    for (unsigned i = 0; i < b.n; ++i) madvise(b.v[i].iov_base, b.v[i].iov_len, MADV_DONTNEED);
  b.n = 0;
  clear_pending(c);
}

// Queues [lo, hi) for MADV_DONTNEED. The slot's entry goes into this worker's
// magazine marked pending; a pending entry never leaves the worker before the
// batch is flushed (see the invariants in arena.cpp).
void queue_trim(WorkerCache& c, char* lo, char* hi) {
  if (c.batch.n == kTrimBatch) flush_batch(c);
  c.batch.v[c.batch.n++] = iovec{lo, std::size_t(hi - lo)};
}

// ---- slot helpers ------------------------------------------------------------

struct SlotView {
  SlotRef r;
  SlotMeta* m;
  SlotCacheMeta* cm;
  char* hi;
  char* lo;
};

SlotView view(std::uint32_t ref, unsigned cls) {
  SlotRef r = decode_ref(ref, cls);
  SlotMeta& m = r.arena->meta[r.slot];
  char* hi = r.arena->slot_hi(r.slot);
  return {r, &m, &r.arena->cmeta[r.slot], hi, hi - std::size_t(m.limit_pages.load(std::memory_order_relaxed)) * kPage};
}

// Gives a cached stack back to its arena with only its top page (eviction).
void evict(unsigned worker, const CacheEntry& e, unsigned cls) {
  WorkerStacks& w = g_stacks.w[worker];
  SlotView v = view(e.ref, cls);
  if (e.pages > 1 || e.extent > 1) madvise(v.lo, std::size_t(v.hi - kPage - v.lo), MADV_DONTNEED);
  if (g_stacks.mode == Mode::uffd) v.m->mapped_pages.store(1, std::memory_order_relaxed);
  v.cm->extent_pages = 1;
  v.cm->checked_pages = std::min<std::uint32_t>(v.cm->checked_pages, 1);
  CacheCounters& k = w.cache.counters;
  add_single_writer(k.evicted, 1);
  add_single_writer(k.pages_trimmed, e.pages - 1);
  add_single_writer(k.stacks, -1);
  add_single_writer(k.pages, -std::int64_t(e.pages));
  add_single_writer(w.counters.cached_pages, -std::int64_t(e.pages - 1));
  arena_free_slot(w, v.r);
}

// ---- depots ------------------------------------------------------------------

Magazine* new_magazine() { return new (std::nothrow) Magazine(); }

// Moves worker w's full magazine of class cls to its node's depot and gives it
// an empty one. Never waits: a busy or over-budget depot refuses.
bool deposit(WorkerStacks& w, unsigned cls) {
  WorkerCache& c = w.cache;
  Magazine* full = c.mag[cls];
  flush_batch(c);  // pending trims must be done before a stack leaves this worker
  for (std::uint32_t i = 0; kChecks && i < full->count; ++i)
    TENDRIL_ASSERT(!full->e[i].pending, "a cached stack whose trim is queued never leaves before the batch is flushed");
  Depot& d = depot(c.node(), cls);
  // Full depots refuse without their lock: once the budget is reached every
  // exit that fills a magazine lands here, and in a mass exit both workers
  // bounced the lock's line for nothing (re-checked under the lock).
  if (std::uint64_t(g_cache.depot_pages.load(std::memory_order_relaxed)) + full->pages > g_cache.depot_cap)
    return false;
  if (!d.try_lock()) return false;
  std::int64_t now = g_cache.depot_pages.load(std::memory_order_relaxed);
  Magazine* empty = nullptr;
  if (std::uint64_t(now) + full->pages <= g_cache.depot_cap) {
    if (d.empty) {
      empty = d.empty;
      d.empty = empty->next;
      --d.nempty;
    } else {
      empty = new_magazine();
    }
  }
  // Read before publishing: once in the depot (and unlocked) the magazine may
  // already be another worker's.
  const std::uint32_t full_pages = full->pages;
  if (empty) {
    d.push_full(full);
    g_cache.depot_pages.fetch_add(full_pages, std::memory_order_relaxed);
  }
  d.unlock();
  if (!empty) return false;
  c.local_pages -= full_pages;
  empty->next = nullptr;
  empty->count = 0;
  empty->pages = 0;
  empty->prepared = false;
  c.mag[cls] = empty;
  return true;
}

// Swaps worker w's empty magazine of class cls for a full one from its node's depot.
bool refill(WorkerStacks& w, unsigned cls) {
  WorkerCache& c = w.cache;
  Depot& d = depot(c.node(), cls);
  if (d.nfull_hint.load(std::memory_order_relaxed) == 0 || !d.try_lock()) return false;
  Magazine* full = d.full;
  if (!full || c.local_pages + full->pages > g_cache.local_cap) {
    d.unlock();
    return false;
  }
  d.full = full->next;
  --d.nfull;
  d.min_full = std::min(d.min_full, d.nfull);
  d.pages -= full->pages;
  d.nfull_hint.store(d.nfull, std::memory_order_relaxed);
  g_cache.depot_pages.fetch_sub(full->pages, std::memory_order_relaxed);
  if (Magazine* old = c.mag[cls]) {
    old->next = d.empty;
    d.empty = old;
    ++d.nempty;
  }
  d.unlock();
  full->next = nullptr;
  if (full->prepared) {  // stacks an idle worker made for us: ask for as many again
    full->prepared = false;
    c.demand.store(c.demand.load(std::memory_order_relaxed) + full->count, std::memory_order_relaxed);
  }
  c.mag[cls] = full;
  c.local_pages += full->pages;
  return true;
}

// Once per epoch, by whichever worker gets there first: each depot gives back
// half (rounded up) of the magazines that sat unused for the whole epoch.
void decay_depots(unsigned worker) {
  for (unsigned n = 0; n < g_cache.nodes; ++n)
    for (unsigned cls = 0; cls < kNumClasses; ++cls) {
      Depot& d = depot(int(n), cls);
      if (!d.try_lock()) continue;  // next epoch (once per epoch: no peek without the lock)
      std::uint32_t release = (d.min_full + 1) / 2;
      Magazine* victims = nullptr;
      for (std::uint32_t i = 0; i < release && d.full; ++i) {
        Magazine* m = d.full;
        d.full = m->next;
        --d.nfull;
        d.pages -= m->pages;
        g_cache.depot_pages.fetch_sub(m->pages, std::memory_order_relaxed);
        m->next = victims;
        victims = m;
      }
      d.min_full = d.nfull;
      d.nfull_hint.store(d.nfull, std::memory_order_relaxed);
      // Keep a couple of empty magazines for the next burst; free the rest.
      while (d.nempty > 2) {
        Magazine* m = d.empty;
        d.empty = m->next;
        --d.nempty;
        delete m;
      }
      d.unlock();
      while (victims) {
        Magazine* m = victims;
        victims = m->next;
        for (std::uint32_t i = 0; i < m->count; ++i) evict(worker, m->e[i], cls);
        m->count = 0;
        m->pages = 0;
        if (d.try_lock()) {
          m->next = d.empty;
          d.empty = m;
          ++d.nempty;
          d.unlock();
        } else {
          delete m;
        }
      }
    }
  for (Site& s : g_sites) {  // learned depths fade unless stacks keep growing that deep
    std::uint32_t v = s.depth.load(std::memory_order_relaxed);
    if (v) s.depth.store(v - (v + 7) / 8, std::memory_order_relaxed);
  }
}

// A worker's own magazine of a class that saw no cache traffic for an epoch
// gives back half its stacks.
void decay_local(unsigned worker) {
  WorkerCache& c = g_stacks.w[worker].cache;
  for (unsigned cls = 0; cls < kNumClasses; ++cls) {
    Magazine* m = c.mag[cls];
    bool idle = c.activity[cls] == c.activity_seen[cls];
    c.activity_seen[cls] = c.activity[cls];
    if (!m || m->count == 0 || !idle) continue;
    flush_batch(c);
    std::uint32_t release = (m->count + 1) / 2;
    for (std::uint32_t i = 0; i < release; ++i) {
      CacheEntry e = m->e[--m->count];
      m->pages -= e.pages;
      c.local_pages -= e.pages;
      evict(worker, e, cls);
    }
  }
}

// ---- stacks prepared ahead by idle workers --------------------------------------
// A spawn that misses the cache carves a fresh slot and maps its top page: a
// first-touched page, ~2 us on this VM, paid by the spawning worker while
// another worker may sit idle. As the kernel refills its per-CPU arrays off
// the fault path, an idle worker (spinning before it parks) prepares fresh
// stacks for a worker of its node whose spawns keep carving: slots of THAT
// worker's arena (so their growth faults go to its handler, on its CPU), with
// top pages mapped from the idle worker's thread (same node), in a magazine
// it then deposits in the node's depot, where the spawner's next refill finds
// it. Demand is explicit: fresh carves, plus the size of each prepared
// magazine the spawner took; at most kAheadMagazines full magazines wait in
// a depot, their pages count against the cache budget from the moment they
// are mapped, and unused ones decay like any depot magazine.

constexpr std::uint32_t kAheadTrigger = 8;     // unanswered demand that starts preparing
constexpr std::uint32_t kAheadBatch = 8;       // stacks per call, so the idle worker looks for work often
constexpr std::uint32_t kAheadMagazines = 4;   // full magazines a depot may hold before we stop
constexpr std::uint32_t kAheadBacklog = kAheadMagazines * kMagSlots * 2;  // older demand is forgotten

// Publishes this worker's magazine of prepared stacks in its node's depot.
// Its pages are in depot_pages already. Never waits. True if nothing is
// waiting to be published now (an empty magazine stays, for the next batch).
bool publish_ahead(WorkerCache& c) {
  Magazine* m = c.ahead;
  if (!m || m->count == 0) return true;
  Depot& d = depot(c.node(), c.ahead_cls);
  if (!d.try_lock()) return false;
  d.push_full(m);
  d.unlock();
  c.ahead = nullptr;
  return true;
}

// Prepares up to kAheadBatch fresh stacks of `owner`'s class cls. Returns how many.
std::uint32_t prepare_batch(WorkerStacks& me, WorkerStacks& owner, unsigned cls, std::uint32_t limit_pages) {
  WorkerCache& c = me.cache;
  if (c.ahead && c.ahead_cls != cls) {
    if (!publish_ahead(c)) return 0;
    if (c.ahead) c.ahead_cls = cls;  // it was empty: reuse it for this class
  }
  if (depot(c.node(), cls).nfull_hint.load(std::memory_order_relaxed) >= kAheadMagazines) return 0;
  if (!c.ahead) {
    if (!(c.ahead = new_magazine())) return 0;
    c.ahead->prepared = true;
    c.ahead_cls = cls;
  }
  Magazine* m = c.ahead;
  CacheCounters& k = c.counters;
  std::uint32_t made = 0;
  while (made < kAheadBatch && m->count < kMagSlots) {
    // Reserve the page in the budget before mapping it.
    if (std::uint64_t(g_cache.depot_pages.fetch_add(1, std::memory_order_relaxed)) + 1 > g_cache.depot_cap) {
      g_cache.depot_pages.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
    CacheEntry e;
    if (!arena_prepare_fresh_slot(me, owner, cls, limit_pages, &e)) {
      g_cache.depot_pages.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
    SlotCacheMeta& cm = decode_ref(e.ref, cls).arena->cmeta[e.ref & (kMaxSlotsPerArena - 1)];
    cm.site = nullptr;
    if (g_cache.check) {  // mapped from this thread: on this worker's node
      cm.node = std::int16_t(c.node());
      cm.checked_pages = 1;
    }
    m->e[m->count++] = e;
    m->pages += 1;
    ++made;
    add_single_writer(k.prepared, 1);
    add_single_writer(k.stacks, 1);
    add_single_writer(k.pages, 1);
  }
  if (m->count == kMagSlots) publish_ahead(c);
  return made;
}

// ---- locality check ----------------------------------------------------------

// Checks the resident pages at depths [from, to) (pages from hi) of a slot
// against `node` and gives foreign ones back. Returns the number released, or
// -1 if the query failed (nothing known).
long release_foreign_pages(char* hi, std::uint32_t from, std::uint32_t to, int node, bool* top_foreign) {
  void* pages[kQueryBatch];
  int status[kQueryBatch];
  long foreign = 0;
  *top_foreign = false;
  for (std::uint32_t d = from; d < to;) {
    unsigned n = unsigned(std::min<std::uint32_t>(kQueryBatch, to - d));
    for (unsigned i = 0; i < n; ++i) pages[i] = hi - std::size_t(d + i + 1) * kPage;
    if (query_pages(n, pages, status) != 0) return foreign ? foreign : -1;
    // Give back runs of foreign pages with one madvise each (pages[] descends).
    for (unsigned i = 0; i < n;) {
      if (status[i] < 0 || status[i] == node) {
        ++i;
        continue;
      }
      unsigned j = i;
      while (j + 1 < n && status[j + 1] >= 0 && status[j + 1] != node) ++j;
      madvise(pages[j], std::size_t(j - i + 1) * kPage, MADV_DONTNEED);
      foreign += j - i + 1;
      if (d + i == 0) *top_foreign = true;
      i = j + 1;
    }
    d += n;
  }
  return foreign;
}

}  // namespace

// ---- entry points used by arena.cpp ------------------------------------------

bool cache_enabled() noexcept { return g_cache.enabled; }

unsigned cache_nodes() noexcept { return g_cache.nodes; }

std::uint64_t cache_now_ns() noexcept {
  if (g_clock) return g_clock();
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::uint64_t(ts.tv_sec) * 1000000000ull + std::uint64_t(ts.tv_nsec);
}

void cache_init(std::size_t budget_bytes, bool numa_check) noexcept {
  g_cache.enabled = budget_bytes >= kPage && g_stacks.workers > 0;
  g_cache.nodes = g_topo.nodes ? std::min<unsigned>(g_topo.nodes, kMaxNodes) : real_nodes();
  g_cache.check = g_cache.nodes > 1 || g_topo.check_single_node;
  if (numa_check) g_cache.check = true;
  std::uint64_t pages = budget_bytes / kPage;
  g_cache.local_cap = pages / (2 * std::uint64_t(g_stacks.workers));
  g_cache.depot_cap = pages - g_cache.local_cap * g_stacks.workers;
  g_cache.depot_pages.store(0);
  g_cache.decayed_epoch.store(cache_now_ns() / kStackCacheEpochNs);
  g_cache.depots = g_cache.enabled ? new (std::nothrow) Depot[g_cache.nodes * kNumClasses] : nullptr;
  if (!g_cache.depots) g_cache.enabled = false;
  g_cache.pidfd = g_cache.enabled ? int(syscall(SYS_pidfd_open, getpid(), 0u)) : -1;
  g_cache.pmadv_ok.store(g_cache.pidfd >= 0);
  for (unsigned i = 0; i < g_stacks.workers; ++i) {
    WorkerCache& c = g_stacks.w[i].cache;
    c.set_node(g_topo.worker_node ? clamp_node(g_topo.worker_node(i)) : 0);
    c.epoch = cache_now_ns() / kStackCacheEpochNs;
  }
  for (Site& s : g_sites) {
    s.key.store(0, std::memory_order_relaxed);
    s.depth.store(0, std::memory_order_relaxed);
  }
}

void cache_shutdown() noexcept {
  for (unsigned i = 0; g_stacks.w && i < g_stacks.workers; ++i) {
    for (Magazine*& m : g_stacks.w[i].cache.mag) {
      delete m;
      m = nullptr;
    }
    delete g_stacks.w[i].cache.ahead;
    g_stacks.w[i].cache.ahead = nullptr;
  }
  if (g_cache.depots) {
    for (unsigned i = 0; i < g_cache.nodes * kNumClasses; ++i)
      for (Magazine* list : {g_cache.depots[i].full, g_cache.depots[i].empty})
        while (list) {
          Magazine* next = list->next;
          delete list;
          list = next;
        }
    delete[] g_cache.depots;
  }
  if (g_cache.pidfd >= 0) close(g_cache.pidfd);
  g_cache.depots = nullptr;
  g_cache.pidfd = -1;
  g_cache.enabled = false;
}

void cache_thread_init(unsigned worker) noexcept {
  if (worker >= g_stacks.workers) return;
  g_stacks.w[worker].cache.set_node(clamp_node(g_topo.worker_node ? g_topo.worker_node(worker) : node_of_current_cpu()));
}

std::uint32_t site_depth_pages(const void* site) noexcept {
  unsigned h = site_hash(site);
  auto key = reinterpret_cast<std::uintptr_t>(site);
  for (unsigned i = 0; i < kSiteProbes; ++i) {
    Site& s = g_sites[(h + i) & (kSites - 1)];
    std::uintptr_t k = s.key.load(std::memory_order_acquire);
    if (k == key) return s.depth.load(std::memory_order_relaxed);
    if (k == 0) return 0;
  }
  return 0;
}

// A site's depth follows what its fibers typically reach, not the deepest one
// ever seen: fibers of one site (a server's connection fibers, say) mostly
// stay shallow, and every page premapped beyond what a fiber uses is memory
// that each of thousands of parked fibers keeps. The first record is taken
// as is; deeper ones pull the depth halfway up (rounding up, so a site that
// always needs D pages reaches D), shallower ones an eighth down.
static std::uint32_t blend_site_depth(std::uint32_t old, std::uint32_t pages) noexcept {
  if (old == 0) return pages;
  if (pages >= old) return old + (pages - old + 1) / 2;
  return old - (old - pages) / 8;
}

void site_record(const void* site, std::uint32_t pages) noexcept {
  unsigned h = site_hash(site);
  auto key = reinterpret_cast<std::uintptr_t>(site);
  pages = std::min(pages, kMaxKeepPages);
  for (unsigned i = 0; i < kSiteProbes; ++i) {
    Site& s = g_sites[(h + i) & (kSites - 1)];
    std::uintptr_t k = s.key.load(std::memory_order_acquire);
    if (k == 0) {
      if (!s.key.compare_exchange_strong(k, key, std::memory_order_acq_rel) && k != key) continue;
      k = key;
    }
    if (k != key) continue;
    s.depth.store(blend_site_depth(s.depth.load(std::memory_order_relaxed), pages), std::memory_order_relaxed);
    return;
  }
  // Table region full: this site is not learned (a fixed-size table, no malloc).
}

void cache_note_fresh_carve(WorkerStacks& w, unsigned cls, std::uint32_t limit_pages) noexcept {
  WorkerCache& c = w.cache;
  c.demand_cls.store(cls, std::memory_order_relaxed);
  c.demand_limit.store(limit_pages, std::memory_order_relaxed);
  c.demand.store(c.demand.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

namespace {

// Takes entry `pick` out of magazine m (the top one moves into its place)
// and settles the gauges.
void take_entry(WorkerStacks& w, Magazine* m, std::uint32_t pick, CacheEntry* out) noexcept {
  WorkerCache& c = w.cache;
  const std::uint32_t top = m->count - 1;
  TENDRIL_ASSERT(!m->e[pick].pending, "a cached stack whose trim is queued never leaves before the batch is flushed");
  TENDRIL_ASSERT(m->e[pick].pages >= 1, "a cached stack's top page is always resident");
  *out = m->e[pick];
  m->e[pick] = m->e[top];
  --m->count;
  m->pages -= out->pages;
  c.local_pages -= out->pages;
  out->pending = 0;
  CacheCounters& k = c.counters;
  add_single_writer(k.hits, 1);
  add_single_writer(k.stacks, -1);
  add_single_writer(k.pages, -std::int64_t(out->pages));
  add_single_writer(w.counters.cached_pages, -std::int64_t(out->pages));
}

// Everything but the common case: refill from the depot, skip stacks whose
// trim is still queued, look for one mapped as deep as the site needs.
__attribute__((noinline)) bool cache_take_searching(WorkerStacks& w, unsigned cls, std::uint32_t want_pages,
                                                    CacheEntry* out) noexcept {
  WorkerCache& c = w.cache;
  Magazine* m = c.mag[cls];
  if (!m || m->count == 0) {
    if (!refill(w, cls)) return false;
    m = c.mag[cls];
    if (m->count == 0) return false;
  }
  ++c.activity[cls];
  // LIFO (warm in cache), but skip stacks whose trim is still queued, and
  // prefer one already mapped as deep as the site is known to need.
  std::uint32_t top = m->count - 1, pick = top;
  std::uint32_t lowest = m->count > kPreferScan ? m->count - kPreferScan : 0;
  bool found = false;
  for (std::uint32_t i = top + 1; i-- > lowest;) {
    const CacheEntry& e = m->e[i];
    if (e.pending) continue;
    if (!found) pick = i, found = true;
    if (e.extent >= want_pages) {
      pick = i;
      break;
    }
  }
  if (m->e[pick].pending) flush_batch(c);
  take_entry(w, m, pick, out);
  return true;
}

}  // namespace

bool cache_take(WorkerStacks& w, unsigned cls, std::uint32_t want_pages, CacheEntry* out) noexcept {
  // The spawn path's common case, kept small enough to inline there: the
  // stack released last (LIFO: still warm) is mapped deep enough and has no
  // trim queued.
  Magazine* m = w.cache.mag[cls];
  if (m != nullptr && m->count != 0) {
    const CacheEntry& top = m->e[m->count - 1];
    if (!top.pending && top.extent >= want_pages) {
      ++w.cache.activity[cls];
      take_entry(w, m, m->count - 1, out);
      return true;
    }
  }
  return cache_take_searching(w, cls, want_pages, out);
}

namespace {

// Locality, for a stack entering worker w's cache: checks the pages in
// [hi - to pages, hi) not verified yet on w's node (deeper ones are trimmed
// anyway) and gives back the foreign ones; a foreign top page is mapped again
// from this thread, so the new page comes from this node. Updates *resident;
// returns the pages given back.
std::int64_t keep_local_pages(WorkerStacks& w, const SlotRef& r, std::uint32_t to, std::uint32_t* resident) noexcept {
  WorkerCache& c = w.cache;
  SlotMeta& m = r.arena->meta[r.slot];
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  char* hi = r.arena->slot_hi(r.slot);
  std::uint32_t from = cm.node == c.node() ? std::min(cm.checked_pages, to) : 0;
  bool top_foreign = false;
  long foreign = from < to ? release_foreign_pages(hi, from, to, c.node(), &top_foreign) : 0;
  if (foreign < 0) return 0;
  add_single_writer(foreign > 0 ? c.counters.node_mismatch : c.counters.node_match, 1);
  cm.node = std::int16_t(c.node());
  cm.checked_pages = to;
  *resident -= std::uint32_t(std::min<long>(foreign, *resident));
  if (top_foreign) {
    char* top = hi - kPage;
    bool ok = g_stacks.mode == Mode::uffd ? uffd_map_top_page(*r.owner, top)
                                          : (__atomic_fetch_add(reinterpret_cast<char*>(top), 0, __ATOMIC_RELAXED), true);
    if (ok) ++*resident;
  }
  if (g_stacks.mode == Mode::uffd) m.mapped_pages.store(*resident, std::memory_order_relaxed);
  return foreign;
}

// Depth: a cached stack keeps at most `keep` pages; the deeper ones are queued
// in c's trim batch. Updates *resident; returns the pages that will go.
std::int64_t trim_below_keep(WorkerCache& c, const SlotRef& r, std::uint32_t keep, std::uint32_t* resident) noexcept {
  SlotMeta& m = r.arena->meta[r.slot];
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  char* hi = r.arena->slot_hi(r.slot);
  char* lo = hi - std::size_t(m.limit_pages.load(std::memory_order_relaxed)) * kPage;
  char* cut = hi - std::size_t(keep) * kPage;
  const std::uint32_t kept = resident_pages_in(cut, hi);
  const std::int64_t trimmed = std::int64_t(*resident) - kept;
  *resident = kept;
  queue_trim(c, lo, cut);
  if (g_stacks.mode == Mode::uffd) m.mapped_pages.store(kept, std::memory_order_relaxed);
  cm.checked_pages = std::min(cm.checked_pages, keep);
  return trimmed;
}

}  // namespace

bool cache_put(WorkerStacks& w, const SlotRef& r, unsigned cls, std::uint32_t resident, std::uint32_t extent) noexcept {
  WorkerCache& c = w.cache;
  SlotMeta& m = r.arena->meta[r.slot];
  SlotCacheMeta& cm = r.arena->cmeta[r.slot];
  std::uint32_t limit_pages = m.limit_pages.load(std::memory_order_relaxed);
  std::uint32_t keep = kKeepPages;
  // The site's depth matters only to a stack mapped deeper than the minimum
  // keep (most are not): skip the lookup on the common release.
  if (cm.site && extent > kKeepPages) keep = std::max(keep, site_depth_pages(cm.site));
  keep = std::min({keep, kMaxKeepPages, limit_pages});
  std::uint32_t bound = std::min(resident, keep);  // pages it will hold at most

  // Room first (nothing is changed if the cache refuses the stack).
  Magazine* mag = c.mag[cls];
  if (!mag && !(mag = c.mag[cls] = new_magazine())) return false;
  if (bound > g_cache.local_cap) return false;
  if (mag->count == kMagSlots || c.local_pages + bound > g_cache.local_cap) {
    if (mag->count == 0 || !deposit(w, cls)) return false;
    mag = c.mag[cls];
    if (c.local_pages + bound > g_cache.local_cap) return false;
  }
  ++c.activity[cls];
  CacheCounters& k = c.counters;

  std::int64_t trimmed = 0;
  if (g_cache.check) trimmed += keep_local_pages(w, r, std::min(extent, keep), &resident);
  bool pending = false;
  if (extent > keep) {
    trimmed += trim_below_keep(c, r, keep, &resident);
    extent = keep;
    pending = true;
  }
  if (resident == 0) {  // top page could not be mapped again: hand the slot back
    if (g_stacks.mode == Mode::uffd) m.mapped_pages.store(0, std::memory_order_relaxed);
    add_single_writer(k.pages_trimmed, trimmed);
    return false;
  }
  cm.extent_pages = extent;
  mag->e[mag->count++] = CacheEntry{std::uint32_t(r.owner - g_stacks.w) << kSlotBits | r.slot, std::uint16_t(resident),
                                     std::uint16_t(extent), std::uint16_t(pending)};
  mag->pages += resident;
  c.local_pages += resident;
  add_single_writer(k.cached, 1);
  add_single_writer(k.pages_trimmed, trimmed);
  add_single_writer(k.stacks, 1);
  add_single_writer(k.pages, resident);
  add_single_writer(w.counters.cached_pages, resident);
  return true;
}

void cache_tick(unsigned worker, bool flush) noexcept {
  if (!g_cache.enabled || worker >= g_stacks.workers) return;
  WorkerCache& c = g_stacks.w[worker].cache;
  if (flush) flush_batch(c);
  std::uint64_t epoch = cache_now_ns() / kStackCacheEpochNs;
  if (epoch == c.epoch) return;
  c.epoch = epoch;
  decay_local(worker);
  std::uint64_t seen = g_cache.decayed_epoch.load(std::memory_order_relaxed);
  if (seen < epoch && g_cache.decayed_epoch.compare_exchange_strong(seen, epoch, std::memory_order_acq_rel))
    decay_depots(worker);
}

}  // namespace tendril::detail::stack_impl

namespace tendril::detail {

using namespace stack_impl;

std::uint64_t stack_maintain(unsigned worker) noexcept {
  cache_tick(worker, true);
  if (!g_cache.enabled || worker >= g_stacks.workers) return 0;
  // Stacks still cached here or in a depot shrink only over later epochs:
  // ask to be called again then, so an idle server gives them back.
  const bool holds = g_stacks.w[worker].cache.local_pages != 0 ||
                     g_cache.depot_pages.load(std::memory_order_relaxed) > 0;
  if (!holds) return 0;
  return kStackCacheEpochNs - cache_now_ns() % kStackCacheEpochNs + 1;
}

bool stack_prepare_ahead(unsigned worker) noexcept {
  if (!g_cache.enabled || worker >= g_stacks.workers) return false;
  WorkerStacks& me = g_stacks.w[worker];
  WorkerCache& c = me.cache;
  for (unsigned v = 0; v < g_stacks.workers; ++v) {
    WorkerCache& vc = g_stacks.w[v].cache;
    if (v == worker || vc.node() != c.node()) continue;
    const std::uint32_t demand = vc.demand.load(std::memory_order_acquire);
    std::uint32_t& seen = c.demand_seen[v];
    if (demand - seen > kAheadBacklog) seen = demand - kAheadBacklog;
    if (demand - seen < kAheadTrigger) continue;
    const std::uint32_t made = prepare_batch(me, g_stacks.w[v], vc.demand_cls.load(std::memory_order_relaxed),
                                             vc.demand_limit.load(std::memory_order_relaxed));
    if (made == 0) continue;
    seen += made;
    return true;
  }
  publish_ahead(c);  // no demand left: do not sit on a half-filled magazine
  return false;
}

std::size_t stack_learned_depth(const void* site) noexcept {
  return site ? std::size_t(site_depth_pages(site)) * kPage : 0;
}

void stack_set_topology_for_testing(const StackTopology* topology) noexcept {
  g_topo = topology ? *topology : StackTopology{};
  for (unsigned i = 0; g_stacks.w && i < g_stacks.workers; ++i)
    g_stacks.w[i].cache.set_node(g_topo.worker_node ? clamp_node(g_topo.worker_node(i)) : 0);
}

void stack_set_clock_for_testing(std::uint64_t (*now_ns)()) noexcept { g_clock = now_ns; }

}  // namespace tendril::detail
