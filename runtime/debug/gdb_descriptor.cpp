// The layout gdb needs to find and read fibers without debug info.
//
// libtendril is built without -g in Release, so share/tendril/tendril-gdb.py
// cannot ask gdb for the types of FiberCtl or of the stack arena. Instead the
// library exports one self-describing object, `tendril_debug`: a magic word, a
// version, and the addresses, sizes and field offsets the script walks, all
// computed here by the compiler. The script reads it with plain memory reads,
// which work the same on a live process (`gdb -p`) and on a core file.
//
// Compatibility: `version` changes only when a field is removed or changes
// meaning; fields are only ever appended (the script checks `size`).
#include <cstddef>
#include <cstdint>

#include "runtime/sched/fiber_ctl.hpp"
#include "runtime/sched/scheduler.hpp"
#include "runtime/stack/stack_internal.hpp"
#include "tendril/detail/wait_reason.hpp"

// offsetof on the runtime's structs: some hold std::atomic members, which makes
// them formally not standard-layout; GCC and Clang compute the offsets all the
// same (there are no virtual bases).
#pragma GCC diagnostic ignored "-Winvalid-offsetof"

namespace {

using tendril::WaitReason;
using tendril::detail::FiberCtl;
using tendril::detail::WaitFor;
namespace si = tendril::detail::stack_impl;

constexpr int kReasons = int(WaitReason::select) + 1;

// The words of tendril::to_string(WaitReason), by value, so that the script
// prints what the fiber dump prints.
constexpr const char* const kReasonNames[kReasons] = {
    "none",     "mutex",    "condvar",  "semaphore", "wait group", "channel send", "channel recv",
    "join",     "sleep",    "io read",  "io write",  "io poll",    "net accept",   "net read",
    "net write", "net connect", "blocking call", "select",
};

}  // namespace

