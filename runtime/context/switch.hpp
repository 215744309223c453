// Context switching: Boost.Context's fcontext primitives plus the annotations
// AddressSanitizer and ThreadSanitizer need to follow a program across stacks.
//
// A Context is either a fiber's (stack [lo, hi)) or a worker thread's own
// scheduler context (its bounds are learnt from ASan on the first switch).
// jump() is the only way the runtime moves between contexts.
#pragma once

#include <boost/context/detail/fcontext.hpp>
#include <cstddef>

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

using boost::context::detail::fcontext_t;
using boost::context::detail::transfer_t;

// The C++ runtime keeps the exceptions being handled (what `throw;` and
// std::current_exception() read) and std::uncaught_exceptions() per thread,
// in libstdc++'s __cxa_eh_globals. A fiber that parks inside a catch block, or
// in a destructor run during unwinding, and resumes on another worker must
// take them along, and must not see the state of whatever ran there before.
// So every context saves the thread's copy when it leaves and puts its own
// back when it resumes: two words each way.
struct EhState {
  void* caught = nullptr;      // __cxa_eh_globals::caughtExceptions
  unsigned int uncaught = 0;   // __cxa_eh_globals::uncaughtExceptions
};
// The calling thread's __cxa_eh_globals, seen as an EhState. Out of line and
// opaque on purpose: __cxa_get_globals is declared __attribute__((const)), so
// an inline call could be reused across a switch that changed threads.
EhState* thread_eh_state() noexcept;

struct Context {
  fcontext_t fctx = nullptr;
  EhState eh;  // this context's exception state while it is switched out
  // Sanitizer bookkeeping; unused (and free) in normal builds.
  const void* stack_lo = nullptr;
  std::size_t stack_size = 0;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
  bool tsan_owned = false;  // created by us (fibers), not the thread's own
};

// Prepares `ctx` to start `entry` on the stack [lo, hi).
void context_make(Context& ctx, char* lo, char* hi, void (*entry)(transfer_t));
// Makes `ctx` describe the calling thread's own stack.
void context_adopt_thread(Context& ctx);
// Frees sanitizer state of a fiber context that will never run again; called
// from another context.
void context_destroy(Context& ctx) noexcept;

// Switches from `from` to `to`, passing `data`. `from_finished` tells ASan the
// current stack is going away. Returns in `from`'s context when something
// jumps back, with the transfer it received (complete it with
// context_resumed()). Inline: this is the context-switch path.
inline transfer_t context_jump(Context& from, Context& to, void* data, bool from_finished) noexcept {
#if TENDRIL_ASAN
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &from.asan_fake_stack, to.stack_lo,
                                 to.stack_size);
#else
  (void)from_finished;
#endif
#if TENDRIL_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  from.eh = *thread_eh_state();
  // A context's fctx is valid only while it is switched out: null from here
  // until the switch away from it completes (complete_switch stores it). The
  // fiber dump reads a parked fiber's registers through it (see ParkRecord).
  const fcontext_t target = to.fctx;
  to.fctx = nullptr;
  return boost::context::detail::jump_fcontext(target, data);
}

// Must be the first thing done on resuming (also at the top of a fiber's entry
// function): completes the sanitizer side of the switch into `self`.
inline void context_resumed(Context& self) noexcept {
  *thread_eh_state() = self.eh;
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
