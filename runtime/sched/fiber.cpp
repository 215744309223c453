// Spawning, running, finishing and joining fibers.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <typeinfo>

#include "runtime/sched/fiber_local.hpp"
#include "runtime/sched/fork.hpp"
#include "runtime/sched/interrupt.hpp"
#include "runtime/sched/scheduler.hpp"
#include "runtime/stack/stack.hpp"

namespace tendril::detail {

namespace {

char* align_down(char* p, std::size_t a) noexcept {
  return reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(p) & ~(std::uintptr_t{a} - 1));
}

// A released fiber's stack slot, into the cache of this worker, or of the
// plain threads' index (which they share under a lock).
void release_fiber_stack(Worker* w, const StackSlot& slot, unsigned home) noexcept {
  if (slot.lo == nullptr) {  // it never ran: the room kept for its stack goes back
    if (current_scheduler() != nullptr) stack_cancel_deferred(home, slot.limit);
    return;
  }
  if (w != nullptr) {
    stack_release(w->index(), slot);
  } else if (Scheduler* s = current_scheduler()) {
    std::lock_guard<std::mutex> lock(s->external_mutex());
    stack_release(s->external_stack_index(), slot);
  }  // else the runtime is gone: the arena went with it
}

// A released fiber's record, destroyed and given back to the cache that
// carved it (the runtime gone: the records went with it).
void release_fiber_record(Worker* w, FiberCtl* f) noexcept {
  const unsigned home = f->home;
  f->~FiberCtl();
  if (w != nullptr && home == w->index()) w->ctl_cache().put(f);
  else if (Scheduler* s = current_scheduler()) s->ctl_cache(home).put_remote(f);
}

}  // namespace

void release_fiber(FiberCtl* f) noexcept {
  Worker* w = current_worker();
  if (w != nullptr && f->finished_on != w->index()) {
    // Dropped by a joiner on another NUMA node: the stack's pages are on the
    // node the fiber ran on, whose worker releases it into its own cache.
    Worker& ran = current_scheduler()->worker(f->finished_on);
    if (ran.node() != w->node()) {
      ran.defer_release(f);
      return;
    }
  }
  context_destroy(f->ctx);
  release_fiber_stack(w, f->stack, f->home);
  if (f->stack.lo == nullptr) {  // it never ran
    f->ops->destroy(f->start_closure);
    // The fiber dump tells an unstarted fiber's record by its limit without
    // a stack (looks_unstarted): a freed one must not look like it.
    *static_cast<volatile std::size_t*>(&f->stack.limit) = 0;
  }
  // A compaction list still points at the record: it stays as it is until
  // the list lets go (release_listed_fiber_record). Acquire: a list that
  // let go of it (kNotListed, stored with release after its last read of
  // it) is done with it before it is reused.
  std::uint8_t listed = FiberCtl::kListed;
  if (f->compact_listed.load(std::memory_order_acquire) == FiberCtl::kListed &&
      f->compact_listed.compare_exchange_strong(listed, FiberCtl::kReleasedListed, std::memory_order_acq_rel))
    return;
  release_fiber_record(w, f);
}

void release_listed_fiber_record(FiberCtl* f) noexcept { release_fiber_record(current_worker(), f); }

