// tendril::blocking(): the offload pool (see include/tendril/blocking.hpp).
//
// A call record lives on the parked fiber's stack. The fiber links it into the
// pool's FIFO holding the record's SpinLock and parks with detail::park, which
// releases that lock only once the fiber's context is saved; the pool thread
// takes the same lock before it claims the waiter, so it can never ready a
// fiber that is still switching out.
//
// A fiber in a tendril::Scope parks interruptibly instead, and its record is
// on the heap with two references (the fiber's and the pool's): a cancel or
// the scope's deadline claims the waiter first (kTimedOut), the fiber drops
// its reference and throws, and the pool thread, whose claim then fails, runs
// the call to its end (or skips it if it had not started), drops the caller's
// payload and the last reference.
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "runtime/io/io_internal.hpp"
#include "runtime/inject/fault_inject.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/blocking.hpp"
#include "tendril/options.hpp"

namespace tendril::detail {

namespace {

constexpr auto kIdleExit = std::chrono::seconds(10);

struct Call {
  Call(void (*f)(void*) noexcept, void* a, void (*d)(void*) noexcept = nullptr) noexcept
      : fn(f), arg(a), drop(d), sched(current_scheduler()) {}
  void (*fn)(void*) noexcept;
  void* arg;
  // Interruptible calls (on the heap): drops `arg` when the fiber stopped
  // waiting. nullptr: the record is on the fiber's stack.
  void (*drop)(void*) noexcept;
  Scheduler* sched;  // alive until run() returns, which waits for running calls
  Waiter waiter;     // binds the calling fiber
  SpinLock lock;
  Call* next = nullptr;
  std::atomic<std::uint32_t> refs{2};  // interruptible calls: the fiber's and the pool's
};

void release(Call* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete c;
}

// The fiber of an interruptible call stopped waiting (its claim is kTimedOut).
bool abandoned(const Call* c) noexcept {
  return c->drop != nullptr && c->waiter.state.load(std::memory_order_acquire) == Waiter::kTimedOut;
}

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
    // Their fibers were abandoned with the run (they never resume): the heap
    // records of interruptible calls are ours to free.
    for (Call* c = std::exchange(head_, nullptr); c != nullptr;) {
      Call* next = c->next;
      if (c->drop != nullptr) {
        c->drop(c->arg);
        delete c;
      }
      c = next;
    }
    tail_ = nullptr;
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
      // fn starts once its caller is parked (the caller lets the lock go only
      // after its switch), so what fn sees of the runtime (a fiber dump run
      // off the workers) shows the caller waiting for it, not running.
      c->lock.lock();
      c->lock.unlock();
      if (!abandoned(c)) c->fn(c->arg);  // cancelled before it started: nothing to run
      finish(c);
      lk.lock();
      if (--running_ == 0) done_cv_.notify_all();
    }
  }

  static void finish(Call* c) noexcept {
    Scheduler* sched = c->sched;
    FiberCtl* fiber = c->waiter.fiber;
    const bool on_heap = c->drop != nullptr;
    c->lock.lock();  // held by the fiber until it has switched out
    const bool claimed = claim(c->waiter);
    c->lock.unlock();
    if (!on_heap) {
      if (claimed) sched->ready(fiber, /*handoff=*/false);  // *c may be gone after this
      return;
    }
    if (!claimed) c->drop(c->arg);  // the fiber stopped waiting: nobody takes the result
    if (claimed) sched->ready(fiber, /*handoff=*/false);
    release(c);
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
  // Not interruptible: the record and the caller's payload are on its stack.
  park(c.waiter, c.lock, WaitReason::blocking_call, nullptr, Cancellable::no);
}

void blocking_run_interruptible(void (*fn)(void*) noexcept, void (*drop)(void*) noexcept, void* arg) {
  if (const int e = interrupt_error(nullptr)) {  // nothing started: nothing to wait for
    drop(arg);
    throw std::system_error(e, std::generic_category(), "tendril::blocking");
  }
  auto* c = new (std::nothrow) Call(fn, arg, drop);
  if (c == nullptr) {  // no record to share: run it here rather than fail
    fn(arg);
    return;
  }
  c->lock.lock();
  if (!pool().submit(c)) {
    c->lock.unlock();
    delete c;
    fn(arg);
    return;
  }
  const bool done = park(c->waiter, c->lock, WaitReason::blocking_call);
  release(c);
  if (done) return;
  throw_if_interrupted(nullptr, "tendril::blocking");
  throw std::system_error(int(std::errc::operation_canceled), std::generic_category(), "tendril::blocking");
}

void blocking_pool_quiesce() noexcept { pool().quiesce(); }

void blocking_set_thread_limit(unsigned limit) { pool().set_limit(limit); }

}  // namespace tendril::detail
