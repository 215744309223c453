// tendril::net over both I/O backends: echo exactness, 10,000 concurrent
// connections, timeouts, cancellation and stack reuse, resets, half-close,
// large partial writes, accept bursts, UDP, IPv6, errors, plain threads.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "tests/park_probe.hpp"
#include "tests/scale.hpp"
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tendril::net::TcpListener;
using tendril::net::TcpStream;
using tendril::net::UdpSocket;

namespace {

class Net : public ::testing::TestWithParam<std::string> {
 protected:
  tendril::Options opts(unsigned workers = 2) const {
    tendril::Options o;
    o.workers = workers;
    o.io_backend = GetParam();
    return o;
  }
};

// Echoes every accepted connection until end of stream, each in its own fiber.
void serve_echo(TcpListener& l, int connections) {
  for (int i = 0; i < connections; ++i) {
    tendril::spawn([s = l.accept()]() mutable {
      char buf[4096];
      while (std::size_t n = s.read(buf, sizeof buf)) s.write_all(buf, n);
    }).detach();
  }
}

template <class F>
std::errc code_of(F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return static_cast<std::errc>(e.code().value());
  }
  return std::errc{};
}

// Raises RLIMIT_NOFILE (root may raise the hard limit); false if it stays below `need`.
bool ensure_nofile(rlim_t need) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_max < need) {
    rlimit want{need, need};
    if (setrlimit(RLIMIT_NOFILE, &want) != 0) return false;
  } else if (rl.rlim_cur < need) {
    rl.rlim_cur = need;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur >= need;
}

}  // namespace

TEST_P(Net, EchoRoundTripsExactBytes) {
  tendril::run(opts(), [&] {
    EXPECT_EQ(tendril::stats().io_backend, GetParam());
    auto l = TcpListener::bind("127.0.0.1", 0);
    tendril::spawn([&] { serve_echo(l, 1); }).detach();
    auto c = TcpStream::connect("127.0.0.1", l.local_port(), 5s);
    c.set_nodelay(true);
    std::mt19937 rng(42);
    for (std::size_t size : {1u, 7u, 64u, 1000u, 4096u, 65536u, 300000u}) {
      std::vector<unsigned char> out(size), in(size);
      for (auto& b : out) b = static_cast<unsigned char>(rng());
      tendril::Fiber w = tendril::spawn([&] { c.write_all(out.data(), out.size()); });
      c.read_exact(in.data(), in.size());
      w.join();
      EXPECT_EQ(in, out) << size;
    }
    EXPECT_EQ(c.peer().port, l.local_port());
    EXPECT_EQ(c.peer().host, "127.0.0.1");
  });
}

