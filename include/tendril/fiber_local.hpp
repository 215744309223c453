// tendril::FiberLocal<T>: a variable with one value per fiber, as thread_local
// has one per thread.
//
//   struct Trace { std::string request_id; int calls = 0; };
//   tendril::FiberLocal<Trace> trace;          // a global, a static or a member
//
//   tendril::spawn([] {
//     trace->request_id = "r-17";              // this fiber's own Trace
//     tendril::this_fiber::sleep_for(1ms);     // may resume on another worker
//     trace->calls++;                          // still this fiber's Trace
//   }).detach();
//
// Why not thread_local: a fiber runs on whichever worker thread picks it up,
// and may move to another one at every park (stealing, or a wake-up from
// another worker), so a thread_local read before a park and after it may be
// two different variables. A FiberLocal's value follows its fiber.
//
// - Each fiber gets its own T, value-initialised (`T()`) on its first get() and
//   destroyed when the fiber ends: after its function has returned, on the
//   fiber itself, before join() returns and before its stack is released.
//   On a plain thread (not a fiber) the value is per thread and is destroyed
//   when the thread exits.
// - get() after the first use is a function call and a few loads: no lock, no
//   allocation. The first use per fiber allocates (the T, and the fiber's
//   table of values when it needs to grow).
// - A destructor that throws at a fiber's end: the fiber's other values are
//   still destroyed, and the first such exception becomes the fiber's
//   exception if it had none (join() rethrows it; in a detached fiber it stops
//   the process, as an exception escaping the fiber would). At a thread's exit
//   it calls std::terminate, as a thread_local's destructor would.
// - A destructor may use FiberLocals, even ones already destroyed for this
//   fiber: a value made again then is destroyed in a further pass (up to 4
//   passes, as POSIX thread-specific data; what is made after that leaks).
// - Destroying a FiberLocal while fibers hold values is safe: the values are
//   not reachable any more and each is destroyed when its fiber (or thread)
//   ends, or earlier when a later FiberLocal takes over the same slot and that
//   fiber uses it. So a T's destructor must not depend on its FiberLocal
//   object still existing. Slots are reused, so fibers' tables stay as small as
//   the number of FiberLocals alive at once, however many come and go.
// - Constructing and destroying a FiberLocal takes a process-wide lock:
//   cheap, but not for a hot path.
#pragma once

#include <cstdint>

namespace tendril {

namespace detail {

// One fiber's (or thread's) values, indexed by FiberLocalKey::index. `owner`
// is the id of the FiberLocal the value belongs to (0: empty; ids are never
// reused, slots are).
struct FiberLocalSlot {
  void* value;
  void (*destroy)(void*);
  std::uint64_t owner;
};
struct alignas(FiberLocalSlot) FiberLocalTable {
  std::uint32_t size;  // slots that follow this header
  FiberLocalSlot* slots() noexcept { return reinterpret_cast<FiberLocalSlot*>(this + 1); }
};

struct FiberLocalKey {
  std::uint64_t id;
  std::uint32_t index;
};

// The calling fiber's table, or the calling thread's outside a fiber; nullptr
// if nothing was made there yet. Out of line on purpose: a fiber may resume on
// another thread, so nothing read from a thread's state may be reused across
// a park.
FiberLocalTable* fiber_local_table() noexcept;
// The slow path of get(): makes the value (and the table).
void* fiber_local_make(FiberLocalKey key, void* (*create)(), void (*destroy)(void*));
FiberLocalKey fiber_local_key_acquire();
void fiber_local_key_release(FiberLocalKey key) noexcept;

}  // namespace detail

template <class T>
class FiberLocal {
 public:
  FiberLocal() : key_(detail::fiber_local_key_acquire()) {}
  ~FiberLocal() { detail::fiber_local_key_release(key_); }
  FiberLocal(const FiberLocal&) = delete;
  FiberLocal& operator=(const FiberLocal&) = delete;

  // The calling fiber's value (the calling thread's outside a fiber), made on
  // first use. The reference stays valid until the fiber ends, across parks
  // and migrations. Throws what T() throws (the next get() tries again).
  T& get() {
    if (detail::FiberLocalTable* t = detail::fiber_local_table();
        t != nullptr && key_.index < t->size) {
      const detail::FiberLocalSlot& s = t->slots()[key_.index];
      if (s.owner == key_.id) return *static_cast<T*>(s.value);
    }
    return *static_cast<T*>(detail::fiber_local_make(key_, &create, &destroy));
  }
  T& operator*() { return get(); }
  T* operator->() { return &get(); }

 private:
  static void* create() { return new T(); }
  static void destroy(void* p) { delete static_cast<T*>(p); }

  const detail::FiberLocalKey key_;
};

}  // namespace tendril
