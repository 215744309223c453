// tendril::spawn, tendril::Fiber and tendril::this_fiber: green threads.
//
//   tendril::run([] {
//     int sum = 0;
//     tendril::Fiber f = tendril::spawn([&sum](int n) {
//       for (int i = 1; i <= n; ++i) sum += i;
//     }, 100);
//     f.join();                      // sum == 5050
//     tendril::spawn({.name = "ticker"}, [] {
//       tendril::this_fiber::sleep_for(std::chrono::milliseconds(5));
//     }).detach();
//   });
//
// A fiber is a function running on its own small stack, scheduled by the
// runtime's workers. Switching between fibers costs nanoseconds; a blocking
// tendril primitive (Mutex, CondVar, Channel, sleep_for, join, ...) parks the
// fiber, never the worker thread. Scheduling is cooperative: a fiber runs until
// it blocks, yields or returns.
//
// Stacks: each fiber's stack is reserved up to a limit (Options::stack_limit,
// or SpawnOptions::stack_limit) but starts with one mapped page and grows on
// demand. Going past the limit stops the process with a message naming the
// fiber.
//
// The callable and its arguments are moved (decay-copied) onto the fiber's own
// stack: spawning from the stack cache does not allocate. A fiber spawned on
// a worker whose callable is small (up to 96 bytes, moved without throwing)
// gets its stack only when it first runs, from the stacks that fibers which
// ended gave back; until then the callable waits in its control block and the
// fiber holds no stack page (Options::stack_defer; Stats::fibers_unstarted).
//
// Exceptions: an exception escaping a fiber is kept and rethrown by join(). If
// the fiber was detached, it stops the process (std::terminate) after printing
// the fiber's id, name and the exception's what(), as an escaped exception would
// on a std::thread.
//
// Destroying a joinable Fiber (neither joined nor detached) stops the process
// with a message naming the fiber, as std::thread does: decide explicitly.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace tendril {

using FiberId = std::uint64_t;  // 0 is "no fiber"; ids are never reused in a process

struct SpawnOptions {
  std::string name;             // shown in diagnostics (first 31 bytes kept)
  std::size_t stack_limit = 0;  // 0: Options::stack_limit
  // Spawn site for the learned stack depth: fibers spawned with the same
  // (stable, non-null) address share a record of how deep their stacks grew,
  // and later ones get a stack already mapped that deep (no growth faults).
  // nullptr: the callable's type is the site.
  const void* site = nullptr;
};

namespace detail {
struct FiberCtl;
struct ClosureOps {
  std::size_t size;
  std::size_t align;
  void (*move_construct)(void* dst, void* src);
  void (*invoke)(void* self);
  void (*destroy)(void* self) noexcept;
  bool nothrow_move;  // move_construct cannot throw: it may wait in the fiber's record
};
// Allocates a stack, moves the closure onto it and makes the fiber runnable.
FiberCtl* spawn_fiber(const SpawnOptions& options, const ClosureOps& ops, void* closure);
// Empties `handle` unless it throws (a fiber joining itself, or a join its
// scope interrupted: the fiber is then still joinable).
void fiber_join(FiberCtl*& handle);
void fiber_detach(FiberCtl* fiber) noexcept;
[[noreturn]] void fiber_destroyed_joinable(FiberCtl* fiber) noexcept;
FiberId fiber_id(const FiberCtl* fiber) noexcept;

template <class C>
inline constexpr ClosureOps closure_ops = {
    sizeof(C),
    alignof(C),
    [](void* dst, void* src) { ::new (dst) C(std::move(*static_cast<C*>(src))); },
    [](void* self) { (*static_cast<C*>(self))(); },
    [](void* self) noexcept { static_cast<C*>(self)->~C(); },
    std::is_nothrow_move_constructible_v<C>,
};
}  // namespace detail

// A handle to a spawned fiber, like std::thread for threads. Move-only.
class Fiber {
 public:
  Fiber() noexcept = default;
  Fiber(Fiber&& other) noexcept : ctl_(std::exchange(other.ctl_, nullptr)) {}
  Fiber& operator=(Fiber&& other) noexcept {
    if (this != &other) {
      if (ctl_ != nullptr) detail::fiber_destroyed_joinable(ctl_);
      ctl_ = std::exchange(other.ctl_, nullptr);
    }
    return *this;
  }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  ~Fiber() {
    if (ctl_ != nullptr) detail::fiber_destroyed_joinable(ctl_);
  }

  // Waits for the fiber to finish (parking the calling fiber, or blocking the
  // calling thread outside the runtime) and rethrows an exception that escaped
  // it. Throws std::system_error: invalid_argument if not joinable,
  // resource_deadlock_would_occur if a fiber joins itself.
  void join();
  // Lets the fiber run on its own; its resources are freed when it finishes.
  // Throws std::system_error(invalid_argument) if not joinable.
  void detach();
  bool joinable() const noexcept { return ctl_ != nullptr; }
  // The fiber's id, or 0 for a Fiber that is not joinable.
  FiberId id() const noexcept { return ctl_ != nullptr ? detail::fiber_id(ctl_) : 0; }