// The server end lives in this process and the client end in a forked child
// process (forked before either calls tendril::run), so this process holds
// 10,000 accepted connections at once within one descriptor limit.
namespace tenk {

// 10,000 in a normal build; under sanitizers (TSan makes every switch and
// atomic tens of times slower) the same test with fewer connections.
constexpr int kConns = static_cast<int>(stress_count(10000, 500));
constexpr rlim_t kNeedFds = 10100;
constexpr std::int64_t kConnecting = 256;   // below the listener's backlog (4096)
constexpr auto kIoTimeout = 30s;      // every accept, connect, read and write
constexpr auto kHoldDeadline = 120s;  // from the start of the server's run
constexpr auto kReapDeadline = 60s;   // for the child's exit after the server's run
constexpr unsigned kChildAlarm = 240;  // seconds: the child's last resort

// Raises the soft RLIMIT_NOFILE to the hard limit and returns it.
rlim_t raise_nofile_to_hard() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

// Connection i sends {i, size} and then `size` bytes of this pattern.
std::uint32_t payload_size(std::uint32_t i) { return 1 + (i * 7919u) % 3000u; }
unsigned char payload_byte(std::uint32_t i, std::uint32_t j) {
  return static_cast<unsigned char>((i * 2654435761u + j * 40503u) >> 11);
}
std::vector<unsigned char> payload(std::uint32_t i) {
  std::vector<unsigned char> p(payload_size(i));
  for (std::uint32_t j = 0; j < p.size(); ++j) p[j] = payload_byte(i, j);
  return p;
}

// Reads exactly n bytes from a blocking descriptor within timeout_ms.
bool read_within(int fd, void* buf, std::size_t n, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    const ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

// The client process: connects kConns streams, each does an exact echo round
// trip and then holds its connection until the server sends 'F' and closes.
// Exits 0 only if every round trip was exact; never returns into gtest.
[[noreturn]] void client_process(int port_fd, const std::string& backend) {
  ::alarm(kChildAlarm);  // SIGALRM kills the child if everything else failed
  std::uint16_t port = 0;
  if (!read_within(port_fd, &port, sizeof port, 60000)) {
    std::fprintf(stderr, "client: no port from the server\n");
    ::_exit(3);
  }
  ::close(port_fd);
  std::atomic<int> ok{0};
  std::atomic<bool> reported{false};
  try {
    tendril::Options o;
    o.workers = 2;
    o.io_backend = backend;
    tendril::run(o, [&] {
      tendril::WaitGroup done;
      done.add(kConns);
      // At most kConnecting handshakes and first round trips at once, so the
      // listener's accept queue never overflows: an overflow drops SYNs, and
      // the kernel's SYN retransmission backoff (1 s, 2 s, 4 s, ...) then
      // stretches the test from seconds to minutes on a loaded machine.
      tendril::Semaphore connecting(kConnecting);
      for (int i = 0; i < kConns; ++i) {
        tendril::spawn([&, i] {
          const char* what = "mismatch";
          bool holding = true;
          connecting.acquire();
          try {
            TcpStream c = TcpStream::connect("127.0.0.1", port, kIoTimeout);
            c.set_timeout(kIoTimeout);
            const std::vector<unsigned char> out = payload(static_cast<std::uint32_t>(i));
            const std::uint32_t hdr[2] = {static_cast<std::uint32_t>(i),
                                          static_cast<std::uint32_t>(out.size())};
            c.write_all(hdr, sizeof hdr);
            c.write_all(out.data(), out.size());
            std::vector<unsigned char> in(out.size());
            c.read_exact(in.data(), in.size());
            connecting.release();
            holding = false;
            // Hold the connection until the server says finish.
            c.set_timeout(kHoldDeadline + kIoTimeout);
            char fin = 0, extra = 0;
            c.read_exact(&fin, 1);
            const std::size_t after = c.read(&extra, 1);  // end of stream
            if (in == out && fin == 'F' && after == 0) {
              ok.fetch_add(1);
              what = nullptr;
            }
          } catch (const std::exception& e) {
            if (!reported.exchange(true)) std::fprintf(stderr, "client %d: %s\n", i, e.what());
            what = nullptr;
          }
          if (what != nullptr && !reported.exchange(true)) std::fprintf(stderr, "client %d: %s\n", i, what);
          if (holding) connecting.release();
          done.done();
        }).detach();
      }
      done.wait();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "client: %s\n", e.what());
    ::_exit(4);
  }
  if (ok.load() != kConns) std::fprintf(stderr, "client: %d of %d round trips exact\n", ok.load(), kConns);
  std::fflush(stderr);
  ::_exit(ok.load() == kConns ? 0 : 1);
}

// Kills and reaps the child unless it was reaped already.
struct ChildGuard {
  pid_t pid;
  ~ChildGuard() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
    }
  }
  // waitpid with a deadline; kills the child if it is not done by then.
  // Returns the wait status, or -1 if the child had to be killed.
  int reap(std::chrono::steady_clock::duration limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int st = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        pid = -1;
        return st;
      }
      if (r < 0 && errno != EINTR) {
        pid = -1;
        return -1;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
        pid = -1;
        return -1;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
};

}  // namespace tenk

TEST_P(Net, TenThousandConcurrentConnections) {
  using namespace tenk;
  const rlim_t fds = raise_nofile_to_hard();
  if (fds < kNeedFds) GTEST_SKIP() << "RLIMIT_NOFILE " << fds << " is below " << kNeedFds;

  int port_pipe[2];
  ASSERT_EQ(::pipe2(port_pipe, O_CLOEXEC), 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();  // before tendril::run: the child starts its own
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    ::close(port_pipe[1]);
    client_process(port_pipe[0], GetParam());
  }
  ::close(port_pipe[0]);
  ChildGuard child{pid};

  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<int> open{0}, peak{0}, echoed{0}, accepted{0}, failed{0};
  std::atomic<bool> reported{false};
  std::string first_error;  // written once, guarded by `reported`
  auto fail = [&](std::string why) {
    failed.fetch_add(1);
    if (!reported.exchange(true)) first_error = std::move(why);
  };
  tendril::run(opts(), [&] {
    const auto deadline = std::chrono::steady_clock::now() + kHoldDeadline;
    TcpListener l = TcpListener::bind("127.0.0.1", 0, 4096);
    const std::uint16_t port = l.local_port();
    const bool sent = ::write(port_pipe[1], &port, sizeof port) == static_cast<ssize_t>(sizeof port);
    ::close(port_pipe[1]);
    if (!sent) {
      fail("could not send the port to the client");
      return;
    }
    tendril::Mutex m;
    tendril::CondVar cv;
    bool release = false, abort = false;  // guarded by m
    tendril::WaitGroup served;
    for (int i = 0; i < kConns; ++i) {
      TcpStream s;
      try {
        s = l.accept(kIoTimeout);
      } catch (const std::exception& e) {
        fail("accept #" + std::to_string(i) + ": " + e.what());
        break;
      }
      accepted.fetch_add(1);
      served.add(1);
      tendril::spawn([&, s = std::move(s)]() mutable {
        const int now = open.fetch_add(1) + 1;
        for (int p = peak.load(); p < now && !peak.compare_exchange_weak(p, now);) {
        }
        try {
          s.set_timeout(kIoTimeout);
          std::uint32_t hdr[2];
          s.read_exact(hdr, sizeof hdr);
          std::vector<unsigned char> buf(hdr[1]);
          if (hdr[0] >= kConns || hdr[1] != payload_size(hdr[0])) throw std::runtime_error("bad header");
          s.read_exact(buf.data(), buf.size());
          if (buf != payload(hdr[0])) throw std::runtime_error("payload differs");
          s.write_all(buf.data(), buf.size());
          bool go;
          {
            std::unique_lock<tendril::Mutex> lk(m);
            if (echoed.fetch_add(1) + 1 == kConns) {
              release = true;  // all 10,000 are open here at once
              cv.notify_all();
            }
            if (!cv.wait_until(lk, deadline, [&] { return release; })) abort = true;
            go = !abort;
          }
          if (!go) throw std::runtime_error("not all connections were open in time");
          s.write_all("F", 1);  // the client may finish; it reads end of stream next
        } catch (const std::exception& e) {
          fail(std::string("server connection: ") + e.what());
          std::lock_guard<tendril::Mutex> g(m);
          release = abort = true;  // release the rest without 'F': the client fails too
          cv.notify_all();
        }
        s.close();
        open.fetch_sub(1);
        served.done();
      }).detach();
    }
    if (accepted.load() < kConns) {
      std::lock_guard<tendril::Mutex> g(m);
      release = abort = true;
      cv.notify_all();
    }
    served.wait();
  });
  const auto t1 = std::chrono::steady_clock::now();
  const int status = child.reap(kReapDeadline);
  const auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  std::fprintf(stderr, "note: server held %d connections at once; run %lld ms, child reaped after %lld ms more\n",
               peak.load(), static_cast<long long>(ms(t1 - t0)),
               static_cast<long long>(ms(std::chrono::steady_clock::now() - t1)));
  RecordProperty("connections", peak.load());
  EXPECT_EQ(failed.load(), 0) << first_error;
  EXPECT_EQ(accepted.load(), kConns);
  EXPECT_EQ(echoed.load(), kConns);
  EXPECT_EQ(peak.load(), kConns);  // 10,000 accepted connections open at once in this process
  EXPECT_EQ(open.load(), 0);
  ASSERT_NE(status, -1) << "the client process did not exit in time (killed)";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "client process: " << (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                                   : "signal " + std::to_string(WTERMSIG(status)));
}

// A write the socket buffer has room for completes in the calling fiber,
// without parking it (both backends try the nonblocking call first), so a
// server's response does not cost a trip through the run queue.
TEST_P(Net, SmallWriteWithRoomDoesNotPark) {
  tendril::run(opts(1), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port(), 5s);
    TcpStream server = l.accept();
    const char msg[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    for (int i = 0; i < 100; ++i) {
      const std::uint64_t before = tendril::stats().context_switches;
      server.write_all(msg, sizeof msg - 1);
      EXPECT_EQ(tendril::stats().context_switches, before) << "write " << i << " parked";
      char buf[sizeof msg];
      c.read_exact(buf, sizeof msg - 1);
      EXPECT_EQ(std::string(buf, sizeof msg - 1), std::string(msg, sizeof msg - 1));
    }
  });
}

