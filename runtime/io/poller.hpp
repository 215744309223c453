// The seam between the scheduler and the I/O subsystem.
//
// Each worker owns a poller. The scheduler asks it for completed I/O (never
// blocking) while it looks for work, sleeps in it when it has none, and pokes
// it to wake a parked worker. The backend behind it (io_uring, epoll, or a
// plain futex when no I/O is set up) is chosen at io_init().
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace tendril::detail {

struct IoConfig {
  unsigned workers = 1;
  std::string backend;  // "", "uring" or "epoll" (TENDRIL_IO)
  unsigned blocking_threads = 64;  // Options::blocking_threads
};

// Lifetime: io_init() before any worker starts, io_shutdown() after all stopped.
void io_init(const IoConfig& config);
void io_shutdown() noexcept;
// On worker `worker`'s thread, before its loop starts / after it ends.
// io_thread_init returns 0, or the errno of the last poller it tried (its
// io_uring, then epoll): the worker then has no poller and must not run.
int io_thread_init(unsigned worker) noexcept;
void io_thread_exit(unsigned worker) noexcept;

// Reaps completions that are ready for worker `worker` and makes their fibers
// runnable on it. Never blocks. `idle`: the worker found nothing else to run
// (a good moment for a system call; otherwise only cheap checks). Returns the
// number of fibers made runnable.
std::uint32_t io_poll(unsigned worker, bool idle) noexcept;

// Sleeps until io_wake(worker), a completion for this worker, or `deadline`
// (steady clock; nullptr: no deadline). A wake that arrives before the sleep
// is not lost: it makes the next io_wait return at once.
void io_wait(unsigned worker, const std::chrono::steady_clock::time_point* deadline) noexcept;
// Wakes worker `worker` from io_wait, from any thread.
void io_wake(unsigned worker) noexcept;

// "uring", "epoll", or "" before io_init.
std::string io_backend_name();

// True when no system call a worker makes for its own purposes can run the
// kernel's part of another fiber's I/O: with epoll the woken fiber makes its
// read itself; with io_uring the rings defer their task work to the
// worker's wait for completions (IORING_SETUP_DEFER_TASKRUN; io-wq threads
// are threads of their own). Without DEFER_TASKRUN, task work runs on any
// return from a system call, e.g. from a worker's UFFDIO_MOVE in the middle
// of compacting the very stack that I/O writes into. After io_init.
bool io_writes_only_while_waited() noexcept;

}  // namespace tendril::detail
