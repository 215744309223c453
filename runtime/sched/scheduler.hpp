// The M:N scheduler: N pinned worker threads run fibers from per-worker run
// queues, steal half of a busy worker's queue when their own is empty, and
// park their thread when there is nothing to do.
//
// Where a runnable fiber waits, in the order a worker looks (pick_next):
//   1. every 61st pick, poll I/O (fibers it readies join the global queue's
//      tail: a busy worker must not let them jump ahead of fibers already
//      waiting there), then the global queue first, so it cannot starve;
//   2. runnext: the fiber most recently woken by a fiber on this worker (a
//      message's receiver, a spawned child, a joiner), so hand-offs run back
//      to back on one worker and stay in its caches. A run of more than
//      kRunnextStreak picks from runnext yields to the local queue, so a
//      ping-ponging pair cannot starve its neighbours;
//   3. the local run queue (FIFO, lock-free, 256 entries; overflow moves half
//      to the global queue);
//   4. the global queue (fibers readied by plain threads, overflow, and I/O
//      completions reaped while busy), taken in batches of a fair share (at
//      most 128) into the local queue, as Go's globrunqget; one list per NUMA
//      node, and a worker takes from its own node's;
//   5. stealing: half of another worker's queue; another worker's runnext only
//      if that worker has not switched since the previous look (it is stuck in
//      a long-running fiber), and expired timers of other workers (try_lock).
//      Workers of the thief's NUMA node first; another node's queues and
//      global list only when its own node has nothing, one fiber at a time
//      (stats().steals_remote).
//
// A worker that picks a fiber prefetches what the fiber queued behind it will
// touch first (its saved context and park frames, its stack's release
// entries): after a mass wake nobody has touched those for seconds
// (prefetch_queued in worker.cpp).
//
// Waking a parked worker costs tens of microseconds on this machine, so a
// worker is woken only when work lands where the waker itself will not run it
// soon (its local queue, or the global queue) and no other worker is already
// spinning in search of work. An idle worker spins for Options::spin_before_park
// before it parks; parking registers it as idle and then looks once more, so a
// wake-up cannot be lost between the look and the sleep. While any worker
// runs, parked workers still look around every 1-10 ms (see park_thread):
// cooperative fibers give a busy worker no chance to hand its runnext fiber
// over. When all are parked they sleep until a timer or a wake-up.
#pragma once

#include <atomic>
#include <cstdint>
#include <latch>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/context/switch.hpp"
#include "tendril/detail/counters.hpp"
#include "runtime/sched/fiber_ctl.hpp"
#include "runtime/sched/fiber_ctl_cache.hpp"
#include "runtime/sched/run_queue.hpp"
#include "runtime/sched/timer_heap.hpp"
#include "tendril/options.hpp"
#include "tendril/detail/counters.hpp"
#include "tendril/stats.hpp"

namespace tendril::detail {

class Scheduler;

using SwitchAction = void (*)(FiberCtl* from, void* arg);

// What the context being left asks the context being entered to do once the
// switch is complete (and the leaving fiber's registers are saved).
struct SwitchRecord {
  FiberCtl* from = nullptr;       // nullptr: the scheduler context
  Context* from_ctx = nullptr;
  SwitchAction action = nullptr;
  void* arg = nullptr;
  bool note_park = false;         // compaction on: note `from`'s park once its context is saved
};

// One worker's counters: those of TENDRIL_SCHEDULER_COUNTERS, plus `finished`
// (fibers_live = spawned - finished).
struct alignas(64) WorkerCounters {
#define TENDRIL_WORKER_COUNTER(storage, field, doc) std::atomic<std::uint64_t> storage{0};
  TENDRIL_SCHEDULER_COUNTERS(TENDRIL_WORKER_COUNTER)
#undef TENDRIL_WORKER_COUNTER
  std::atomic<std::uint64_t> finished{0};

  // Only the owner writes; relaxed increments keep the snapshot race-free.
  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

class Worker {
 public:
  static constexpr std::uint32_t kRunnextStreak = 32;

