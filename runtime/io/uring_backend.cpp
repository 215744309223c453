// The io_uring backend: one ring per worker, made on (and only ever submitted
// to from) that worker's thread.
//
// An operation's record (UringOp) lives on the parked fiber's stack; each SQE
// carries its address with a tag in the low bits saying which CQE it is (the
// op itself or its linked timeout). The fiber is made runnable only when BOTH
// have arrived (`outstanding` reaches 0): until then the kernel may still write
// to the record or the buffer, so the stack must not be reused.
//
// Record state is touched only by the owning worker's thread: the fiber
// fills it and parks on that worker; the switch action (after the fiber's
// context is saved) sets `parked`; CQEs are reaped by the same worker. So no
// atomics: whichever of "all CQEs reaped" and "parked" comes second readies
// the fiber. (A CQE can be reaped before the switch completes: switch_out's
// pick_next polls the ring, which submits our SQE, which may complete inline.)
//
// Cancellation (a fiber in a tendril::Scope): the park publishes an Interrupt
// whose fn may run on any thread. Rings are single-issuer, so fn does not
// touch the ring: it pins the record (UringOp::state live -> pinned, one CAS)
// and pushes it on the ring's `cancels` inbox (a lock-free stack) and wakes
// the worker, whose next poll submits an IORING_OP_ASYNC_CANCEL for the op's
// user_data. A pinned record is not readied by the reaper even when all its
// CQEs are in: the drain unpins it (and readies the fiber if it is complete),
// so an inbox entry never outlives its record. A CAS that finds the record
// done means the fiber is already on its way. An op that completed before the
// cancel reached it keeps its result (data received is returned); one the
// cancel ended reports -ECANCELED, which the caller turns into the scope's
// error. The scope's deadline needs no cancel: it is the linked timeout.
//
// With IORING_SETUP_DEFER_TASKRUN completions are posted only when this thread
// enters the kernel with GETEVENTS, so io_poll(idle=false) submits what is
// queued (one syscall, needed for progress) and otherwise only peeks the CQ,
// fetching events every 4th call; io_poll(idle=true) always enters.
//
// Wake-ups: an eventfd with a read SQE always armed on the ring. io_wake sets
// `wake_pending` and writes the eventfd only on the false->true edge; io_wait
// consumes the flag before sleeping, so a wake that lands before the sleep
// makes it return at once, and one that lands during it completes the read.
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <sched.h>

#include <cerrno>
#include <chrono>
#include <new>

#include "runtime/io/io_internal.hpp"
#include "runtime/inject/fault_inject.hpp"
#include "runtime/sched/interrupt.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

