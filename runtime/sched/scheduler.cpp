#include "runtime/sched/scheduler.hpp"
#include "tendril/detail/assert.hpp"

#include <sched.h>

#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "runtime/io/poller.hpp"
#include "runtime/stack/stack.hpp"

namespace tendril::detail {

std::atomic<Scheduler*> g_scheduler{nullptr};

namespace {

std::vector<int> cpus_in_affinity_mask() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}
}  // namespace

Scheduler* current_scheduler() noexcept { return g_scheduler.load(std::memory_order_acquire); }
void set_current_scheduler(Scheduler* s) noexcept { g_scheduler.store(s, std::memory_order_release); }

Scheduler::Scheduler(const Options& options) : options_(options) {
  unsigned n = options_.workers;
  if (n == 0) n = static_cast<unsigned>(cpus_in_affinity_mask().size());
  if (n == 0) n = 1;
  options_.workers = n;
  workers_.reserve(n);
  for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>(*this, i));
  idle_.reserve(n);
}

Scheduler::~Scheduler() = default;

void Scheduler::start() {
  const std::vector<int> cpus = cpus_in_affinity_mask();
  started_ = std::make_unique<std::latch>(static_cast<std::ptrdiff_t>(workers_.size()));
  for (unsigned i = 0; i < workers_.size(); ++i) {
    const int cpu = options_.pin_workers && !cpus.empty() ? cpus[i % cpus.size()] : -1;
    try {
      workers_[i]->start(cpu);
    } catch (const std::system_error& e) {
      // The workers that did not start never count down.
      started_->count_down(static_cast<std::ptrdiff_t>(workers_.size() - i));
      started_->wait();
      stop();
      throw std::system_error(e.code(), "tendril::run: starting worker thread " + std::to_string(i));
    }
  }
  started_->wait();
  for (unsigned i = 0; i < workers_.size(); ++i) {
    if (const int err = workers_[i]->poller_error()) {
      stop();
      throw std::system_error(err, std::generic_category(),
                              "tendril::run: worker " + std::to_string(i) +
                                  ": creating its I/O poller (io_uring, then epoll_create1 and eventfd)");
    }
  }
}