  Worker(Scheduler& sched, unsigned index) : sched_(sched), index_(index) {}
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  unsigned index() const noexcept { return index_; }
  FiberCtl* current() const noexcept { return current_.load(std::memory_order_relaxed); }
  WorkerCounters& counters() noexcept { return counters_; }
  const WorkerCounters& counters() const noexcept { return counters_; }
  TimerHeap& timers() noexcept { return timers_; }

  void start(int cpu);
  void join() { if (thread_.joinable()) thread_.join(); }
  // After the start latch: 0, or the errno of the I/O poller this worker
  // could not create (its thread then ended without running).
  int poller_error() const noexcept { return poller_error_; }
  pthread_t native_handle() noexcept { return thread_.native_handle(); }
  // The worker thread's kernel thread id, once it has started (else 0).
  int os_tid() const noexcept { return os_tid_.load(std::memory_order_acquire); }

  // Makes f runnable on this worker: in runnext (a hand-off) or at the tail
  // of the local queue. Owner thread only.
  void push_runnext(FiberCtl* f) noexcept;
  void push_local(FiberCtl* f) noexcept;

  // Called by the running fiber `self` (on this worker): switches to the next
  // runnable fiber, or to the scheduler context if there is none; `action`
  // runs once self's context is saved. Returns when self is resumed, possibly
  // on another worker (so callers must not use this Worker afterwards).
  void switch_out(FiberCtl* self, SwitchAction action, void* arg, bool finished = false) noexcept;
  // Like switch_out but only if another fiber is runnable; returns false (and
  // stays) otherwise.
  bool switch_if_runnable(FiberCtl* self, SwitchAction action, void* arg) noexcept;

  FiberId next_fiber_id() noexcept;
  // Where this worker's spawns take their control blocks from (owner thread;
  // other threads only put_remote).
  FiberCtlCache& ctl_cache() noexcept { return ctl_cache_; }

  // Wakes this worker's thread if it is parked.
  void unpark() noexcept;
  int node() const noexcept { return node_.load(std::memory_order_relaxed); }
  // Hands this worker a finished fiber whose last reference was dropped on
  // another node: it releases the stack when it next looks (release_fiber).
  // Any thread.
  void defer_release(FiberCtl* f) noexcept;

  // this_fiber::NoMigrate: makes f, pinned to this worker, runnable here from
  // any thread (a lock-free inbox the owner empties in pick_next), and wakes
  // this worker if it is parked.
  void push_pinned(FiberCtl* f) noexcept;
  Scheduler& scheduler() noexcept { return sched_; }

  // Fires expired timers of this worker (into `into`'s local queue); try-lock
  // only when `into` is another worker.
  void fire_timers(Worker& into, std::int64_t now, bool may_block) noexcept;

  // this_fiber::on_worker_stack for the running fiber (worker_stack.cpp).
  void run_on_worker_stack(void (*fn)(void*), void* arg);
  bool on_worker_stack() const noexcept { return on_worker_stack_; }
  // This worker's thread is the one thread of a child of fork() (fork.hpp):
  // its next switch stops the child instead of running the parent's fibers.
  void mark_forked() noexcept { forked_ = true; }
  bool forked() const noexcept { return forked_; }

 private:
  friend class Scheduler;
  friend struct DebugLayout;  // runtime/debug/gdb_descriptor.cpp

