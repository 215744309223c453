// tendril::net: TCP and UDP sockets whose calls park the calling fiber.
//
//   tendril::run([] {
//     auto listener = tendril::net::TcpListener::bind("127.0.0.1", 0);
//     const std::uint16_t port = listener.local_port();
//     tendril::spawn([&listener] {
//       tendril::net::TcpStream s = listener.accept();
//       char buf[64];
//       while (std::size_t n = s.read(buf, sizeof buf)) s.write_all(buf, n);  // echo
//     }).detach();
//     auto c = tendril::net::TcpStream::connect("localhost", port, std::chrono::seconds(1));
//     c.write_all("ping", 4);
//     char reply[4];
//     c.read_exact(reply, 4);
//   });
//
// Sockets are nonblocking and close-on-exec; the types are move-only and close
// their descriptor when destroyed. Each I/O call parks only the calling fiber
// (io_uring or epoll, see <tendril/io.hpp>); from a plain thread it blocks
// that thread.
//
// Hosts: IPv4 and IPv6 literals ("127.0.0.1", "::1", "[::1]"), "" or
// "0.0.0.0" (any IPv4 address; "::" for any IPv6 address, dual-stack), and
// names ("localhost"), resolved with getaddrinfo on the tendril::blocking()
// pool; connect tries each address in turn.
//
// Errors throw std::system_error whose what() names the operation and the
// peer, e.g. "tendril::net::TcpStream::read from 127.0.0.1:5000: Connection
// reset by peer". A timeout is std::errc::timed_out; a refused connection
// std::errc::connection_refused; a name that does not resolve has the
// net::resolve_category() and names the host; running out of descriptors is
// EMFILE/ENFILE on that accept or connect (the listener keeps working).
// read_exact() at an early end of stream throws std::errc::no_message_available.
//
// Timeouts: set_timeout(d) bounds each later read or write call (for
// read_exact/write_all: each underlying transfer, so a large transfer that
// keeps making progress does not time out); zero means none. A timed-out read
// transferred nothing: the operation was cancelled before it returned.
//
// Cancellation: in a tendril::Scope every call that waits (connect, accept,
// read, write, send, recv) is a cancellation point, with the rules of
// <tendril/io.hpp>: operation_canceled once the scope is cancelled, timed_out
// past its deadline, the operation cancelled in the kernel, data received
// never lost, the socket usable afterwards; set_timeout() and connect's
// timeout combine with the scope's deadline (the earlier wins). The
// error_code overload of read() reports the cancel in its `ec`. close() is
// not a cancellation point: it always waits for the calls it wakes. Name
// resolution runs on the blocking() pool and is cancelled as blocking() is.
//
// close() may be called while other fibers are blocked on the same socket:
// their calls throw std::errc::operation_canceled, and close() returns once
// they have all left (it shuts the socket down to wake them).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

namespace tendril::net {

// A host (numeric address) and port, as reported for peers.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  // "127.0.0.1:80", "[::1]:80".
  std::string to_string() const;
};

// The category of name-resolution failures (getaddrinfo's EAI_* codes).
const std::error_category& resolve_category() noexcept;

namespace detail {
// A socket descriptor that counts the calls in progress on it, so close() can
// wake them and wait for them to leave before the number is released (and
// maybe reused by another socket).
class SocketFd {
 public:
  SocketFd() noexcept = default;
  explicit SocketFd(int fd) noexcept : fd_(fd) {}
  SocketFd(SocketFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  SocketFd& operator=(SocketFd&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      closing_.store(false, std::memory_order_relaxed);
    }
    return *this;
  }
  ~SocketFd() { close(); }

  int get() const noexcept { return fd_; }
  // Registers a call in progress; false if the socket is closed or closing.
  bool enter() noexcept;
  void leave() noexcept { users_.fetch_sub(1, std::memory_order_seq_cst); }
  bool closing() const noexcept { return closing_.load(std::memory_order_seq_cst); }
  void close() noexcept;

 private:
  int fd_ = -1;
  std::atomic<std::uint32_t> users_{0};
  std::atomic<bool> closing_{false};
};

// Room for a sockaddr_in or sockaddr_in6.
struct SockAddr {
  alignas(8) unsigned char bytes[28] = {};
  std::uint32_t len = 0;
};
}  // namespace detail

class TcpStream {
 public:
  // Connects to host:port, trying each resolved address in turn; with a
  // timeout, the connection attempts together must finish within it (name
  // resolution on the blocking pool is not bounded by it).
  static TcpStream connect(const std::string& host, std::uint16_t port);
  static TcpStream connect(const std::string& host, std::uint16_t port,
                           std::chrono::nanoseconds timeout);

