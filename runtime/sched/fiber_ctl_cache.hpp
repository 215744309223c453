// Where fiber control blocks live: a dense per-worker cache of FiberCtl
// records, off the fibers' stacks.
//
// Why not on the stack: a parked fiber's control block is what a waker, the
// scheduler and a joiner touch (run-queue link, context, park word, join
// state). Stack slots are 16 KiB to 1 GiB apart, so a control block at the
// top of each stack puts every fiber's hot state on a page of its own: waking
// a million fibers then costs a TLB miss and page walk per fiber, and on a
// paravirtualized or nested-paging guest a walk of a sparse range is several
// microseconds. Records packed side by side put 64 control blocks on a page.
//
// Mechanics (the per-CPU object cache of a slab allocator, one cache per
// worker plus one for plain threads):
//  - take(): the owner's own free list (LIFO, so the record just freed, still
//    in cache, is the next one spawned), else the whole remote list adopted
//    with one exchange, else the next record carved from the current chunk.
//    No lock, no malloc, no syscall but one per chunk.
//  - Memory: one reservation per cache (kRegionBytes of address space,
//    MAP_NORESERVE, two VMAs (see below) for up to 2.8 M fibers: a million
//    fibers must not add VMAs, vm.max_map_count), carved in chunks that are
//    populated when carving reaches them (MADV_POPULATE_WRITE: one syscall
//    instead of a page fault per 10 records; a fresh-page fault costs
//    microseconds on a paravirtualized guest, about as much as the rest of a
//    spawn). Chunks start at 64 KiB and double, within the first 2 MiB of
//    the reservation (MADV_NOHUGEPAGE: a runtime with a few fibers keeps a
//    few pages); past it they are 2 MiB, MADV_HUGEPAGE, so a million control
//    blocks take about 190 huge pages, i.e. TLB entries, not 94,000 small
//    ones. A full reservation is followed by another (two VMAs more per
//    kRegionBytes / 448 B = 2.4 M records).
//  - put(): a record whose owner frees it goes on the owner's list (a plain
//    push). put_remote(): any other thread pushes it onto the owner's
//    push-only Treiber stack (one CAS); the owner takes the whole stack at
//    once, so there is no ABA. Records go back to the cache that carved them,
//    so a cache never holds more records than the fibers its owner had live
//    at once (plus records on their way home).
//  - Records are never returned until the runtime ends (the cache is
//    destroyed with its worker, after every fiber is gone). That keeps a
//    stale FiberCtl pointer readable: the fiber dump and gdb read control
//    blocks of fibers that may end meanwhile and validate what they read by
//    the fiber id, which needs the memory to stay mapped. A burst of a
//    million fibers leaves its records cached, 448 B each.
//  - A record's state is built by place_fiber (placement new) and torn down
//    by release_fiber; the cache holds raw storage, linked through its first
//    word.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "runtime/sched/fiber_ctl.hpp"

namespace tendril::detail {

class FiberCtlCache {
 public:
  static constexpr std::size_t kRecordBytes = (sizeof(FiberCtl) + alignof(FiberCtl) - 1) & ~(alignof(FiberCtl) - 1);
  static constexpr std::size_t kRegionBytes = std::size_t(1) << 30;
  static constexpr std::size_t kHugeBytes = std::size_t(2) << 20;
  static constexpr std::size_t kFirstChunkBytes = std::size_t(64) << 10;
  static constexpr unsigned kMaxRegions = 256;

  FiberCtlCache() = default;
  ~FiberCtlCache();
  FiberCtlCache(const FiberCtlCache&) = delete;
  FiberCtlCache& operator=(const FiberCtlCache&) = delete;

  // Storage for one FiberCtl, aligned for it. Owner only. Throws
  // std::system_error when no chunk can be mapped.
  void* take() {
    if (Free* f = local_) {
      local_ = f->next;
      return f;
    }
    return take_slow();
  }
  // Gives back the storage of a destroyed FiberCtl that this cache carved.
  // put: the owner's thread only; put_remote: any thread.
  void put(void* record) noexcept {
    auto* f = static_cast<Free*>(record);
    f->next = local_;
    local_ = f;
  }
  void put_remote(void* record) noexcept;

  // Records carved so far (in use, cached, or on their way home). Any thread.
  std::size_t carved() const noexcept { return carved_.load(std::memory_order_relaxed); }
  // Calls fn on every record carved so far (in use, cached or on its way
  // home), in the order carved. Any thread: what it finds there is read
  // racily, and the debug tools that call it check what they read.
  void for_each_carved(void (*fn)(const FiberCtl* record, void* arg), void* arg) const noexcept;
  // Whether `p` lies in one of this cache's reservations. Owner only (tests).
  bool owns(const void* p) const noexcept;

 private:
  friend struct DebugLayout;  // runtime/debug/gdb_descriptor.cpp
  struct Free {
    Free* next;
  };
  void* take_slow();
  void grow();  // makes room for at least one more record at bump_

  Free* local_ = nullptr;
  char* bump_ = nullptr;        // next record to carve
  char* end_ = nullptr;         // end of the populated part of the current region
  char* region_ = nullptr;      // the current reservation
  char* regions_[kMaxRegions] = {};
  unsigned nregions_ = 0;
  std::atomic<std::size_t> carved_{0};
  alignas(64) std::atomic<Free*> remote_{nullptr};  // other threads' frees
};

}  // namespace tendril::detail