TEST_P(Net, ReadTimeoutFiresAndElapsedIsAtLeastTheTimeout) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    c.set_timeout(50ms);
    char b;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c.read(&b, 1);
      ADD_FAILURE() << "read returned";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::timed_out);
      EXPECT_NE(std::string(e.what()).find("tendril::net::TcpStream::read from 127.0.0.1:"), std::string::npos)
          << e.what();
    }
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
    // The stream still works after a timeout.
    s.write_all("x", 1);
    EXPECT_EQ(c.read(&b, 1), 1u);
    EXPECT_EQ(b, 'x');
    // Accept times out too.
    EXPECT_EQ(code_of([&] { l.accept(20ms); }), std::errc::timed_out);
  });
}

TEST_P(Net, TimeoutThatDoesNotFire) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port(), 5s);
    TcpStream s = l.accept();
    c.set_timeout(5s);
    tendril::spawn([&] {
      tendril::this_fiber::sleep_for(10ms);
      s.write_all("hello", 5);
    }).join();
    char buf[5];
    c.read_exact(buf, 5);
    EXPECT_EQ(std::memcmp(buf, "hello", 5), 0);
  });
}

namespace {
// Fills frames with a pattern, parks in the deepest, then checks every frame.
__attribute__((noinline)) bool scribble(int depth, unsigned char tag) {
  volatile unsigned char frame[512];
  for (auto& b : frame) b = static_cast<unsigned char>(tag + depth);
  bool ok = true;
  if (depth > 0) {
    ok = scribble(depth - 1, tag);
  } else {
    tendril::this_fiber::sleep_for(60ms);  // the peer writes meanwhile
  }
  for (auto& b : frame) ok = ok && b == static_cast<unsigned char>(tag + depth);
  return ok;
}
}  // namespace

