// The per-worker cache of FiberCtl records; design in fiber_ctl_cache.hpp.
#include "runtime/sched/fiber_ctl_cache.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <system_error>

namespace tendril::detail {

static_assert(FiberCtlCache::kRecordBytes % alignof(FiberCtl) == 0);
static_assert(FiberCtlCache::kFirstChunkBytes % 4096 == 0 && FiberCtlCache::kMaxChunkBytes % 4096 == 0);

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// `bytes` of zeroed memory, aligned to `bytes` when that is a huge page.
void* map_populated(std::size_t bytes) {
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  if (bytes < kHuge) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  void* raw = mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto r = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t a = (r + kHuge - 1) & ~(kHuge - 1);
  if (a > r) munmap(raw, a - r);
  if (r + bytes + kHuge > a + bytes) munmap(reinterpret_cast<void*>(a + bytes), r + bytes + kHuge - (a + bytes));
  void* p = reinterpret_cast<void*>(a);
  madvise(p, bytes, MADV_HUGEPAGE);        // where THP is "madvise"; harmless where it is "never"
  madvise(p, bytes, MADV_POPULATE_WRITE);  // older kernels: faulted in on first use instead
  return p;
}

}  // namespace

FiberCtlCache::~FiberCtlCache() {
  for (Chunk* c = chunks_; c != nullptr;) {
    Chunk* next = c->next;
    munmap(c, c->bytes);
    c = next;
  }
}

void FiberCtlCache::put_remote(void* record) noexcept {
  auto* f = static_cast<Free*>(record);
  Free* head = remote_.load(std::memory_order_relaxed);
  do {
    f->next = head;
  } while (!remote_.compare_exchange_weak(head, f, std::memory_order_release, std::memory_order_relaxed));
}

void FiberCtlCache::map_chunk() {
  const std::size_t bytes = next_chunk_bytes_;
  void* p = map_populated(bytes);
  if (p == nullptr) throw std::system_error(errno, std::generic_category(), "tendril::spawn: mapping fiber control blocks");
  auto* c = static_cast<Chunk*>(p);
  c->next = chunks_;
  c->bytes = bytes;
  chunks_ = c;
  // The chunk's first record slot holds the chunk list link.
  bump_ = static_cast<char*>(p) + kRecordBytes;
  end_ = static_cast<char*>(p) + bytes;
  if (next_chunk_bytes_ < kMaxChunkBytes) next_chunk_bytes_ *= 2;
}

void* FiberCtlCache::take_slow() {
  if (remote_.load(std::memory_order_relaxed) != nullptr) {
    Free* f = remote_.exchange(nullptr, std::memory_order_acquire);
    local_ = f->next;
    return f;
  }
  if (bump_ == nullptr || std::size_t(end_ - bump_) < kRecordBytes) map_chunk();
  void* r = bump_;
  bump_ += kRecordBytes;
  carved_.store(carved_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // one writer
  return r;
}

bool FiberCtlCache::owns(const void* p) const noexcept {
  const char* q = static_cast<const char*>(p);
  for (const Chunk* c = chunks_; c != nullptr; c = c->next) {
    const char* lo = reinterpret_cast<const char*>(c);
    if (q >= lo && q < lo + c->bytes) return true;
  }
  return false;
}

}  // namespace tendril::detail
