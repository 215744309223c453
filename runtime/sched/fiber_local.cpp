// FiberLocal: slot keys, the per-fiber (or per-thread) table of values, and
// their destruction at the end of a fiber or thread.
//
// A table is one allocation: a header and `size` slots. get()'s fast path
// reads the slot at the key's index and compares the owner id; everything
// here is the slow path.
#include "runtime/sched/fiber_local.hpp"
#include "runtime/sched/scheduler.hpp"

#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <queue>
#include <vector>

namespace tendril::detail {

namespace {

// Slot indexes in use by live FiberLocals; freed ones are reused lowest
// first so that tables stay short. Never destroyed: FiberLocals with static
// storage may be destroyed after any other static object.
struct KeyRegistry {
  std::mutex mu;
  std::uint64_t next_id = 1;
  std::uint32_t next_index = 0;
  std::priority_queue<std::uint32_t, std::vector<std::uint32_t>, std::greater<>> free;
};
KeyRegistry& registry() {
  static KeyRegistry* r = new KeyRegistry;
  return *r;
}

// Makes *home (possibly nullptr) at least `size` slots long.
FiberLocalTable* grow(FiberLocalTable*& home, std::uint32_t size) {
  FiberLocalTable* old = home;
  const std::uint32_t have = old != nullptr ? old->size : 0;
  if (have >= size) return old;
  std::uint32_t n = have < 4 ? 4 : have * 2;
  if (n < size) n = size;
  auto* t = static_cast<FiberLocalTable*>(
      std::malloc(sizeof(FiberLocalTable) + std::size_t(n) * sizeof(FiberLocalSlot)));
  if (t == nullptr) throw std::bad_alloc();
  t->size = n;
  if (have != 0) std::memcpy(t->slots(), old->slots(), std::size_t(have) * sizeof(FiberLocalSlot));
  std::memset(static_cast<void*>(t->slots() + have), 0, std::size_t(n - have) * sizeof(FiberLocalSlot));
  home = t;
  std::free(old);
  return t;
}

// Empties slot i of *home and destroys what it held; the destructor may use
// FiberLocals (and so grow or replace the table).
void destroy_slot(FiberLocalTable*& home, std::uint32_t i) {
  FiberLocalSlot s = home->slots()[i];
  home->slots()[i] = FiberLocalSlot{nullptr, nullptr, 0};
  if (s.value != nullptr) s.destroy(s.value);
}

constexpr int kDestructorPasses = 4;

// Destroys every value in *home, pass after pass while destructors make new
// ones, then frees the table. Exceptions: the first goes to *error (then the
// rest go on), or, with error == nullptr, out (std::terminate at a thread exit).
void destroy_all(FiberLocalTable** home, std::exception_ptr* error) noexcept {
  for (int pass = 0; pass < kDestructorPasses && *home != nullptr; ++pass) {
    bool any = false;
    for (std::uint32_t i = (*home)->size; i-- > 0;) {
      if ((*home)->slots()[i].value == nullptr) continue;
      any = true;
      if (error == nullptr) {
        destroy_slot(*home, i);
        continue;
      }
      try {
        destroy_slot(*home, i);
      } catch (...) {
        if (!*error) *error = std::current_exception();
      }
    }
    if (!any) break;
  }
  std::free(*home);  // values made in the last pass's destructors leak
  *home = nullptr;
}

// Destroys the calling thread's values when it exits. Armed (constructed,
// which registers its destructor) when the thread makes its table.
struct ThreadValues {
  bool armed = false;
  ~ThreadValues() { destroy_all(fiber_local_home(), nullptr); }
};
thread_local ThreadValues thread_values;

}  // namespace

FiberLocalKey fiber_local_key_acquire() {
  KeyRegistry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  FiberLocalKey k{r.next_id++, 0};
  if (!r.free.empty()) {
    k.index = r.free.top();
    r.free.pop();
  } else {
    k.index = r.next_index++;
  }
  return k;
}

void fiber_local_key_release(FiberLocalKey key) noexcept {
  KeyRegistry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  try {
    r.free.push(key.index);
  } catch (...) {
    // Out of memory: the index is never reused, which costs only table room.
  }
}

void* fiber_local_make(FiberLocalKey key, void* (*create)(), void (*destroy)(void*)) {
  FiberLocalTable** home = fiber_local_home();
  if (*home == nullptr && current_fiber() == nullptr) thread_values.armed = true;
  FiberLocalTable* t = grow(*home, key.index + 1);
  // The slot may hold a value of a destroyed FiberLocal that had this index.
  if (t->slots()[key.index].value != nullptr) destroy_slot(*home, key.index);
  void* value = create();  // may use FiberLocals, park, or throw
  home = fiber_local_home();  // the same fiber, but perhaps another thread now
  t = grow(*home, key.index + 1);
  FiberLocalSlot& s = t->slots()[key.index];
  if (s.owner == key.id) {  // T() used this FiberLocal itself and made one
    destroy(value);
    return s.value;
  }
  if (s.value != nullptr) destroy_slot(*home, key.index);
  t = *home;
  t->slots()[key.index] = FiberLocalSlot{value, destroy, key.id};
  return value;
}

void fiber_locals_destroy(FiberLocalTable*& table, std::exception_ptr& error) noexcept {
  destroy_all(&table, &error);
}

}  // namespace tendril::detail
