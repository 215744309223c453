// Cancellation points in I/O: io::*, net::* and blocking() for fibers in a
// tendril::Scope, on both backends (io_uring and epoll). A cancelled or timed
// out operation throws operation_canceled or timed_out, is cancelled in the
// kernel (a later call on the same descriptor gets the data sent after the
// cancel), never loses data that was already received, and an operation's
// own timeout and the scope's deadline combine (the earlier wins).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include "tests/cancel_probe.hpp"
#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tendril::net::TcpListener;
using tendril::net::TcpStream;

namespace {

const std::error_code kCanceled = std::make_error_code(std::errc::operation_canceled);
const std::error_code kTimedOut = std::make_error_code(std::errc::timed_out);

class IoCancel : public ::testing::TestWithParam<std::string> {
 protected:
  tendril::Options opts() const {
    tendril::Options o;
    o.workers = 2;
    o.io_backend = GetParam();
    return o;
  }
  template <class F>
  void run(F&& f) {
    tendril::run(opts(), [&] {
      // A forced io_uring that the kernel refuses falls back to epoll: the
      // test then covers epoll twice, which is all that can be done here.
      if (tendril::stats().io_backend != GetParam())
        std::fprintf(stderr, "note: backend %s ran as %s\n", GetParam().c_str(),
                     tendril::stats().io_backend.c_str());
      f();
    });
  }
};

struct Pipe {
  int r = -1, w = -1;
  explicit Pipe(int flags = 0) {
    int p[2];
    if (pipe2(p, O_CLOEXEC | flags) != 0) throw std::runtime_error("pipe2");
    r = p[0];
    w = p[1];
  }
  ~Pipe() {
    if (r >= 0) close(r);
    if (w >= 0) close(w);
  }
};

// A connected pair over loopback.
struct Conn {
  TcpListener listener = TcpListener::bind("127.0.0.1", 0);
  TcpStream client;
  TcpStream server;
  Conn() {
    tendril::Fiber a = tendril::spawn([this] { server = listener.accept(); });
    client = TcpStream::connect("127.0.0.1", listener.local_port());
    a.join();
  }
};

using tendril_test::cancelled_while;
using tendril_test::deadline_while;

// Reads exactly `n` bytes from the stream and returns them.
std::string read_n(TcpStream& s, std::size_t n) {
  std::string out(n, '\0');
  s.read_exact(out.data(), n);
  return out;
}

}  // namespace

TEST_P(IoCancel, RecvCancelledThenTheSocketStillReceives) {
  run([] {
    Conn c;
    char buf[16];
    EXPECT_EQ(cancelled_while([&] { c.server.read(buf, sizeof buf); }), kCanceled);
    EXPECT_EQ(deadline_while([&] { c.server.read(buf, sizeof buf); }), kTimedOut);
    // Were a cancelled receive still pending in the kernel, it would take these.
    c.client.write_all("after", 5);
    EXPECT_EQ(read_n(c.server, 5), "after");
  });
}

TEST_P(IoCancel, RecvWithErrorCodeReportsTheCancel) {
  run([] {
    Conn c;
    char buf[16];
    std::error_code ec;
    EXPECT_EQ(cancelled_while([&] {
                c.server.read(buf, sizeof buf, ec);
              }),
              std::error_code());
    EXPECT_EQ(ec, kCanceled);
  });
}

TEST_P(IoCancel, AcceptCancelledThenTheListenerStillAccepts) {
  run([] {
    TcpListener l = TcpListener::bind("127.0.0.1", 0);
    EXPECT_EQ(cancelled_while([&] { l.accept(); }), kCanceled);
    EXPECT_EQ(deadline_while([&] { l.accept(); }), kTimedOut);
    tendril::Fiber a = tendril::spawn([&] {
      TcpStream s = l.accept();
      s.write_all("hi", 2);
    });
    TcpStream c = TcpStream::connect("127.0.0.1", l.local_port());
    EXPECT_EQ(read_n(c, 2), "hi");
    a.join();
  });
}

