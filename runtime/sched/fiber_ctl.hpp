// The fiber control block. It lives in a dense per-worker cache of records
// (fiber_ctl_cache.hpp), not on the fiber's stack: wakers, the scheduler and
// joiners touch it for parked fibers, and stacks are far apart. Spawning
// takes a cached record (no malloc); the callable sits at the top of the
// stack, the only part of the fiber that only the fiber itself touches.
// Tools that start from a stack slot find the block through the stack side
// table (stack_set_owner's `ctl`, LiveStack::ctl).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>

#include "runtime/context/switch.hpp"
#include "runtime/stack/stack.hpp"
#include "tendril/detail/park.hpp"
#include "tendril/fiber.hpp"

namespace tendril::detail {

struct ScopeState;
inline constexpr std::uintptr_t kInterruptBusy = 1, kInterruptPending = 2;  // Interrupts are 8-aligned

// How a fiber parks: one record per fiber, written by every park and read by
// the debug tools (fiber dump, stall watchdog, gdb), and the one place that
// deadlines and cancellation interrupt a park.
//
// - `wait` is written once per park, with the reason and descriptor
//   (WaitFor), the worker it parks on and a park sequence number in its top
//   16 bits; the reason is cleared (keeping the sequence) when the fiber is
//   made runnable (readied(), by its waker) or, for a fiber readied
//   otherwise, just before a worker switches into it (end()).
//   A reader on another thread (the fiber dump) may therefore copy a parked
//   fiber's saved registers and stack without stopping anything: if `wait`
//   reads the same parked value before and after the copy, the fiber did not
//   run in between, so the copy is consistent (a seqlock whose writer is the
//   park and whose "odd" state is "reason none"). The park stores one word
//   and the wake or the resume clears it: nothing else is added to the
//   switch path. The release fence of every switch-in (end()) orders the
//   clear, wherever it was made (the switching worker took the fiber from a
//   queue after it), before the fiber's later stack writes.
// - `since` is when it parked, from the coarse monotonic clock (a vDSO read
//   of a few words; milliseconds are all a dump needs).
// - Interruption: a timed park leaves its Waiter in FiberCtl::timer_waiter,
//   which the timer claims with kTimedOut before it readies the fiber. A
//   scope's deadline is one more deadline for that timer (the earlier wins),
//   and a scope's cancel() claims the park through the Interrupt the park
//   publishes in FiberCtl::interrupt, with the same kTimedOut, so the
//   primitive's own timed-out path (relock, unlink, report) is the only
//   cleanup there is. An io_uring wait ends through its linked timeout or an
//   async cancel submitted on the op's ring, never by touching the fiber's
//   stack from outside.
// - Where it lives: in the FiberCtl, beside the context. Everything a waker,
//   the scheduler or a joiner touches for a parked fiber is in this block and
//   none of it in the frames below, which is what let the block move off the
//   stack page into the dense per-worker cache without changing any park.
//   The Waiter a wait links into a queue or a channel cell is the fiber's
//   own, in this block (OwnWaiter), where the wait allows it: every wait
//   that links one Waiter at a time (see park.hpp, "Where Waiters live").
//   What stays on the stack: a select's shared Waiter and its per-case
//   registrations, a non-interruptible blocking() call's record, the
//   Interrupt a park publishes (the canceller reads it; it is not touched
//   by a plain wake), and whatever a waiter's `slot` points at (a channel
//   value or a receiver's storage).
struct ParkRecord {
  std::atomic<std::uint64_t> wait{0};
  std::int64_t since = 0;  // CLOCK_MONOTONIC_COARSE, ns

