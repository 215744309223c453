// tendril::net: sockets on top of io_perform() (see include/tendril/net.hpp).
#include "tendril/net.hpp"
#include "runtime/inject/fault_inject.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "runtime/io/io_internal.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/blocking.hpp"
#include "tendril/fiber.hpp"
#include "tendril/scope.hpp"

namespace tendril::net {

namespace {

namespace rt = ::tendril::detail;
using detail::SockAddr;

class ResolveCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "getaddrinfo"; }
  std::string message(int code) const override { return ::gai_strerror(code); }
};

[[noreturn]] void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

const sockaddr* as_sockaddr(const SockAddr& a) noexcept {
  return reinterpret_cast<const sockaddr*>(a.bytes);
}
sockaddr* as_sockaddr(SockAddr& a) noexcept { return reinterpret_cast<sockaddr*>(a.bytes); }

Endpoint to_endpoint(const SockAddr& a) {
  char text[INET6_ADDRSTRLEN] = "?";
  Endpoint e;
  const sockaddr* sa = as_sockaddr(a);
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    e.port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    e.port = ntohs(in6->sin6_port);
  }
  e.host = text;
  return e;
}

std::string host_port(const std::string& host, std::uint16_t port) {
  Endpoint e{host, port};
  return e.to_string();
}

// Fills `out` from a numeric host; false if `host` is not a literal. An IPv4
// literal for an IPv6 socket becomes the v4-mapped address.
bool parse_literal(const std::string& host, std::uint16_t port, int family, SockAddr& out) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h.empty()) h = family == AF_INET6 ? "::" : "0.0.0.0";
  in_addr v4{};
  in6_addr v6{};
  const bool is_v4 = ::inet_pton(AF_INET, h.c_str(), &v4) == 1;
  const bool is_v6 = !is_v4 && ::inet_pton(AF_INET6, h.c_str(), &v6) == 1;
  if (!is_v4 && !is_v6) return false;
  out = SockAddr{};
  if (is_v4 && family != AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in*>(out.bytes);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    in->sin_addr = v4;
    out.len = sizeof(sockaddr_in);
    return true;
  }
  if (is_v4) {  // ::ffff:a.b.c.d
    std::memset(&v6, 0, sizeof(v6));
    v6.s6_addr[10] = v6.s6_addr[11] = 0xff;
    std::memcpy(&v6.s6_addr[12], &v4, 4);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out.bytes);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  in6->sin6_addr = v6;
  out.len = sizeof(sockaddr_in6);
  return true;
}

// getaddrinfo on the blocking pool (it may take seconds on a bad network).
// The call owns copies of what it uses: a cancelled caller stops waiting while
// getaddrinfo runs on.
std::vector<SockAddr> lookup(const std::string& host, std::uint16_t port, int socktype, int family,
                             const std::string& what) {
  return tendril::blocking([host, port, socktype, family, what] {
    addrinfo hints{};
    hints.ai_family = family;
    hints.ai_socktype = socktype;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
    if (rc == EAI_SYSTEM) throw_errno(errno, what);
    if (rc != 0) throw std::system_error(rc, resolve_category(), what);
    std::vector<SockAddr> out;
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      if (ai->ai_addrlen > sizeof(SockAddr::bytes)) continue;
      SockAddr a;
      std::memcpy(a.bytes, ai->ai_addr, ai->ai_addrlen);
      a.len = ai->ai_addrlen;
      auto* sa = as_sockaddr(a);
      if (sa->sa_family == AF_INET) reinterpret_cast<sockaddr_in*>(sa)->sin_port = htons(port);
      if (sa->sa_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(sa)->sin6_port = htons(port);
      out.push_back(a);
    }
    ::freeaddrinfo(res);
    if (out.empty()) throw std::system_error(EAI_NONAME, resolve_category(), what);
    return out;
  });
}

std::vector<SockAddr> resolve(const std::string& host, std::uint16_t port, int socktype, int family,
                              const std::string& what) {
  SockAddr lit;
  if (parse_literal(host, port, family, lit)) return {lit};
  return lookup(host, port, socktype, family, what);
}

int new_socket(int family, int type, const std::string& what) {
  int fd;
  if (const int e = ::tendril::detail::injected_fault(::tendril::detail::FaultPoint::socket)) {
    errno = e;
    fd = -1;
  } else {
    fd = ::socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  }
  if (fd < 0) throw_errno(errno, what);
  return fd;
}

SockAddr sock_name(int fd) {
  SockAddr a;
  socklen_t len = sizeof(a.bytes);
  if (::getsockname(fd, as_sockaddr(a), &len) == 0) a.len = len;
  return a;
}

std::uint16_t port_of(const SockAddr& a) { return to_endpoint(a).port; }