// A listener with a full accept queue drops SYNs, so a connect to it waits.
TEST_P(IoCancel, ConnectCancelled) {
  run([] {
    TcpListener l = TcpListener::bind("127.0.0.1", 0, 0);
    // Fill the accept queue (backlog 0 holds one) with plain sockets that are
    // never accepted.
    std::vector<int> fillers;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(l.local_port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 2; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
      fillers.push_back(fd);
    }
    tendril::this_fiber::sleep_for(20ms);  // the handshakes complete
    const std::uint16_t port = l.local_port();
    EXPECT_EQ(cancelled_while([&] { TcpStream::connect("127.0.0.1", port); }), kCanceled);
    EXPECT_EQ(deadline_while([&] { TcpStream::connect("127.0.0.1", port); }), kTimedOut);
    // The connect's own timeout still reads as its own when it is earlier.
    std::error_code own;
    {
      tendril::Scope s(1h);
      s.spawn([&] {
        try {
          TcpStream::connect("127.0.0.1", port, 20ms);
        } catch (const std::system_error& e) {
          own = e.code();
        }
      });
      s.join();
    }
    EXPECT_EQ(own, kTimedOut);
    for (int fd : fillers) ::close(fd);
  });
}

// The sender fills the socket buffers until a write parks; a cancel ends it
// having sent nothing, and the peer receives exactly the bytes the returned
// writes reported, then what is written after the cancel.
TEST_P(IoCancel, SendWhenTheBufferIsFullCancelledSendsNothingMore) {
  for (const bool by_deadline : {false, true}) {
    run([by_deadline] {
      Conn c;
      std::size_t sent = 0;
      const std::string chunk(64 * 1024, 'a');
      auto fill = [&] {
        for (;;) sent += c.client.write(chunk.data(), chunk.size());
      };
      EXPECT_EQ(by_deadline ? deadline_while(fill) : cancelled_while(fill), by_deadline ? kTimedOut : kCanceled);
      std::string got;
      tendril::Fiber reader = tendril::spawn([&] { got = read_n(c.server, sent + 1); });
      c.client.write_all("Z", 1);  // waits for room: the reader drains the buffers
      reader.join();
      EXPECT_EQ(got.find_first_not_of('a'), sent);
      EXPECT_EQ(got.back(), 'Z');
    });
  }
}

TEST_P(IoCancel, PipeReadCancelledThenThePipeStillDelivers) {
  run([] {
    for (int flags : {0, O_NONBLOCK}) {
      Pipe p(flags);
      char buf[8];
      EXPECT_EQ(cancelled_while([&] { tendril::io::read(p.r, buf, sizeof buf); }), kCanceled);
      EXPECT_EQ(deadline_while([&] { tendril::io::read(p.r, buf, sizeof buf); }), kTimedOut);
      EXPECT_EQ(cancelled_while([&] { tendril::io::poll(p.r, POLLIN); }), kCanceled);
      ASSERT_EQ(tendril::io::write(p.w, "xyz", 3), 3u);
      EXPECT_EQ(tendril::io::read(p.r, buf, sizeof buf, 5s), 3u);
      EXPECT_EQ(std::string(buf, 3), "xyz");
    }
  });
}

TEST_P(IoCancel, UdpRecvCancelled) {
  run([] {
    auto s = tendril::net::UdpSocket::bind("127.0.0.1", 0);
    char buf[16];
    EXPECT_EQ(cancelled_while([&] { s.recv(buf, sizeof buf); }), kCanceled);
    EXPECT_EQ(deadline_while([&] { s.recv(buf, sizeof buf); }), kTimedOut);
  });
}

// The earlier of the own timeout and the scope's deadline ends the wait; an
// own timeout is reported as before and leaves the scope untouched.
TEST_P(IoCancel, OwnTimeoutEarlierThanTheScopeDeadline) {
  run([] {
    Pipe p;
    std::error_code got;
    bool cancelled_after = true;
    std::size_t later = 0;
    tendril::Scope s(1h);
    s.spawn([&] {
      char buf[4];
      try {
        tendril::io::read(p.r, buf, sizeof buf, 20ms);
      } catch (const std::system_error& e) {
        got = e.code();
      }
      cancelled_after = tendril::this_fiber::cancelled();
      tendril::io::write(p.w, "ok", 2);
      later = tendril::io::read(p.r, buf, sizeof buf, 5s);
    });
    s.join();
    EXPECT_EQ(got, kTimedOut);
    EXPECT_FALSE(cancelled_after);
    EXPECT_EQ(later, 2u);
  });
}

TEST_P(IoCancel, ScopeDeadlineEarlierThanTheOwnTimeout) {
  run([] {
    Conn c;
    c.server.set_timeout(1h);  // were it the one that counts, the test would hang
    std::error_code got;
    bool past_deadline = false;
    tendril::Scope s(30ms);
    s.spawn([&] {
      char buf[4];
      try {
        c.server.read(buf, sizeof buf);
      } catch (const std::system_error& e) {
        got = e.code();
      }
      past_deadline = tendril::this_fiber::cancelled();
    });
    s.join();
    EXPECT_EQ(got, kTimedOut);
    EXPECT_TRUE(past_deadline);
  });
}

