// tendril::blocking(): the offload pool (see include/tendril/blocking.hpp).
//
// A call record lives on the parked fiber's stack. The fiber links it into the
// pool's FIFO holding the record's SpinLock and parks with detail::park, which
// releases that lock only once the fiber's context is saved; the pool thread
// takes the same lock before it claims the waiter, so it can never ready a
// fiber that is still switching out.
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>

#include "runtime/io/io_internal.hpp"
#include "runtime/inject/fault_inject.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/blocking.hpp"
#include "tendril/options.hpp"

namespace tendril::detail {

namespace {

constexpr auto kIdleExit = std::chrono::seconds(10);

struct Call {
  Call(void (*f)(void*) noexcept, void* a) noexcept : fn(f), arg(a), sched(current_scheduler()) {}
  void (*fn)(void*) noexcept;
  void* arg;
  Scheduler* sched;  // alive until run() returns, which waits for running calls
  Waiter waiter;     // binds the calling fiber
  SpinLock lock;
  Call* next = nullptr;
};

class Pool {
 public:
  // Queues `c`; false if no thread exists and none could be started.
  bool submit(Call* c) {
    std::lock_guard<std::mutex> g(mu_);
    c->next = nullptr;
    if (tail_ != nullptr) tail_->next = c; else head_ = c;
    tail_ = c;
    if (idle_ > 0) {
      cv_.notify_one();
      return true;
    }
    if (threads_ < limit_ && start_thread()) return true;
    if (threads_ > 0) return true;  // it will get there
    unlink_last();
    return false;
  }

  void quiesce() {
    std::unique_lock<std::mutex> lk(mu_);
    head_ = tail_ = nullptr;  // their fibers were abandoned with the run
    done_cv_.wait(lk, [this] { return running_ == 0; });
  }

  // Takes effect for threads started from now on (Options::blocking_threads).
  void set_limit(unsigned limit) {
    std::lock_guard<std::mutex> g(mu_);
    limit_ = limit;
  }

 private:
  bool start_thread() {
    if (injected_fault(FaultPoint::blocking_thread) != 0) return false;
    try {
      std::thread([this] { thread_main(); }).detach();
    } catch (const std::system_error&) {
      return false;
    }
    ++threads_;
    return true;
  }

  void unlink_last() {
    Call* prev = nullptr;
    for (Call* c = head_; c != tail_; c = c->next) prev = c;
    if (prev != nullptr) prev->next = nullptr; else head_ = nullptr;
    tail_ = prev;
  }

  void thread_main() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      while (head_ == nullptr) {
        ++idle_;
        const bool timed_out = cv_.wait_for(lk, kIdleExit) == std::cv_status::timeout;
        --idle_;
        if (timed_out && head_ == nullptr) {
          --threads_;
          return;
        }
      }
      Call* c = head_;
      head_ = c->next;
      if (head_ == nullptr) tail_ = nullptr;
      ++running_;
      lk.unlock();
      c->fn(c->arg);
      finish(c);
      lk.lock();
      if (--running_ == 0) done_cv_.notify_all();
    }
  }

  static void finish(Call* c) noexcept {
    Scheduler* sched = c->sched;
    FiberCtl* fiber = c->waiter.fiber;
    c->lock.lock();  // held by the fiber until it has switched out
    const bool claimed = claim(c->waiter);
    c->lock.unlock();
    if (claimed) sched->ready(fiber, /*handoff=*/false);  // *c may be gone after this
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  Call* head_ = nullptr;
  Call* tail_ = nullptr;
  unsigned threads_ = 0;
  unsigned idle_ = 0;
  unsigned running_ = 0;
  unsigned limit_ = Options{}.blocking_threads;
};

// Never destroyed: detached pool threads may outlive static destruction.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

}  // namespace

bool blocking_offloads() noexcept { return current_fiber() != nullptr; }

void blocking_run(void (*fn)(void*) noexcept, void* arg) {
  Call c(fn, arg);
  c.lock.lock();
  if (!pool().submit(&c)) {
    c.lock.unlock();
    fn(arg);  // no thread to be had: run it here rather than fail
    return;
  }
  park(c.waiter, c.lock, WaitReason::blocking_call);
}

void blocking_pool_quiesce() noexcept { pool().quiesce(); }

void blocking_set_thread_limit(unsigned limit) { pool().set_limit(limit); }

}  // namespace tendril::detail
