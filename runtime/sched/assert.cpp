// The failure path of TENDRIL_ASSERT (include/tendril/detail/assert.hpp).
#include "tendril/detail/assert.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "runtime/sched/fiber_ctl.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

namespace {

// Who broke the rule: the running fiber, else the thread.
int describe_caller(char* out, std::size_t size) noexcept {
  if (const FiberCtl* f = current_fiber())
    return std::snprintf(out, size, "fiber %llu \"%.31s\"", static_cast<unsigned long long>(f->id), f->name);
  return std::snprintf(out, size, "thread %ld (no fiber)", static_cast<long>(syscall(SYS_gettid)));
}

}  // namespace

void assert_failed(const char* rule, const char* condition, const char* file, int line) noexcept {
  char who[96];
  describe_caller(who, sizeof who);
  char msg[768];
  const int n = std::snprintf(msg, sizeof msg, "tendril: broken invariant: %s\n  (%s) at %s:%d on %s\n", rule,
                              condition, file, line, who);
  if (n > 0) {
    const ssize_t ignored = write(STDERR_FILENO, msg, std::size_t(n) < sizeof msg ? std::size_t(n) : sizeof msg - 1);
    (void)ignored;
  }
  std::abort();
}

}  // namespace tendril::detail