namespace {

constexpr unsigned kSqEntries = 1024;
constexpr unsigned kCqEntries = 16384;  // many fibers may have ops in flight at once

enum : std::uint64_t {
  kTagOp = 0,       // the op's own CQE
  kTagTimeout = 1,  // its linked timeout's CQE
  kTagWake = 2,     // the eventfd read
  kTagIgnore = 3,   // cancels, and liburing's internal timeout (user_data ~0)
  kTagMask = 3,
};

enum : std::uint8_t { kOpLive, kOpPinned, kOpDone };

struct UringOp {
  FiberCtl* fiber = nullptr;
  UringWorker* ring = nullptr;       // the ring it was submitted on
  UringOp* cancel_next = nullptr;    // in ring->cancels while pinned
  std::int32_t res = 0;
  std::uint8_t outstanding = 0;  // CQEs still to come
  bool parked = false;
  bool timeout_fired = false;
  bool interruptible = false;    // an Interrupt is published for it (state is used)
  bool cancel_sent = false;      // an async cancel was submitted for it
  // Interruptible ops only: kOpLive, kOpPinned (a cancel request is queued;
  // only the drain unpins it), kOpDone (the fiber has been readied).
  std::atomic<std::uint8_t> state{kOpLive};
};
static_assert(alignof(UringOp) >= 4, "tags use the low two bits");

timespec to_timespec(std::int64_t ns) noexcept {
  return timespec{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
}

}  // namespace

struct UringWorker {
  io_uring ring{};
  bool ring_live = false;
  bool exiting = false;          // io_thread_exit: reap without readying fibers
  int wake_fd = -1;
  std::uint64_t wake_buf = 0;
  bool wake_armed = false;
  std::uint32_t polls = 0;
  std::uint64_t inflight = 0;    // op and linked-timeout CQEs still to come
  alignas(64) std::atomic<bool> wake_pending{false};
  // Ops whose fiber's scope asked for a cancel, from any thread; drained by
  // the owner in uring_poll.
  alignas(64) std::atomic<UringOp*> cancels{nullptr};
};

namespace {

int setup_ring(io_uring* ring, unsigned flags) noexcept {
  io_uring_params p{};
  p.flags = flags | IORING_SETUP_CQSIZE;
  p.cq_entries = kCqEntries;
  return io_uring_queue_init_params(kSqEntries, ring, &p);
}

// The flag sets to try, most capable first; the kernel rejects what it does
// not know with EINVAL.
constexpr unsigned kFlagSets[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_COOP_TASKRUN,
    0,
};

io_uring_sqe* next_sqe(UringWorker* u) noexcept {
  if (injected_fault(FaultPoint::uring_sq_full) != 0) return nullptr;
  return io_uring_get_sqe(&u->ring);
}

int submit_ring(UringWorker* u) noexcept {
  if (const int e = injected_fault(FaultPoint::uring_submit)) return -e;
  return io_uring_submit(&u->ring);
}

std::uint32_t reap_cqes(UringWorker* u) noexcept;

io_uring_sqe* get_sqe(UringWorker* u) noexcept {
  io_uring_sqe* sqe = next_sqe(u);
  while (sqe == nullptr) {  // SQ full: hand the queued entries to the kernel
    const int r = submit_ring(u);
    if (r == -EBUSY || r == -EAGAIN) {
      // EBUSY: completions the kernel could not post (CQ overflow) wait for
      // us to reap; EAGAIN: the kernel is short of memory for requests.
      // Reap (it frees room and readies their fibers) and let the kernel
      // catch up before trying again: retrying alone would spin forever.
      if (reap_cqes(u) == 0) sched_yield();
    }
    sqe = next_sqe(u);
  }
  return sqe;
}

void arm_wake_read(UringWorker* u) noexcept {
  if (u->wake_armed) return;
  io_uring_sqe* sqe = get_sqe(u);
  io_uring_prep_read(sqe, u->wake_fd, &u->wake_buf, sizeof(u->wake_buf), 0);
  io_uring_sqe_set_data64(sqe, kTagWake);
  u->wake_armed = true;
}

void ready_fiber(FiberCtl* f) noexcept { current_scheduler()->ready(f, /*handoff=*/false); }

// Readies the fiber of a parked op whose CQEs are all in, unless a cancel
// request still holds the record pinned (the drain finishes it then).
bool finish_op(UringOp* op) noexcept {
  if (op->interruptible) {
    std::uint8_t expected = kOpLive;
    if (!op->state.compare_exchange_strong(expected, kOpDone, std::memory_order_acq_rel)) return false;
  }
  ready_fiber(op->fiber);  // *op may be gone after this
  return true;
}

// One CQE of an op record arrived.
bool op_cqe_arrived(UringWorker* u, UringOp* op) noexcept {
  --u->inflight;
  if (--op->outstanding != 0 || !op->parked || u->exiting) return false;
  return finish_op(op);
}

std::uint32_t handle_cqe(UringWorker* u, const io_uring_cqe* cqe) noexcept {
  const std::uint64_t data = cqe->user_data;
  auto* op = reinterpret_cast<UringOp*>(data & ~std::uint64_t{kTagMask});
  switch (data & kTagMask) {
    case kTagOp:
      op->res = cqe->res;
      return op_cqe_arrived(u, op) ? 1 : 0;
    case kTagTimeout:
      op->timeout_fired = cqe->res == -ETIME;
      return op_cqe_arrived(u, op) ? 1 : 0;
    case kTagWake:
      u->wake_armed = false;
      return 0;
    default:
      return 0;
  }
}

// Every CQE posted; returns how many. Does not re-arm the wake read (so
// get_sqe may call it).
std::uint32_t reap_cqes(UringWorker* u) noexcept {
  std::uint32_t total = 0;
  for (;;) {
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
      handle_cqe(u, cqe);
      ++seen;
    }
    if (seen == 0) break;
    io_uring_cq_advance(&u->ring, seen);
    total += seen;
  }
  return total;
}

std::uint32_t reap(UringWorker* u) noexcept {
  std::uint32_t readied = 0;
  for (;;) {
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
      readied += handle_cqe(u, cqe);
      ++seen;
    }
    if (seen == 0) break;
    io_uring_cq_advance(&u->ring, seen);
  }
  // Re-armed after the loop so the read is queued for the next submission.
  if (!u->wake_armed && !u->exiting) arm_wake_read(u);
  return readied;
}