namespace {

void drop_ref(FiberCtl* f) noexcept {
  // A count of 1 is ours alone (nobody can take a new reference), so the
  // common join, after the fiber has switched away for good, needs no
  // locked instruction.
  if (f->refs.load(std::memory_order_acquire) == 1 ||
      f->refs.fetch_sub(1, std::memory_order_acq_rel) == 1)
    release_fiber(f);
}

void drop_running_ref(FiberCtl* from, void*) noexcept { drop_ref(from); }

[[noreturn]] void die_with_escaped_exception(FiberCtl* f) noexcept {
  const char* what = "(not a std::exception)";
  try {
    std::rethrow_exception(f->error);
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  std::fprintf(stderr,
               "tendril: exception escaped detached fiber %llu '%s': %s\n",
               static_cast<unsigned long long>(f->id), f->name, what);
  std::fflush(stderr);
  std::terminate();
}

[[noreturn]] void finish_fiber(FiberCtl* self) noexcept {
  Worker* w = current_worker();
  self->finished_on = std::uint16_t(w->index());
  const std::uintptr_t old = self->join_state.exchange(FiberCtl::kDone, std::memory_order_acq_rel);
  if (old == FiberCtl::kDetached) {
    if (self->error) die_with_escaped_exception(self);
  } else if (old & FiberCtl::kJoinerIsFiber) {
    FiberCtl* joiner = reinterpret_cast<FiberCtl*>(old & ~FiberCtl::kJoinerIsFiber);
    joiner->park.readied();
    w->push_runnext(joiner);  // runs next, here
  } else if (old != FiberCtl::kRunning) {
    wake(*reinterpret_cast<Waiter*>(old));  // a plain thread's join
  }
  WorkerCounters::bump(w->counters().finished);
  w->note_compact_candidate_ended(self);
  w->switch_out(self, drop_running_ref, nullptr, /*finished=*/true);
  __builtin_unreachable();
}

void fiber_entry(transfer_t t) noexcept {
  FiberCtl* self = current_fiber();
  complete_first_switch(self->ctx, t);
  try {
    self->ops->invoke(self->closure);
  } catch (...) {
    self->error = std::current_exception();
  }
  self->ops->destroy(self->closure);
  if (self->locals != nullptr) fiber_locals_destroy(self->locals, self->error);
  finish_fiber(self);
}

std::size_t validate_stack_limit(std::size_t requested, const ClosureOps& ops) {
  constexpr std::size_t kPage = 4096;
  constexpr std::size_t kMin = 16 * 1024;
  constexpr std::size_t kMax = std::size_t{1} << 30;
  if (requested < kMin || requested > kMax)
    throw std::invalid_argument("tendril::spawn: stack_limit " + std::to_string(requested) +
                                " is outside [16 KiB, 1 GiB]");
  const std::size_t limit = (requested + kPage - 1) & ~(kPage - 1);
  // The callable sits at the top of the stack; leave most of it for frames.
  if (ops.size + ops.align > limit / 4)
    throw std::length_error("tendril::spawn: the callable (" + std::to_string(ops.size) +
                            " bytes) does not fit in a quarter of the stack limit");
  return limit;
}

// The control block of a new fiber in `record` (from a FiberCtlCache, whose
// index is `home`), without its stack.
FiberCtl* place_record(void* record, unsigned home, FiberId id, const SpawnOptions& options,
                       const ClosureOps& ops) noexcept {
  auto* f = ::new (record) FiberCtl;
  f->ops = &ops;
  f->id = id;
  f->home = std::uint16_t(home);
  if (!options.name.empty()) {
    const std::size_t n = std::min(options.name.size(), sizeof(f->name) - 1);
    std::memcpy(f->name, options.name.data(), n);
  }
  return f;
}

// Gives f the stack in `slot`: the callable moved from `closure` to its top,
// the first frame below that.
void place_on_stack(FiberCtl* f, const StackSlot& slot, void* closure) noexcept {
  const ClosureOps& ops = *f->ops;
  // The slot names its owner before the record names its stack: the fiber
  // dump, which looks at records for fibers without a stack and then at the
  // slots, finds a fiber getting its stack meanwhile in one or the other.
  stack_set_owner(slot, f->id, f->name[0] != '\0' ? f->name : nullptr, f);
  std::atomic_thread_fence(std::memory_order_release);
#if TENDRIL_ASAN
  // The top of a reused stack may still carry the poison of frames that never
  // returned (a fiber abandoned parked); context_make clears only the part
  // below the callable.
  const std::size_t top = ops.size + ops.align + 64;
  __asan_unpoison_memory_region(slot.hi - top, top);
#endif
  char* cl = align_down(slot.hi - ops.size, ops.align);
  ops.move_construct(cl, closure);  // nothrow for the closures spawn() builds from movable args
  f->closure = cl;
  f->stack = slot;
  context_make(f->ctx, slot.lo, align_down(cl, 64), fiber_entry);
}

// Whether a fiber spawned with these may wait for its first run without a
// stack: its callable fits where the record keeps it (see
// FiberCtl::start_closure) and moves without throwing.
bool may_defer_stack(const ClosureOps& ops) noexcept {
  return ops.nothrow_move && ops.size <= sizeof(FiberCtl::start_closure) && ops.align <= 16;
}

}  // namespace

bool bind_unstarted_fiber(FiberCtl* f, unsigned worker, bool cache_only) noexcept {
  StackSlot slot;
  if (!stack_allocate_deferred(worker, f->home, f->stack.limit, f->closure, cache_only, &slot)) return false;
  place_on_stack(f, slot, f->start_closure);
  f->ops->destroy(f->start_closure);  // moved from
  ::new (&f->waiter) Waiter(f);
  return true;
}

namespace {

}  // namespace

FiberCtl* spawn_fiber(const SpawnOptions& options, const ClosureOps& ops, void* closure) {
  Scheduler* s = current_scheduler();
  if (s == nullptr) throw std::logic_error("tendril::spawn called outside tendril::run");
  if (__builtin_expect(forked_from_running_runtime(), false)) throw std::logic_error(used_after_fork_message());
  const std::size_t limit =
      validate_stack_limit(options.stack_limit != 0 ? options.stack_limit : s->options().stack_limit, ops);
  const void* site = options.site != nullptr ? options.site : &ops;
  if (Worker* w = current_worker()) {
    // The common case, kept free of locks: the worker's own stack index and
    // id block, and the child runs next here. Its stack is bound when it
    // first runs (Worker::pick_next), from the cache of the worker that
    // runs it: a spawner that runs ahead of its children (skynet's parents
    // spawn ten, then wait) holds no page for each child still queued, and
    // the children that run take the stacks those that ended gave back.
    FiberCtl* f;
    if (may_defer_stack(ops) && stack_defer(w->index(), limit)) {
      void* record;
      try {
        record = w->ctl_cache().take();
      } catch (...) {
        stack_cancel_deferred(w->index(), limit);
        throw;
      }
      f = place_record(record, w->index(), w->next_fiber_id(), options, ops);
      ops.move_construct(f->start_closure, closure);
      f->closure = const_cast<void*>(site);
      f->stack.limit = limit;
    } else {
      const StackSlot slot = stack_allocate(w->index(), limit, site);
      void* record;
      try {
        record = w->ctl_cache().take();
      } catch (...) {
        stack_release(w->index(), slot);
        throw;
      }
      f = place_record(record, w->index(), w->next_fiber_id(), options, ops);
      place_on_stack(f, slot, closure);
    }
    WorkerCounters::bump(w->counters().spawned);
    w->push_runnext(f);
    return f;
  }
  FiberCtl* f;
  {
    std::lock_guard<std::mutex> lock(s->external_mutex());  // plain threads share one stack index
    const unsigned home = s->external_stack_index();
    const StackSlot slot = stack_allocate(home, limit, site);
    void* record;
    try {
      record = s->ctl_cache(home).take();
    } catch (...) {
      stack_release(home, slot);
      throw;
    }
    f = place_record(record, home, s->allocate_id_block(1), options, ops);
    place_on_stack(f, slot, closure);
  }
  s->external_spawned.fetch_add(1, std::memory_order_relaxed);
  s->ready(f, /*handoff=*/true);
  return f;
}

FiberId fiber_id(const FiberCtl* f) noexcept { return f->id; }

namespace {

// Records who waits for `target` (a tagged joining fiber or a thread's
// Waiter*); false if it finished first.
bool publish_joiner(FiberCtl* target, std::uintptr_t joiner) noexcept {
  std::uintptr_t expected = FiberCtl::kRunning;
  return target->join_state.compare_exchange_strong(expected, joiner, std::memory_order_acq_rel);
}

// A joining fiber publishes itself once its context is saved (so the
// finishing fiber, on any worker, may resume it at once); if the fiber
// finished first there is nothing to wait for and the joiner goes on.
struct JoinerPublish {
  FiberCtl* target;
  FiberCtl* joiner;
  static bool commit(void* arg) noexcept {
    auto* p = static_cast<JoinerPublish*>(arg);
    return publish_joiner(p->target, reinterpret_cast<std::uintptr_t>(p->joiner) | FiberCtl::kJoinerIsFiber);
  }
};

// Interrupting a join takes the joiner back out of the target's join_state;
// if the target finished first, it has already readied the joiner.
struct JoinInterrupt : Interrupt {
  FiberCtl* target;
  explicit JoinInterrupt(FiberCtl* t) noexcept : Interrupt{withdraw}, target(t) {}
  static void withdraw(Interrupt* self, FiberCtl* joiner) noexcept {
    std::uintptr_t expected = reinterpret_cast<std::uintptr_t>(joiner) | FiberCtl::kJoinerIsFiber;
    if (static_cast<JoinInterrupt*>(self)->target->join_state.compare_exchange_strong(
            expected, FiberCtl::kRunning, std::memory_order_acq_rel))
      current_scheduler()->ready(joiner, /*handoff=*/false);
  }
};

// Parks the calling fiber until f finishes; false if its scope interrupted
// the wait first.
void publish_joiner_or_resume(FiberCtl* joiner, void* target) noexcept {
  if (!publish_joiner(static_cast<FiberCtl*>(target),
                      reinterpret_cast<std::uintptr_t>(joiner) | FiberCtl::kJoinerIsFiber))
    current_worker()->push_runnext(joiner);
}

bool fiber_wait_until_done(Worker* w, FiberCtl* self, FiberCtl* f) {
  if (!fiber_interruptible(self)) {  // the spawn+join path: nothing to publish
    self->park.begin(WaitReason::join, w->index(), park_clock_ns());
    w->switch_out(self, publish_joiner_or_resume, f);
    return true;
  }
  if (interrupt_error(nullptr) != 0) return false;
  JoinerPublish publish{f, self};
  JoinInterrupt interrupt(f);
  park_fiber_committed(w, self, WaitReason::join, JoinerPublish::commit, &publish, &interrupt);
  return f->join_state.load(std::memory_order_acquire) == FiberCtl::kDone;
}

void wait_until_done_from_thread(FiberCtl* f) {
  Waiter w;
  struct Publish {
    FiberCtl* f;
    Waiter* w;
    static bool commit(void* arg) noexcept {
      auto* p = static_cast<Publish*>(arg);
      return publish_joiner(p->f, reinterpret_cast<std::uintptr_t>(p->w));
    }
  } publish{f, &w};
  park_committed(w, WaitReason::join, Publish::commit, &publish);
}

}  // namespace

void fiber_join(FiberCtl*& handle) {
  FiberCtl* const f = handle;
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (f == self)  // the handle stays: nothing happened
    throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                            "tendril::Fiber::join: a fiber cannot join itself");
  if (f->join_state.load(std::memory_order_acquire) != FiberCtl::kDone) {
    if (self == nullptr) {
      wait_until_done_from_thread(f);
    } else if (!fiber_wait_until_done(w, self, f)) {  // the handle stays: join again, or detach
      throw_if_interrupted(nullptr, "tendril::Fiber::join");
      fiber_join(handle);  // not ours to report (cannot happen): wait on
      return;
    }
  }
  handle = nullptr;
  std::exception_ptr error = std::move(f->error);
  f->error = nullptr;
  drop_ref(f);
  if (error) std::rethrow_exception(error);
}

