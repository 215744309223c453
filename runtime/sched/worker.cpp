// A worker: one pinned thread that runs fibers. See scheduler.hpp for the
// order in which it looks for work and the rules for waking parked workers.
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "runtime/io/poller.hpp"
#include "runtime/sched/compact_policy.hpp"
#include "runtime/sched/compact_testing.hpp"
#include "runtime/sched/scheduler.hpp"
#include "runtime/sched/interrupt.hpp"
#include "runtime/stack/stack.hpp"
#include "tendril/fiber_local.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TENDRIL_CPU_RELAX() _mm_pause()
#else
#define TENDRIL_CPU_RELAX() asm volatile("" ::: "memory")
#endif

namespace tendril::detail {

namespace {
// initial-exec: libtendril is loaded at start-up (never dlopen'ed late), and
// the general-dynamic model would cost a __tls_get_addr call per access.
__attribute__((tls_model("initial-exec"))) thread_local Worker* tls_worker = nullptr;

// Finishes a switch on the context that was entered: records where the left
// context stopped, then runs what it asked for.
inline void complete_switch(Context& self, transfer_t t) noexcept {
  context_resumed(self);
  auto* rec = static_cast<SwitchRecord*>(t.data);
  rec->from_ctx->fctx = t.fctx;
  // Compaction reads the saved context: a park is noted only now, and
  // before its action publishes the fiber to wakers.
  if (__builtin_expect(rec->note_park, false)) tls_worker->note_parked(rec->from);
  if (rec->action != nullptr) rec->action(rec->from, rec->arg);
}
}  // namespace

void complete_first_switch(Context& self, transfer_t t) noexcept { complete_switch(self, t); }

__attribute__((noinline)) Worker* current_worker() noexcept {
  Worker* w = tls_worker;
  asm volatile("" ::: "memory");
  return w;
}

namespace {
// The calling plain thread's fiber-local values (fiber_local.cpp).
__attribute__((tls_model("initial-exec"))) thread_local FiberLocalTable* tls_fiber_locals = nullptr;
}  // namespace

__attribute__((noinline)) FiberLocalTable** fiber_local_home() noexcept {
  Worker* w = tls_worker;
  if (w != nullptr) {
    if (FiberCtl* f = w->current()) return &f->locals;
  }
  return &tls_fiber_locals;
}

// FiberLocal::get()'s one call: a TLS load, the running fiber, its table.
__attribute__((noinline)) FiberLocalTable* fiber_local_table() noexcept {
  Worker* w = tls_worker;
  if (w != nullptr) {
    if (FiberCtl* f = w->current()) return f->locals;
  }
  return tls_fiber_locals;
}

FiberCtl* current_fiber() noexcept {
  Worker* w = current_worker();
  return w != nullptr ? w->current() : nullptr;
}

std::int64_t park_clock_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::int64_t steady_ticks() noexcept {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}

void Worker::start(int cpu) {
  seen_switches_.assign(sched_.worker_count(), ~std::uint64_t{0});
  steal_seed_ = index_ * 2654435761u + 1;
  thread_ = std::thread([this, cpu] {
    if (cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
    }
    // Timers promise sub-millisecond precision; the default 50 us slack of
    // futex timeouts would eat most of it.
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    unsigned my_cpu = 0, my_node = 0;
    if (getcpu(&my_cpu, &my_node) == 0) node_.store(int(my_node), std::memory_order_relaxed);
    char name[16];
    std::snprintf(name, sizeof(name), "tendril-w%u", index_);
    pthread_setname_np(pthread_self(), name);
    stack_thread_init(index_);
    init_compaction();
    tls_worker = this;
    os_tid_.store(static_cast<int>(gettid()), std::memory_order_release);
    if (const int err = io_thread_init(index_)) {
      poller_error_ = err;  // read by Scheduler::start after the latch
      tls_worker = nullptr;
      sched_.started_->count_down();
      return;
    }
    context_adopt_thread(sched_ctx_);
    sched_.started_->count_down();  // run() starts main only once every worker is ready
    loop();
    io_thread_exit(index_);
    tls_worker = nullptr;
  });
}

FiberId Worker::next_fiber_id() noexcept {
  // Ids come in blocks so that spawning does not bounce one cache line
  // between workers.
  if (id_next_ == id_end_) {
    constexpr FiberId kBlock = 1024;
    id_next_ = sched_.allocate_id_block(kBlock);
    id_end_ = id_next_ + kBlock;
  }
  return id_next_++;
}

void Worker::push_local(FiberCtl* f) noexcept {
  if (!runq_.push(f)) {
    // Full: move half of it, oldest first, and f to the global queue.
    FiberCtl* batch[RunQueue::kCapacity / 2 + 1];
    const std::uint32_t n = runq_.pop_batch(batch, RunQueue::kCapacity / 2);
    batch[n] = f;
    sched_.global_push_batch(batch, n + 1);
  }
  sched_.wake_idle_worker_if_needed();
}

void Worker::push_runnext(FiberCtl* f) noexcept {
  // Only the owner makes runnext non-null (stealers only empty it), so an
  // empty slot stays empty until this store: no locked instruction needed.
  if (runnext_.load(std::memory_order_relaxed) == nullptr) {
    runnext_.store(f, std::memory_order_release);
    return;
  }
  FiberCtl* old = runnext_.exchange(f, std::memory_order_acq_rel);
  if (old != nullptr) push_local(old);
}

// Always inlined into its two callers: with link-time optimisation GCC
// otherwise calls it out of line from this_fiber::yield (a seventh argument on
// the stack and one more frame per switch), which made a yield 14 ns slower.
__attribute__((always_inline)) inline void Worker::switch_to(FiberCtl* from, Context& from_ctx, FiberCtl* next, SwitchAction action,
                       void* arg, bool finished) noexcept {
  if (__builtin_expect(on_worker_stack_, false)) die_blocked_on_worker_stack(from);
  record_ = SwitchRecord{from, &from_ctx, action, arg, compact_on_ && from != nullptr && !finished};
  current_.store(next, std::memory_order_relaxed);
  Context& to = next != nullptr ? next->ctx : sched_ctx_;
  if (next != nullptr) {
    WorkerCounters::bump(counters_.switches);
    next->park.end();
    // Ordered after the store above by the compactor's membarrier (see
    // compact_idle_fibers): either it sees the fiber resumed, or we see its flag.
    asm volatile("" ::: "memory");
    if (__builtin_expect(next->compact.load(std::memory_order_acquire) != FiberCtl::kCompactNone, false))
      restore_compacted(next);
  }
  stack_on_switch(index_, from != nullptr && !finished ? &from->stack : nullptr,
                  next != nullptr ? &next->stack : nullptr);
  const transfer_t t = context_jump(from_ctx, to, &record_, finished);
  // Resumed, possibly on another thread: `this` may be a stranger now.
  complete_switch(from_ctx, t);
}

void Worker::switch_out(FiberCtl* self, SwitchAction action, void* arg, bool finished) noexcept {
  // Before pick_next: in a fork() child it would reap the parent's rings.
  if (__builtin_expect(forked_, false)) die_blocked_on_worker_stack(self);
  // Now and then, when parked fibers are due for compaction, a busy worker
  // goes through its scheduler context, where it compacts them.
  FiberCtl* next = __builtin_expect(compact_on_, false) && compaction_due() ? nullptr : pick_next();
  switch_to(self, self->ctx, next, action, arg, finished);
}

bool Worker::switch_if_runnable(FiberCtl* self, SwitchAction action, void* arg) noexcept {
  if (__builtin_expect(forked_, false)) die_blocked_on_worker_stack(self);
  FiberCtl* next = pick_next();
  // Nothing else to run, but (now and then) parked fibers are due for
  // compaction: a fiber that only yields must not hold that off for good;
  // it goes through the scheduler context, which compacts and runs it again.
  if (next == nullptr && unbound_next_ == nullptr && !(__builtin_expect(compact_on_, false) && compaction_due()))
    return false;
  switch_to(self, self->ctx, next, action, arg, false);
  return true;
}

FiberCtl* Worker::pick_local() noexcept {
  if (FiberCtl* f = runnext_.load(std::memory_order_relaxed)) {
    if (runnext_streak_ < kRunnextStreak || runq_.size() == 0) {
      if (runnext_.compare_exchange_strong(f, nullptr, std::memory_order_acq_rel)) {
        ++runnext_streak_;
        return f;
      }
    }
  }
  runnext_streak_ = 0;
  return runq_.pop();
}

FiberCtl* Worker::pick_next() noexcept {
  // On a fiber's switch (it may hold the lock its park releases once the
  // switch is done) a fiber that has not run yet gets a cached stack, or
  // waits in unbound_next_ for the scheduler context, which may make one.
  const bool on_fiber = current_.load(std::memory_order_relaxed) != nullptr;
  for (;;) {
    FiberCtl* f;
    if (__builtin_expect(unbound_next_ != nullptr, false)) {
      if (on_fiber) return nullptr;
      f = unbound_next_;
      unbound_next_ = nullptr;
    } else {
      f = pick_any();
      if (__builtin_expect(sched_.pinned_fibers.load(std::memory_order_relaxed) != 0, false))
        f = send_pinned_home(f);
      if (f == nullptr) return f;
      if (__builtin_expect(f->ctx.fctx != nullptr, true)) {
        prefetch_queued();
        return f;
      }
    }
    // It gets its stack here, where it will run.
    if (bind_unstarted_fiber(f, index_, /*cache_only=*/on_fiber)) return f;
    if (on_fiber) {
      unbound_next_ = f;
      return nullptr;
    }
    // This worker's arena is full: its home kept room for its stack.
    sched_.worker(f->home).push_pinned(f);
  }
}

// After a mass wake thousands of fibers sit in the run queues, and nobody
// has touched their stacks for a while: the switch into each waited for a
// page walk and a cache miss on its saved registers, then one miss per frame
// as it returned from its park (a third of the time of waking 100k fibers
// parked on one WaitGroup, on this guest). So while the picked fiber runs,
// the saved context of the one queued behind it and the frames just above
// (768 B: a parked fiber's park frames) are fetched, with the stack's side
// table entries its release reads if it ends, and the control block of the
// one after that, whose saved stack pointer this reads next time. (Fetching
// the lines below the saved stack pointer too, where the switch action
// runs, made no difference.)
// Hints only: a thief may take either fiber meanwhile (control blocks are
// never unmapped while the runtime runs, so the read is safe; it is racy
// by design, hence not under TSan), and a prefetch neither faults (the
// missing pages of a compacted stack are skipped) nor writes.
void Worker::prefetch_queued() const noexcept {
#if !TENDRIL_TSAN
  FiberCtl* a = runq_.peek(0);
  if (a == nullptr) return;
  if (FiberCtl* b = runq_.peek(1)) {
    __builtin_prefetch(b);
    __builtin_prefetch(&b->park);
  }
  const char* sp = static_cast<const char*>(__atomic_load_n(&a->ctx.fctx, __ATOMIC_RELAXED));
  if (sp == nullptr) return;
  for (int line = 0; line < 12; ++line) __builtin_prefetch(sp + 64 * line, 1);
  stack_prefetch_release(a->stack);
#endif
}

FiberCtl* Worker::send_pinned_home(FiberCtl* f) noexcept {
  // Each round takes one fiber out of this worker's sources, so this ends.
  while (f != nullptr) {
    Worker* home = f->pin_home.load(std::memory_order_relaxed);
    if (home == nullptr || home == this) return f;
    home->push_pinned(f);
    f = pick_any();
  }
  return nullptr;
}

void Worker::push_pinned(FiberCtl* f) noexcept {
  FiberCtl* head = pinned_inbox_.load(std::memory_order_relaxed);
  do {
    f->pin_next = head;
  } while (!pinned_inbox_.compare_exchange_weak(head, f, std::memory_order_release,
                                                std::memory_order_relaxed));
  if (current_worker() != this) unpark_if_idle();
}

void Worker::unpark_if_idle() noexcept {
  // Pairs with the fence in park_thread: either this worker, parking, sees
  // the inbox we pushed to, or we see it in the idle list.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sched_.nidle_.load(std::memory_order_seq_cst) == 0) return;
  {
    std::lock_guard<std::mutex> g(sched_.idle_mu_);
    if (!in_idle_list_) return;  // running or spinning: its next pick sees the inbox
    sched_.idle_.erase(std::find(sched_.idle_.begin(), sched_.idle_.end(), this));
    in_idle_list_ = false;
    sched_.nidle_.fetch_sub(1, std::memory_order_seq_cst);
  }
  unpark();
}

FiberCtl* Worker::pick_pinned() noexcept {
  if (pinned_head_ == nullptr) {
    // The inbox is newest first: reverse it onto the FIFO.
    FiberCtl* list = pinned_inbox_.exchange(nullptr, std::memory_order_acquire);
    FiberCtl* fifo = nullptr;
    while (list != nullptr) {
      FiberCtl* next = list->pin_next;
      list->pin_next = fifo;
      fifo = list;
      list = next;
    }
    pinned_head_ = fifo;
  }
  if (pinned_head_ == nullptr) return nullptr;
  // Fibers readied from elsewhere must not starve the local queue: after
  // kRunnextStreak of them in a row, one local pick.
  if (pinned_streak_ >= kRunnextStreak &&
      (runq_.size() != 0 || runnext_.load(std::memory_order_relaxed) != nullptr)) {
    pinned_streak_ = 0;
    return nullptr;
  }
  ++pinned_streak_;
  FiberCtl* f = pinned_head_;
  pinned_head_ = f->pin_next;
  f->pin_next = nullptr;
  return f;
}

FiberCtl* Worker::pick_any() noexcept {
  ++tick_;
  if (timers_.earliest.load(std::memory_order_relaxed) != INT64_MAX && (tick_ & 7) == 0)
    fire_timers(*this, steady_ticks(), true);
  if (tick_ % 61 == 0) {
    if (releases_.load(std::memory_order_relaxed) != nullptr) release_deferred();
    // Fairness: neither the global queue nor finished I/O waits behind a
    // busy local queue for long. Polling here also hands queued SQEs to the
    // kernel; I/O completions go to the global tail (poll_io_busy), then the
    // global head gets its turn.
    poll_io_busy();
    FiberCtl* f = nullptr;
    if (!sched_.global_empty() && sched_.global_pop_batch(&f, 1, node_.load(std::memory_order_relaxed)) != 0)
      return f;
  }
  if (__builtin_expect(has_pinned(), false)) {
    if (FiberCtl* f = pick_pinned()) return f;
  }
  if (FiberCtl* f = pick_local()) return f;
  if (timers_.earliest.load(std::memory_order_relaxed) != INT64_MAX) {
    fire_timers(*this, steady_ticks(), true);
    if (FiberCtl* f = pick_local()) return f;
  }
  if (!sched_.global_empty()) {
    if (FiberCtl* f = global_take_batch()) return f;
  }
  if (io_poll(index_, true) != 0) {
    if (FiberCtl* f = pick_local()) return f;
  }
  return steal();
}

std::uint32_t Worker::poll_io_busy() noexcept {
  // The local queue is busy: what I/O made runnable joins the global queue's
  // tail, behind every fiber already waiting (as Go's netpoll injection). In
  // the local queue it would run before the global backlog, which then only
  // moves one fiber per 61 picks: connections that once overflowed there
  // would wait for seconds while the others go round.
  io_to_global_ = true;
  const std::uint32_t n = io_poll(index_, false);
  io_to_global_ = false;
  flush_io_batch();
  return n;
}

void Worker::push_io_ready(FiberCtl* f) noexcept {
  io_batch_[io_batch_n_++] = f;
  if (io_batch_n_ == kIoBatch) flush_io_batch();
}

void Worker::flush_io_batch() noexcept {
  if (io_batch_n_ == 0) return;
  sched_.global_push_batch(io_batch_, io_batch_n_);
  io_batch_n_ = 0;
  sched_.wake_idle_worker_if_needed();
}

FiberCtl* Worker::global_take_batch() noexcept {
  // As Go's globrunqget: a fair share of the global queue (at most half the
  // local ring), so a backlog there is worked off at the pace of the local
  // queue rather than one fiber per pick, and the lock is taken once per batch.
  FiberCtl* batch[RunQueue::kCapacity / 2];
  const std::uint32_t room = RunQueue::kCapacity - runq_.size();
  const int node = node_.load(std::memory_order_relaxed);
  std::uint32_t max = static_cast<std::uint32_t>(
      sched_.global_size(node) / sched_.worker_count() + 1);
  max = std::min({max, room, RunQueue::kCapacity / 2});
  const std::uint32_t n = sched_.global_pop_batch(batch, max == 0 ? 1 : max, node);
  if (n == 0) return nullptr;
  for (std::uint32_t i = 1; i < n; ++i) runq_.push(batch[i]);
  if (n > 1) sched_.wake_idle_worker_if_needed();
  return batch[0];
}

// Victims of the thief's own NUMA node first (their fibers' stacks and data
// are local); another node's (its workers' queues, then its global list) only
// when none of its own node had anything, and then one fiber at a time.
FiberCtl* Worker::steal() noexcept {
  const unsigned n = sched_.worker_count();
  if (n < 2) return nullptr;
  steal_seed_ = steal_seed_ * 1103515245u + 12345u;
  const unsigned start = (steal_seed_ >> 16) % n;
  const std::int64_t now = steady_ticks();
  const int my_node = node_.load(std::memory_order_relaxed);
  // Fibers queued on another node's global list (overflow or I/O there, or
  // from plain threads) count as another node's work too.
  bool other_nodes = sched_.global_size(my_node) != sched_.global_size_.load(std::memory_order_acquire);
  for (int pass = 0; pass < 2; ++pass) {
    const bool remote = pass == 1;
    if (remote && !other_nodes) break;
    for (unsigned k = 0; k < n; ++k) {
      Worker& victim = sched_.worker((start + k) % n);
      if (&victim == this) continue;
      if ((victim.node_.load(std::memory_order_relaxed) != my_node) != remote) {
        other_nodes = true;
        continue;
      }
      if (FiberCtl* f = steal_from(victim, now, remote)) return f;
    }
    if (remote) {
      for (unsigned l = 0; l < Scheduler::kGlobalLists; ++l) {
        FiberCtl* f = nullptr;
        if (int(l) != my_node % int(Scheduler::kGlobalLists) && sched_.global_pop_batch(&f, 1, int(l)) != 0) {
          stack_follow_to_node(index_, f->stack, f->ctx.fctx);
          return f;
        }
      }
    }
  }
  return nullptr;
}

FiberCtl* Worker::steal_from(Worker& victim, std::int64_t now, bool remote) noexcept {
  if (remote) {  // one fiber: the rest stay on the node of their stacks
    if (FiberCtl* f = victim.runq_.steal_one()) {
      WorkerCounters::bump(counters_.steals);
      WorkerCounters::bump(counters_.steals_remote);
      // Its stack comes along: the pages it will use, and the check when it
      // ends, are then on this node.
      stack_follow_to_node(index_, f->stack, f->ctx.fctx);
      return f;
    }
  }
  FiberCtl* batch[RunQueue::kCapacity / 2];
  if (const std::uint32_t got = victim.runq_.steal_half(batch)) {
    for (std::uint32_t i = 1; i < got; ++i) push_local(batch[i]);
    WorkerCounters::bump(counters_.steals, got);
    if (remote) WorkerCounters::bump(counters_.steals_remote, got);
    return batch[0];
  }
  // A victim that has not switched since our last look is stuck in one
  // fiber; its runnext would wait for it, so take it.
  const std::uint64_t sw = victim.counters_.switches.load(std::memory_order_relaxed);
  if (FiberCtl* f = victim.runnext_.load(std::memory_order_acquire)) {
    if (seen_switches_[victim.index_] == sw &&
        victim.runnext_.compare_exchange_strong(f, nullptr, std::memory_order_acq_rel)) {
      WorkerCounters::bump(counters_.steals);
      if (remote) {
        WorkerCounters::bump(counters_.steals_remote);
        stack_follow_to_node(index_, f->stack, f->ctx.fctx);
      }
      return f;
    }
  }
  seen_switches_[victim.index_] = sw;
  if (victim.timers_.earliest.load(std::memory_order_relaxed) <= now) {
    victim.fire_timers(*this, now, false);
    if (FiberCtl* f = runq_.pop()) return f;
  }
  return nullptr;
}

void Worker::fire_timers(Worker& into, std::int64_t now, bool may_block) noexcept {
  if (may_block) {
    timers_.lock.lock();
  } else if (!timers_.lock.try_lock()) {
    return;
  }
  FiberCtl* expired[64];
  std::uint32_t n = 0;
  while (n < 64) {
    FiberCtl* f = timers_.pop_expired(now);
    if (f == nullptr) break;
    Waiter* w = f->timer_waiter;
    if (f->timer_interrupts) {
      // Under the heap lock, so the fiber (which erases itself under it
      // after it resumes) is still there; the Interrupt readies it.
      interrupt_fiber(f);
    } else if (w == nullptr) {
      expired[n++] = f;  // a sleep: only the timer wakes it
    } else {
      std::uint32_t expected = Waiter::kWaiting;
      // Lost the race to a waker: it will resume the fiber.
      if (w->state.compare_exchange_strong(expected, Waiter::kTimedOut, std::memory_order_acq_rel))
        expired[n++] = f;
    }
  }
  timers_.lock.unlock();
  for (std::uint32_t i = 0; i < n; ++i) {
    expired[i]->park.readied();
    into.push_local(expired[i]);
  }
}

FiberCtl* Worker::spin_for_work() noexcept {
  const std::int64_t start = steady_ticks();
  const std::int64_t until =
      start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(sched_.options().spin_before_park).count();
  sched_.nspinning_.fetch_add(1, std::memory_order_seq_cst);
  FiberCtl* f = nullptr;
  std::int64_t until_now = until;
  while (!sched_.stopping()) {
    if ((f = pick_next()) != nullptr) break;
    // Useful work while idle: fresh stacks for a worker that spawns faster
    // than it maps them. Each batch earns another spin period.
    if (stack_prepare_ahead(index_)) {
      until_now = steady_ticks() + (until - start);
      continue;
    }
    if (steady_ticks() >= until_now) break;
    for (int k = 0; k < 32; ++k) TENDRIL_CPU_RELAX();
  }
  sched_.nspinning_.fetch_sub(1, std::memory_order_seq_cst);
  return f;
}

bool Worker::park_thread() noexcept {
  // A parked worker re-checks now and then while some worker runs: a worker
  // stuck in one long-running fiber cannot ask for help with the fiber in its
  // runnext slot. When every worker is parked nobody can be stuck, so they
  // sleep until a timer or a wake-up and an idle runtime costs no CPU.
  bool watch;
  {
    std::lock_guard<std::mutex> g(sched_.idle_mu_);
    sched_.idle_.push_back(this);
    in_idle_list_ = true;
    const int idle = sched_.nidle_.fetch_add(1, std::memory_order_seq_cst) + 1;
    watch = idle < static_cast<int>(sched_.worker_count());
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Look once more now that wakers can see us (see wake_idle_worker_if_needed).
  bool work = !sched_.global_empty() || runq_.size() != 0 ||
              runnext_.load(std::memory_order_acquire) != nullptr || has_pinned() ||
              sched_.stopping();
  for (unsigned i = 0; !work && i < sched_.worker_count(); ++i)
    work = sched_.worker(i).runq_.size() > 0;
  if (!work) {
    WorkerCounters::bump(counters_.parks);
    io_wait(index_, wake_deadline(watch));
  }
  std::lock_guard<std::mutex> g(sched_.idle_mu_);
  if (in_idle_list_) {
    sched_.idle_.erase(std::find(sched_.idle_.begin(), sched_.idle_.end(), this));
    in_idle_list_ = false;
    sched_.nidle_.fetch_sub(1, std::memory_order_seq_cst);
  }
  return !watch;
}

void Worker::wake_a_watcher() noexcept {
  Worker* watcher = nullptr;
  {
    std::lock_guard<std::mutex> g(sched_.idle_mu_);
    if (sched_.idle_.empty()) return;
    watcher = sched_.idle_.back();
    sched_.idle_.pop_back();
    watcher->in_idle_list_ = false;
    sched_.nidle_.fetch_sub(1, std::memory_order_seq_cst);
  }
  watcher->unpark();
}

const Deadline* Worker::wake_deadline(bool watch) noexcept {
  // Our earliest timer; other workers' timers get a grace period before we go
  // and fire them for a worker that is stuck.
  std::int64_t wake_at = timers_.earliest.load(std::memory_order_acquire);
  constexpr std::int64_t kGrace = 1000000;  // 1 ms, in steady ticks (ns)
  for (unsigned i = 0; i < sched_.worker_count(); ++i) {
    const std::int64_t e = sched_.worker(i).timers_.earliest.load(std::memory_order_acquire);
    if (e != INT64_MAX && e + kGrace < wake_at) wake_at = e + kGrace;
  }
  if (watch) {
    // Backing off from 1 ms to 10 ms, the cadence of Go's sysmon; steal()
    // takes a stuck runnext on its second look.
    const std::int64_t check_at = steady_ticks() + park_backoff_ns_;
    park_backoff_ns_ = std::min<std::int64_t>(park_backoff_ns_ * 2, kMaxParkBackoffNs);
    wake_at = std::min(wake_at, check_at);
  }
  if (compact_due_ != INT64_MAX) {
    wake_at = std::min<std::int64_t>(wake_at, compact_due_);  // parked fibers become due for compaction
  }
  if (maintenance_due_ns_ != 0)  // the stack cache still has stacks to give back
    wake_at = std::min<std::int64_t>(wake_at, steady_ticks() + static_cast<std::int64_t>(maintenance_due_ns_));
  if (wake_at == INT64_MAX) return nullptr;
  park_deadline_ = Deadline{std::chrono::steady_clock::duration(wake_at)};
  return &park_deadline_;
}

void Worker::unpark() noexcept { io_wake(index_); }

void Worker::defer_release(FiberCtl* f) noexcept {
  FiberCtl* head = releases_.load(std::memory_order_relaxed);
  do {
    f->next = head;
  } while (!releases_.compare_exchange_weak(head, f, std::memory_order_release, std::memory_order_relaxed));
}

void Worker::release_deferred() noexcept {
  FiberCtl* f = releases_.exchange(nullptr, std::memory_order_acquire);
  while (f != nullptr) {
    FiberCtl* next = f->next;
    release_fiber(f);  // f->finished_on is this worker: released here
    f = next;
  }
}

// ---- idle-stack compaction ----------------------------------------------------
//
// A fiber that parks on this worker (not in descriptor I/O, see below) is
// listed here once; its latest park word is kept in the FiberCtl
// (note_parked). The list holds no reference: a listed fiber that ends gives
// its stack back at once, and only its record waits for the list to let go
// (FiberCtl::compact_listed), so the list never reads a record reused by
// another fiber, and a fiber it compacts is parked (it cannot end while
// kCompacting keeps it from running). When the worker is in its
// scheduler context (its own thread stack, never a fiber stack: the stack
// side's moves must not fault on a registered page; see stack_compact), it
// walks the list: a fiber found running, runnable or ended is dropped (it
// will be listed again when it next parks), one parked for compact_after is
// compacted. Runnable shows in the park word as soon as a waker readies the
// fiber (ParkRecord::readied), so a fiber that waits in a run queue behind
// a mass wake is not compacted only to be restored when its turn comes.
// Cost on the switch path while compaction is on: the listing (a few loads
// and stores once per listed park), done once the switch has saved the
// fiber's context (complete_switch); while it is off, a byte of the switch
// record tested there. Every switch into a
// fiber tests one byte of its FiberCtl, beside the park word it writes
// anyway.
//
// Excluding a concurrent switch-in without a locked instruction on the
// switch path: the compactor sets FiberCtl::compact (CAS), then runs
// membarrier(PRIVATE_EXPEDITED), then checks the park word again. The park
// word is cleared by the fiber's waker (ParkRecord::readied) or by the
// worker switching in (park.end()); that worker loads the flag after it,
// having taken the fiber from a queue the waker pushed it on (release and
// acquire). The membarrier is a full barrier on every thread of the
// process, so either the compactor sees the changed park word (and gives
// up) or the switching worker sees the flag (and waits for kCompacting to
// end, restoring on kCompacted). One membarrier per batch of compactions.
//
// Fibers parked in descriptor I/O (io_*, net_*) are compacted too: with
// io_uring the kernel may write a read's buffer on the compacted stack from
// the ring's task work or an io-wq thread, a fault like any other touch,
// which the slot owner's handler serves. That needs the task work to run
// only while the ring's worker waits for completions (DEFER_TASKRUN): run
// on the return from the compactor's own UFFDIO_MOVE, it would fault on the
// page being moved and wait for the very thread it stopped
// (io_writes_only_while_waited). Without it such fibers are left alone.
// A page pinned for I/O (registered buffers, O_DIRECT) cannot move: the
// compaction gives up (stack_compact).
//
// Not compacted (left for later): stacks deeper than kMaxCompactPages. The
// top page goes with the rest: the FiberCtl and the Waiter of the common
// waits live off the stack (fiber_ctl_cache.hpp), so a wake through them
// touches no stack page and the fiber comes back by the eager copy.
namespace {
constexpr std::int64_t kCompactRetryNs = 1000000;  // 1 ms

bool compaction_barrier_ready() noexcept {
  static const bool ready =
      syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  return ready;
}
}  // namespace

std::atomic<std::int64_t> g_compact_delay_for_tests{-1};

void Worker::init_compaction() noexcept {
  const std::chrono::milliseconds after = sched_.options().compact_after;
  const std::int64_t forced = g_compact_delay_for_tests.load(std::memory_order_relaxed);
  compact_after_ns_ =
      forced >= 0 ? forced : std::chrono::duration_cast<std::chrono::nanoseconds>(after).count();
  compact_on_ = after.count() > 0 && stack_compaction_enabled() && compaction_barrier_ready();
  compact_io_ = io_writes_only_while_waited();
  if (compact_on_) {
    compact_list_.reserve(4096);
    compact_batch_.reserve(256);
  }
}

bool Worker::compaction_due() noexcept {
  if ((++compact_tick_ & 1023) != 0 || compact_head_ == compact_list_.size()) return false;
  const std::int64_t now = steady_ticks();
  return (now >= compact_resume_at_ && now >= compact_due_) || ended_candidates_due(false);
}

// A listed fiber that ends gives its stack back as any other; its record
// (448 B) waits until the list lets go of it. One that ends on the worker
// that lists it (the common case) has its entry taken out at once (the
// fiber knows where it is, FiberCtl::compact_pos). One that ends on another
// worker is counted on the lister, which walks for such fibers alone once
// they are half its list (amortized: each walk drops at least as many
// entries as it keeps) and before it sleeps (an idle worker has time, and
// nothing else would wake it). A fiber that ends on another worker while its
// lister sleeps waits for the lister's next wake-up.
bool Worker::ended_candidates_due(bool idle) const noexcept {
  const std::uint32_t ended = compact_ended_.load(std::memory_order_relaxed);
  return ended != 0 && (idle || std::size_t(ended) * 2 >= compact_list_.size() - compact_head_);
}

void Worker::note_compact_candidate_ended(FiberCtl* f) noexcept {
  if (!compact_on_ || f->compact_listed.load(std::memory_order_relaxed) != FiberCtl::kListed) return;
  const unsigned lister = f->compact_lister;
  if (lister == index_) {
    // Ending where it is listed (the common case): its entry goes at once,
    // and its record will go back to the cache with its stack.
    compact_list_[f->compact_pos - compact_base_].f = nullptr;
    f->compact_listed.store(FiberCtl::kNotListed, std::memory_order_release);  // after the walks' reads (release_fiber)
    return;
  }
  if (lister < sched_.worker_count())
    sched_.worker(lister).compact_ended_.fetch_add(1, std::memory_order_relaxed);
}

void Worker::list_compact_candidate(const CompactCandidate& e) {
  e.f->compact_pos = compact_base_ + std::uint32_t(compact_list_.size());
  compact_list_.push_back(e);
}

// A fiber that parks again while it is still listed (it parked, woke and
// parked again between two walks of the list, the common case of a
// connection that answers a request and waits for the next) is not listed
// twice: its park word and time are updated in its FiberCtl, and the walk
// compacts it at that park. The walk drops it only when it finds it running
// or runnable (or finished).
void Worker::note_parked(FiberCtl* f) noexcept {
  const std::uint64_t w = f->park.wait.load(std::memory_order_relaxed);
  const WaitReason r = WaitReason(w & WaitFor::kReasonMask);
  if (r == WaitReason::none) return;  // a yield: runnable already
  if (names_fd(r) && !compact_io_) return;
  // After the switch (complete_switch): the release store below publishes
  // the saved context with the word to the lister, which may be another
  // worker and reads the context once it finds the word in place.
  f->compact_since.store(f->park.since, std::memory_order_relaxed);
  f->compact_wait.store(w, std::memory_order_release);
  compact_due_ = std::min(compact_due_, f->park.since + compact_after_ns_);
  // Acquire: the lister that last let go of it (another worker's walk) wrote
  // its compact_pos before its release of kNotListed.
  if (f->compact_listed.load(std::memory_order_acquire) != FiberCtl::kNotListed) return;
  f->compact_lister = std::uint16_t(index_);
  // Not yet published to any waker (its park's action has not run), so not
  // released either.
  f->compact_listed.store(FiberCtl::kListed, std::memory_order_relaxed);
  list_compact_candidate(CompactCandidate{f, 0});
}

void Worker::drop_compact_candidate(FiberCtl* f) noexcept {
  if (f->compact_listed.exchange(FiberCtl::kNotListed, std::memory_order_acq_rel) == FiberCtl::kReleasedListed)
    release_listed_fiber_record(f);
}

// A walk examines at most the entries listed when it starts, from where the
// last one stopped (compact_head_; kept entries go to the back), so its cost
// stays proportional to what it does; how many it compacts and how often
// while the worker is busy: compact_policy.hpp.
bool Worker::compact_idle_fibers(bool idle) noexcept {
  if (compact_head_ == compact_list_.size()) return false;
  // The precise clock: the coarse one the parks stamp can lag by more than a
  // tick on an idle CPU (no tick), and the wake-up deadline is on this one.
  // A park stamped late by that lag is only compacted that much sooner.
  const std::int64_t now = steady_ticks();
  // Letting go of ended fibers is not held back by the busy budget (it is
  // cheap, and their records and stacks are wanted by the next spawns).
  const bool may_compact = idle || now >= compact_resume_at_;
  if (!(may_compact && now >= compact_due_) && !ended_candidates_due(idle)) return false;
  compact_ended_.store(0, std::memory_order_relaxed);  // an end counted during the walk only makes the next one sooner
  std::int64_t due = INT64_MAX;
  const std::size_t listed = compact_list_.size() - compact_head_;
  std::size_t examined = 0;
  for (; examined < listed && compact_batch_.size() < kCompactBatch; ++examined) {
    const CompactCandidate e = compact_list_[compact_head_++];
    FiberCtl* f = e.f;
    if (f == nullptr) continue;  // ended here (note_compact_candidate_ended)
    if (f->compact_listed.load(std::memory_order_acquire) == FiberCtl::kReleasedListed) {
      drop_compact_candidate(f);  // ended and released elsewhere: only its record waited for us
      continue;
    }
    const std::uint64_t noted = f->compact_wait.load(std::memory_order_acquire);
    const std::uint64_t now_wait = f->park.wait.load(std::memory_order_acquire);
    if (now_wait != noted) {
      const WaitReason r = WaitReason(now_wait & WaitFor::kReasonMask);
      if (r == WaitReason::none || (names_fd(r) && !compact_io_)) {
        drop_compact_candidate(f);  // running, runnable or done, or parked where it is not compacted
        continue;
      }
      // Parked again and not yet noted (its worker is switching it out):
      // look again at the next walk.
      list_compact_candidate(e);
      due = std::min(due, now + compact_after_ns_);
      continue;
    }
    const std::int64_t since = f->compact_since.load(std::memory_order_relaxed);
    if (now - since < compact_after_ns_ || !may_compact) {
      list_compact_candidate(e);
      due = std::min(due, since + compact_after_ns_);
      continue;
    }
    std::uint8_t none = FiberCtl::kCompactNone;
    if (!f->compact.compare_exchange_strong(none, FiberCtl::kCompacting, std::memory_order_acq_rel)) {
      drop_compact_candidate(f);
      continue;
    }
    compact_batch_.push_back(CompactCandidate{f, noted});
  }
  const bool more = examined < listed;  // stopped at a full batch: the rest is unexamined
  compact_due_ = more ? now : due;
  // The examined entries are gone from the front (kept ones went to the
  // back): reclaim that space once it is half the vector.
  if (compact_head_ >= 4096 && compact_head_ * 2 >= compact_list_.size()) {
    compact_list_.erase(compact_list_.begin(), compact_list_.begin() + std::ptrdiff_t(compact_head_));
    compact_base_ += std::uint32_t(compact_head_);
    compact_head_ = 0;
  }
  if (compact_batch_.empty()) return more;
  const bool fenced = syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
  for (const CompactCandidate& e : compact_batch_) {
    FiberCtl* f = e.f;
    CompactResult r = CompactResult::skipped;
    if (fenced && f->park.wait.load(std::memory_order_acquire) == e.wait)
      r = stack_compact(index_, f->stack, f->ctx.fctx);
    f->compact.store(r == CompactResult::compacted ? FiberCtl::kCompacted : FiberCtl::kCompactNone,
                     std::memory_order_release);
    if (r == CompactResult::retry) {  // another worker held the staging area: again soon
      list_compact_candidate(e);
      compact_due_ = std::min(compact_due_, now + kCompactRetryNs);
    } else {
      drop_compact_candidate(f);
    }
  }
  compact_batch_.clear();
  stack_release_staged_pages();
  const std::int64_t end = steady_ticks();
  compact_resume_at_ = end + (end - now) * (kCompactBusyShare - 1);
  return more;
}

void Worker::restore_compacted(FiberCtl* f) noexcept {
  std::uint8_t c;
  // kCompacting: the compacting worker is between its flag and its verdict
  // (microseconds; it never waits for us).
  while ((c = f->compact.load(std::memory_order_acquire)) == FiberCtl::kCompacting) sched_yield();
  if (c == FiberCtl::kCompacted) stack_restore(index_, f->stack);
  f->compact.store(FiberCtl::kCompactNone, std::memory_order_relaxed);
}

void Worker::loop() {
  bool just_parked = false;
  bool woke_unwatched = false;
  while (!sched_.stopping()) {
    if (compact_on_) compact_idle_fibers();
    FiberCtl* f = pick_next();
    // Spin only when work just ran out. A worker back from a park either finds
    // what it was woken for at once, or was only looking around (see
    // park_thread): spinning then would burn CPU in an idle runtime.
    if (f == nullptr && !just_parked) f = spin_for_work();
    if (f == nullptr) {
      // Idle: a good moment to give cached stacks back (batched trims, and
      // shrinking the cache when churn has stopped).
      // Idle time is compaction's: a batch, then look for work again (no
      // spin), until nothing is due; ended fibers are let go before sleeping.
      if (compact_on_ && compact_idle_fibers(/*idle=*/true)) {
        just_parked = true;
        continue;
      }
      release_deferred();
      maintenance_due_ns_ = stack_maintain(index_);
      woke_unwatched = park_thread();
      just_parked = true;
      continue;
    }
    // Back from a sleep nobody watched over (every worker was parked) and
    // about to run: the others still parked must start watching us. Only now,
    // with work in hand: two idle workers must not keep waking each other.
    if (woke_unwatched) wake_a_watcher();
    woke_unwatched = false;
    just_parked = false;
    park_backoff_ns_ = kMinParkBackoffNs;
    switch_to(nullptr, sched_ctx_, f, nullptr, nullptr, false);
  }
  for (std::size_t i = compact_head_; i < compact_list_.size(); ++i)
    if (compact_list_[i].f != nullptr) drop_compact_candidate(compact_list_[i].f);
  compact_list_.clear();
  compact_head_ = 0;
  release_deferred();
}

}  // namespace tendril::detail