// Runs once the parked fiber's context is saved, on the same worker.
void mark_parked(FiberCtl*, void* arg) noexcept {
  auto* op = static_cast<UringOp*>(arg);
  op->parked = true;
  if (op->outstanding == 0) ready_fiber(op->fiber);
}

// The Interrupt of an interruptible op: runs on any thread while the fiber
// is parked (its record alive). Pins the record and queues it for the ring's
// owner, which submits the async cancel.
struct UringInterrupt : Interrupt {
  UringOp* op;
  explicit UringInterrupt(UringOp* o) noexcept : Interrupt{request_cancel}, op(o) {}

  static void request_cancel(Interrupt* self, FiberCtl*) noexcept {
    UringOp* op = static_cast<UringInterrupt*>(self)->op;
    std::uint8_t expected = kOpLive;
    if (!op->state.compare_exchange_strong(expected, kOpPinned, std::memory_order_acq_rel))
      return;  // done: its fiber is already on its way
    UringWorker* u = op->ring;  // read before the push: the drain may finish op at once
    UringOp* head = u->cancels.load(std::memory_order_relaxed);
    do {
      op->cancel_next = head;
    } while (!u->cancels.compare_exchange_weak(head, op, std::memory_order_release, std::memory_order_relaxed));
    uring_wake(u);
  }
};

// The switch action of an interruptible op: mark_parked, then publish the
// Interrupt (or drop it: the op is complete and the fiber readied).
struct InterruptiblePark {
  UringOp* op;
  Interrupt* interrupt;
  static void action(FiberCtl* self, void* arg) noexcept {
    auto* p = static_cast<InterruptiblePark*>(arg);
    UringOp* op = p->op;
    op->parked = true;
    if (op->outstanding == 0) {
      op->state.store(kOpDone, std::memory_order_relaxed);  // not published: no canceller yet
      drop_interrupt(self);
      ready_fiber(self);
      return;
    }
    publish_interrupt(self, p->interrupt);
  }
};

// Owner thread: submits an async cancel for every op queued by a canceller
// and unpins it; an op whose CQEs all came in meanwhile is finished here.
std::uint32_t drain_cancels(UringWorker* u) noexcept {
  if (u->cancels.load(std::memory_order_relaxed) == nullptr) return 0;
  UringOp* op = u->cancels.exchange(nullptr, std::memory_order_acquire);
  std::uint32_t readied = 0;
  while (op != nullptr) {
    UringOp* next = op->cancel_next;
    if (op->outstanding != 0) {
      // get_sqe may reap: CQEs of this op are counted, but a pinned op is
      // not finished there.
      io_uring_sqe* sqe = get_sqe(u);
      io_uring_prep_cancel64(sqe, reinterpret_cast<std::uintptr_t>(op) | kTagOp, 0);
      io_uring_sqe_set_data64(sqe, kTagIgnore);
      op->cancel_sent = true;
    }
    op->state.store(kOpLive, std::memory_order_release);
    if (op->outstanding == 0 && !u->exiting && finish_op(op)) ++readied;  // *op may be gone
    op = next;
  }
  return readied;
}

