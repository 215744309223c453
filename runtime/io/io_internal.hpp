// Internal to runtime/io: the pieces shared by the backends (io_uring, epoll),
// the operation layer and the public wrappers (net, io, blocking).
//
// An operation is described by an IoRequest and run by io_perform(), which
// picks the path for the caller:
//   - a fiber on a worker whose backend is io_uring: one SQE (plus a linked
//     timeout when there is a deadline) on THAT worker's ring, then park until
//     every CQE that refers to the op record has arrived;
//   - a fiber on an epoll worker: the nonblocking syscall, and on EAGAIN park
//     on readiness (EPOLLONESHOT) with a timed detail::park;
//   - a plain thread (or no runtime): the nonblocking syscall, and poll(2).
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "tendril/detail/park.hpp"

namespace tendril::detail {

class Worker;
struct FiberCtl;

enum class IoKind : std::uint8_t { none, uring, epoll };

enum class OpKind : std::uint8_t { read, write, recv, send, accept, connect, recvmsg, sendmsg, poll };

struct IoRequest {
  OpKind kind = OpKind::read;
  int fd = -1;
  void* buf = nullptr;            // read/write/recv/send
  std::size_t len = 0;
  int flags = 0;                  // recv/send/recvmsg/sendmsg flags
  sockaddr* addr = nullptr;       // accept (out) / connect (in)
  socklen_t* addrlen = nullptr;   // accept (in/out)
  socklen_t addrlen_in = 0;       // connect
  msghdr* msg = nullptr;          // recvmsg/sendmsg
  short events = 0;               // poll
  // What a parked caller waits for, as the fiber dump reports it; none: the
  // reason that follows from `kind` (see wait_for).
  WaitReason reason = WaitReason::none;
};

// The park-record entry for `r`: io_* for descriptors read and written
// through io::, net_* for socket operations.
inline WaitFor wait_for(const IoRequest& r) noexcept {
  if (r.reason != WaitReason::none) return WaitFor(r.reason, r.fd);
  switch (r.kind) {
    case OpKind::read: return WaitFor(WaitReason::io_read, r.fd);
    case OpKind::write: return WaitFor(WaitReason::io_write, r.fd);
    case OpKind::poll: return WaitFor(WaitReason::io_poll, r.fd);
    case OpKind::recv: case OpKind::recvmsg: return WaitFor(WaitReason::net_read, r.fd);
    case OpKind::send: case OpKind::sendmsg: return WaitFor(WaitReason::net_write, r.fd);
    case OpKind::accept: return WaitFor(WaitReason::net_accept, r.fd);
    case OpKind::connect: return WaitFor(WaitReason::net_connect, r.fd);
  }
  return WaitFor(WaitReason::none);
}

// Runs `req` for the calling fiber or thread until it completes, fails or
// `deadline` passes. Returns the syscall's result (poll: the revents), or
// -errno; -ETIMEDOUT when the deadline passed first.
//
// A fiber in a Scope (outside NoCancel) waits at most until the earlier of
// `deadline` and the scope's deadline, and a cancel() of its scope ends the
// wait (the operation is cancelled in the kernel). It then gets what
// detail::interrupt_error reports: -ETIMEDOUT past the scope's deadline,
// -ECANCELED when cancelled; an own deadline that came first is -ETIMEDOUT as
// before. An operation that completed before the cancel took effect returns
// its result: data received is never dropped. A fiber whose scope is already
// cancelled (or past its deadline) gets the error before any I/O is tried.
long io_perform(IoRequest& req, const Deadline* deadline) noexcept;

// The events (POLLIN/POLLOUT) an operation waits for when it would block.
inline short wanted_events(const IoRequest& r) noexcept {
  switch (r.kind) {
    case OpKind::read: case OpKind::recv: case OpKind::accept: case OpKind::recvmsg: return POLLIN;
    case OpKind::poll: return r.events;
    default: return POLLOUT;
  }
}

// One nonblocking attempt of `req` (never blocks the thread: sockets with
// MSG_DONTWAIT, other files with RWF_NOWAIT). -EAGAIN: wait for readiness.
// -EOPNOTSUPP for a read/write on a file without RWF_NOWAIT: wait first, then
// call plain_syscall().
long try_syscall(IoRequest& req) noexcept;
long plain_syscall(IoRequest& req) noexcept;
// Completes a nonblocking connect that reported EINPROGRESS and is now
// writable: 0 or -SO_ERROR.
long finish_connect(int fd) noexcept;

// Which backend worker `index` runs (none before io_init / after shutdown).
IoKind worker_io_kind(unsigned index) noexcept;

// ---- io_uring backend (uring_backend.cpp) ----
bool uring_probe(unsigned* setup_flags, int* error) noexcept;
struct UringWorker;
UringWorker* uring_worker_create(unsigned setup_flags, int* error) noexcept;  // on the worker thread
void uring_worker_destroy(UringWorker* u) noexcept;                          // on the worker thread
void uring_worker_close_wake(UringWorker* u) noexcept;                       // after all workers stopped
std::uint32_t uring_poll(UringWorker* u, bool idle) noexcept;
void uring_wait(UringWorker* u, const Deadline* deadline) noexcept;
void uring_wake(UringWorker* u) noexcept;
// Submits `req` on the calling worker's ring and parks until it completes:
// its result, or -ETIMEDOUT when `deadline` passed or the fiber's scope
// interrupted the wait (an async cancel on this ring) before the op completed.
long uring_perform(UringWorker* u, Worker* w, FiberCtl* self, IoRequest& req,
                   const Deadline* deadline) noexcept;
// Asks the calling worker's ring to cancel every request on `fd` (fire and
// forget; the cancelled ops complete through their own CQEs).
void uring_cancel_fd(UringWorker* u, int fd) noexcept;

// ---- epoll backend (epoll_backend.cpp) ----
struct EpollWorker;
EpollWorker* epoll_worker_create(int* error) noexcept;
void epoll_worker_destroy(EpollWorker* e) noexcept;
std::uint32_t epoll_poll(EpollWorker* e, bool idle) noexcept;
void epoll_wait_for(EpollWorker* e, const Deadline* deadline) noexcept;
void epoll_wake(EpollWorker* e) noexcept;
// Parks the calling fiber until `fd` reports one of `events` (POLLIN or
// POLLOUT), or `deadline`: 0, -ETIMEDOUT, or -errno. Files epoll cannot watch
// (regular files) count as ready. -ETIMEDOUT too when the fiber's scope
// interrupted the wait; the fd is then deregistered unless other fibers wait
// on it.
long epoll_wait_ready(EpollWorker* e, int fd, short events, WaitFor what, const Deadline* deadline) noexcept;
void epoll_table_reset() noexcept;

// Per-worker backend state, owned by poller.cpp.
UringWorker* worker_uring(unsigned index) noexcept;
EpollWorker* worker_epoll(unsigned index) noexcept;

// ---- offload pool (blocking.cpp) ----
// Waits for offloaded calls that are running (fibers of an ended run may be
// waiting for them) and drops queued ones.
void blocking_pool_quiesce() noexcept;
// Most pool threads from now on (Options::blocking_threads, validated).
void blocking_set_thread_limit(unsigned limit);

}  // namespace tendril::detail
