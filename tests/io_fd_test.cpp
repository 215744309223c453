// tendril::io (fd-level read/write/poll) and tendril::blocking over both
// backends: pipes, timeouts, offloading while the worker keeps running, and
// the kernel writing into a stack page that is not mapped yet.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include "tests/park_probe.hpp"

#include <alloca.h>
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

class Io : public ::testing::TestWithParam<std::string> {
 protected:
  tendril::Options opts(unsigned workers = 2) const {
    tendril::Options o;
    o.workers = workers;
    o.io_backend = GetParam();
    return o;
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

template <class F>
std::errc code_of(F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return static_cast<std::errc>(e.code().value());
  }
  return std::errc{};
}

}  // namespace

TEST_P(Io, PipeReadWriteBlockingAndNonblockingDescriptors) {
  tendril::run(opts(), [&] {
    for (int flags : {0, O_NONBLOCK}) {
      Pipe p(flags);
      tendril::Fiber writer = tendril::spawn([&] {
        tendril::this_fiber::sleep_for(5ms);  // the reader parks first
        EXPECT_EQ(tendril::io::write(p.w, "abc", 3), 3u);
      });
      char buf[8];
      EXPECT_EQ(tendril::io::read(p.r, buf, sizeof buf, 5s), 3u);
      EXPECT_EQ(std::string(buf, 3), "abc");
      writer.join();
      close(p.w);
      p.w = -1;
      EXPECT_EQ(tendril::io::read(p.r, buf, sizeof buf), 0u);  // end of file
    }
  });
}

TEST_P(Io, ReadAndPollTimeouts) {
  tendril::run(opts(), [&] {
    Pipe p;
    char b;
    auto t0 = std::chrono::steady_clock::now();
    try {
      tendril::io::read(p.r, &b, 1, 30ms);
      ADD_FAILURE() << "read returned";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::timed_out);
      EXPECT_NE(std::string(e.what()).find("tendril::io::read on fd " + std::to_string(p.r)),
                std::string::npos);
    }
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms);
    t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(code_of([&] { tendril::io::poll(p.r, POLLIN, 20ms); }), std::errc::timed_out);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
    EXPECT_EQ(tendril::io::poll(p.w, POLLOUT, 1s) & POLLOUT, POLLOUT);
    ASSERT_EQ(write(p.w, "z", 1), 1);
    EXPECT_EQ(tendril::io::poll(p.r, POLLIN) & POLLIN, POLLIN);
    // The data that arrives after a timed-out read is still there to read.
    EXPECT_EQ(tendril::io::read(p.r, &b, 1, 1s), 1u);
    EXPECT_EQ(b, 'z');
  });
}

