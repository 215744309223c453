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
#pragma once

#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

namespace tendril {

namespace detail {
// True when blocking() should offload: the caller is a fiber.
bool blocking_offloads() noexcept;
// Runs fn(arg) on the pool and parks the calling fiber until it returns.
// fn must not throw.
void blocking_run(void (*fn)(void*) noexcept, void* arg);

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
}  // namespace detail

template <class F>
std::invoke_result_t<F&> blocking(F&& fn) {
  using R = std::invoke_result_t<F&>;
  if (!detail::blocking_offloads()) return std::invoke(fn);
  struct Call {
    F& fn;
    detail::BlockingSlot<R> slot;
    std::exception_ptr error;
  } call{fn, {}, {}};
  detail::blocking_run(
      [](void* p) noexcept {
        auto* c = static_cast<Call*>(p);
        try {
          c->slot.run(c->fn);
        } catch (...) {
          c->error = std::current_exception();
        }
      },
      &call);
  if (call.error) std::rethrow_exception(call.error);
  return call.slot.take();
}

}  // namespace tendril
