// tendril::blocking(fn): run a blocking call (a C library that blocks, a DNS
// lookup, a disk read) without stalling the worker thread.
//
//   std::string text = tendril::blocking([&] { return slurp_file(path); });
//
// On a fiber, fn runs on a separate pool of OS threads while the calling fiber
// is parked; other fibers keep running on its worker. blocking() returns fn's
// result, or rethrows the exception fn threw. Outside a fiber (a plain thread,
// or no tendril::run in progress) it simply calls fn.
//
// The pool starts lazily, grows by one thread when a call finds no idle one,
// and is bounded: 64 threads by default, or TENDRIL_BLOCKING_THREADS (1-4096).
// Calls beyond the bound queue in FIFO order. Idle threads exit after 10 s.
// When run() returns it waits for offloaded calls still running (their
// fibers' stacks hold the results) and drops queued ones.
//
// Cancellation: for a fiber in a tendril::Scope, blocking() is a
// cancellation point. When the scope is cancelled (or its deadline passes)
// while fn runs, the fiber stops waiting at once and blocking() throws
// std::system_error with std::errc::operation_canceled (timed_out); fn cannot
// be interrupted, so it runs to its end on the pool and its result (or
// exception) is dropped there. A call cancelled before a pool thread took it
// does not run at all. For that, blocking() moves (or copies) fn into a
// record of its own on this path, so fn itself outlives the caller; but what
// fn refers to must too: capture by value what a cancelled call still uses
// (a [&] lambda that reads the caller's locals after the caller has thrown
// reads freed stack). Inside this_fiber::NoCancel, or with an lvalue fn that
// cannot be copied, the wait is not interrupted and fn may refer to anything.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "tendril/detail/park.hpp"

namespace tendril {

namespace detail {
// True when blocking() should offload: the caller is a fiber.
bool blocking_offloads() noexcept;
// Runs fn(arg) on the pool and parks the calling fiber until it returns.
// fn must not throw. Not interruptible.
void blocking_run(void (*fn)(void*) noexcept, void* arg);
// The same for a fiber whose parks are interruptible: returns once fn(arg)
// has returned, with `arg` still the caller's. Throws (the scope's error)
// when the fiber's scope interrupted the wait first; `arg` then belongs to
// the pool, which calls drop(arg) once fn is done with it (or instead of fn,
// if fn had not started).
void blocking_run_interruptible(void (*fn)(void*) noexcept, void (*drop)(void*) noexcept, void* arg);

template <class R>
struct BlockingSlot {
  std::optional<R> value;
  template <class F>
  void run(F& f) { value.emplace(std::invoke(f)); }
  R take() { return std::move(*value); }
};
template <class R>
struct BlockingSlot<R&> {
  R* ptr = nullptr;
  template <class F>
  void run(F& f) { ptr = &std::invoke(f); }
  R& take() { return *ptr; }
};
template <>
struct BlockingSlot<void> {
  template <class F>
  void run(F& f) { std::invoke(f); }
  void take() {}
};

// Runs a call record's fn into its slot on the pool, keeping an exception for
// the caller. Call has members fn, slot and error.
template <class Call>
void run_call(void* p) noexcept {
  auto* c = static_cast<Call*>(p);
  try {
    c->slot.run(c->fn);
  } catch (...) {
    c->error = std::current_exception();
  }
}

// The interruptible path: fn and the result live in a heap record the pool
// can keep when the caller stops waiting.
template <class R, class F>
R blocking_interruptible(F&& fn) {
  struct Call {
    std::decay_t<F> fn;
    BlockingSlot<R> slot;
    std::exception_ptr error;
  };
  auto* call = new Call{std::forward<F>(fn), {}, {}};
  blocking_run_interruptible(run_call<Call>, [](void* p) noexcept { delete static_cast<Call*>(p); }, call);
  std::unique_ptr<Call> done(call);
  if (done->error) std::rethrow_exception(done->error);
  return done->slot.take();
}
}  // namespace detail

template <class F>
std::invoke_result_t<F&> blocking(F&& fn) {
  using R = std::invoke_result_t<F&>;
  if (!detail::blocking_offloads()) return std::invoke(fn);
  if constexpr (std::is_constructible_v<std::decay_t<F>, F&&>) {
    if (detail::interruptible()) return detail::blocking_interruptible<R>(std::forward<F>(fn));
  }
  struct Call {
    F& fn;
    detail::BlockingSlot<R> slot;
    std::exception_ptr error;
  } call{fn, {}, {}};
  detail::blocking_run(detail::run_call<Call>, &call);
  if (call.error) std::rethrow_exception(call.error);
  return call.slot.take();
}

}  // namespace tendril