TEST_P(Net, DeadlineCancelsReadAndStackIsReusedIntact) {
  tendril::run(opts(1), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    tendril::Fiber writer = tendril::spawn([&] {
      tendril::this_fiber::sleep_for(40ms);
      std::vector<char> junk(4096, 'J');
      s.write_all(junk.data(), junk.size());
    });
    {
      char buf[4096];
      std::memset(buf, 0, sizeof buf);
      c.set_timeout(10ms);
      EXPECT_EQ(code_of([&] { c.read(buf, sizeof buf); }), std::errc::timed_out);
      for (char ch : buf) ASSERT_EQ(ch, 0);  // the cancelled read wrote nothing
    }
    // The frames the read used are reused while the data arrives.
    EXPECT_TRUE(scribble(40, 0x5a));
    writer.join();
    c.set_timeout(5s);
    std::vector<char> got(4096);
    c.read_exact(got.data(), got.size());
    EXPECT_EQ(got, std::vector<char>(4096, 'J'));
  });
}

TEST_P(Net, PeerResetIsConnectionReset) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    {
      TcpStream s = l.accept();
      linger lg{1, 0};  // close() sends RST
      ASSERT_EQ(setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    }
    char b;
    try {
      c.read(&b, 1);
      ADD_FAILURE() << "read returned";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::connection_reset);
      const std::string want = "tendril::net::TcpStream::read from 127.0.0.1:" +
                               std::to_string(l.local_port()) + ": ";
      EXPECT_EQ(std::string(e.what()).rfind(want, 0), 0u) << e.what();
    }
  });
}

