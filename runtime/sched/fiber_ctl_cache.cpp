// The per-worker cache of FiberCtl records; design in fiber_ctl_cache.hpp.
#include "runtime/sched/fiber_ctl_cache.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <system_error>

namespace tendril::detail {

static_assert(FiberCtlCache::kRecordBytes % alignof(FiberCtl) == 0);
static_assert(FiberCtlCache::kRegionBytes % FiberCtlCache::kHugeBytes == 0);

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// kRegionBytes of address space aligned to a huge page, nothing committed.
char* reserve_region() {
  constexpr std::size_t kHuge = FiberCtlCache::kHugeBytes, kBytes = FiberCtlCache::kRegionBytes;
  void* raw = mmap(nullptr, kBytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto r = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t a = (r + kHuge - 1) & ~(kHuge - 1);
  if (a > r) munmap(raw, a - r);
  if (a + kBytes < r + kBytes + kHuge) munmap(reinterpret_cast<void*>(a + kBytes), r + kBytes + kHuge - (a + kBytes));
  char* p = reinterpret_cast<char*>(a);
  madvise(p, kHuge, MADV_NOHUGEPAGE);                 // the small chunks
  madvise(p + kHuge, kBytes - kHuge, MADV_HUGEPAGE);  // where THP is "madvise"; harmless where it is "never"
  return p;
}

}  // namespace

FiberCtlCache::~FiberCtlCache() {
  for (unsigned i = 0; i < nregions_; ++i) munmap(regions_[i], kRegionBytes);
}

void FiberCtlCache::put_remote(void* record) noexcept {
  auto* f = static_cast<Free*>(record);
  Free* head = remote_.load(std::memory_order_relaxed);
  do {
    f->next = head;
  } while (!remote_.compare_exchange_weak(head, f, std::memory_order_release, std::memory_order_relaxed));
}

void FiberCtlCache::grow() {
  if (region_ == nullptr || end_ == region_ + kRegionBytes) {
    char* r = nregions_ < kMaxRegions ? reserve_region() : nullptr;
    if (r == nullptr)
      throw std::system_error(nregions_ < kMaxRegions ? errno : ENOMEM, std::generic_category(),
                              "tendril::spawn: reserving memory for fiber control blocks");
    regions_[nregions_++] = r;
    region_ = bump_ = end_ = r;
  }
  // 64 KiB, 128 KiB, ... while in the first huge page, then huge pages.
  const std::size_t used = std::size_t(end_ - region_);
  const std::size_t chunk = used < kHugeBytes ? std::min(std::max(kFirstChunkBytes, used), kHugeBytes - used) : kHugeBytes;
  madvise(end_, chunk, MADV_POPULATE_WRITE);  // older kernels: faulted in on first use instead
  end_ += chunk;
}

void* FiberCtlCache::take_slow() {
  if (remote_.load(std::memory_order_relaxed) != nullptr) {
    Free* f = remote_.exchange(nullptr, std::memory_order_acquire);
    local_ = f->next;
    return f;
  }
  if (std::size_t(end_ - bump_) < kRecordBytes) {
    // A record never straddles two reservations: the tail of a full one stays unused.
    if (region_ != nullptr && end_ == region_ + kRegionBytes) bump_ = end_;
    grow();
    if (std::size_t(end_ - bump_) < kRecordBytes) grow();  // a new reservation's first chunk
  }
  void* r = bump_;
  bump_ += kRecordBytes;
  // One writer. Release: a reader that sees the count sees the reservation
  // the record is in (for_each_carved).
  carved_.store(carved_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  return r;
}

void FiberCtlCache::for_each_carved(void (*fn)(const FiberCtl*, void*), void* arg) const noexcept {
  // Records are carved in order, region after region, and a full region's
  // tail (less than a record) stays unused.
  constexpr std::size_t kPerRegion = kRegionBytes / kRecordBytes;
  const std::size_t n = carved_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    const char* region = *static_cast<char* const volatile*>(&regions_[i / kPerRegion]);
    if (region == nullptr) return;
    fn(reinterpret_cast<const FiberCtl*>(region + (i % kPerRegion) * kRecordBytes), arg);
  }
}

bool FiberCtlCache::owns(const void* p) const noexcept {
  const char* q = static_cast<const char*>(p);
  for (unsigned i = 0; i < nregions_; ++i)
    if (q >= regions_[i] && q < regions_[i] + kRegionBytes) return true;
  return false;
}

}  // namespace tendril::detail