TEST_P(IoCancel, CancelBeatsALongOwnTimeout) {
  run([] {
    Pipe p;
    char buf[4];
    EXPECT_EQ(cancelled_while([&] { tendril::io::read(p.r, buf, sizeof buf, 1h); }), kCanceled);
  });
}

TEST_P(IoCancel, CancelledScopeThrowsBeforeTryingAndConsumesNothing) {
  run([] {
    Conn c;
    c.client.write_all("data", 4);
    std::error_code got;
    {
      tendril::Scope s;
      s.cancel();
      s.spawn([&] {
        char buf[4];
        try {
          c.server.read(buf, sizeof buf);
        } catch (const std::system_error& e) {
          got = e.code();
        }
      });
      s.join();
    }
    EXPECT_EQ(got, kCanceled);
    EXPECT_EQ(read_n(c.server, 4), "data");
  });
}

TEST_P(IoCancel, NoCancelIoIsNotInterrupted) {
  run([] {
    Conn c;
    std::string got;
    tendril::Scope s;
    std::atomic<bool> reached{false};
    s.spawn([&] {
      tendril::this_fiber::NoCancel nc;
      reached = true;
      char buf[4];
      const std::size_t n = c.server.read(buf, sizeof buf);
      got.assign(buf, n);
    });
    while (!reached) tendril::this_fiber::yield();
    tendril::this_fiber::sleep_for(10ms);
    s.cancel();
    c.client.write_all("late", 4);
    s.join();
    EXPECT_EQ(got, "late");
  });
}

// Cancellation racing completion: a writer sends numbered messages while the
// reader's scope is cancelled (or runs out of time) at random points. Every
// byte sent is read exactly once, by a read that returned (cancelled or not,
// before the cancel took effect, or by a later read).
void race_reads_with_cancels(bool by_deadline) {
  const long messages = stress_count(2000000, 20000);
  const auto budget = 1500ms / kStressScale + 200ms;
  Conn c;
  std::atomic<bool> stop{false};
  long written = 0;
  tendril::Fiber writer = tendril::spawn([&] {
    const auto until = std::chrono::steady_clock::now() + budget;
    std::uint64_t batch[64];
    std::minstd_rand pace(7);
    while (written < messages && !stop && std::chrono::steady_clock::now() < until) {
      // Bursts of a few messages with pauses, so that reads often park and
      // cancels meet reads in flight.
      const int burst = 1 + int(pace() % 64);
      int k = 0;
      for (; k < burst && written < messages; ++k) batch[k] = std::uint64_t(written++);
      c.client.write_all(batch, sizeof(std::uint64_t) * k);
      if (pace() % 4 == 0) tendril::this_fiber::yield();
      if (pace() % 64 == 0) tendril::this_fiber::sleep_for(std::chrono::microseconds(pace() % 100));
    }
    c.client.shutdown_write();
  });
  std::vector<char> got;
  got.reserve(std::size_t(messages) * 8);
  std::mt19937 rng(12345);
  long interrupted = 0;
  bool eof = false;
  const auto reader_until = std::chrono::steady_clock::now() + 2 * budget;
  while (!eof && std::chrono::steady_clock::now() < reader_until) {
    const unsigned delay = rng() % 64;
    std::unique_ptr<tendril::Scope> s =
        by_deadline ? std::make_unique<tendril::Scope>(std::chrono::microseconds(delay * 4))
                    : std::make_unique<tendril::Scope>();
    s->spawn([&] {
      char buf[3000];
      const std::size_t want = 1 + rng() % sizeof buf;  // odd sizes: reads end mid-message
      try {
        for (;;) {
          const std::size_t n = c.server.read(buf, want);
          if (n == 0) {
            eof = true;
            return;
          }
          got.insert(got.end(), buf, buf + n);
        }
      } catch (const std::system_error& e) {
        if (e.code() != kCanceled && e.code() != kTimedOut) throw;
        ++interrupted;
      }
    });
    if (!by_deadline) {
      for (unsigned i = 0; i < delay % 8; ++i) tendril::this_fiber::yield();
      if (delay & 8) std::this_thread::sleep_for(std::chrono::microseconds(delay));
      s->cancel();
    }
    s->join();
  }
  stop = true;
  char buf[4096];
  while (!eof) {  // what is left, outside any scope
    const std::size_t n = c.server.read(buf, sizeof buf);
    if (n == 0) break;
    got.insert(got.end(), buf, buf + n);
  }
  writer.join();
  EXPECT_GT(interrupted, 0);
  ASSERT_EQ(got.size(), std::size_t(written) * 8);
  for (long i = 0; i < written; ++i) {
    std::uint64_t v;
    std::memcpy(&v, got.data() + i * 8, 8);
    if (v != std::uint64_t(i)) {
      ADD_FAILURE() << "message " << i << " reads " << v;
      return;
    }
  }
}

