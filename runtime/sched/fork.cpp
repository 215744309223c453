// fork(2) while run() is in progress: see fork.hpp.
#include "runtime/sched/fork.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

bool run_in_progress() noexcept;  // runtime.cpp

namespace {

std::atomic<bool> g_forked_child{false};

void on_fork_child() noexcept {
  if (!run_in_progress()) return;  // before the first run() or after it returned: nothing inherited
  g_forked_child.store(true, std::memory_order_relaxed);
  // The forking thread may be a worker: its next switch must stop, not run
  // the copies of the parent's fibers.
  if (Worker* w = current_worker()) w->mark_forked();
}

constexpr const char kMessage[] =
    "tendril: this process is a child of fork() taken while tendril::run was in progress; the parent's "
    "runtime (its workers, stacks and I/O rings) does not exist here and cannot be used or restarted: "
    "call only async-signal-safe functions and exec (or fork before run() or after it returned)";

}  // namespace

void watch_fork() noexcept {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, on_fork_child); });
}

bool forked_from_running_runtime() noexcept { return g_forked_child.load(std::memory_order_relaxed); }

const char* used_after_fork_message() noexcept { return kMessage; }

void die_used_after_fork(const char* what) noexcept {
  // write(2) only: the child's stdio locks may be held by threads that are gone.
  auto put = [](const char* s) { (void)!::write(STDERR_FILENO, s, std::strlen(s)); };
  put(kMessage);
  put(" (it tried: ");
  put(what);
  put(")\n");
  std::abort();
}

}  // namespace tendril::detail