  void loop();
  // The next fiber to run here: pick_any's, except that a fiber pinned to
  // another worker (NoMigrate) is sent home instead. This is the one place
  // that keeps a pinned fiber from running elsewhere, whichever queue (a
  // stolen batch, the global queue, another worker's timers, a runnext set
  // by a finishing child) brought it here.
  FiberCtl* pick_next() noexcept;
  FiberCtl* pick_any() noexcept;
  FiberCtl* send_pinned_home(FiberCtl* f) noexcept;
  FiberCtl* pick_pinned() noexcept;
  bool has_pinned() const noexcept {
    return pinned_head_ != nullptr || pinned_inbox_.load(std::memory_order_relaxed) != nullptr;
  }
  void unpark_if_idle() noexcept;
  FiberCtl* pick_local() noexcept;
  // Warms what the fibers queued behind the one about to run will touch
  // first; see worker.cpp.
  void prefetch_queued() const noexcept;
  FiberCtl* steal() noexcept;
  FiberCtl* steal_from(Worker& victim, std::int64_t now, bool remote) noexcept;
  // Takes a batch from the global queue: returns the first, queues the rest
  // locally. Only when the local queue is (nearly) empty.
  FiberCtl* global_take_batch() noexcept;
  // io_poll while the local queue is busy; see worker.cpp.
  std::uint32_t poll_io_busy() noexcept;
  void push_io_ready(FiberCtl* f) noexcept;
  void flush_io_batch() noexcept;
  FiberCtl* spin_for_work() noexcept;
  // Returns true if nobody watched over this sleep (every worker was parked).
  bool park_thread() noexcept;
  void wake_a_watcher() noexcept;
  const Deadline* wake_deadline(bool watch) noexcept;
  void switch_to(FiberCtl* from, Context& from_ctx, FiberCtl* next, SwitchAction action,
                 void* arg, bool finished) noexcept;

  Scheduler& sched_;
  const unsigned index_;
  Context sched_ctx_;
  // nullptr while in the scheduler context. Atomic (relaxed: a plain move)
  // because the stall watchdog and the fiber dump read it from other threads.
  std::atomic<FiberCtl*> current_{nullptr};
  SwitchRecord record_;
  std::atomic<FiberCtl*> runnext_{nullptr};
  std::atomic<FiberCtl*> releases_{nullptr};  // defer_release's list, linked through FiberCtl::next
  void release_deferred() noexcept;
  std::uint32_t runnext_streak_ = 0;
  // Picked on a fiber's switch with no stack yet and none cached: runs next,
  // once the scheduler context has bound it a fresh one (see pick_next).
  FiberCtl* unbound_next_ = nullptr;
  std::uint32_t tick_ = 0;
  std::uint32_t steal_seed_ = 0;
  // NUMA node of the CPU this worker's thread runs on (set once it is
  // pinned): thieves look at victims of their own node first.
  std::atomic<int> node_{0};
  std::vector<std::uint64_t> seen_switches_;  // per victim, for stealing runnext
  RunQueue runq_;
  TimerHeap timers_;
  WorkerCounters counters_;
  FiberCtlCache ctl_cache_;
  bool in_idle_list_ = false;  // guarded by Scheduler::idle_mu_
  // The worker stack of this_fiber::on_worker_stack (mapped on first use) and
  // whether the running fiber is on it now: a switch then is a fatal error.
  char* worker_stack_ = nullptr;
  bool on_worker_stack_ = false;
  bool forked_ = false;
  [[noreturn]] void die_blocked_on_worker_stack(const FiberCtl* f) noexcept;
  // Fibers made runnable by a busy-time io_poll, on their way to the global
  // queue (poll_io_busy). Owner thread only.
  static constexpr std::uint32_t kIoBatch = 64;
  bool io_to_global_ = false;
  std::uint32_t io_batch_n_ = 0;
  FiberCtl* io_batch_[kIoBatch];
  FiberId id_next_ = 0, id_end_ = 0;
  static constexpr std::int64_t kMinParkBackoffNs = 1000000;    // 1 ms
  static constexpr std::int64_t kMaxParkBackoffNs = 10000000;   // 10 ms
  std::int64_t park_backoff_ns_ = kMinParkBackoffNs;
  Deadline park_deadline_{};
  std::uint64_t maintenance_due_ns_ = 0;  // from stack_maintain: when to wake for it
  std::atomic<int> os_tid_{0};
  int poller_error_ = 0;  // written before the start latch's count_down
  std::thread thread_;
  // Fibers pinned here (NoMigrate) that were readied or found elsewhere:
  // other threads push onto the inbox (a Treiber stack through
  // FiberCtl::pin_next; the owner takes it whole, so no ABA), the owner moves
  // it into the list pinned_head_ (oldest first) once that is empty; no
  // thief can see that list. It runs ahead of the local queue, with one local
  // pick after every kRunnextStreak pinned ones while local work waits.
  alignas(64) std::atomic<FiberCtl*> pinned_inbox_{nullptr};
  FiberCtl* pinned_head_ = nullptr;
  std::uint32_t pinned_streak_ = 0;