TEST_P(IoCancel, StressCancelRacingCompletionLosesNoData) {
  run([] { race_reads_with_cancels(false); });
}

TEST_P(IoCancel, StressDeadlinesRacingCompletionLoseNoData) {
  run([] { race_reads_with_cancels(true); });
}

// blocking(fn): the fiber stops waiting while fn runs on; fn finishes, its
// side effects are seen, and its record (result, captures) is freed by the
// pool (leak-checked under ASan).
TEST_P(IoCancel, BlockingCancelledWhileFnRuns) {
  for (const bool by_deadline : {false, true}) {
    run([by_deadline] {
      auto started = std::make_shared<std::atomic<bool>>(false);
      auto release = std::make_shared<std::atomic<bool>>(false);
      auto finished = std::make_shared<std::atomic<bool>>(false);
      std::error_code got;
      {
        std::unique_ptr<tendril::Scope> s = by_deadline ? std::make_unique<tendril::Scope>(30ms)
                                                        : std::make_unique<tendril::Scope>();
        s->spawn([&] {
          try {
            tendril::blocking([started, release, finished] {
              started->store(true);
              while (!release->load()) std::this_thread::sleep_for(1ms);
              finished->store(true);
              return std::string(1000, 'r');  // a result nobody takes: freed by the pool
            });
          } catch (const std::system_error& e) {
            got = e.code();
          }
        });
        if (!by_deadline) {
          while (!started->load()) tendril::this_fiber::sleep_for(1ms);
          s->cancel();
        }
        s->join();
      }
      EXPECT_EQ(got, by_deadline ? kTimedOut : kCanceled);
      EXPECT_FALSE(finished->load());  // the fiber did not wait for it
      release->store(true);
      // The pool frees its record (fn's captures, the result) once fn is
      // done, or without running fn if the cancel came before it started.
      while (started.use_count() > 1) tendril::this_fiber::sleep_for(1ms);
      EXPECT_EQ(finished->load(), started->load());
      if (!by_deadline) {
        EXPECT_TRUE(finished->load());
      }
    });
  }
}

TEST_P(IoCancel, BlockingCancelledFnThatThrowsDropsTheException) {
  run([] {
    auto release = std::make_shared<std::atomic<bool>>(false);
    std::error_code got;
    {
      tendril::Scope s;
      s.spawn([&] {
        try {
          tendril::blocking([release]() -> int {
            while (!release->load()) std::this_thread::sleep_for(1ms);
            throw std::runtime_error("dropped");
          });
        } catch (const std::system_error& e) {
          got = e.code();
        }
      });
      tendril::this_fiber::sleep_for(10ms);
      s.cancel();
      s.join();
    }
    EXPECT_EQ(got, kCanceled);
    release->store(true);
    while (release.use_count() > 1) tendril::this_fiber::sleep_for(1ms);
  });
}

TEST_P(IoCancel, BlockingReturnsItsResultInAScope) {
  run([] {
    tendril::Scope s;
    int a = 0, b = 0;
    std::string text;
    s.spawn([&] {
      a = tendril::blocking([] { return 41; }) + 1;
      text = tendril::blocking([] { return std::string("moved"); });
      int counter = 0;
      auto by_ref = [&counter]() -> int& { return ++counter; };
      tendril::blocking(by_ref) += 1;  // the reference is the caller's own int
      b = counter;
    });
    s.join();
    EXPECT_EQ(a, 42);
    EXPECT_EQ(text, "moved");
    EXPECT_EQ(b, 2);
  });
}

TEST_P(IoCancel, BlockingUnderNoCancelWaitsForFn) {
  run([] {
    std::atomic<bool> started{false};
    bool finished = false;
    tendril::Scope s;
    s.spawn([&] {
      tendril::this_fiber::NoCancel nc;
      tendril::blocking([&] {
        started = true;
        std::this_thread::sleep_for(20ms);
        finished = true;
      });
    });
    while (!started) tendril::this_fiber::sleep_for(1ms);
    s.cancel();
    s.join();
    EXPECT_TRUE(finished);
  });
}

INSTANTIATE_TEST_SUITE_P(Backends, IoCancel, ::testing::Values("uring", "epoll"),
                         [](const auto& info) { return info.param; });