extern "C" {

// All sizes and offsets are in bytes; all fields are 64-bit so the struct has
// no padding and the script reads it as an array of words.
struct tendril_debug_descriptor {
  std::uint64_t magic;    // "TNDRLDBG" as a little-endian word
  std::uint64_t version;  // layout version of this struct (see above)
  std::uint64_t size;     // sizeof(tendril_debug_descriptor)

  // The stack runtime (runtime/stack/stack_internal.hpp, stack_impl::StackRuntime):
  // live fibers are its slots in state `slot_live`.
  std::uint64_t stack_runtime;         // &stack_impl::g_stacks (0: no arena in this build)
  std::uint64_t runtime_workers;       // offsetof(StackRuntime, workers): unsigned, 4 bytes
  std::uint64_t runtime_w;             // offsetof(StackRuntime, w): Worker*
  std::uint64_t worker_size;           // sizeof(stack_impl::WorkerStacks)
  std::uint64_t worker_arenas;         // offsetof(WorkerStacks, arenas)
  std::uint64_t worker_tid;            // offsetof(WorkerStacks, tid): int, the worker's thread id
  std::uint64_t num_classes;           // arenas per worker
  std::uint64_t subarena_size;         // sizeof(SubArena)
  std::uint64_t subarena_base;         // char*, 0 until reserved
  std::uint64_t subarena_stride;       // size_t, bytes per slot
  std::uint64_t subarena_carved;       // uint32, slots in use at least once
  std::uint64_t subarena_meta;         // SlotMeta*
  std::uint64_t slotmeta_size;
  std::uint64_t slotmeta_fiber_id;     // uint64
  std::uint64_t slotmeta_limit_pages;  // uint32
  std::uint64_t slotmeta_state;        // uint16
  std::uint64_t slot_live;             // SlotMeta::state of a live slot
  std::uint64_t page_size;

  // The fiber control block of a live slot: the pointer at subarena_ctl's
  // table entry for the slot (appended below). Before that field existed,
  // the block was at (slot_hi - fiberctl_size) & ~(fiberctl_align - 1).
  std::uint64_t fiberctl_size;
  std::uint64_t fiberctl_align;
  std::uint64_t fiberctl_fctx;       // saved context (void*): null while it runs
  std::uint64_t fiberctl_id;         // uint64
  std::uint64_t fiberctl_name;       // char[fiberctl_name_size], NUL-terminated
  std::uint64_t fiberctl_name_size;
  std::uint64_t fiberctl_park_wait;  // uint64, see WaitFor
  std::uint64_t fiberctl_park_since; // int64, CLOCK_MONOTONIC_COARSE ns

  // The park word: reason (mask), descriptor, worker.
  std::uint64_t wait_reason_mask;
  std::uint64_t wait_fd_shift;       // 32 bits of descriptor
  std::uint64_t wait_worker_shift;   // 8 bits of worker
  std::uint64_t reason_count;
  std::uint64_t reason_names;        // const char* const[reason_count]
  std::uint64_t reason_fd_first;     // reasons in [first, last] name a descriptor
  std::uint64_t reason_fd_last;

  // The saved context (Boost.Context jump_fcontext, x86-64 SysV): where each
  // callee-saved register and the resume address lie above the saved sp, and
  // the caller's sp (saved sp + fctx_size).
  std::uint64_t fctx_r12, fctx_r13, fctx_r14, fctx_r15, fctx_rbx, fctx_rbp, fctx_rip, fctx_size;

  // Appended: offsetof(SubArena, ctl), a table of `carved` pointers, one per
  // slot, to the slot owner's control block (0 until a fiber has used it; the
  // block may belong to a previous owner: check its id).
  std::uint64_t subarena_ctl;

  // Appended: the control-block caches, where a fiber that has not run yet
  // (no stack: Options::stack_defer) is found. `scheduler` is the address of
  // a pointer to the running Scheduler (null outside run()); its workers are
  // a std::vector of pointers (begin, end words at scheduler_workers), each
  // Worker holds a FiberCtlCache at worker_ctl_cache, and plain threads' spawns
  // come from the one at scheduler_external_ctl_cache. A cache's records are
  // carved in order, region after region (ctlcache_region_bytes each, a
  // region's tail shorter than a record unused): record i is at
  // regions[i / per_region] + (i % per_region) * ctlcache_record_bytes, for
  // i < carved. A record is an unstarted fiber when its saved context and
  // stack are null, its stack limit is set and its id is not 0.
  std::uint64_t scheduler;                     // &g_scheduler (Scheduler*)
  std::uint64_t scheduler_workers;             // offsetof(Scheduler, workers_)
  std::uint64_t scheduler_external_ctl_cache;  // offsetof(Scheduler, external_ctl_cache_)
  std::uint64_t worker_ctl_cache;              // offsetof(Worker, ctl_cache_)
  std::uint64_t ctlcache_regions;              // offsetof(FiberCtlCache, regions_): char*[]
  std::uint64_t ctlcache_max_regions;
  std::uint64_t ctlcache_carved;               // offsetof(FiberCtlCache, carved_): size_t
  std::uint64_t ctlcache_region_bytes;
  std::uint64_t ctlcache_record_bytes;
  std::uint64_t fiberctl_stack_lo;             // char*
  std::uint64_t fiberctl_stack_limit;          // size_t
};

#define TENDRIL_OFF(type, field) std::uint64_t(offsetof(type, field))

namespace tendril::detail {
// The private members the script reads (the classes name it a friend).
struct DebugLayout {
  static constexpr std::uint64_t scheduler_workers = TENDRIL_OFF(Scheduler, workers_);
  static constexpr std::uint64_t scheduler_external_ctl_cache = TENDRIL_OFF(Scheduler, external_ctl_cache_);
  static constexpr std::uint64_t worker_ctl_cache = TENDRIL_OFF(Worker, ctl_cache_);
  static constexpr std::uint64_t ctlcache_regions = TENDRIL_OFF(FiberCtlCache, regions_);
  static constexpr std::uint64_t ctlcache_carved = TENDRIL_OFF(FiberCtlCache, carved_);
  static_assert(sizeof(Scheduler::workers_) == 24 && sizeof(Scheduler::workers_[0]) == 8,
                "the script reads workers_ as libstdc++'s vector of plain pointers");
  static_assert(sizeof(FiberCtlCache::regions_[0]) == 8 && sizeof(FiberCtlCache::carved_) == 8);
};
}  // namespace tendril::detail

// Exported and kept: nothing in the library refers to it.
__attribute__((visibility("default"))) extern const tendril_debug_descriptor tendril_debug;
__attribute__((used)) const tendril_debug_descriptor tendril_debug = {
    0x4742444c52444e54ull,  // "TNDRLDBG"
    1,
    sizeof(tendril_debug_descriptor),

    std::uint64_t(reinterpret_cast<std::uintptr_t>(&si::g_stacks)),
    TENDRIL_OFF(si::StackRuntime, workers),
    TENDRIL_OFF(si::StackRuntime, w),
    sizeof(si::WorkerStacks),
    TENDRIL_OFF(si::WorkerStacks, arenas),
    TENDRIL_OFF(si::WorkerStacks, tid),
    si::kNumClasses,
    sizeof(si::SubArena),
    TENDRIL_OFF(si::SubArena, base),
    TENDRIL_OFF(si::SubArena, stride),
    TENDRIL_OFF(si::SubArena, carved),
    TENDRIL_OFF(si::SubArena, meta),
    sizeof(si::SlotMeta),
    TENDRIL_OFF(si::SlotMeta, fiber_id),
    TENDRIL_OFF(si::SlotMeta, limit_pages),
    TENDRIL_OFF(si::SlotMeta, state),
    si::kLive,
    si::kPage,

    sizeof(FiberCtl),
    alignof(FiberCtl),
    TENDRIL_OFF(FiberCtl, ctx) + TENDRIL_OFF(tendril::detail::Context, fctx),
    TENDRIL_OFF(FiberCtl, id),
    TENDRIL_OFF(FiberCtl, name),
    sizeof(FiberCtl::name),
    TENDRIL_OFF(FiberCtl, park) + TENDRIL_OFF(tendril::detail::ParkRecord, wait),
    TENDRIL_OFF(FiberCtl, park) + TENDRIL_OFF(tendril::detail::ParkRecord, since),

    WaitFor::kReasonMask,
    8,
    WaitFor::kWorkerShift,
    kReasons,
    std::uint64_t(reinterpret_cast<std::uintptr_t>(kReasonNames)),
    std::uint64_t(WaitReason::io_read),
    std::uint64_t(WaitReason::net_connect),

#if defined(__x86_64__)
    0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40,
#else
    0, 0, 0, 0, 0, 0, 0, 0,  // fctx_size 0: the script cannot unwind a saved context here
#endif

    TENDRIL_OFF(si::SubArena, ctl),

    std::uint64_t(reinterpret_cast<std::uintptr_t>(&tendril::detail::g_scheduler)),
    tendril::detail::DebugLayout::scheduler_workers,
    tendril::detail::DebugLayout::scheduler_external_ctl_cache,
    tendril::detail::DebugLayout::worker_ctl_cache,
    tendril::detail::DebugLayout::ctlcache_regions,
    tendril::detail::FiberCtlCache::kMaxRegions,
    tendril::detail::DebugLayout::ctlcache_carved,
    tendril::detail::FiberCtlCache::kRegionBytes,
    tendril::detail::FiberCtlCache::kRecordBytes,
    TENDRIL_OFF(FiberCtl, stack) + TENDRIL_OFF(tendril::detail::StackSlot, lo),
    TENDRIL_OFF(FiberCtl, stack) + TENDRIL_OFF(tendril::detail::StackSlot, limit),
};

}  // extern "C"

// The script reads the descriptor as words and the fields above as the sizes
// noted; keep those in step with the runtime's types.
static_assert(sizeof(tendril_debug_descriptor) % 8 == 0);
static_assert(sizeof(si::StackRuntime::workers) == 4 && sizeof(si::SubArena::carved) == 4);
static_assert(sizeof(si::SlotMeta::limit_pages) == 4 && sizeof(si::SlotMeta::state) == 2);
static_assert(sizeof(si::SlotMeta::fiber_id) == 8 && sizeof(FiberCtl::id) == 8);
static_assert(sizeof(si::WorkerStacks::tid) == 4 && sizeof(si::SubArena::stride) == 8);
static_assert(sizeof(std::atomic<const void*>) == 8);
static_assert(sizeof(tendril::detail::ParkRecord::wait) == 8);
static_assert(WaitFor(WaitReason::none, 0x12345678).fd() == 0x12345678, "descriptor bits 8-39");