void Scheduler::stop() noexcept {
  stopping_.store(true, std::memory_order_seq_cst);
  for (auto& w : workers_) w->unpark();
  for (auto& w : workers_) w->join();
  while (external_wakers_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void Scheduler::ready(FiberCtl* f, bool handoff) noexcept {
  TENDRIL_ASSERT(f->join_state.load(std::memory_order_relaxed) != FiberCtl::kDone,
                 "a fiber that finished is never made runnable again");
  f->park.readied();
  Worker* w = current_worker();
  if (__builtin_expect(w == nullptr || &w->sched_ != this, false)) {
    ready_from_outside(f);
    return;
  }
  if (__builtin_expect(pinned_fibers.load(std::memory_order_relaxed) != 0, false)) {
    // NoMigrate: straight to its home worker.
    Worker* home = f->pin_home.load(std::memory_order_relaxed);
    if (home != nullptr && home != w) {
      home->push_pinned(f);
      return;
    }
  }
  if (w->io_to_global_) {
    w->push_io_ready(f);
  } else if (handoff) {
    w->push_runnext(f);
  } else {
    w->push_local(f);
  }
}

void Scheduler::ready_from_outside(FiberCtl* f) noexcept {
  // Counted before the fiber is visible to any worker: whoever lets run()
  // end has seen it queued, so stop() sees the count.
  external_wakers_.fetch_add(1, std::memory_order_seq_cst);
  Worker* home = pinned_fibers.load(std::memory_order_relaxed) != 0 ? f->pin_home.load(std::memory_order_relaxed)
                                                                     : nullptr;
  if (home != nullptr) {
    home->push_pinned(f);  // NoMigrate: straight to its home worker
  } else {
    global_push(f);
    wake_idle_worker_if_needed();
  }
  external_wakers_.fetch_sub(1, std::memory_order_release);
}

void Scheduler::global_push(FiberCtl* f) noexcept { global_push_batch(&f, 1); }

void Scheduler::global_push_batch(FiberCtl** fs, std::uint32_t n) noexcept {
  Worker* w = current_worker();
  if (w == nullptr || &w->sched_ != this) w = workers_[0].get();
  const unsigned list = unsigned(w->node_.load(std::memory_order_relaxed)) % kGlobalLists;
  std::lock_guard<SpinLock> g(global_mu_);
  for (std::uint32_t i = 0; i < n; ++i) {
    fs[i]->next = nullptr;
    if (global_tail_[list] != nullptr) global_tail_[list]->next = fs[i]; else global_head_[list] = fs[i];
    global_tail_[list] = fs[i];
  }
  global_list_size_[list].fetch_add(n, std::memory_order_release);
  global_size_.fetch_add(n, std::memory_order_release);
}

std::uint32_t Scheduler::global_pop_batch(FiberCtl** out, std::uint32_t max, int node) noexcept {
  const unsigned list = unsigned(node) % kGlobalLists;
  if (global_list_size_[list].load(std::memory_order_acquire) == 0) return 0;
  std::lock_guard<SpinLock> g(global_mu_);
  std::uint32_t n = 0;
  while (n < max && global_head_[list] != nullptr) {
    FiberCtl* f = global_head_[list];
    global_head_[list] = f->next;
    f->next = nullptr;
    out[n++] = f;
  }
  if (global_head_[list] == nullptr) global_tail_[list] = nullptr;
  if (n != 0) {
    global_list_size_[list].fetch_sub(n, std::memory_order_release);
    global_size_.fetch_sub(n, std::memory_order_release);
  }
  return n;
}

void Scheduler::wake_idle_worker_if_needed() noexcept {
  // Pairs with the fence in Worker::park_thread: either the parking worker
  // sees the work we queued, or we see it in the idle list.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (nidle_.load(std::memory_order_seq_cst) == 0 ||
      nspinning_.load(std::memory_order_seq_cst) != 0)
    return;
  Worker* w = nullptr;
  {
    std::lock_guard<std::mutex> g(idle_mu_);
    if (idle_.empty()) return;
    w = idle_.back();
    idle_.pop_back();
    w->in_idle_list_ = false;
    nidle_.fetch_sub(1, std::memory_order_seq_cst);
  }
  if (Worker* me = current_worker()) WorkerCounters::bump(me->counters_.wakeups);
  w->unpark();
}

Stats Scheduler::snapshot() const {
  Stats s;
  s.workers = worker_count();
  std::uint64_t finished = external_finished.load(std::memory_order_relaxed);
  s.fibers_spawned = external_spawned.load(std::memory_order_relaxed);
  for (const auto& w : workers_) {
    const WorkerCounters& c = w->counters_;
#define TENDRIL_SUM_COUNTER(storage, field, doc) s.field += c.storage.load(std::memory_order_relaxed);
    TENDRIL_SCHEDULER_COUNTERS(TENDRIL_SUM_COUNTER)
#undef TENDRIL_SUM_COUNTER
    finished += c.finished.load(std::memory_order_relaxed);
  }
  s.fibers_live = s.fibers_spawned > finished ? s.fibers_spawned - finished : 0;
  s.stalls = stalls.load(std::memory_order_relaxed);
  s.fibers_unstarted = stack_deferred_count();
  const StackCounters st = stack_counters();
  s.stack_mode = st.mode;
  s.stack_faults = st.stack_faults;
  s.stack_pages_mapped = st.stack_pages_mapped;
  s.pool_refills = st.pool_refills;
  s.pool_pages = st.pool_pages;
#define TENDRIL_COPY_COUNTER(storage, field, doc) s.field = st.field;
  TENDRIL_STACK_CACHE_COUNTERS(TENDRIL_COPY_COUNTER)
  TENDRIL_STACK_COMPACT_COUNTERS(TENDRIL_COPY_COUNTER)
#undef TENDRIL_COPY_COUNTER
  s.stack_compaction = st.compaction;
  s.io_backend = io_backend_name();
  return s;
}

}  // namespace tendril::detail