rt::Deadline deadline_after(std::int64_t ns) {
  return std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
}

// Runs one request on a socket with its timeout: the result, or -errno.
// *started (if given) tells whether the call reached the socket; if not, the
// socket was not open (-EBADF) or already closing (-ECANCELED). A close() that
// races with the call turns its result into -ECANCELED.
long perform_on_socket(detail::SocketFd& s, rt::IoRequest& r, std::int64_t timeout_ns, bool* started) noexcept {
  if (started != nullptr) *started = false;
  if (s.get() < 0) return -EBADF;
  if (!s.enter()) return -ECANCELED;
  if (started != nullptr) *started = true;
  r.fd = s.get();
  rt::Deadline d;
  if (timeout_ns > 0) d = deadline_after(timeout_ns);
  long res = rt::io_perform(r, timeout_ns > 0 ? &d : nullptr);
  if (s.closing()) res = -ECANCELED;
  s.leave();
  return res;
}

// perform_on_socket, throwing: an error names the operation, and the peer
// (describe(ctx)) once the call reached the socket.
long socket_op(detail::SocketFd& s, rt::IoRequest& r, std::int64_t timeout_ns, const char* op,
               const std::string& (*describe)(const void*), const void* ctx) {
  bool started = false;
  const long res = perform_on_socket(s, r, timeout_ns, &started);
  if (res >= 0) return res;
  if (!started) throw_errno(static_cast<int>(-res), op);
  throw_errno(static_cast<int>(-res), describe(ctx));
}

// Large transfers go in pieces the kernel accepts in one call.
constexpr std::size_t kMaxChunk = 0x7ffff000;

}  // namespace

std::string Endpoint::to_string() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

const std::error_category& resolve_category() noexcept {
  static const ResolveCategory category;
  return category;
}

// ---- SocketFd ----

bool detail::SocketFd::enter() noexcept {
  users_.fetch_add(1, std::memory_order_seq_cst);
  if (!closing_.load(std::memory_order_seq_cst)) return true;
  users_.fetch_sub(1, std::memory_order_seq_cst);
  return false;
}

void detail::SocketFd::close() noexcept {
  if (fd_ < 0 || closing_.exchange(true, std::memory_order_seq_cst)) return;
  if (users_.load(std::memory_order_seq_cst) != 0) {
    // Wake the calls in progress: shutdown makes blocked reads, writes and
    // accepts return on either backend (and on every worker's ring), and the
    // cancel hurries along any request on this worker's ring.
    ::shutdown(fd_, SHUT_RDWR);
    if (rt::Worker* w = rt::current_worker(); w != nullptr && w->current() != nullptr &&
                                              rt::worker_io_kind(w->index()) == rt::IoKind::uring)
      rt::uring_cancel_fd(rt::worker_uring(w->index()), fd_);
    // Not a cancellation point: close() must not return before they left.
    const tendril::this_fiber::NoCancel no_cancel;
    while (users_.load(std::memory_order_seq_cst) != 0)
      tendril::this_fiber::sleep_for(std::chrono::microseconds(50));
  }
  ::close(fd_);
  fd_ = -1;
}

// ---- TcpStream ----

namespace {
struct StreamCtx {
  const char* op;
  const char* dir;
  const SockAddr* peer;
  mutable std::string text;
};
const std::string& describe_stream(const void* p) {
  const auto* c = static_cast<const StreamCtx*>(p);
  c->text = std::string("tendril::net::TcpStream::") + c->op + " " + c->dir + " " +
            to_endpoint(*c->peer).to_string();
  return c->text;
}
}  // namespace

TcpStream TcpStream::connect(const std::string& host, std::uint16_t port) {
  return connect(host, port, std::chrono::nanoseconds(0));
}

TcpStream TcpStream::connect(const std::string& host, std::uint16_t port,
                             std::chrono::nanoseconds timeout) {
  const std::string what = "tendril::net::TcpStream::connect to " + host_port(host, port);
  const bool timed = timeout.count() > 0;
  const rt::Deadline d = timed ? deadline_after(timeout.count()) : rt::Deadline{};
  int last_error = ECONNREFUSED;
  for (SockAddr& a : resolve(host, port, SOCK_STREAM, AF_UNSPEC, what)) {
    const int fd = new_socket(as_sockaddr(a)->sa_family, SOCK_STREAM, what);
    rt::IoRequest r;
    r.kind = rt::OpKind::connect;
    r.fd = fd;
    r.addr = as_sockaddr(a);
    r.addrlen_in = a.len;
    const long res = rt::io_perform(r, timed ? &d : nullptr);
    if (res == 0) return TcpStream(fd, a);
    ::close(fd);
    last_error = static_cast<int>(-res);
    if (last_error == ETIMEDOUT || last_error == ECANCELED) break;  // the time is up, or the scope's cancel
  }
  throw_errno(last_error, what);
}

