// The pthread twin of samples/common/runtime.hpp: one OS thread per task,
// blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO for timeouts.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <system_error>
#include <thread>

#include "samples/common/runtime.hpp"

namespace sample {
namespace {

[[noreturn]] void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

// A thread per connection keeps a small stack, as such servers are usually
// configured (the default 8 MiB would only reserve address space: RSS counts
// what is touched either way).
constexpr std::size_t kThreadStack = 256 * 1024;

}  // namespace

const char* runtime_name() noexcept { return "pthread"; }

std::string fiber_dump() { return {}; }

Stream::Stream(Stream&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}
Stream::~Stream() { close(); }

Stream Stream::connect(const std::string& host, std::uint16_t port, Millis timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string what = "connect to " + host + ":" + std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    throw std::runtime_error(what + ": " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw_errno(errno, what + ": socket");
  Stream s(fd);
  if (::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) throw_errno(errno, what);
    pollfd p{fd, POLLOUT, 0};
    int r;
    while ((r = ::poll(&p, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
    }
    if (r == 0) throw_errno(ETIMEDOUT, what);
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) throw_errno(err, what);
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return s;
}

std::size_t Stream::read(void* buf, std::size_t n) {
  for (;;) {
    const ssize_t r = ::recv(fd_, buf, n, 0);
    if (r >= 0) return static_cast<std::size_t>(r);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) throw_errno(ETIMEDOUT, "read");
    throw_errno(errno, "read");
  }
}

std::size_t Stream::read(void* buf, std::size_t n, std::error_code& ec) noexcept {
  ec.clear();
  for (;;) {
    const ssize_t r = ::recv(fd_, buf, n, 0);
    if (r >= 0) return static_cast<std::size_t>(r);
    if (errno == EINTR) continue;
    ec = std::error_code(errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno, std::generic_category());
    return 0;
  }
}

void Stream::wait_readable(std::error_code& ec) noexcept {
  ec.clear();
  for (;;) {
    char c;
    // A peek waits as a read does (SO_RCVTIMEO, shutdown) and takes nothing.
    if (::recv(fd_, &c, 1, MSG_PEEK) >= 0) return;
    if (errno == EINTR) continue;
    ec = std::error_code(errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno, std::generic_category());
    return;
  }
}

void Stream::write_all(const void* buf, std::size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t r = ::send(fd_, p, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) throw_errno(ETIMEDOUT, "write");
      throw_errno(errno, "write");
    }
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

void Stream::set_timeout(Millis timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void Stream::set_nodelay() {
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void Stream::close() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}
void Stream::shutdown() noexcept {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}
bool Stream::is_open() const noexcept { return fd_ >= 0; }

Listener::Listener(Listener&& o) noexcept : fd_(std::exchange(o.fd_, -1)), closed_(std::move(o.closed_)) {}
Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    closed_ = std::move(o.closed_);
  }
  return *this;
}
Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Listener Listener::bind(const std::string& host, std::uint16_t port, int backlog) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST;
  addrinfo* res = nullptr;
  const std::string what = "listen on " + host + ":" + std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    throw std::runtime_error(what + ": " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
  Listener l;
  l.fd_ = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l.fd_ < 0) throw_errno(errno, what + ": socket");
  int one = 1;
  ::setsockopt(l.fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(l.fd_, res->ai_addr, res->ai_addrlen) != 0) throw_errno(errno, what + ": bind");
  if (::listen(l.fd_, backlog) != 0) throw_errno(errno, what + ": listen");
  l.closed_ = std::make_shared<std::atomic<bool>>(false);
  return l;
}

std::optional<Stream> Listener::accept() {
  static ThrottledReport report;
  for (;;) {
    if (closed_->load()) return std::nullopt;
    const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return Stream(fd);
    const int err = errno;
    if (closed_->load()) return std::nullopt;
    if (err == EINTR || err == ECONNABORTED) continue;
    report(std::string("accept: ") + std::strerror(err) + " (retrying)");
    sleep_for(Millis(10));
  }
}

std::uint16_t Listener::port() const {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
  return a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port)
                                 : ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
}

void Listener::close() noexcept {
  if (!closed_ || closed_->exchange(true)) return;
  ::shutdown(fd_, SHUT_RDWR);  // wakes a thread blocked in accept
}

void go(std::function<void()> fn) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kThreadStack);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  auto* heap = new std::function<void()>(std::move(fn));
  pthread_t t;
  const int rc = pthread_create(
      &t, &attr,
      [](void* p) -> void* {
        std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(p));
        (*f)();
        return nullptr;
      },
      heap);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    delete heap;
    throw_errno(rc, "pthread_create");
  }
}

CallScope::CallScope(std::chrono::steady_clock::time_point deadline) : deadline_(deadline) {}
CallScope::~CallScope() = default;

void CallScope::go(std::function<void()> fn) {
  pending_->add(1);
  try {
    sample::go([pending = pending_, fn = std::move(fn)] {
      try {
        fn();
      } catch (...) {
        // Dropped, as on tendril.
      }
      pending->done();
    });
  } catch (...) {
    pending_->done();
    throw;
  }
}

void CallScope::wait() { pending_->wait_until(deadline_); }

void sleep_for(Millis d) { std::this_thread::sleep_for(d); }

void on_worker_stack_impl(void (*fn)(void*), void* arg) { fn(arg); }

void serve(unsigned /*workers*/, const std::function<void(StopToken&)>& main) {
  auto stop = std::make_shared<StopToken>();
  std::thread([stop] {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    int sig = 0;
    while (sigwait(&s, &sig) != 0) {
    }
    stop->request_stop();
  }).detach();
  main(*stop);
}

}  // namespace sample