// read(buf, n, ec): the same outcomes as read(), reported instead of thrown.
TEST_P(Net, ReadWithErrorCodeReportsInsteadOfThrowing) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    char b[8] = {};
    std::error_code ec = std::make_error_code(std::errc::io_error);  // cleared on success
    s.write_all("hi", 2);
    EXPECT_EQ(c.read(b, sizeof b, ec), 2u);
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(std::string(b, 2), "hi");

    c.set_timeout(std::chrono::milliseconds(20));  // nothing to read: times out
    EXPECT_EQ(c.read(b, sizeof b, ec), 0u);
    EXPECT_EQ(ec, std::errc::timed_out);
    c.set_timeout(std::chrono::nanoseconds(0));

    {
      TcpStream gone = std::move(s);
      linger lg{1, 0};  // close() sends RST
      ASSERT_EQ(setsockopt(gone.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    }
    EXPECT_EQ(c.read(b, sizeof b, ec), 0u);
    EXPECT_EQ(ec, std::errc::connection_reset);

    TcpStream never;  // not connected
    EXPECT_EQ(never.read(b, sizeof b, ec), 0u);
    EXPECT_EQ(ec, std::errc::bad_file_descriptor);
    EXPECT_EQ(c.read(b, 0, ec), 0u);  // nothing asked: nothing done, no error
    EXPECT_FALSE(ec);
  });
}

// wait_readable: returns once a read would not wait, consuming nothing (the
// bytes are all there for the read after it); reports the timeout, end of
// stream as readable, close() from another fiber as a cancel, and a stream
// that is not connected, all in ec.
TEST_P(Net, WaitReadableWaitsForDataAndConsumesNothing) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    std::error_code ec = std::make_error_code(std::errc::io_error);  // cleared on success
    std::atomic<bool> woke{false};
    tendril::Fiber waiter = tendril::spawn([&] {
      c.wait_readable(ec);
      woke = true;
    });
    tendril::this_fiber::sleep_for(20ms);
    EXPECT_FALSE(woke.load());  // nothing sent yet
    s.write_all("hello", 5);
    waiter.join();
    EXPECT_FALSE(ec) << ec.message();
    char b[8] = {};
    EXPECT_EQ(c.read(b, sizeof b), 5u);  // every byte still there
    EXPECT_EQ(std::string(b, 5), "hello");

    c.set_timeout(20ms);  // nothing to read: times out
    c.wait_readable(ec);
    EXPECT_EQ(ec, std::errc::timed_out);
    c.set_timeout(std::chrono::nanoseconds(0));

    s.shutdown_write();  // end of stream is readable: the read returns 0
    c.wait_readable(ec);
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(c.read(b, sizeof b), 0u);

    auto c2 = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s2 = l.accept();
    tendril::Fiber closed_under = tendril::spawn([&] { c2.wait_readable(ec); });
    tendril_test::wait_until_parked(closed_under.id(), tendril::WaitReason::net_read);
    c2.close();
    closed_under.join();
    EXPECT_EQ(ec, std::errc::operation_canceled);

    TcpStream never;  // not connected
    never.wait_readable(ec);
    EXPECT_EQ(ec, std::errc::bad_file_descriptor);
  });
}

TEST_P(Net, HalfCloseLetsThePeerReplyAfterEndOfStream) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    tendril::Fiber server = tendril::spawn([&] {
      TcpStream s = l.accept();
      std::string got;
      char buf[100];
      while (std::size_t n = s.read(buf, sizeof buf)) got.append(buf, n);
      EXPECT_EQ(got, "request");
      s.write_all("reply", 5);
    });
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    c.write_all("request", 7);
    c.shutdown_write();
    char buf[5];
    c.read_exact(buf, 5);
    EXPECT_EQ(std::string(buf, 5), "reply");
    char more;
    EXPECT_EQ(c.read(&more, 1), 0u);
    EXPECT_EQ(code_of([&] { c.read_exact(&more, 1); }), std::errc::no_message_available);
    server.join();
  });
}