  TcpStream() noexcept = default;  // not connected
  TcpStream(TcpStream&&) noexcept = default;
  TcpStream& operator=(TcpStream&&) noexcept = default;

  // Reads up to n bytes, at least one; 0 at end of stream.
  std::size_t read(void* buf, std::size_t n);
  // The same, but an error (reset, timeout, close() from another fiber, not
  // connected) is reported in `ec`, with 0 returned, instead of thrown: for a
  // server loop whose connections end in resets as a matter of course.
  // Unwinding an exception takes several KiB of stack, which each of
  // thousands of connection fibers would then keep mapped.
  std::size_t read(void* buf, std::size_t n, std::error_code& ec) noexcept;
  // Waits until a read would not wait (data, end of stream, an error, or
  // close() from another fiber), consuming nothing; the timeout and errors
  // are reported in `ec` as for read(). For a server loop over many idle
  // connections: a connection that waits here, outside the frame that holds
  // its read buffer, keeps less of its stack live while it is idle, which is
  // what idle-stack compaction keeps (Options::compact_after):
  //
  //   for (std::error_code ec; s.wait_readable(ec), !ec;)
  //     if (!serve_what_arrived(s)) break;  // reads into its own buffer
  void wait_readable(std::error_code& ec) noexcept;
  // Writes up to n bytes, at least one, and returns how many.
  std::size_t write(const void* buf, std::size_t n);
  void read_exact(void* buf, std::size_t n);
  void write_all(const void* buf, std::size_t n);

  void set_timeout(std::chrono::nanoseconds timeout) noexcept { timeout_ns_ = timeout.count(); }
  void set_nodelay(bool on);
  // Sends FIN: the peer reads end of stream; this side can still read.
  void shutdown_write();
  void close() noexcept { sock_.close(); }

  bool is_open() const noexcept { return sock_.get() >= 0; }
  int native_handle() const noexcept { return sock_.get(); }
  Endpoint peer() const;
  Endpoint local() const;

 private:
  friend class TcpListener;
  TcpStream(int fd, const detail::SockAddr& peer) noexcept : sock_(fd), peer_(peer) {}

  detail::SocketFd sock_;
  detail::SockAddr peer_;
  std::int64_t timeout_ns_ = 0;
};

class TcpListener {
 public:
  // Listens on host:port (port 0: the kernel picks; see local_port()).
  static TcpListener bind(const std::string& host, std::uint16_t port, int backlog = 4096);

  TcpListener() noexcept = default;
  TcpListener(TcpListener&&) noexcept = default;
  TcpListener& operator=(TcpListener&&) noexcept = default;

  TcpStream accept();
  TcpStream accept(std::chrono::nanoseconds timeout);
  std::uint16_t local_port() const;
  void close() noexcept { sock_.close(); }
  bool is_open() const noexcept { return sock_.get() >= 0; }
  int native_handle() const noexcept { return sock_.get(); }

 private:
  TcpStream accept_until(std::int64_t timeout_ns);

  detail::SocketFd sock_;
  detail::SockAddr local_;
};

class UdpSocket {
 public:
  // A socket bound to host:port (port 0: any). Its address family (IPv4 or
  // IPv6) is the bound address's; peers must be reachable in that family.
  static UdpSocket bind(const std::string& host, std::uint16_t port);

  UdpSocket() noexcept = default;
  UdpSocket(UdpSocket&&) noexcept = default;
  UdpSocket& operator=(UdpSocket&&) noexcept = default;

  // Optional: fixes the peer for send()/recv() and filters what arrives.
  void connect(const std::string& host, std::uint16_t port);
  std::size_t send_to(const void* buf, std::size_t n, const std::string& host, std::uint16_t port);
  std::size_t send_to(const void* buf, std::size_t n, const Endpoint& to) {
    return send_to(buf, n, to.host, to.port);
  }
  std::size_t send(const void* buf, std::size_t n);
  // Receives one datagram (truncated to n bytes); the sender goes to *peer.
  std::size_t recv_from(void* buf, std::size_t n, Endpoint* peer = nullptr);
  std::size_t recv(void* buf, std::size_t n) { return recv_from(buf, n, nullptr); }

  void set_timeout(std::chrono::nanoseconds timeout) noexcept { timeout_ns_ = timeout.count(); }
  std::uint16_t local_port() const;
  void close() noexcept { sock_.close(); }
  bool is_open() const noexcept { return sock_.get() >= 0; }
  int native_handle() const noexcept { return sock_.get(); }

 private:
  detail::SocketFd sock_;
  int family_ = 0;
  std::int64_t timeout_ns_ = 0;
};

}  // namespace tendril::net
