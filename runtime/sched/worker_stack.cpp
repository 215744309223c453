// this_fiber::on_worker_stack: running deep, non-blocking code on the worker
// thread's own stack, so that its frames never become pages of the fiber's
// stack. Go's runtime does the same with systemstack (the g0 stack) for the
// same reason: goroutine stacks stay small.
//
// Each worker maps one 256 KiB stack (plus a guard page) on first use, with
// ordinary demand paging: it is shared by every fiber of the worker, one at a
// time, so its pages are paid once per worker instead of once per fiber. The
// fiber jumps to a fresh context at its top, the function runs, the context
// jumps back and is discarded: two jumps, a few nanoseconds. The fiber cannot
// move to another worker meanwhile, because the function must not park: a
// switch while on the worker stack (Worker::switch_to) is a fatal error, since
// the next fiber of this worker to call on_worker_stack would overwrite the
// parked frames.
//
// Sanitizer builds run the function in place (the jump is not annotated for
// them) and still diagnose parking.
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <system_error>

#include "runtime/sched/fork.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

namespace {

constexpr std::size_t kWorkerStackBytes = 256 * 1024;
constexpr std::size_t kGuardBytes = 4096;

struct WorkerStackJob {
  void (*fn)(void*);
  void* arg;
  std::exception_ptr error;
  fcontext_t back = nullptr;
};

#if !(TENDRIL_ASAN || TENDRIL_TSAN)  // sanitizer builds run the function in place
void worker_stack_entry(transfer_t t) noexcept {
  auto* job = static_cast<WorkerStackJob*>(t.data);
  job->back = t.fctx;
  try {
    job->fn(job->arg);
  } catch (...) {
    job->error = std::current_exception();
  }
  boost::context::detail::jump_fcontext(job->back, nullptr);
  __builtin_unreachable();
}

char* map_worker_stack() {
  void* p = mmap(nullptr, kWorkerStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED)
    throw std::system_error(errno, std::generic_category(), "tendril::this_fiber::on_worker_stack: mmap");
  mprotect(p, kGuardBytes, PROT_NONE);  // best effort: overflow faults instead of corrupting
  return static_cast<char*>(p);
}
#endif

}  // namespace

Worker::~Worker() {
  if (worker_stack_ != nullptr) munmap(worker_stack_, kWorkerStackBytes + kGuardBytes);
}

void Worker::die_blocked_on_worker_stack(const FiberCtl* f) noexcept {
  if (forked_) die_used_after_fork("a fiber parked, yielded or ended in the child");
  std::fprintf(stderr,
               "tendril: fiber %llu '%s' tried to park inside this_fiber::on_worker_stack; code run "
               "there must not block, yield or sleep\n",
               static_cast<unsigned long long>(f != nullptr ? f->id : 0), f != nullptr ? f->name : "");
  std::fflush(stderr);
  std::abort();
}

void Worker::run_on_worker_stack(void (*fn)(void*), void* arg) {
  struct Flag {
    bool& on;
    explicit Flag(bool& b) : on(b) { on = true; }
    ~Flag() { on = false; }
  } flag(on_worker_stack_);
#if TENDRIL_ASAN || TENDRIL_TSAN
  fn(arg);
#else
  if (worker_stack_ == nullptr) worker_stack_ = map_worker_stack();
  WorkerStackJob job{fn, arg, nullptr};
  char* top = worker_stack_ + kGuardBytes + kWorkerStackBytes;
  const fcontext_t c = boost::context::detail::make_fcontext(top, kWorkerStackBytes, worker_stack_entry);
  boost::context::detail::jump_fcontext(c, &job);
  if (job.error) std::rethrow_exception(job.error);
#endif
}

}  // namespace tendril::detail

namespace tendril::this_fiber {

void on_worker_stack_impl(void (*fn)(void*), void* arg) {
  detail::Worker* w = detail::current_worker();
  // A plain thread, the scheduler's own context, or already on the worker
  // stack: run in place.
  if (w == nullptr || w->current() == nullptr || w->on_worker_stack()) {
    fn(arg);
    return;
  }
  w->run_on_worker_stack(fn, arg);
}

}  // namespace tendril::this_fiber
