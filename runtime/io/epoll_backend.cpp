// The epoll backend: one epoll instance and one wake-up eventfd per worker.
//
// Fibers try the nonblocking syscall first (ops.cpp); on EAGAIN they wait here
// for readiness. Waiting fibers are kept per descriptor in a global table
// (FdEntry: readers and writers, each a WaitQueue under the entry's SpinLock),
// because two fibers may wait on one fd (a reader and a writer) and an epoll
// instance holds one registration per fd. The fd is registered EPOLLONESHOT
// with the union of what its waiters want, in the epoll of the worker that
// first waited on it; whichever worker reaps the event wakes the waiters and
// re-arms for those still waiting.
//
// Registrations are re-armed with EPOLL_CTL_MOD and added on ENOENT, so a
// descriptor number that was closed and reused (which drops the old
// registration in the kernel) just registers again. Level-triggered one-shot
// arming reports readiness that arrived between the EAGAIN and the MOD, so no
// wake-up is lost; spurious ones only cost a retry.
//
// Reaping never blocks on an entry's lock: a fiber parking on this very
// worker holds that lock until its switch-out is complete, and the switch-out
// itself polls (pick_next -> io_poll). An event whose entry is busy is kept in
// `deferred` and dispatched at the next poll or wait.
//
// Timeouts: the waiter parks with a deadline (detail::park); the timer and the
// event race through claim() on the Waiter, and a waiter that timed out unlinks
// itself under the entry's lock and takes its interest out of the
// registration. A fiber in a tendril::Scope parks interruptibly: the scope's
// deadline is one more deadline, and cancel() claims the Waiter as the timer
// would, so the same path ends the wait. Nothing was read yet: the data stays
// readable for a later call.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <new>
#include <vector>

#include "runtime/inject/fault_inject.hpp"
#include "runtime/io/io_internal.hpp"
#include "runtime/sched/scheduler.hpp"

namespace tendril::detail {

struct EpollWorker {
  int epfd = -1;
  int wake_fd = -1;
  // Events whose entry lock was busy when they were reaped (see
  // dispatch_fd_event); owner thread only.
  std::vector<epoll_event> deferred;
  alignas(64) std::atomic<bool> wake_pending{false};
};

namespace {

constexpr std::uint64_t kWakeTag = ~std::uint64_t{0};
constexpr int kMaxEvents = 128;

struct FdEntry {
  SpinLock lock;
  WaitQueue readers;
  WaitQueue writers;
  int epfd = -1;  // the epoll this fd was last registered with
};

// Two-level table indexed by descriptor number; chunks appear on first use.
constexpr unsigned kChunkBits = 12;
constexpr unsigned kChunkSize = 1u << kChunkBits;
constexpr unsigned kChunks = 1024;  // descriptors below 4 Mi
std::atomic<FdEntry*> g_chunks[kChunks];

FdEntry* fd_entry(int fd) noexcept {
  if (fd < 0 || static_cast<unsigned>(fd) >= kChunkSize * kChunks) return nullptr;
  std::atomic<FdEntry*>& slot = g_chunks[static_cast<unsigned>(fd) >> kChunkBits];
  FdEntry* chunk = slot.load(std::memory_order_acquire);
  if (chunk == nullptr) {
    auto* fresh = new (std::nothrow) FdEntry[kChunkSize];
    if (fresh == nullptr) return nullptr;
    if (slot.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
      chunk = fresh;
    } else {
      delete[] fresh;  // another thread installed one first
    }
  }
  return &chunk[static_cast<unsigned>(fd) & (kChunkSize - 1)];
}

// Requires ent.lock. Registers the interest of every waiter still queued.
int arm(FdEntry& ent, int epfd, int fd) noexcept {
  epoll_event ev{};
  ev.events = EPOLLONESHOT;
  if (!ent.readers.empty()) ev.events |= EPOLLIN | EPOLLRDHUP;
  if (!ent.writers.empty()) ev.events |= EPOLLOUT;
  ev.data.u64 = static_cast<std::uint64_t>(fd);
  const int target = ent.epfd >= 0 ? ent.epfd : epfd;
  if (epoll_ctl(target, EPOLL_CTL_MOD, fd, &ev) == 0) return 0;
  if (errno != ENOENT) return -errno;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
      (errno != EEXIST || epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0))
    return -errno;
  ent.epfd = epfd;
  return 0;
}

// Requires ent.lock. After a waiter gave up (timeout, scope deadline or
// cancel): the registration keeps only what the others still wait for, and
// goes when none is left, so a socket nobody waits on is not watched.
void rearm_or_deregister(FdEntry& ent, int epfd, int fd) noexcept {
  if (!ent.readers.empty() || !ent.writers.empty()) {
    arm(ent, epfd, fd);
    return;
  }
  if (ent.epfd < 0) return;
  epoll_ctl(ent.epfd, EPOLL_CTL_DEL, fd, nullptr);  // ENOENT: closed meanwhile
  ent.epfd = -1;
}

// Requires ent.lock. Moves every waiter of `q` that has not timed out to `out`.
void claim_all(WaitQueue& q, WaitQueue& out) noexcept {
  while (Waiter* w = q.claim_front()) out.push_back(*w);
}

std::uint32_t dispatch_fd_event(EpollWorker* e, int fd, std::uint32_t revents) noexcept {
  FdEntry* ent = fd_entry(fd);
  if (ent == nullptr) return 0;
  WaitQueue woken;
  if (!ent->lock.try_lock()) {
    epoll_event ev{};
    ev.events = revents;
    ev.data.u64 = static_cast<std::uint64_t>(fd);
    e->deferred.push_back(ev);
    return 0;
  }
  if (revents & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)) claim_all(ent->readers, woken);
  if (revents & (EPOLLOUT | EPOLLHUP | EPOLLERR)) claim_all(ent->writers, woken);
  if (!ent->readers.empty() || !ent->writers.empty()) arm(*ent, e->epfd, fd);
  ent->lock.unlock();
  std::uint32_t n = 0;
  while (Waiter* w = woken.pop_front()) {
    wake(*w);  // after this *w may be gone
    ++n;
  }
  return n;
}