TEST_P(Io, ManyFibersOnManyPipes) {
  constexpr int kPipes = 200, kRounds = 50;
  std::atomic<int> done{0};
  tendril::run(opts(), [&] {
    std::vector<std::unique_ptr<Pipe>> ps;
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < kPipes; ++i) ps.push_back(std::make_unique<Pipe>());
    for (int i = 0; i < kPipes; ++i) {
      Pipe& p = *ps[i];
      fs.push_back(tendril::spawn([&p] {
        for (int k = 0; k < kRounds; ++k) tendril::io::write(p.w, &k, sizeof k);
      }));
      fs.push_back(tendril::spawn([&p, &done] {
        for (int k = 0; k < kRounds; ++k) {
          int v = -1;
          std::size_t got = 0;
          while (got < sizeof v) got += tendril::io::read(p.r, reinterpret_cast<char*>(&v) + got, sizeof v - got);
          if (v != k) return;
        }
        ++done;
      }));
    }
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(done.load(), kPipes);
}

TEST_P(Io, BlockingOffloadLetsTheWorkerRunOtherFibers) {
  tendril::run(opts(1), [&] {
    std::atomic<bool> stop{false};
    std::atomic<long> ticks{0};
    tendril::Fiber ticker = tendril::spawn([&] {
      while (!stop) {
        ++ticks;
        tendril::this_fiber::sleep_for(1ms);
      }
    });
    const long before = ticks.load();
    const auto t0 = std::chrono::steady_clock::now();
    const int v = tendril::blocking([] {
      std::this_thread::sleep_for(50ms);  // blocks an OS thread, not the worker
      return 7;
    });
    EXPECT_EQ(v, 7);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
    EXPECT_GT(ticks.load() - before, 5);  // the only worker kept running the ticker
    stop = true;
    ticker.join();
    // Exceptions come back; void and reference results work.
    EXPECT_THROW(tendril::blocking([]() -> int { throw std::out_of_range("x"); }), std::out_of_range);
    int target = 0;
    tendril::blocking([&] { target = 3; });
    int& ref = tendril::blocking([&]() -> int& { return target; });
    EXPECT_EQ(&ref, &target);
  });
  EXPECT_EQ(tendril::blocking([] { return 5; }), 5);  // outside the runtime: a plain call
}

TEST_P(Io, ManyConcurrentOffloadsAllComplete) {
  std::atomic<int> sum{0};
  tendril::run(opts(), [&] {
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 300; ++i) {
      fs.push_back(tendril::spawn([&, i] {
        sum += tendril::blocking([i] {
          std::this_thread::sleep_for(1ms);
          return i;
        });
      }));
    }
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(sum.load(), 300 * 299 / 2);
}

namespace {
// Reads into a buffer at the bottom of a 64 KiB alloca that nothing has
// touched: the kernel (or io_uring's task work) faults the page in.
__attribute__((noinline)) bool read_into_fresh_deep_page(int fd) {
  constexpr std::size_t kDepth = 64 * 1024;
  auto* base = static_cast<unsigned char*>(alloca(kDepth));
  unsigned char* buf = base;  // the lowest (deepest, untouched) address
  asm volatile("" : : "r"(base) : "memory");
  std::size_t got = 0;
  while (got < 4096) got += tendril::io::read(fd, buf + got, 4096 - got, std::chrono::seconds(5));
  for (std::size_t i = 0; i < 4096; ++i)
    if (buf[i] != static_cast<unsigned char>(i * 7)) return false;
  return true;
}
}  // namespace

TEST_P(Io, ReadIntoAStackPageThatIsNotMappedYet) {
  tendril::run(opts(), [&] {
    Pipe p;
    bool ok = false;
    tendril::Fiber reader = tendril::spawn([&] { ok = read_into_fresh_deep_page(p.r); });
    tendril::Fiber writer = tendril::spawn([&] {
      // The read is pending (on the ring, or waiting for readiness) first.
      tendril_test::wait_until_parked(reader.id(), tendril::WaitReason::io_read);
      unsigned char data[4096];
      for (std::size_t i = 0; i < sizeof data; ++i) data[i] = static_cast<unsigned char>(i * 7);
      tendril::io::write(p.w, data, sizeof data);
    });
    reader.join();
    writer.join();
    EXPECT_TRUE(ok);
  });
}

TEST_P(Io, PlainThreadFallback) {
  Pipe p;
  tendril::run(opts(), [&] {
    std::thread t([&] {
      char b;
      EXPECT_EQ(code_of([&] { tendril::io::read(p.r, &b, 1, 10ms); }), std::errc::timed_out);
      EXPECT_EQ(tendril::io::read(p.r, &b, 1, 5s), 1u);
      EXPECT_EQ(b, 'q');
    });
    tendril::this_fiber::sleep_for(30ms);
    tendril::io::write(p.w, "q", 1);
    t.join();
  });
  tendril::io::write(p.w, "r", 1);  // no runtime at all
  char b;
  EXPECT_EQ(tendril::io::read(p.r, &b, 1), 1u);
  EXPECT_EQ(b, 'r');
}

TEST(IoBackend, AutomaticChoiceReportsABackend) {
  tendril::Options o;
  o.workers = 1;
  std::string name;
  tendril::run(o, [&] { name = tendril::stats().io_backend; });
  EXPECT_TRUE(name == "uring" || name == "epoll") << name;
}

INSTANTIATE_TEST_SUITE_P(Backends, Io, ::testing::Values("uring", "epoll"),
                         [](const auto& info) { return info.param; });