std::size_t TcpStream::read(void* buf, std::size_t n) {
  if (n == 0) return 0;
  rt::IoRequest r;
  r.kind = rt::OpKind::recv;
  r.buf = buf;
  r.len = std::min(n, kMaxChunk);
  const StreamCtx ctx{"read", "from", &peer_, {}};
  return static_cast<std::size_t>(
      socket_op(sock_, r, timeout_ns_, "tendril::net::TcpStream::read", describe_stream, &ctx));
}

std::size_t TcpStream::read(void* buf, std::size_t n, std::error_code& ec) noexcept {
  ec.clear();
  if (n == 0) return 0;
  rt::IoRequest r;
  r.kind = rt::OpKind::recv;
  r.buf = buf;
  r.len = std::min(n, kMaxChunk);
  const long res = perform_on_socket(sock_, r, timeout_ns_, nullptr);
  if (res >= 0) return static_cast<std::size_t>(res);
  ec = std::error_code(static_cast<int>(-res), std::generic_category());
  return 0;
}

void TcpStream::wait_readable(std::error_code& ec) noexcept {
  ec.clear();
  rt::IoRequest r;
  r.kind = rt::OpKind::poll;
  r.events = POLLIN | POLLRDHUP;
  r.reason = WaitReason::net_read;  // what the fiber dump shows: it waits to read
  const long res = perform_on_socket(sock_, r, timeout_ns_, nullptr);
  if (res < 0) ec = std::error_code(static_cast<int>(-res), std::generic_category());
}

std::size_t TcpStream::write(const void* buf, std::size_t n) {
  if (n == 0) return 0;
  rt::IoRequest r;
  r.kind = rt::OpKind::send;
  r.buf = const_cast<void*>(buf);
  r.len = std::min(n, kMaxChunk);
  const StreamCtx ctx{"write", "to", &peer_, {}};
  return static_cast<std::size_t>(
      socket_op(sock_, r, timeout_ns_, "tendril::net::TcpStream::write", describe_stream, &ctx));
}

void TcpStream::read_exact(void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  for (std::size_t done = 0; done < n;) {
    const std::size_t got = read(p + done, n - done);
    if (got == 0) {
      throw_errno(ENODATA, "tendril::net::TcpStream::read_exact from " + peer().to_string() +
                               ": end of stream after " + std::to_string(done) + " of " +
                               std::to_string(n) + " bytes");
    }
    done += got;
  }
}

void TcpStream::write_all(const void* buf, std::size_t n) {
  const auto* p = static_cast<const char*>(buf);
  for (std::size_t done = 0; done < n;) done += write(p + done, n - done);
}

void TcpStream::set_nodelay(bool on) {
  const int v = on ? 1 : 0;
  if (::setsockopt(sock_.get(), IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) != 0)
    throw_errno(errno, "tendril::net::TcpStream::set_nodelay on " + peer().to_string());
}

void TcpStream::shutdown_write() {
  if (::shutdown(sock_.get(), SHUT_WR) != 0)
    throw_errno(errno, "tendril::net::TcpStream::shutdown_write to " + peer().to_string());
}

Endpoint TcpStream::peer() const { return to_endpoint(peer_); }
Endpoint TcpStream::local() const { return to_endpoint(sock_name(sock_.get())); }

// ---- TcpListener ----

TcpListener TcpListener::bind(const std::string& host, std::uint16_t port, int backlog) {
  const std::string what = "tendril::net::TcpListener::bind to " + host_port(host, port);
  std::vector<SockAddr> addrs = resolve(host, port, SOCK_STREAM, AF_UNSPEC, what);
  SockAddr& a = addrs.front();
  const int family = as_sockaddr(a)->sa_family;
  TcpListener l;
  l.sock_ = detail::SocketFd(new_socket(family, SOCK_STREAM, what));
  const int fd = l.sock_.get();
  const int one = 1, zero = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  if (::bind(fd, as_sockaddr(a), a.len) != 0 || ::listen(fd, backlog) != 0) throw_errno(errno, what);
  l.local_ = sock_name(fd);
  return l;
}

namespace {
const std::string& describe_accept(const void* p) {
  const auto* c = static_cast<const StreamCtx*>(p);
  c->text = "tendril::net::TcpListener::accept on " + to_endpoint(*c->peer).to_string();
  return c->text;
}
}  // namespace

TcpStream TcpListener::accept() { return accept_until(0); }
TcpStream TcpListener::accept(std::chrono::nanoseconds timeout) {
  return accept_until(timeout.count() > 0 ? timeout.count() : 1);
}