TEST_P(Net, SixteenMiBThroughASmallSendBuffer) {
  constexpr std::size_t kSize = 16 << 20;
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    std::vector<unsigned char> out(kSize);
    for (std::size_t i = 0; i < kSize; ++i) out[i] = static_cast<unsigned char>(i * 2654435761u >> 13);
    std::atomic<std::size_t> partial{0};
    tendril::Fiber sender = tendril::spawn([&] {
      auto c = TcpStream::connect("127.0.0.1", l.local_port());
      const int small = 65536;  // smaller makes loopback TCP itself crawl (delayed ACKs)
      setsockopt(c.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
      const std::size_t first = c.write(out.data(), out.size());  // a partial write
      if (first < out.size()) partial = first;
      c.write_all(out.data() + first, out.size() - first);
    });
    TcpStream s = l.accept();
    std::vector<unsigned char> in(kSize);
    s.read_exact(in.data(), in.size());
    sender.join();
    EXPECT_TRUE(in == out);
    EXPECT_GT(partial.load(), 0u);  // write() returned early with some of it
  });
}

TEST_P(Net, AcceptUnderABurstOfAThousandConnects) {
  constexpr int kConns = 1000;
  ASSERT_TRUE(ensure_nofile(2 * kConns + 256));
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0, 4096);
    std::atomic<long> sum{0};
    tendril::WaitGroup served;
    served.add(kConns);
    tendril::Fiber acceptor = tendril::spawn([&] {
      for (int i = 0; i < kConns; ++i) {
        tendril::spawn([&, s = l.accept()]() mutable {
          std::int32_t v;
          s.read_exact(&v, sizeof v);
          sum += v;
          served.done();
        }).detach();
      }
    });
    std::vector<tendril::Fiber> clients;
    for (int i = 0; i < kConns; ++i) {
      clients.push_back(tendril::spawn([&, i] {
        auto c = TcpStream::connect("127.0.0.1", l.local_port());
        std::int32_t v = i;
        c.write_all(&v, sizeof v);
        served.wait();
      }));
    }
    for (auto& f : clients) f.join();
    acceptor.join();
    EXPECT_EQ(sum.load(), static_cast<long>(kConns) * (kConns - 1) / 2);
  });
}

TEST_P(Net, UdpSendToRecvFromAndConnected) {
  tendril::run(opts(), [&] {
    auto a = UdpSocket::bind("127.0.0.1", 0);
    auto b = UdpSocket::bind("127.0.0.1", 0);
    tendril::Fiber rx = tendril::spawn([&] {
      char buf[64];
      tendril::net::Endpoint from;
      const std::size_t n = b.recv_from(buf, sizeof buf, &from);
      EXPECT_EQ(std::string(buf, n), "datagram");
      EXPECT_EQ(from.port, a.local_port());
      EXPECT_EQ(from.host, "127.0.0.1");
      b.send_to("pong", 4, from);
    });
    a.send_to("datagram", 8, "127.0.0.1", b.local_port());
    char buf[16];
    EXPECT_EQ(std::string(buf, a.recv(buf, sizeof buf)), "pong");
    rx.join();
    a.connect("127.0.0.1", b.local_port());
    a.send("x", 1);
    EXPECT_EQ(b.recv(buf, sizeof buf), 1u);
    b.set_timeout(20ms);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(code_of([&] { b.recv(buf, sizeof buf); }), std::errc::timed_out);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  });
}

TEST_P(Net, Ipv6AndHostNames) {
  tendril::run(opts(), [&] {
    TcpListener l;
    try {
      l = TcpListener::bind("::", 0);  // dual-stack
    } catch (const std::system_error& e) {
      GTEST_SKIP() << "no IPv6: " << e.what();
    }
    tendril::spawn([&] { serve_echo(l, 3); }).detach();
    for (const char* host : {"::1", "127.0.0.1", "localhost"}) {
      auto c = TcpStream::connect(host, l.local_port(), 5s);
      c.write_all("v6", 2);
      char buf[2];
      c.read_exact(buf, 2);
      EXPECT_EQ(std::string(buf, 2), "v6") << host;
    }
    auto c6 = UdpSocket::bind("::1", 0);
    auto d6 = UdpSocket::bind("::1", 0);
    c6.send_to("u", 1, "::1", d6.local_port());
    tendril::net::Endpoint from;
    char b;
    EXPECT_EQ(d6.recv_from(&b, 1, &from), 1u);
    EXPECT_EQ(from.to_string(), "[::1]:" + std::to_string(c6.local_port()));
  });
}

