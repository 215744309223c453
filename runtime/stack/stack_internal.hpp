// Private declarations shared by the files of runtime/stack/. Nothing outside
// runtime/stack/ includes this; the scheduler sees only stack.hpp.
// The design is described at the top of arena.cpp.
#pragma once

#include "stack.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <pthread.h>

namespace tendril::detail::stack_impl {

constexpr std::size_t kPage = 4096;
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
struct alignas(64) SlotMeta {
  std::atomic<std::uint64_t> fiber_id;
  char name[32];
  std::atomic<std::uint32_t> limit_pages;    // usable pages: lo = hi - limit_pages*kPage
  std::atomic<std::uint32_t> mapped_pages;   // resident pages in [lo, hi) (uffd mode)
  std::atomic<std::uint32_t> deepest_fault;  // deepest faulting page, in pages from hi
  std::atomic<std::uint32_t> state;          // SlotState
  std::uint32_t next_free;                   // free-list link: slot number + 1, 0 = end
  std::uint32_t guard_pages;                 // kernel mode: guard installed on [base, base+guard)
};
static_assert(sizeof(SlotMeta) == 64);

// One reservation: the slots of one size class owned by one worker. All of it
// is a single VMA (registered with that worker's uffd in uffd mode).
struct SubArena {
  std::atomic<char*> base{nullptr};  // published once, read by the fault handlers
  std::size_t bytes = 0;
  std::size_t class_bytes = 0;       // largest limit served by this class
  std::size_t stride = 0;            // class_bytes + minimum guard
  std::uint32_t capacity = 0;        // slots that fit
  SlotMeta* meta = nullptr;          // capacity entries, MAP_NORESERVE
  std::atomic<std::uint32_t> carved{0};  // slots handed out at least once (bump pointer)
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
struct alignas(64) WorkerCounters {  // written by the worker (or, for the
                                     // plain-thread index, under its mutex)
  std::atomic<std::int64_t> faults{0};        // kernel mode: growth seen at release
  std::atomic<std::int64_t> live_pages{0};
  std::atomic<std::int64_t> cached_pages{0};
  std::atomic<std::int64_t> pool_refills{0};
};
struct alignas(64) HandlerCounters {  // written by the worker's fault handler thread
  std::atomic<std::int64_t> faults{0};
  std::atomic<std::int64_t> live_pages{0};
};

inline void add_single_writer(std::atomic<std::int64_t>& c, std::int64_t delta) noexcept {
  c.store(c.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

struct alignas(64) Worker {
  SubArena arenas[kNumClasses];
  int uffd = -1;
  int stop_fd = -1;  // eventfd that tells the handler thread to exit
  pthread_t handler{};
  bool handler_running = false;
  PagePool pool;
  WorkerCounters counters;
  HandlerCounters handler_counters;
};

struct Runtime {
  Mode mode = Mode::kernel;
  Fill fill = Fill::copy;
  unsigned workers = 0;
  unsigned max_grow_pages = 1;  // pages mapped per fault at most (doubling up to this)
  std::size_t arena_bytes = 0;  // reservation size per (worker, class)
  bool guard_madvise = false;   // kernel mode: MADV_GUARD_INSTALL works
  Worker* w = nullptr;
};

extern Runtime g_rt;

// Where an address falls in the arenas.
struct Located {
  Worker* worker = nullptr;
  SubArena* arena = nullptr;
  std::uint32_t slot = 0;
  char* hi = nullptr;
  char* lo = nullptr;
  bool found() const { return arena != nullptr; }
};

Located locate_in_worker(Worker& w, std::uintptr_t addr) noexcept;
Located locate_any(std::uintptr_t addr) noexcept;

// fault_handler.cpp
bool uffd_open_and_register_api(Worker& w) noexcept;
bool uffd_register_range(Worker& w, char* base, std::size_t bytes) noexcept;
bool uffd_map_top_page(Worker& w, char* page) noexcept;
bool handler_start(Worker& w, unsigned index) noexcept;
void handler_stop(Worker& w) noexcept;
void handler_place_like_current_thread(Worker& w) noexcept;
bool pool_create(PagePool& p) noexcept;
void pool_destroy(PagePool& p) noexcept;
void pool_refill(Worker& w) noexcept;

// guard.cpp
bool guard_probe_madvise() noexcept;
bool guard_set(char* base, std::size_t old_guard, std::size_t new_guard) noexcept;
void guard_install_signal_handler() noexcept;
void guard_remove_signal_handler() noexcept;
void guard_thread_altstack() noexcept;
[[noreturn]] void report_overflow_and_abort(const Located& loc, std::uintptr_t addr) noexcept;
void log_line(const char* text) noexcept;

}  // namespace tendril::detail::stack_impl
