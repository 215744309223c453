// TENDRIL_ASSERT(condition, rule): a check of one of the runtime's stated
// invariants (slot states, claim rules, lock order). In a build with checks on
// (TENDRIL_CHECKS=1: Debug builds and the sanitizer builds; CMake option
// TENDRIL_CHECKS) a broken one aborts the process with one line on stderr
// naming the rule, the condition, the source line and the fiber (or thread)
// that broke it:
//
//   tendril: broken invariant: a live slot is never handed out
//     (state != kLive) at runtime/stack/arena.cpp:764 on fiber 12 "conn"
//
// In other builds (Release) it compiles to nothing and does not evaluate the
// condition: checks may be as costly as they need to be.
#pragma once

namespace tendril::detail {

#if defined(TENDRIL_CHECKS) && TENDRIL_CHECKS
inline constexpr bool kChecks = true;
#else
inline constexpr bool kChecks = false;
#endif

// Writes the line above and aborts. Takes no lock and allocates nothing
// (snprintf into a stack buffer, write(2)), so the stack fault handler thread
// may call it too.
[[noreturn]] void assert_failed(const char* rule, const char* condition, const char* file, int line) noexcept;

}  // namespace tendril::detail

#if defined(TENDRIL_CHECKS) && TENDRIL_CHECKS
#define TENDRIL_ASSERT(condition, rule)                                                        \
  (__builtin_expect(!!(condition), 1) ? static_cast<void>(0)                                   \
                                      : ::tendril::detail::assert_failed(rule, #condition, __FILE__, __LINE__))
#else
#define TENDRIL_ASSERT(condition, rule) static_cast<void>(sizeof(static_cast<bool>(condition)))
#endif
