#include "runtime/context/switch.hpp"

#include <pthread.h>

#if defined(__SANITIZE_ADDRESS__)
#define TENDRIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TENDRIL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TENDRIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TENDRIL_TSAN 1
#endif
#endif

#if TENDRIL_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if TENDRIL_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace tendril::detail {

void context_make(Context& ctx, char* lo, char* hi, void (*entry)(transfer_t)) {
#if TENDRIL_ASAN
  // A reused stack still carries the poison of the frames of the fiber that
  // ran on it last (they never returned).
  __asan_unpoison_memory_region(lo, static_cast<std::size_t>(hi - lo));
#endif
  ctx.fctx = boost::context::detail::make_fcontext(hi, static_cast<std::size_t>(hi - lo), entry);
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

transfer_t context_jump(Context& from, Context& to, void* data, bool from_finished) noexcept {
#if TENDRIL_ASAN
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &from.asan_fake_stack, to.stack_lo,
                                 to.stack_size);
#else
  (void)from_finished;
#endif
#if TENDRIL_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  (void)from;
  return boost::context::detail::jump_fcontext(to.fctx, data);
}

void context_resumed(Context& self) noexcept {
#if TENDRIL_ASAN
  const void* old_lo = nullptr;
  std::size_t old_size = 0;
  __sanitizer_finish_switch_fiber(self.asan_fake_stack, &old_lo, &old_size);
  (void)old_lo;
  (void)old_size;
#else
  (void)self;
#endif
}

}  // namespace tendril::detail