void prep_request(io_uring_sqe* sqe, IoRequest& r) noexcept {
  switch (r.kind) {
    case OpKind::read:
      io_uring_prep_read(sqe, r.fd, r.buf, static_cast<unsigned>(r.len), static_cast<__u64>(-1));
      break;
    case OpKind::write:
      io_uring_prep_write(sqe, r.fd, r.buf, static_cast<unsigned>(r.len), static_cast<__u64>(-1));
      break;
    case OpKind::recv:
      io_uring_prep_recv(sqe, r.fd, r.buf, r.len, r.flags);
      break;
    case OpKind::send:
      io_uring_prep_send(sqe, r.fd, r.buf, r.len, r.flags | MSG_NOSIGNAL);
      break;
    case OpKind::accept:
      io_uring_prep_accept(sqe, r.fd, r.addr, r.addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case OpKind::connect:
      io_uring_prep_connect(sqe, r.fd, r.addr, r.addrlen_in);
      break;
    case OpKind::recvmsg:
      io_uring_prep_recvmsg(sqe, r.fd, r.msg, static_cast<unsigned>(r.flags));
      break;
    case OpKind::sendmsg:
      io_uring_prep_sendmsg(sqe, r.fd, r.msg, static_cast<unsigned>(r.flags | MSG_NOSIGNAL));
      break;
    case OpKind::poll:
      io_uring_prep_poll_add(sqe, r.fd, static_cast<unsigned>(r.events));
      break;
  }
}

// Submits one request (and its linked timeout) and parks until every CQE that
// refers to the record has arrived. Returns the op's result.
long submit_and_park(UringWorker* u, Worker* w, FiberCtl* self, IoRequest& r,
                     const Deadline* deadline) noexcept {
  if (io_uring_sq_space_left(&u->ring) < 2) io_uring_submit(&u->ring);
  UringOp op;
  op.fiber = self;
  op.outstanding = 1;
  io_uring_sqe* sqe = get_sqe(u);
  prep_request(sqe, r);
  io_uring_sqe_set_data64(sqe, reinterpret_cast<std::uintptr_t>(&op) | kTagOp);
  __kernel_timespec ts{};  // read by the kernel at submission, while we are parked
  if (deadline != nullptr) {
    const timespec t = to_timespec(to_ticks(*deadline));  // steady_clock is CLOCK_MONOTONIC
    ts.tv_sec = t.tv_sec;
    ts.tv_nsec = t.tv_nsec;
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe* tsqe = get_sqe(u);
    io_uring_prep_link_timeout(tsqe, &ts, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(tsqe, reinterpret_cast<std::uintptr_t>(&op) | kTagTimeout);
    op.outstanding = 2;
  }
  u->inflight += op.outstanding;
  self->park.begin(wait_for(r), w->index(), park_clock_ns());
  if (!fiber_interruptible(self)) {
    w->switch_out(self, mark_parked, &op);
  } else {
    op.ring = u;
    op.interruptible = true;
    UringInterrupt interrupt(&op);
    InterruptiblePark park{&op, &interrupt};
    hold_interrupt(self);
    w->switch_out(self, InterruptiblePark::action, &park);
    unpublish_interrupt(self);
  }
  // Resumed, possibly on another worker; every CQE for `op` has arrived and
  // no cancel request refers to it any more.
  if ((op.timeout_fired || op.cancel_sent) && (op.res == -ECANCELED || op.res == -EINTR)) return -ETIMEDOUT;
  return op.res;
}

}  // namespace

bool uring_probe(unsigned* setup_flags, int* error) noexcept {
  int err = 0;
  for (unsigned flags : kFlagSets) {
    io_uring ring;
    err = setup_ring(&ring, flags);
    if (err == 0) {
      io_uring_queue_exit(&ring);
      *setup_flags = flags;
      return true;
    }
    if (err != -EINVAL) break;  // ENOSYS, EPERM, ENOMEM: no flags will help
  }
  *error = -err;
  return false;
}

UringWorker* uring_worker_create(unsigned setup_flags, int* error) noexcept {
  auto* u = new (std::nothrow) UringWorker;
  if (u == nullptr) {
    *error = ENOMEM;
    return nullptr;
  }
  int err = -injected_fault(FaultPoint::uring_create);
  if (err == 0) err = setup_ring(&u->ring, setup_flags);
  if (err == 0) {
    // A fork() child gets no mapping of the rings (MADV_DONTFORK): they are
    // shared memory with the kernel and the parent, which a child must never
    // write. Advisory: without it the child still must not use them.
    (void)io_uring_ring_dontfork(&u->ring);
    u->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (u->wake_fd >= 0) {
      u->ring_live = true;
      arm_wake_read(u);
      io_uring_submit(&u->ring);
      return u;
    }
    err = -errno;
    io_uring_queue_exit(&u->ring);
  }
  delete u;
  *error = -err;
  return nullptr;
}

void uring_worker_destroy(UringWorker* u) noexcept {
  if (!u->ring_live) return;
  // Fibers still parked in I/O are abandoned with the run, but their stacks
  // live until stack_shutdown: cancel everything and wait (bounded) for the
  // CQEs, so the kernel is done with those stacks before they are unmapped.
  u->exiting = true;
  io_uring_sqe* sqe = get_sqe(u);
  io_uring_prep_cancel_fd(sqe, -1, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  const std::int64_t give_up = steady_ticks() + 1000000000;  // 1 s
  while (u->inflight > 0 && steady_ticks() < give_up) {
    __kernel_timespec ts{0, 10000000};
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, nullptr);
    reap(u);
  }
  io_uring_queue_exit(&u->ring);
  u->ring_live = false;
}

void uring_worker_close_wake(UringWorker* u) noexcept {
  if (u->wake_fd >= 0) ::close(u->wake_fd);
  delete u;
}

namespace {
// On a DEFER_TASKRUN ring the kernel runs at most IO_LOCAL_TW_DEFAULT_MAX (20)
// deferred completions per pass of io_uring_enter (Linux 6.13+; at most two
// passes), and leaves the rest for the next enter. Completions that need no
// task work (an op that finished at submission) are not limited. So a single
// enter per poll lets "armed" receives (no data when submitted) pile up in the
// kernel and wait for seconds while connections whose data was already there
// go round again and again. Keep entering while an enter may have hit the cap.
constexpr unsigned kTaskRunCap = 20;
constexpr int kMaxExtraEnters = 64;

std::uint32_t drain_deferred(UringWorker* u) noexcept {
  std::uint32_t readied = 0;
  for (int k = 0;; ++k) {
    const unsigned got = io_uring_cq_ready(&u->ring);
    readied += reap(u);
    if (got < kTaskRunCap || k == kMaxExtraEnters || u->inflight == 0) break;
    io_uring_get_events(&u->ring);
  }
  return readied;
}

std::uint32_t poll_ring(UringWorker* u, bool idle) noexcept {
  const bool queued = io_uring_sq_ready(&u->ring) > 0;
  if (queued || (u->inflight > 0 && (idle || (++u->polls & 3) == 0))) {
    io_uring_submit_and_get_events(&u->ring);
    return drain_deferred(u);
  }
  return reap(u);
}
}  // namespace

// Cancel requests first: their SQEs go out with this poll's submission.
std::uint32_t uring_poll(UringWorker* u, bool idle) noexcept {
  const std::uint32_t finished = drain_cancels(u);
  return finished + poll_ring(u, idle);
}

void uring_wait(UringWorker* u, const Deadline* deadline) noexcept {
  if (u->wake_pending.exchange(false, std::memory_order_acq_rel)) return;
  arm_wake_read(u);
  io_uring_cqe* cqe = nullptr;
  if (deadline == nullptr) {
    io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, nullptr, nullptr);
    return;
  }
  const std::int64_t left = to_ticks(*deadline) - steady_ticks();
  if (left <= 0) {
    io_uring_submit_and_get_events(&u->ring);
    return;
  }
  const timespec t = to_timespec(left);
  __kernel_timespec ts{t.tv_sec, t.tv_nsec};
  io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, nullptr);
}

void uring_wake(UringWorker* u) noexcept {
  if (u->wake_pending.exchange(true, std::memory_order_acq_rel)) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(u->wake_fd, &one, sizeof(one));
}

long uring_perform(UringWorker* u, Worker* w, FiberCtl* self, IoRequest& r,
                   const Deadline* deadline) noexcept {
  // A deadline that has already passed still gets one attempt, as on the
  // other paths: the op is issued at submission, before its timeout is armed.
  return submit_and_park(u, w, self, r, deadline);
}

void uring_cancel_fd(UringWorker* u, int fd) noexcept {
  io_uring_sqe* sqe = get_sqe(u);
  io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  io_uring_submit(&u->ring);
}

}  // namespace tendril::detail
