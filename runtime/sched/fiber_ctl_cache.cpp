// The per-worker cache of FiberCtl records; design in fiber_ctl_cache.hpp.
#include "runtime/sched/fiber_ctl_cache.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <system_error>

namespace tendril::detail {

static_assert(FiberCtlCache::kRecordBytes % alignof(FiberCtl) == 0);
static_assert(FiberCtlCache::kChunkBytes % 4096 == 0);

FiberCtlCache::~FiberCtlCache() {
  for (Chunk* c = chunks_; c != nullptr;) {
    Chunk* next = c->next;
    munmap(c, kChunkBytes);
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

void* FiberCtlCache::take_slow() {
  if (remote_.load(std::memory_order_relaxed) != nullptr) {
    Free* f = remote_.exchange(nullptr, std::memory_order_acquire);
    local_ = f->next;
    return f;
  }
  if (bump_ == nullptr || std::size_t(end_ - bump_) < kRecordBytes) {
    void* p = mmap(nullptr, kChunkBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "tendril::spawn: mapping fiber control blocks");
    auto* c = static_cast<Chunk*>(p);
    c->next = chunks_;
    chunks_ = c;
    // The chunk's first record slot holds the chunk list link.
    bump_ = static_cast<char*>(p) + kRecordBytes;
    end_ = static_cast<char*>(p) + kChunkBytes;
  }
  void* r = bump_;
  bump_ += kRecordBytes;
  carved_.store(carved_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // one writer
  return r;
}

bool FiberCtlCache::owns(const void* p) const noexcept {
  const char* q = static_cast<const char*>(p);
  for (const Chunk* c = chunks_; c != nullptr; c = c->next) {
    const char* lo = reinterpret_cast<const char*>(c);
    if (q >= lo && q < lo + kChunkBytes) return true;
  }
  return false;
}

}  // namespace tendril::detail
