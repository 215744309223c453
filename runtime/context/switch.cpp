#include "runtime/context/switch.hpp"

#include <cxxabi.h>
#include <pthread.h>

namespace tendril::detail {

namespace {
// The thread's __cxa_eh_globals never moves, so it is looked up once per
// thread: __cxa_get_globals lives in libstdc++.so and reaches its TLS through
// __tls_get_addr, ~5 ns twice per switch; this initial-exec slot is one load.
__attribute__((tls_model("initial-exec"))) thread_local EhState* tls_eh_state = nullptr;
}  // namespace

// noinline: with link-time optimisation an inlined copy could let the
// compiler keep the thread pointer in a register across a switch, after which
// the fiber may be running on another thread.
__attribute__((noinline)) EhState* thread_eh_state() noexcept {
  // libstdc++'s layout starts with these two fields on every target we build
  // for (x86-64, AArch64: no ARM EHABI propagatingExceptions in between).
  static_assert(sizeof(void*) == 8, "EhState mirrors the LP64 __cxa_eh_globals");
  EhState* g = tls_eh_state;
  if (__builtin_expect(g == nullptr, 0))
    tls_eh_state = g = reinterpret_cast<EhState*>(abi::__cxa_get_globals());
  asm volatile("" : "+r"(g) : : "memory");  // never treated as const across switches
  return g;
}

void context_make(Context& ctx, char* lo, char* hi, void (*entry)(transfer_t)) {
#if TENDRIL_ASAN
  // A reused stack still carries the poison of the frames of the fiber that
  // ran on it last (they never returned).
  __asan_unpoison_memory_region(lo, static_cast<std::size_t>(hi - lo));
#endif
  ctx.fctx = boost::context::detail::make_fcontext(hi, static_cast<std::size_t>(hi - lo), entry);
  ctx.eh = EhState{};  // a new fiber handles no exception yet
  ctx.stack_lo = lo;
  ctx.stack_size = static_cast<std::size_t>(hi - lo);
  ctx.asan_fake_stack = nullptr;
#if TENDRIL_TSAN
  ctx.tsan_fiber = __tsan_create_fiber(0);
  ctx.tsan_owned = true;
#endif
}

void context_adopt_thread(Context& ctx) {
  ctx.fctx = nullptr;
  ctx.stack_lo = nullptr;
  ctx.stack_size = 0;
  // ASan needs the thread stack's bounds when a fiber switches back to it.
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* lo = nullptr;
    std::size_t size = 0;
    if (pthread_attr_getstack(&attr, &lo, &size) == 0) {
      ctx.stack_lo = lo;
      ctx.stack_size = size;
    }
    pthread_attr_destroy(&attr);
  }
#if TENDRIL_TSAN
  ctx.tsan_fiber = __tsan_get_current_fiber();
  ctx.tsan_owned = false;
#endif
}

void context_destroy(Context& ctx) noexcept {
#if TENDRIL_TSAN
  if (ctx.tsan_owned && ctx.tsan_fiber != nullptr) __tsan_destroy_fiber(ctx.tsan_fiber);
#endif
  ctx.tsan_fiber = nullptr;
  ctx.tsan_owned = false;
}

}  // namespace tendril::detail
