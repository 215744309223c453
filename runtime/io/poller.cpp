// The scheduler-facing poller (see poller.hpp): chooses the backend at
// io_init() and routes every call to the calling worker's io_uring or epoll
// instance.
//
// Choice: TENDRIL_IO / Options::io_backend "uring" or "epoll" forces one; ""
// probes io_uring (a throw-away ring with the flags the workers will use) and
// falls back to epoll when the kernel refuses (ENOSYS, EPERM, io_uring_disabled)
// with one line on stderr. A forced "uring" that the kernel refuses also falls
// back, saying so: running beats refusing to start.
//
// Each worker's ring is created on its own thread in io_thread_init (a ring
// with IORING_SETUP_SINGLE_ISSUER belongs to the thread that made it). If that
// fails for one worker, that worker alone runs epoll; operations dispatch on
// the backend of the worker they run on, so mixing is safe. If epoll fails
// too, run() throws std::system_error (see Scheduler::start).
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "runtime/io/io_internal.hpp"
#include "runtime/io/poller.hpp"

namespace tendril::detail {

namespace {

// Written once by the worker's own thread in io_thread_init; read by io_wake
// from any thread (which may run before the worker has started), so atomic.
struct alignas(64) WorkerIo {
  IoKind kind = IoKind::none;  // owner thread only
  std::atomic<UringWorker*> uring{nullptr};
  std::atomic<EpollWorker*> epoll{nullptr};
};

IoKind g_kind = IoKind::none;
unsigned g_uring_flags = 0;
unsigned g_workers = 0;
std::unique_ptr<WorkerIo[]> g_io;

bool uring_disabled_by_sysctl() noexcept {
  const int fd = ::open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char c = '0';
  const bool disabled = ::read(fd, &c, 1) == 1 && c != '0';
  ::close(fd);
  return disabled;
}

IoKind choose_backend(const std::string& wanted) {
  if (wanted == "epoll") return IoKind::epoll;
  const char* why = nullptr;
  int err = 0;
  if (uring_disabled_by_sysctl()) {
    why = "disabled by /proc/sys/kernel/io_uring_disabled";
  } else if (!uring_probe(&g_uring_flags, &err)) {
    why = std::strerror(err);
  }
  if (why == nullptr) return IoKind::uring;
  std::fprintf(stderr, "tendril: io_uring unavailable (%s); using epoll\n", why);
  return IoKind::epoll;
}

}  // namespace

void io_init(const IoConfig& config) {
  g_workers = config.workers;
  g_io = std::make_unique<WorkerIo[]>(config.workers);
  g_kind = choose_backend(config.backend);
  blocking_set_thread_limit(config.blocking_threads);
}

void io_shutdown() noexcept {
  // An offloaded call that finishes now still readies its (abandoned) fiber
  // and may poke a worker: let those finish before the wake-up descriptors go.
  blocking_pool_quiesce();
  // Workers have stopped: nobody else calls io_wake any more.
  for (unsigned i = 0; g_io && i < g_workers; ++i) {
    if (UringWorker* u = g_io[i].uring.load()) uring_worker_close_wake(u);
    if (EpollWorker* e = g_io[i].epoll.load()) epoll_worker_destroy(e);
  }
  epoll_table_reset();
  g_io.reset();
  g_workers = 0;
  g_kind = IoKind::none;
}

int io_thread_init(unsigned worker) noexcept {
  WorkerIo& w = g_io[worker];
  int err = 0;
  if (g_kind == IoKind::uring) {
    if (UringWorker* u = uring_worker_create(g_uring_flags, &err)) {
      w.kind = IoKind::uring;
      w.uring.store(u, std::memory_order_release);
      return 0;
    }
    std::fprintf(stderr, "tendril: worker %u: io_uring setup failed (%s); using epoll\n", worker,
                 std::strerror(err));
  }
  if (EpollWorker* e = epoll_worker_create(&err)) {
    w.kind = IoKind::epoll;
    w.epoll.store(e, std::memory_order_release);
    return 0;
  }
  return err;  // without a poller the worker cannot even sleep: run() fails
}

void io_thread_exit(unsigned worker) noexcept {
  WorkerIo& w = g_io[worker];
  if (UringWorker* u = w.uring.load()) uring_worker_destroy(u);  // the wake fd stays until io_shutdown
}

std::uint32_t io_poll(unsigned worker, bool idle) noexcept {
  WorkerIo& w = g_io[worker];
  return w.kind == IoKind::uring ? uring_poll(w.uring.load(std::memory_order_relaxed), idle)
                                 : epoll_poll(w.epoll.load(std::memory_order_relaxed), idle);
}

void io_wait(unsigned worker, const std::chrono::steady_clock::time_point* deadline) noexcept {
  WorkerIo& w = g_io[worker];
  if (w.kind == IoKind::uring) {
    uring_wait(w.uring.load(std::memory_order_relaxed), deadline);
  } else {
    epoll_wait_for(w.epoll.load(std::memory_order_relaxed), deadline);
  }
}

void io_wake(unsigned worker) noexcept {
  WorkerIo& w = g_io[worker];
  if (UringWorker* u = w.uring.load(std::memory_order_acquire)) {
    uring_wake(u);
  } else if (EpollWorker* e = w.epoll.load(std::memory_order_acquire)) {
    epoll_wake(e);
  }
  // Not initialised yet (a wake during start-up): the worker looks for work
  // before it ever sleeps.
}

std::string io_backend_name() {
  switch (g_kind) {
    case IoKind::uring: return "uring";
    case IoKind::epoll: return "epoll";
    default: return "";
  }
}

bool io_writes_only_while_waited() noexcept {
  return g_kind == IoKind::epoll || (g_kind == IoKind::uring && (g_uring_flags & IORING_SETUP_DEFER_TASKRUN) != 0);
}

IoKind worker_io_kind(unsigned index) noexcept {
  return g_io && index < g_workers ? g_io[index].kind : IoKind::none;
}
UringWorker* worker_uring(unsigned index) noexcept {
  return g_io[index].uring.load(std::memory_order_relaxed);
}
EpollWorker* worker_epoll(unsigned index) noexcept {
  return g_io[index].epoll.load(std::memory_order_relaxed);
}

}  // namespace tendril::detail