  // Idle-stack compaction (Options::compact_after; see worker.cpp). Last,
  // on lines of their own: adding them must not move the fields above
  // (the switch path's and the thieves' lines).
  struct CompactCandidate {
    FiberCtl* f;
    std::uint64_t wait;  // in a batch: the park word it is compacted at
  };
  void init_compaction() noexcept;
  // Out of line and cold: the switch path only tests a flag before each.
  __attribute__((noinline, cold)) bool compaction_due() noexcept;
  // One walk of the list, if one is due; true when it stopped at a full
  // batch with entries left to look at.
  bool compact_idle_fibers(bool idle = false) noexcept;
  void drop_compact_candidate(FiberCtl* f) noexcept;
  // Appends to the list and notes the entry's place in the fiber
  // (FiberCtl::compact_pos = compact_base_ + index), so that a fiber ending
  // on this worker can take its entry out at once.
  void list_compact_candidate(const CompactCandidate& e);
  // Whether enough listed fibers have ended to walk the list for them alone
  // (half of it, or any when the worker is about to sleep).
  bool ended_candidates_due(bool idle) const noexcept;
  __attribute__((noinline, cold)) void restore_compacted(FiberCtl* f) noexcept;

 public:
  // Called by the worker a listed fiber ends on (compaction on): takes its
  // entry out of the list if that is this worker's, else counts it on the
  // worker whose list holds it.
  void note_compact_candidate_ended(FiberCtl* f) noexcept;
  // Lists (or updates the listing of) a fiber that just switched out of a
  // park on this worker, its context saved (complete_switch).
  __attribute__((noinline, cold)) void note_parked(FiberCtl* f) noexcept;

 private:
  alignas(64) bool compact_on_ = false;
  bool compact_io_ = false;  // fibers parked in descriptor I/O too (see init_compaction)
  std::uint32_t compact_tick_ = 0;
  std::atomic<std::uint32_t> compact_ended_{0};  // listed fibers that ended since the last walk
  std::int64_t compact_after_ns_ = 0;
  std::int64_t compact_due_ = INT64_MAX;  // park clock: when the oldest candidate becomes due
  std::int64_t compact_resume_at_ = 0;  // no walk before this while there is other work
  std::vector<CompactCandidate> compact_list_;  // entries from compact_head_ on
  std::size_t compact_head_ = 0;
  std::uint32_t compact_base_ = 0;  // compact_pos of compact_list_[0]
  std::vector<CompactCandidate> compact_batch_;
};

// The process-wide scheduler of the current run().
class Scheduler {
 public:
  explicit Scheduler(const Options& options);
  ~Scheduler();

  const Options& options() const noexcept { return options_; }
  unsigned worker_count() const noexcept { return static_cast<unsigned>(workers_.size()); }
  Worker& worker(unsigned i) noexcept { return *workers_[i]; }
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // Starts every worker and waits until each is ready. If a worker thread or
  // its I/O poller cannot be made, stops the others and throws
  // std::system_error naming what failed (errno kept).
  void start();
  void stop() noexcept;

  // Makes f runnable from anywhere. From a fiber or worker: on that worker
  // (runnext if `handoff`). From a plain thread: the global queue.
  void ready(FiberCtl* f, bool handoff) noexcept;

  // The global queue is one list per NUMA node (a worker's overflow and its
  // I/O completions stay with the workers of its node; from a plain thread:
  // worker 0's node). A worker takes from its own node's list; another
  // node's only when its node has nothing to run (see Worker::steal).
  static constexpr unsigned kGlobalLists = 8;  // nodes share lists modulo this
  void global_push(FiberCtl* f) noexcept;
  void global_push_batch(FiberCtl** fs, std::uint32_t n) noexcept;
  // Up to `max` fibers from the head of node `node`'s list, oldest first.
  std::uint32_t global_pop_batch(FiberCtl** out, std::uint32_t max, int node) noexcept;
  std::uint64_t global_size(int node) const noexcept {
    return global_list_size_[unsigned(node) % kGlobalLists].load(std::memory_order_acquire);
  }
  // All nodes' lists.
  bool global_empty() const noexcept { return global_size_.load(std::memory_order_acquire) == 0; }