void drain_wake_fd(EpollWorker* e) noexcept {
  std::uint64_t v;
  while (::read(e->wake_fd, &v, sizeof(v)) > 0) {
  }
}

std::uint32_t dispatch(EpollWorker* e, const epoll_event* evs, int n) noexcept {
  std::uint32_t readied = 0;
  for (int i = 0; i < n; ++i) {
    if (evs[i].data.u64 == kWakeTag) {
      drain_wake_fd(e);
    } else {
      readied += dispatch_fd_event(e, static_cast<int>(evs[i].data.u64), evs[i].events);
    }
  }
  return readied;
}

std::uint32_t dispatch_deferred(EpollWorker* e) noexcept {
  if (e->deferred.empty()) return 0;
  epoll_event evs[kMaxEvents];
  const int n = static_cast<int>(std::min<std::size_t>(e->deferred.size(), kMaxEvents));
  std::copy(e->deferred.end() - n, e->deferred.end(), evs);
  e->deferred.resize(e->deferred.size() - static_cast<std::size_t>(n));
  return dispatch(e, evs, n);
}

}  // namespace

EpollWorker* epoll_worker_create(int* error) noexcept {
  auto* e = new (std::nothrow) EpollWorker;
  if (e == nullptr) {
    *error = ENOMEM;
    return nullptr;
  }
  try {
    e->deferred.reserve(kMaxEvents);
  } catch (const std::bad_alloc&) {
    delete e;
    *error = ENOMEM;
    return nullptr;
  }
  if (const int injected = injected_fault(FaultPoint::epoll_create)) {
    *error = injected;
    epoll_worker_destroy(e);
    return nullptr;
  }
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (e->epfd >= 0 && e->wake_fd >= 0 && epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) == 0)
    return e;
  *error = errno;
  epoll_worker_destroy(e);
  return nullptr;
}

void epoll_worker_destroy(EpollWorker* e) noexcept {
  if (e->epfd >= 0) ::close(e->epfd);
  if (e->wake_fd >= 0) ::close(e->wake_fd);
  delete e;
}

std::uint32_t epoll_poll(EpollWorker* e, bool) noexcept {
  std::uint32_t readied = dispatch_deferred(e);
  epoll_event evs[kMaxEvents];
  const int n = epoll_wait(e->epfd, evs, kMaxEvents, 0);
  if (n > 0) readied += dispatch(e, evs, n);
  return readied;
}

void epoll_wait_for(EpollWorker* e, const Deadline* deadline) noexcept {
  if (e->wake_pending.exchange(false, std::memory_order_acq_rel)) return;
  if (dispatch_deferred(e) != 0 || !e->deferred.empty()) return;  // work to do, not a time to sleep
  epoll_event evs[kMaxEvents];
  timespec ts{};
  timespec* tsp = nullptr;
  if (deadline != nullptr) {
    const std::int64_t left = std::max<std::int64_t>(0, to_ticks(*deadline) - steady_ticks());
    ts = timespec{static_cast<time_t>(left / 1000000000), static_cast<long>(left % 1000000000)};
    tsp = &ts;
  }
  // epoll_pwait2 (Linux 5.11) keeps the sub-millisecond precision timers
  // promise; epoll_wait rounds up to whole milliseconds.
  int n = epoll_pwait2(e->epfd, evs, kMaxEvents, tsp, nullptr);
  if (n < 0 && errno == ENOSYS) {
    const int ms = tsp == nullptr ? -1 : static_cast<int>((ts.tv_sec * 1000000000 + ts.tv_nsec + 999999) / 1000000);
    n = epoll_wait(e->epfd, evs, kMaxEvents, ms);
  }
  if (n > 0) dispatch(e, evs, n);
}

void epoll_wake(EpollWorker* e) noexcept {
  if (e->wake_pending.exchange(true, std::memory_order_acq_rel)) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(e->wake_fd, &one, sizeof(one));
}

long epoll_wait_ready(EpollWorker* e, int fd, short events, WaitFor what, const Deadline* deadline) noexcept {
  FdEntry* ent = fd_entry(fd);
  if (ent == nullptr) return -EBADF;
  // Unlinked under ent->lock by the dispatcher that claims it (before its
  // wake) or below once the park timed out: the fiber's own will do.
  OwnWaiter own;
  Waiter& w = *own;
  WaitQueue& q = (events & POLLIN) ? ent->readers : ent->writers;
  ent->lock.lock();
  q.push_back(w);
  if (const int rc = arm(*ent, e->epfd, fd); rc < 0) {
    q.remove(w);
    ent->lock.unlock();
    return rc == -EPERM ? 0 : rc;  // EPERM: a regular file, always ready
  }
  if (park(w, ent->lock, what, deadline)) return 0;
  ent->lock.lock();
  q.remove(w);
  rearm_or_deregister(*ent, e->epfd, fd);
  ent->lock.unlock();
  return -ETIMEDOUT;
}

void epoll_table_reset() noexcept {
  for (auto& slot : g_chunks) delete[] slot.exchange(nullptr, std::memory_order_acq_rel);
}

}  // namespace tendril::detail