 private:
  explicit Fiber(detail::FiberCtl* ctl) noexcept : ctl_(ctl) {}
  template <class F, class... A>
  friend Fiber spawn(const SpawnOptions&, F&&, A&&...);
  detail::FiberCtl* ctl_ = nullptr;
};

// Starts f(args...) as a new fiber. Must be called inside tendril::run() (from a
// fiber or from any thread while run() is in progress); otherwise throws
// std::logic_error. Throws std::system_error / std::bad_alloc if no stack can be
// had, and std::length_error if the callable is too large for the stack. A
// stack given at the first run was promised at spawn: a full stack arena
// still makes spawn throw; running out of memory for its first page then is
// waited out like a page fault (ten seconds), and then stops the process
// with a message.
template <class F, class... Args>
Fiber spawn(const SpawnOptions& options, F&& f, Args&&... args) {
  auto closure = [fn = std::forward<F>(f),
                  tup = std::make_tuple(std::forward<Args>(args)...)]() mutable {
    std::apply(std::move(fn), std::move(tup));
  };
  using C = decltype(closure);
  return Fiber(detail::spawn_fiber(options, detail::closure_ops<C>, &closure));
}

template <class F, class... Args>
  requires std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>
Fiber spawn(F&& f, Args&&... args) {
  static const SpawnOptions defaults{};
  return spawn(defaults, std::forward<F>(f), std::forward<Args>(args)...);
}

namespace this_fiber {
// Lets other runnable fibers run; outside the runtime, std::this_thread::yield.
void yield();
// Parks the calling fiber for at least `d` (sub-millisecond precision).
// Outside the runtime it sleeps the calling thread.
template <class Rep, class Period>
void sleep_for(const std::chrono::duration<Rep, Period>& d);
template <class Clock, class Duration>
void sleep_until(const std::chrono::time_point<Clock, Duration>& t);
// The calling fiber's id; 0 outside a fiber.
FiberId id() noexcept;
// The calling fiber's name ("" outside a fiber or if it has none).
const char* name() noexcept;
// The deepest extent the calling fiber's stack has reached, in bytes (at least
// one page); 0 outside a fiber.
std::size_t stack_high_water() noexcept;

// Keeps the calling fiber on the worker thread it runs on, from construction
// until destruction: while a NoMigrate is alive the fiber is never stolen by
// another worker, and every wake-up (a Channel or Mutex hand-off, a timer, an
// I/O completion, blocking(), a join) resumes it on that same thread. For code
// that holds a thread-affine resource across a park: a lock or handle tied to
// the OS thread, a thread_local it keeps a pointer into, errno-style state.
//
//   {
//     tendril::this_fiber::NoMigrate stay;   // from here on, one OS thread
//     auto* ctx = thread_affine_context();   // e.g. per-thread library state
//     reply = ch.recv();                     // parks; resumes on the same thread
//     ctx->use(*reply);
//   }                                        // may migrate again
//
// Nestable (a depth count; the outermost one decides the thread). Outside a
// fiber (a plain thread) it does nothing. It costs the fiber its load
// balancing: while the thread it stays on runs something else, it waits, even
// if other workers are idle. Fibers it spawns are not pinned. Must be
// destroyed on the fiber that made it (a stack object does that); otherwise
// the process stops with a message.
class NoMigrate {
 public:
  NoMigrate() noexcept;
  ~NoMigrate();
  NoMigrate(const NoMigrate&) = delete;
  NoMigrate& operator=(const NoMigrate&) = delete;

 private:
  detail::FiberCtl* fiber_;  // nullptr outside a fiber
};

// Runs f() on the worker thread's own stack instead of the calling fiber's, and
// returns when f does (an exception f throws propagates to the caller). For
// deep code that does not block (a parser with big frames, say): its frames
// then never become pages of the fiber's stack, which each of thousands of
// parked fibers would keep mapped. Go's runtime does the same (systemstack).
//
//   std::size_t n;
//   tendril::this_fiber::on_worker_stack([&] { n = parser.put(bytes, ec); });
//
// f must not park: blocking on a tendril primitive, yielding or sleeping inside
// f stops the process with a message naming the fiber. The worker stack holds
// 256 KiB. Outside a fiber (a plain thread) and when nested, f runs in place;
// sanitizer builds also run it in place.
template <class F>
void on_worker_stack(F&& f);
void on_worker_stack_impl(void (*fn)(void*), void* arg);

template <class F>
void on_worker_stack(F&& f) {
  using Fn = std::remove_reference_t<F>;
  on_worker_stack_impl([](void* p) { (*static_cast<Fn*>(p))(); }, const_cast<void*>(static_cast<const void*>(&f)));
}

void sleep_until_steady(std::chrono::steady_clock::time_point t);

template <class Rep, class Period>
void sleep_for(const std::chrono::duration<Rep, Period>& d) {
  if (d <= d.zero()) return yield();
  sleep_until_steady(std::chrono::steady_clock::now() +
                     std::chrono::ceil<std::chrono::steady_clock::duration>(d));
}
template <class Clock, class Duration>
void sleep_until(const std::chrono::time_point<Clock, Duration>& t) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    sleep_until_steady(std::chrono::time_point_cast<std::chrono::steady_clock::duration>(t));
  } else {
    sleep_for(t - Clock::now());
  }
}
}  // namespace this_fiber

}  // namespace tendril