  // Wakes one parked worker if work was queued where no running worker will
  // find it soon and nobody is already looking.
  void wake_idle_worker_if_needed() noexcept;

  FiberId allocate_id_block(FiberId n) noexcept { return next_id_.fetch_add(n); }

  // Stack slots for spawns and releases from plain threads use one extra
  // stack-subsystem index, serialised by this mutex.
  unsigned external_stack_index() const noexcept { return worker_count(); }
  std::mutex& external_mutex() noexcept { return external_mu_; }
  // The control-block cache FiberCtl::home names: worker `home`'s, or, for
  // home == external_stack_index(), the one of plain threads (take under
  // external_mutex(); give back with put_remote).
  FiberCtlCache& ctl_cache(unsigned home) noexcept {
    return home < worker_count() ? workers_[home]->ctl_cache() : external_ctl_cache_;
  }

  Stats snapshot() const;

  std::atomic<std::uint64_t> external_spawned{0};
  std::atomic<std::uint64_t> external_finished{0};
  std::atomic<std::uint64_t> stalls{0};  // written by the stall watchdog

  // Fibers inside a NoMigrate now. While 0 (the common case) neither ready()
  // nor pick_next looks at a fiber's pin: one load of a line that is almost
  // never written. A pinned fiber counts before it can be queued anywhere,
  // so whoever dequeues it sees a non-zero count.
  alignas(64) std::atomic<std::uint64_t> pinned_fibers{0};

 private:
  friend class Worker;
  friend struct DebugLayout;  // runtime/debug/gdb_descriptor.cpp

  // ready() from a plain thread (or a pool thread). Once the fiber is
  // queued it may run, finish and let run() return at once, while the thread
  // still wakes a worker; stop() waits for external_wakers_ to drop to 0, so
  // the scheduler is not torn down under it.
  void ready_from_outside(FiberCtl* f) noexcept;

  Options options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint32_t> external_wakers_{0};  // threads inside ready_from_outside
  std::atomic<FiberId> next_id_{1};

  // A spin lock, not a mutex: the lists are held for a few pointer moves
  // (a batch's chase at most), and under a mass wake both workers and the
  // waker meet here; a mutex sent the loser to sleep in futex(2) (5% of a
  // 100k-fiber wake), and the spin lock yields the thread only when the
  // holder looks preempted.
  SpinLock global_mu_;
  FiberCtl* global_head_[kGlobalLists] = {};
  FiberCtl* global_tail_[kGlobalLists] = {};
  std::atomic<std::uint64_t> global_list_size_[kGlobalLists] = {};
  std::atomic<std::uint64_t> global_size_{0};  // all lists

  std::mutex idle_mu_;
  std::vector<Worker*> idle_;
  std::atomic<int> nidle_{0};
  std::atomic<int> nspinning_{0};

  std::mutex external_mu_;
  FiberCtlCache external_ctl_cache_;
  // Counted down by each worker once its thread is set up (stack signal stack,
  // I/O ring): a worker set up late could otherwise fail for want of
  // descriptors the program has used up by then.
  std::unique_ptr<std::latch> started_;
};

// The scheduler of the run() in progress, or nullptr. The gdb script finds
// the unstarted fibers' control blocks through g_scheduler (gdb_descriptor.cpp).
Scheduler* current_scheduler() noexcept;
extern std::atomic<Scheduler*> g_scheduler;
void set_current_scheduler(Scheduler* s) noexcept;
// The worker the calling thread is, or nullptr. Not inlined, and re-read after
// every switch: a fiber may resume on another thread.
Worker* current_worker() noexcept;
// The first thing a new fiber does (fiber_entry): what every switch does
// once it lands, for the context the switch left.
void complete_first_switch(Context& self, transfer_t t) noexcept;
FiberCtl* current_fiber() noexcept;

std::int64_t steady_ticks() noexcept;
inline std::int64_t to_ticks(Deadline d) noexcept { return d.time_since_epoch().count(); }

}  // namespace tendril::detail