void fiber_detach(FiberCtl* f) noexcept {
  const std::uintptr_t old = f->join_state.exchange(FiberCtl::kDetached, std::memory_order_acq_rel);
  if (old == FiberCtl::kDone && f->error) die_with_escaped_exception(f);
  drop_ref(f);
}

void fiber_destroyed_joinable(FiberCtl* f) noexcept {
  std::fprintf(stderr,
               "tendril: Fiber %llu '%s' destroyed while joinable; call join() or detach() "
               "before the handle goes away\n",
               static_cast<unsigned long long>(f->id), f->name);
  std::fflush(stderr);
  std::terminate();
}

}  // namespace tendril::detail

namespace tendril {

void Fiber::join() {
  if (ctl_ == nullptr)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "tendril::Fiber::join: fiber is not joinable");
  detail::fiber_join(ctl_);
}

void Fiber::detach() {
  if (ctl_ == nullptr)
    throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                            "tendril::Fiber::detach: fiber is not joinable");
  detail::fiber_detach(std::exchange(ctl_, nullptr));
}

namespace this_fiber {

namespace {
void requeue(detail::FiberCtl* from, void*) noexcept {
  detail::current_worker()->push_local(from);
}
void arm_timer(detail::FiberCtl* from, void*) noexcept {
  detail::TimerHeap& h = detail::current_worker()->timers();
  h.lock.lock();
  h.insert(from);
  h.lock.unlock();
}

// A sleep that the fiber's scope may cut short: a park on a Waiter nobody
// else knows, so only the timer and a cancel can claim it. It is the fiber's
// own: both claim it before they ready the fiber, and the park returns only
// after the timer is disarmed and the Interrupt unpublished.
void sleep_interruptibly(std::chrono::steady_clock::time_point t) {
  detail::SpinLock nobody;
  detail::OwnWaiter own;
  detail::Waiter& waiter = *own;
  nobody.lock();
  detail::park(waiter, nobody, WaitReason::sleep, &t);
  detail::throw_if_interrupted(&t, "tendril::this_fiber::sleep");
}
}  // namespace

void yield() {
  detail::Worker* w = detail::current_worker();
  detail::FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self == nullptr) {
    std::this_thread::yield();
    return;
  }
  w->switch_if_runnable(self, requeue, nullptr);
}

void sleep_until_steady(std::chrono::steady_clock::time_point t) {
  detail::Worker* w = detail::current_worker();
  detail::FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (self == nullptr) {
    std::this_thread::sleep_until(t);
    return;
  }
  if (detail::fiber_interruptible(self)) {
    sleep_interruptibly(t);
    return;
  }
  if (t <= std::chrono::steady_clock::now()) {
    yield();
    return;
  }
  self->timer_deadline = detail::to_ticks(t);
  self->timer_waiter = nullptr;
  self->park.begin(WaitReason::sleep, w->index(), detail::park_clock_ns());
  w->switch_out(self, arm_timer, nullptr);
}

FiberId id() noexcept {
  detail::FiberCtl* f = detail::current_fiber();
  return f != nullptr ? f->id : 0;
}

const char* name() noexcept {
  detail::FiberCtl* f = detail::current_fiber();
  return f != nullptr ? f->name : "";
}

std::size_t stack_high_water() noexcept {
  detail::FiberCtl* f = detail::current_fiber();
  return f != nullptr ? detail::stack_high_water(f->stack) : 0;
}

}  // namespace this_fiber
}  // namespace tendril
