// Context switching: Boost.Context's fcontext primitives plus the annotations
// AddressSanitizer and ThreadSanitizer need to follow a program across stacks.
//
// A Context is either a fiber's (stack [lo, hi)) or a worker thread's own
// scheduler context (its bounds are learnt from ASan on the first switch).
// jump() is the only way the runtime moves between contexts.
#pragma once

#include <boost/context/detail/fcontext.hpp>
#include <cstddef>

namespace tendril::detail {

using boost::context::detail::fcontext_t;
using boost::context::detail::transfer_t;

struct Context {
  fcontext_t fctx = nullptr;
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
// context_resumed()).
transfer_t context_jump(Context& from, Context& to, void* data, bool from_finished) noexcept;
// Must be the first thing done on resuming (also at the top of a fiber's entry
// function): completes the sanitizer side of the switch into `self`.
void context_resumed(Context& self) noexcept;

}  // namespace tendril::detail
