// io_perform(): runs one operation for whoever calls it (see io_internal.hpp).
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

#include "runtime/io/io_internal.hpp"
#include "runtime/inject/fault_inject.hpp"
#include "runtime/sched/fork.hpp"
#include "runtime/sched/interrupt.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

namespace {

long result(long r) noexcept { return r < 0 ? -errno : r; }

bool is_file_rw(const IoRequest& r) noexcept {
  return r.kind == OpKind::read || r.kind == OpKind::write;
}

// A plain thread waits with poll(2), restarting after signals.
long thread_wait_ready(int fd, short events, const Deadline* deadline) noexcept {
  for (;;) {
    int ms = -1;
    if (deadline != nullptr) {
      const std::int64_t left = to_ticks(*deadline) - steady_ticks();
      if (left <= 0) return -ETIMEDOUT;
      ms = static_cast<int>((left + 999999) / 1000000);
    }
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms);
    if (n > 0) return 0;
    if (n < 0 && errno != EINTR) return -errno;
  }
}

// Waits for readiness the way the caller's context allows.
long wait_ready(int fd, short events, WaitFor what, const Deadline* deadline) noexcept {
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  const IoKind kind = self != nullptr ? worker_io_kind(w->index()) : IoKind::none;
  if (kind == IoKind::uring) {
    IoRequest p;
    p.kind = OpKind::poll;
    p.fd = fd;
    p.events = events;
    p.reason = what.reason();
    const long r = uring_perform(worker_uring(w->index()), w, self, p, deadline);
    return r < 0 ? r : 0;
  }
  if (kind == IoKind::epoll) return epoll_wait_ready(worker_epoll(w->index()), fd, events, what, deadline);
  return thread_wait_ready(fd, events, deadline);
}

}  // namespace

long try_syscall(IoRequest& r) noexcept {
  switch (r.kind) {
    case OpKind::read: {
      iovec v{r.buf, r.len};
      return result(::preadv2(r.fd, &v, 1, -1, RWF_NOWAIT));
    }
    case OpKind::write: {
      iovec v{r.buf, r.len};
      return result(::pwritev2(r.fd, &v, 1, -1, RWF_NOWAIT));
    }
    case OpKind::recv: return result(::recv(r.fd, r.buf, r.len, r.flags | MSG_DONTWAIT));
    case OpKind::send: return result(::send(r.fd, r.buf, r.len, r.flags | MSG_DONTWAIT | MSG_NOSIGNAL));
    case OpKind::accept: return result(::accept4(r.fd, r.addr, r.addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC));
    case OpKind::connect: return result(::connect(r.fd, r.addr, r.addrlen_in));
    case OpKind::recvmsg: return result(::recvmsg(r.fd, r.msg, r.flags | MSG_DONTWAIT));
    case OpKind::sendmsg: return result(::sendmsg(r.fd, r.msg, r.flags | MSG_DONTWAIT | MSG_NOSIGNAL));
    case OpKind::poll: {
      pollfd p{r.fd, r.events, 0};
      const int n = ::poll(&p, 1, 0);
      return n < 0 ? -errno : n == 0 ? -EAGAIN : p.revents;
    }
  }
  return -EINVAL;
}

long plain_syscall(IoRequest& r) noexcept {
  if (r.kind == OpKind::read) return result(::read(r.fd, r.buf, r.len));
  if (r.kind == OpKind::write) return result(::write(r.fd, r.buf, r.len));
  return try_syscall(r);
}

long finish_connect(int fd) noexcept {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
  return -err;
}

// accept4 and connect fail as the hook says (fault_inject.hpp).
long injected_io_fault(const IoRequest& r) noexcept {
  if (__builtin_expect(g_fault_hook.load(std::memory_order_relaxed) == nullptr, true)) return 0;
  if (r.kind == OpKind::accept) return -injected_fault(FaultPoint::accept);
  if (r.kind == OpKind::connect) return -injected_fault(FaultPoint::connect);
  return 0;
}

namespace {

// The operation on the caller's path until it completes, fails or `deadline`
// passes (-ETIMEDOUT; on a fiber in a scope also when the scope interrupted
// the wait).
long perform(IoRequest& r, const Deadline* deadline) noexcept {
  enum class After { retry, finish_connect, plain_syscall } after = After::retry;
  for (;;) {
    Worker* w = current_worker();
    FiberCtl* self = w != nullptr ? w->current() : nullptr;
    const IoKind kind = self != nullptr ? worker_io_kind(w->index()) : IoKind::none;
    // The parent's ring and epoll instance are shared with a fork() child.
    if (__builtin_expect(self != nullptr && w->forked(), false)) die_used_after_fork("I/O on a fiber");
    long res;
    if (kind == IoKind::uring) {
      // Try the nonblocking call first where it usually succeeds:
      //  - a listener under a burst has connections queued: take them without
      //    a trip through the ring and the run queue, so an accept loop drains
      //    its backlog in one run instead of one connection per scheduling
      //    round (behind every connection fiber it started);
      //  - a send usually finds room in the socket buffer: the fiber goes on
      //    (to its next read, typically) instead of parking until the worker
      //    reaps the completion. http sample under wrk: +10-30% requests/s
      //    at 100 connections, +13% at 10,000 (bench/scripts/http-wrk.sh).
      // Sockets are O_NONBLOCK; MSG_DONTWAIT is added anyway. Reads are not
      // tried first: a server's read mostly waits for the peer's next request.
      if (r.kind == OpKind::accept || r.kind == OpKind::send || r.kind == OpKind::sendmsg) {
        res = try_syscall(r);
        if (res != -EAGAIN) return res;
      }
      res = uring_perform(worker_uring(w->index()), w, self, r, deadline);
      // -EAGAIN: an O_NONBLOCK file that is not a socket; io_uring does not
      // wait on those, so wait for readiness on the ring and go again.
      if (res != -EAGAIN || r.kind == OpKind::poll) return res;
    } else {
      res = try_syscall(r);
      if (r.kind == OpKind::connect && res == -EINPROGRESS) {
        after = After::finish_connect;
      } else if (is_file_rw(r) && res == -EOPNOTSUPP) {
        after = After::plain_syscall;  // no RWF_NOWAIT (a tty, say): wait, then call
      } else if (res != -EAGAIN) {
        return res;
      }
    }
    if (const long rc = wait_ready(r.fd, wanted_events(r), wait_for(r), deadline); rc < 0) return rc;
    if (after == After::finish_connect) return finish_connect(r.fd);
    if (after == After::plain_syscall) return plain_syscall(r);
  }
}

}  // namespace

long io_perform(IoRequest& r, const Deadline* own) noexcept {
  if (const long e = injected_io_fault(r)) return e;
  Worker* w = current_worker();
  FiberCtl* self = w != nullptr ? w->current() : nullptr;
  if (!fiber_interruptible(self)) return perform(r, own);
  // A fiber in a scope: nothing is tried once the scope is cancelled or past
  // its deadline (nothing is consumed either), and the wait ends at the
  // earlier of the two deadlines or at a cancel(), whichever comes first.
  if (const int e = interrupt_error(own)) return -e;
  Deadline storage;
  const long res = perform(r, effective_deadline(self, own, storage));
  if (res != -ETIMEDOUT) return res;
  const int e = interrupt_error(own);  // 0: the own deadline came first
  return e != 0 ? -e : -ETIMEDOUT;
}

}  // namespace tendril::detail
