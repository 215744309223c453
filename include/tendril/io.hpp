// tendril::io: fiber-blocking read, write and poll on any file descriptor
// (pipes, eventfds, terminals, sockets you made yourself).
//
//   int p[2];
//   pipe2(p, O_CLOEXEC);
//   tendril::spawn([&] { tendril::io::write(p[1], "hi", 2); }).detach();
//   char buf[2];
//   std::size_t n = tendril::io::read(p[0], buf, sizeof buf, std::chrono::seconds(1));
//
// On a fiber these park the fiber, never the worker thread: with the io_uring
// backend the operation is submitted to the ring of the worker the fiber runs
// on; with epoll the nonblocking call is tried first and the fiber waits for
// readiness on EAGAIN. On a plain thread (or outside tendril::run) they call
// poll(2) and the syscall on that thread. The descriptor may be blocking or
// nonblocking; tendril never changes its flags.
//
// read/write transfer at most n bytes (read returns 0 at end of file). Errors
// throw std::system_error naming the call and the descriptor; when the
// timeout passes first the code is std::errc::timed_out (and nothing was
// transferred: the operation was cancelled). poll() returns the revents
// (POLLIN, POLLOUT, POLLHUP, ...) once any of `events` is ready.
//
// In a tendril::Scope these calls are cancellation points: when the scope is
// cancelled they throw std::errc::operation_canceled, past its deadline
// std::errc::timed_out, and the operation in flight is cancelled in the kernel
// (io_uring: an async cancel; epoll: the wait is withdrawn). Nothing is lost:
// a read that completed before the cancel took effect returns its bytes, and
// one that was cancelled read nothing (the data stays in the descriptor for
// the next read). A timeout and the scope's deadline combine: the earlier
// wins, and a timeout that came first is reported as before. Once the scope is
// cancelled the calls throw without touching the descriptor.
//
// Do not close a descriptor while a fiber is blocked on it here: the waiter is
// not woken (use tendril::net types, whose close() cancels waiters).
#pragma once

#include <chrono>
#include <cstddef>

namespace tendril::io {

std::size_t read(int fd, void* buf, std::size_t n);
std::size_t read(int fd, void* buf, std::size_t n, std::chrono::nanoseconds timeout);
std::size_t write(int fd, const void* buf, std::size_t n);
std::size_t write(int fd, const void* buf, std::size_t n, std::chrono::nanoseconds timeout);
short poll(int fd, short events);
short poll(int fd, short events, std::chrono::nanoseconds timeout);

}  // namespace tendril::io