  // The park path of fiber `self`: records `what` and when. Owner only.
  void begin(WaitFor what, unsigned worker, std::int64_t now) noexcept {
    const std::uint64_t w = wait.load(std::memory_order_relaxed);
    const std::uint64_t seq = (w >> WaitFor::kSeqShift) + 1;
    since = now;
    wait.store(what.bits | (std::uint64_t(worker & 0xff) << WaitFor::kWorkerShift) |
                   (seq << WaitFor::kSeqShift),
               std::memory_order_release);
  }
  // The waker's path, as it makes the parked fiber runnable (it is the only
  // writer between the park's publication and the resume): for whoever reads
  // the word (the compactor, the dump) the park is over now, not when the
  // fiber next runs, which after a mass wake is seconds later; the compactor
  // would otherwise compact fibers that sit in a run queue, only to restore
  // them when they run. The switch-in's end() then finds the word clear.
  // Its handshake with the compactor holds either way: the worker that
  // switches the fiber in took it from a queue after this store.
  void readied() noexcept {
    const std::uint64_t w = wait.load(std::memory_order_relaxed);
    if ((w & WaitFor::kReasonMask) == 0) return;
    wait.store(w & ~WaitFor::kReasonMask, std::memory_order_relaxed);
  }
  // The resume path, before the first instruction of the fiber runs again.
  // The fence keeps the fiber's later stack writes after the clear (this
  // one, or the waker's, which this thread acquired with the fiber) for a
  // reader that validates with `wait` (a compiler barrier on x86).
  void end() noexcept {
    const std::uint64_t w = wait.load(std::memory_order_relaxed);
    if ((w & WaitFor::kReasonMask) != 0) wait.store(w & ~WaitFor::kReasonMask, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
};

class Worker;
struct FiberLocalTable;  // include/tendril/fiber_local.hpp

// The coarse clock the park record uses.
std::int64_t park_clock_ns() noexcept;

struct alignas(64) FiberCtl {
  FiberCtl() noexcept : waiter(this) {}

  Context ctx;
  FiberCtl* next = nullptr;  // intrusive link for the global queue
  FiberId id = 0;
  StackSlot stack;

  // The callable, moved onto the top of the stack.
  const ClosureOps* ops = nullptr;
  void* closure = nullptr;

  // Two references: the Fiber handle's (dropped by join/detach) and the
  // running fiber's (dropped after its last switch away). The stack is released
  // with the last one.
  std::atomic<std::uint32_t> refs{2};
  // One word settles the race between finishing, joining and detaching:
  // kRunning, kDone, kDetached, or who waits for it: a joining fiber's
  // FiberCtl* tagged with kJoinerIsFiber, or a plain thread's Waiter*
  // (8-aligned, so the tag bit is clear).
  static constexpr std::uintptr_t kRunning = 0, kDone = 1, kDetached = 2, kJoinerIsFiber = 4;
  std::atomic<std::uintptr_t> join_state{kRunning};
  std::exception_ptr error;    // set before kDone is published; read by the joiner

  // Timer state (see timer_heap.hpp): the heap it is in and its index there.
  struct TimerHeap* timer_heap = nullptr;
  std::size_t timer_index = 0;
  std::int64_t timer_deadline = 0;  // steady_clock ticks
  Waiter* timer_waiter = nullptr;   // claimed by the timer when it fires
  bool timer_interrupts = false;    // the timer runs the published Interrupt instead

  // Idle-stack compaction (worker.cpp): kCompactNone, kCompacting while a
  // worker compacts its stack, kCompacted until the worker that switches
  // into it has put the stack back. Just before `park`, so that the
  // switch-in check reads the line park.end() just wrote or read, and in what was
  // padding, so that no field of the block moves.
  static constexpr std::uint8_t kCompactNone = 0, kCompacting = 1, kCompacted = 2;
  std::atomic<std::uint8_t> compact{kCompactNone};
  // Whether a worker's compaction list holds it, and which worker's. The
  // list holds no reference: a fiber that ends while listed gives its stack
  // back as usual, but its record stays out of the cache (kReleasedListed)
  // until the list lets go of it (release_listed_fiber_record), so that the
  // list never reads a record that holds another fiber.
  static constexpr std::uint8_t kNotListed = 0, kListed = 1, kReleasedListed = 2;
  std::atomic<std::uint8_t> compact_listed{kNotListed};
  std::uint16_t compact_lister = 0;
  std::uint32_t compact_pos = 0;  // where in that list (lister only; see Worker::list_compact_candidate)
  // Its latest park noted for compaction (the park word, and when it
  // parked), written by the worker it parked on once its context is saved,
  // read by the worker whose list holds it: the word equals `park.wait`
  // while that park lasts.
  std::atomic<std::uint64_t> compact_wait{0};
  std::atomic<std::int64_t> compact_since{0};

  ParkRecord park;

  // Cancellation (see Interrupt in tendril/detail/park.hpp, runtime/sched/scope.cpp).
  ScopeState* scope = nullptr;      // the Scope that spawned it; fixed while it runs
  FiberCtl* scope_next = nullptr;   // that scope's list of running children (its lock)
  FiberCtl* scope_prev = nullptr;
  std::uint32_t no_cancel = 0;      // this_fiber::NoCancel depth; owner only
  // The Interrupt of the park in progress, kInterruptBusy while a canceller
  // runs it, or 0.
  std::atomic<std::uintptr_t> interrupt{0};

  std::uint16_t finished_on = 0;    // the worker it ended on (whose node holds its pages)
  std::uint16_t home = 0;           // the FiberCtlCache it came from (Scheduler::ctl_cache)

  char name[32] = {};

  // Fiber-local values and NoMigrate (fiber_local.cpp, worker.cpp). Only the
  // fiber itself writes them while it runs, except `pin_home`, which wakers
  // and the scheduler read (relaxed: written before the park that publishes
  // the fiber to them).
  FiberLocalTable* locals = nullptr;  // made on the first FiberLocal::get()
  std::uint32_t pin_depth = 0;               // nested NoMigrate guards alive
  std::atomic<Worker*> pin_home{nullptr};  // the worker it must run on, or nullptr
  FiberCtl* pin_next = nullptr;              // link in pin_home's pinned inbox

  union {
    // The Waiter of the fiber's common waits (OwnWaiter in park.hpp): here
    // rather than on the stack, so a waker touches only this block. Last, so
    // that the lines the switch path reads stay as they were.
    Waiter waiter;
    // A fiber spawned with a deferred stack (ctx.fctx == nullptr: it has not
    // run, and has no stack) keeps its callable here until it first runs:
    // nobody waits on a fiber's own Waiter before then. Binding its stack
    // moves the callable onto the stack and builds the Waiter (see
    // bind_unstarted_fiber); until then `closure` holds its spawn site and
    // `stack` only the limit.
    alignas(16) unsigned char start_closure[sizeof(Waiter)];
  };
};

// Gives f's stack back (the last reference is gone): on this worker, or, if
// f ended on a worker of another NUMA node, through that worker.
void release_fiber(FiberCtl* f) noexcept;
// Gives f, spawned with a deferred stack and about to run for the first time
// on `worker`, its stack: from `worker`'s cache or arena, else false when that
// arena is full and `worker` is not f's home, which kept room for it. With
// `cache_only`, false when the cache has none (see stack_allocate_deferred).
bool bind_unstarted_fiber(FiberCtl* f, unsigned worker, bool cache_only) noexcept;
// The rest of release_fiber for a fiber released while a compaction list
// held it (kReleasedListed): destroys the record and returns it to its
// cache. Called by the worker whose list let go of it.
void release_listed_fiber_record(FiberCtl* f) noexcept;

// Seven cache lines per fiber, parked or not; the waiter's hand-off buffer
// took what was padding. A field that grows the record costs every fiber a
// line: make room first. (The sanitizers' contexts are larger.)
#if !TENDRIL_ASAN && !TENDRIL_TSAN
static_assert(sizeof(FiberCtl) == 448, "FiberCtl grew past seven cache lines");
#endif
static_assert(alignof(Waiter) >= 8 && alignof(FiberCtl) > FiberCtl::kJoinerIsFiber,
              "join_state tags a joining fiber's pointer with kJoinerIsFiber");

}  // namespace tendril::detail
