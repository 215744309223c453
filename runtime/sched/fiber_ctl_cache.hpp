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
//    No lock, no malloc; an mmap once per chunk.
//  - Chunks are populated when mapped (one syscall instead of a page fault
//    per 12 records: a fresh-page fault costs microseconds on a
//    paravirtualized guest, about as much as the rest of a spawn), starting
//    at 64 KiB and doubling up to 2 MiB; the 2 MiB ones are aligned and
//    advised MADV_HUGEPAGE, so a million control blocks take about 160 huge
//    pages, i.e. TLB entries, instead of 80,000 small ones.
//  - put(): a record whose owner frees it goes on the owner's list (a plain
//    push). put_remote(): any other thread pushes it onto the owner's
//    push-only Treiber stack (one CAS); the owner takes the whole stack at
//    once, so there is no ABA. Records go back to the cache that carved them,
//    so a cache never holds more records than the fibers its owner had live
//    at once (plus records on their way home).
//  - Chunks are never returned until the runtime ends (the cache is
//    destroyed with its worker, after every fiber is gone). That keeps a
//    stale FiberCtl pointer readable: the fiber dump and gdb read control
//    blocks of fibers that may end meanwhile and validate what they read by
//    the fiber id, which needs the memory to stay mapped. A burst of a
//    million fibers leaves its records cached, about 0.3 KiB each.
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
  // Chunk sizes: the first is small (a runtime with a few fibers keeps a few
  // pages), each next one twice the last, up to one huge page.
  static constexpr std::size_t kFirstChunkBytes = std::size_t(64) << 10;
  static constexpr std::size_t kMaxChunkBytes = std::size_t(2) << 20;
  static constexpr std::size_t kRecordBytes = (sizeof(FiberCtl) + alignof(FiberCtl) - 1) & ~(alignof(FiberCtl) - 1);

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
  // Whether `p` lies in one of this cache's chunks. Owner only (tests).
  bool owns(const void* p) const noexcept;

 private:
  struct Free {
    Free* next;
  };
  struct Chunk {
    Chunk* next;
    std::size_t bytes;
  };
  void map_chunk();
  void* take_slow();

  Free* local_ = nullptr;
  char* bump_ = nullptr;  // next record to carve in the current chunk
  char* end_ = nullptr;
  Chunk* chunks_ = nullptr;
  std::size_t next_chunk_bytes_ = kFirstChunkBytes;
  std::atomic<std::size_t> carved_{0};
  alignas(64) std::atomic<Free*> remote_{nullptr};  // other threads' frees
};

}  // namespace tendril::detail