TEST_P(Net, ConnectToAClosedPortIsRefused) {
  tendril::run(opts(), [&] {
    std::uint16_t port;
    {
      auto l = TcpListener::bind("127.0.0.1", 0);
      port = l.local_port();
    }
    try {
      TcpStream::connect("127.0.0.1", port, 5s);
      ADD_FAILURE() << "connected";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::connection_refused);
      EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos);
    }
  });
}

TEST_P(Net, BadHostNamesTheHost) {
  tendril::run(opts(), [&] {
    try {
      TcpStream::connect("no-such-host.invalid", 80, 5s);
      ADD_FAILURE() << "connected";
    } catch (const std::system_error& e) {
      EXPECT_NE(std::string(e.what()).find("no-such-host.invalid"), std::string::npos) << e.what();
    }
  });
}

TEST_P(Net, CloseCancelsAReadInAnotherFiber) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    tendril::Fiber reader = tendril::spawn([&] {
      char b;
      EXPECT_EQ(code_of([&] { c.read(&b, 1); }), std::errc::operation_canceled);
    });
    tendril_test::wait_until_parked(reader.id(), tendril::WaitReason::net_read);
    c.close();
    reader.join();
    EXPECT_FALSE(c.is_open());
    // A listener closed under a blocked accept.
    tendril::Fiber acceptor = tendril::spawn([&] {
      EXPECT_EQ(code_of([&] { l.accept(); }), std::errc::operation_canceled);
    });
    tendril_test::wait_until_parked(acceptor.id(), tendril::WaitReason::net_accept);
    l.close();
    acceptor.join();
  });
}

TEST_P(Net, RunningOutOfDescriptorsIsAnErrorNotACrash) {
  tendril::run(opts(), [&] {
    auto l = TcpListener::bind("127.0.0.1", 0);
    rlimit saved{};
    getrlimit(RLIMIT_NOFILE, &saved);
    std::vector<TcpStream> held;
    rlimit low = saved;
    low.rlim_cur = 64;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    // Only look at the exception once descriptors are back: UBSan's own checks
    // need a pipe (and report a bogus "invalid vptr" without one).
    std::exception_ptr failure;
    for (int i = 0; i < 200 && !failure; ++i) {
      try {
        held.push_back(TcpStream::connect("127.0.0.1", l.local_port()));
      } catch (...) {
        failure = std::current_exception();
      }
    }
    setrlimit(RLIMIT_NOFILE, &saved);
    const std::errc err = code_of([&] { if (failure) std::rethrow_exception(failure); });
    EXPECT_TRUE(err == std::errc::too_many_files_open || err == std::errc::too_many_files_open_in_system)
        << static_cast<int>(err);
    // Accepting works again once descriptors are available.
    auto c = TcpStream::connect("127.0.0.1", l.local_port());
    TcpStream s = l.accept();
    EXPECT_TRUE(s.is_open());
  });
}

TEST_P(Net, PlainThreadsAndNoRuntimeBlockTheThread) {
  auto l = TcpListener::bind("127.0.0.1", 0);  // outside run()
  std::thread server([&] {
    {
    TcpStream s = l.accept();
    char buf[16];
    while (std::size_t n = s.read(buf, sizeof buf)) s.write_all(buf, n);
  } });
  tendril::run(opts(), [&] {
    std::thread t([&] {  // a plain thread inside run()
      auto c = TcpStream::connect("127.0.0.1", l.local_port(), 5s);
      c.write_all("thr", 3);
      char buf[3];
      c.read_exact(buf, 3);
      EXPECT_EQ(std::string(buf, 3), "thr");
      c.set_timeout(20ms);
      EXPECT_EQ(code_of([&] { c.read(buf, 1); }), std::errc::timed_out);
    });
    t.join();
  });
  server.join();
}

INSTANTIATE_TEST_SUITE_P(Backends, Net, ::testing::Values("uring", "epoll"),
                         [](const auto& info) { return info.param; });
