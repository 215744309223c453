// tendril::Scope: structured concurrency with one deadline and one
// cancellation for a group of fibers, and this_fiber::cancelled/deadline,
// NoCancel, NoMigrate.
//
//   void handle(Request req) {
//     tendril::Scope calls(std::chrono::milliseconds(200));  // the request's deadline
//     for (const Backend& b : req.backends)
//       calls.spawn([&b, &results] { results.push_back(b.query()); });
//     calls.join();  // at 200 ms every call still waiting stops: its park throws
//   }
//
// A Scope owns the fibers spawned through it (its children). They carry the
// scope's deadline and cancellation into every park:
//   - once cancel() is called (on this scope or one it is nested in), a child's
//     next park, and the one it is in, throws std::system_error with
//     std::errc::operation_canceled;
//   - once the deadline passes, std::errc::timed_out.
// The cancellation points are sleep, Channel send/recv, select, CondVar wait
// (the mutex is held again when it throws), Semaphore acquire, WaitGroup wait,
// Fiber join, Scope join, io::*, net::* and blocking(). Mutex::lock is not one.
// An operation that completed is never reported as cancelled: data already
// received is returned. An operation's own timeout and the scope's deadline
// combine: the earlier wins.
//
// Nesting: a Scope made inside a fiber is nested in that fiber's scope (the one
// that spawned it): it inherits the deadline when its own is later or absent,
// and is cancelled with it. Fibers started with plain tendril::spawn belong to
// no scope: their parks are never interrupted.
//
// join() waits for every child. If a child threw, the scope was cancelled at
// that moment (so its siblings stop at their next park) and join() rethrows
// that first exception. The destructor cancels the children still running and
// waits for them (an exception they threw is then dropped): a scope never lets
// a child outlive it.
//
// Cancellation is cooperative: a child that never parks runs until it returns.
// Long computations can poll this_fiber::cancelled().
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "tendril/detail/park.hpp"
#include "tendril/fiber.hpp"

namespace tendril {

namespace detail {

// The runtime's view of a Scope (runtime/sched/scope.cpp). Lock order: a
// scope's lock before the locks of the scopes nested in it.
struct ScopeState {
  ScopeState* parent = nullptr;
  std::int64_t deadline = INT64_MAX;  // steady ticks: the earlier of its own and the parent's
  std::atomic<bool> cancelled{false};
  SpinLock lock;
  // Guarded by lock:
  FiberCtl* children = nullptr;   // running children that have started
  ScopeState* nested = nullptr;   // scopes opened by fibers of this scope
  ScopeState* sibling_next = nullptr;  // in parent->nested (the parent's lock)
  ScopeState* sibling_prev = nullptr;
  std::size_t live = 0;           // children spawned and not yet finished
  std::exception_ptr error;       // the first exception a child threw
  Waiter* joiner = nullptr;       // a fiber or thread in join()
};

void scope_open(ScopeState& s, const std::int64_t* deadline);
void scope_close(ScopeState& s) noexcept;
void scope_cancel(ScopeState& s) noexcept;
void scope_join(ScopeState& s);
void scope_child_spawning(ScopeState& s) noexcept;  // before spawn: counts the child
void scope_child_not_spawned(ScopeState& s) noexcept;  // spawn threw
// In the child fiber, around its body.
class ScopeChild {
 public:
  explicit ScopeChild(ScopeState& s) noexcept;
  ~ScopeChild();
  void failed(std::exception_ptr e) noexcept;
  ScopeChild(const ScopeChild&) = delete;
  ScopeChild& operator=(const ScopeChild&) = delete;

 private:
  ScopeState& s_;
};

}  // namespace detail

class Scope {
 public:
  // Inherits the enclosing fiber's deadline and cancellation.
  Scope() { detail::scope_open(state_, nullptr); }
  explicit Scope(std::chrono::steady_clock::time_point deadline) {
    const std::int64_t t = deadline.time_since_epoch().count();
    detail::scope_open(state_, &t);
  }
  template <class Rep, class Period>
  explicit Scope(std::chrono::duration<Rep, Period> timeout)
      : Scope(std::chrono::steady_clock::now() +
              std::chrono::ceil<std::chrono::steady_clock::duration>(timeout)) {}
  // Cancels the children still running and waits for them.
  ~Scope() { detail::scope_close(state_); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Starts f(args...) as a child fiber (see tendril::spawn for how the
  // callable and arguments are moved, and what it throws).
  template <class F, class... Args>
    requires std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>
  void spawn(F&& f, Args&&... args) {
    spawn(SpawnOptions{}, std::forward<F>(f), std::forward<Args>(args)...);
  }
  template <class F, class... Args>
  void spawn(const SpawnOptions& o, F&& f, Args&&... args) {
    detail::scope_child_spawning(state_);
    try {
      tendril::spawn(o, [s = &state_, fn = std::forward<F>(f),
                         tup = std::make_tuple(std::forward<Args>(args)...)]() mutable {
        detail::ScopeChild child(*s);
        try {
          std::apply(std::move(fn), std::move(tup));
        } catch (...) {
          child.failed(std::current_exception());
        }
      }).detach();
    } catch (...) {
      detail::scope_child_not_spawned(state_);
      throw;
    }
  }

  // Children (and the scopes nested in them) see it at their next park, or in
  // the one they are in. Idempotent; callable from any fiber or thread.
  void cancel() noexcept { detail::scope_cancel(state_); }
  // Waits for every child; rethrows the first exception one of them threw.
  // A cancellation point for the caller (of the caller's own scope).
  void join() { detail::scope_join(state_); }
  // cancel() was called on this scope or one it is nested in, or a child threw.
  bool cancelled() const noexcept { return state_.cancelled.load(std::memory_order_acquire); }
  std::optional<std::chrono::steady_clock::time_point> deadline() const noexcept {
    if (state_.deadline == INT64_MAX) return std::nullopt;
    return std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(state_.deadline));
  }

 private:
  detail::ScopeState state_;
};

namespace this_fiber {

// True once the calling fiber's scope is cancelled or its deadline has passed
// (its next interruptible park would throw). False outside a scope.
bool cancelled() noexcept;
// The calling fiber's scope deadline, if any.
std::optional<std::chrono::steady_clock::time_point> deadline() noexcept;

// While alive, the calling fiber's parks are not interrupted: neither
// cancellation nor the scope's deadline ends them (an operation's own timeout
// still does). For cleanup that must finish (closing a connection politely,
// returning it to a pool). Nestable; a no-op outside a fiber.
class NoCancel {
 public:
  NoCancel() noexcept;
  ~NoCancel();
  NoCancel(const NoCancel&) = delete;
  NoCancel& operator=(const NoCancel&) = delete;
};

}  // namespace this_fiber
}  // namespace tendril