TcpStream TcpListener::accept_until(std::int64_t timeout_ns) {
  SockAddr peer;
  socklen_t len = sizeof(peer.bytes);
  rt::IoRequest r;
  r.kind = rt::OpKind::accept;
  r.addr = as_sockaddr(peer);
  r.addrlen = &len;
  const StreamCtx ctx{"accept", "on", &local_, {}};
  const long fd =
      socket_op(sock_, r, timeout_ns, "tendril::net::TcpListener::accept", describe_accept, &ctx);
  peer.len = len;
  return TcpStream(static_cast<int>(fd), peer);
}

std::uint16_t TcpListener::local_port() const { return port_of(local_); }

// ---- UdpSocket ----

namespace {
// Built only when an error is reported.
struct UdpCtx {
  const char* op;
  const std::string* host;  // nullptr: describe by local port
  std::uint16_t port;
  int fd;
  mutable std::string text;
};
const std::string& describe_udp(const void* p) {
  const auto* c = static_cast<const UdpCtx*>(p);
  c->text = std::string("tendril::net::UdpSocket::") + c->op +
            (c->host != nullptr ? " to " + host_port(*c->host, c->port)
                                : " on port " + std::to_string(port_of(sock_name(c->fd))));
  return c->text;
}
}  // namespace

UdpSocket UdpSocket::bind(const std::string& host, std::uint16_t port) {
  const std::string what = "tendril::net::UdpSocket::bind to " + host_port(host, port);
  std::vector<SockAddr> addrs = resolve(host, port, SOCK_DGRAM, AF_UNSPEC, what);
  SockAddr& a = addrs.front();
  UdpSocket s;
  s.family_ = as_sockaddr(a)->sa_family;
  s.sock_ = detail::SocketFd(new_socket(s.family_, SOCK_DGRAM, what));
  const int zero = 0;
  if (s.family_ == AF_INET6) ::setsockopt(s.sock_.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  if (::bind(s.sock_.get(), as_sockaddr(a), a.len) != 0) throw_errno(errno, what);
  return s;
}

void UdpSocket::connect(const std::string& host, std::uint16_t port) {
  const std::string what = "tendril::net::UdpSocket::connect to " + host_port(host, port);
  std::vector<SockAddr> addrs = resolve(host, port, SOCK_DGRAM, family_, what);
  if (::connect(sock_.get(), as_sockaddr(addrs.front()), addrs.front().len) != 0)
    throw_errno(errno, what);
}

std::size_t UdpSocket::send_to(const void* buf, std::size_t n, const std::string& host,
                               std::uint16_t port) {
  const UdpCtx ctx{"send_to", &host, port, sock_.get(), {}};
  std::vector<SockAddr> addrs = resolve(host, port, SOCK_DGRAM, family_, describe_udp(&ctx));
  iovec v{const_cast<void*>(buf), n};
  msghdr m{};
  m.msg_name = as_sockaddr(addrs.front());
  m.msg_namelen = addrs.front().len;
  m.msg_iov = &v;
  m.msg_iovlen = 1;
  rt::IoRequest r;
  r.kind = rt::OpKind::sendmsg;
  r.msg = &m;
  return static_cast<std::size_t>(
      socket_op(sock_, r, timeout_ns_, "tendril::net::UdpSocket::send_to", describe_udp, &ctx));
}

std::size_t UdpSocket::send(const void* buf, std::size_t n) {
  rt::IoRequest r;
  r.kind = rt::OpKind::send;
  r.buf = const_cast<void*>(buf);
  r.len = n;
  const UdpCtx ctx{"send", nullptr, 0, sock_.get(), {}};
  return static_cast<std::size_t>(
      socket_op(sock_, r, timeout_ns_, "tendril::net::UdpSocket::send", describe_udp, &ctx));
}

std::size_t UdpSocket::recv_from(void* buf, std::size_t n, Endpoint* peer) {
  SockAddr from;
  iovec v{buf, n};
  msghdr m{};
  m.msg_name = as_sockaddr(from);
  m.msg_namelen = sizeof(from.bytes);
  m.msg_iov = &v;
  m.msg_iovlen = 1;
  rt::IoRequest r;
  r.kind = rt::OpKind::recvmsg;
  r.msg = &m;
  const UdpCtx ctx{"recv_from", nullptr, 0, sock_.get(), {}};
  const long got =
      socket_op(sock_, r, timeout_ns_, "tendril::net::UdpSocket::recv_from", describe_udp, &ctx);
  from.len = m.msg_namelen;
  if (peer != nullptr) *peer = to_endpoint(from);
  return static_cast<std::size_t>(got);
}

std::uint16_t UdpSocket::local_port() const { return port_of(sock_name(sock_.get())); }

}  // namespace tendril::net
