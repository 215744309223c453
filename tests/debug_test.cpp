// Seeing every fiber: wait reasons in the fiber dump and in fibers(), frames of
// parked fibers, the dump on a signal, the stall watchdog, and their options.
#include <fcntl.h>
#include <poll.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/capture_stderr.hpp"
#include "tests/scale.hpp"

using namespace std::chrono_literals;

namespace {

// The state of fiber `id` in a fresh snapshot, if it is alive.
std::optional<tendril::FiberInfo> info_of(tendril::FiberId id) {
  for (tendril::FiberInfo& f : tendril::fibers())
    if (f.id == id) return std::move(f);
  return std::nullopt;
}

// Waits (bounded) until fiber `id` is parked for `reason`; returns its entry.
tendril::FiberInfo await_parked(tendril::FiberId id, tendril::WaitReason reason) {
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  std::optional<tendril::FiberInfo> last;
  while (std::chrono::steady_clock::now() < give_up) {
    last = info_of(id);
    if (last && last->state == tendril::FiberState::parked && last->reason == reason) return *last;
    tendril::this_fiber::sleep_for(2ms);
  }
  ADD_FAILURE() << "fiber " << id << " never parked for " << tendril::to_string(reason) << "; last seen: "
                << (last ? tendril::format_fiber(*last) : std::string("gone"));
  return last.value_or(tendril::FiberInfo{});
}

bool has_frame(const tendril::FiberInfo& f, const std::string& function_part) {
  for (const tendril::FiberFrame& fr : f.frames)
    if (fr.function.find(function_part) != std::string::npos) return true;
  return false;
}

using tendril_test::CaptureStderr;

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

tendril::Options two_workers(const std::string& io = "") {
  tendril::Options o;
  o.workers = 2;
  o.io_backend = io;
  o.stall_threshold = 0ms;  // the stall tests turn it on themselves
  return o;
}

// A user function the backtrace test looks for by name.
__attribute__((noinline)) void debug_test_user_function_that_parks(tendril::Mutex& m) {
  m.lock();
  m.unlock();
  asm volatile("" ::: "memory");  // not a tail call: this frame stays on the stack
}

}  // namespace

TEST(FiberDump, EveryPrimitiveReportsItsWaitReason) {
  tendril::run(two_workers(), [] {
    {
      tendril::Mutex m;
      m.lock();
      auto f = tendril::spawn([&] { debug_test_user_function_that_parks(m); });
      const tendril::FiberInfo info = await_parked(f.id(), tendril::WaitReason::mutex);
      EXPECT_TRUE(has_frame(info, "debug_test_user_function_that_parks")) << tendril::format_fiber(info);
      m.unlock();
      f.join();
    }
    {
      tendril::Mutex m;
      tendril::CondVar cv;
      bool ready = false;
      auto f = tendril::spawn([&] {
        std::unique_lock<tendril::Mutex> lock(m);
        cv.wait(lock, [&] { return ready; });
      });
      await_parked(f.id(), tendril::WaitReason::condvar);
      {
        std::lock_guard<tendril::Mutex> lock(m);
        ready = true;
      }
      cv.notify_all();
      f.join();
    }
    {
      tendril::Semaphore sem(0);
      auto f = tendril::spawn([&] { sem.acquire(); });
      await_parked(f.id(), tendril::WaitReason::semaphore);
      sem.release();
      f.join();
    }
    {
      tendril::WaitGroup wg;
      wg.add(1);
      auto f = tendril::spawn([=]() mutable { wg.wait(); });
      await_parked(f.id(), tendril::WaitReason::wait_group);
      wg.done();
      f.join();
    }
    {
      tendril::Channel<int> ch;
      auto r = tendril::spawn([=]() mutable { (void)ch.recv(); });
      await_parked(r.id(), tendril::WaitReason::channel_recv);
      auto s = tendril::spawn([=]() mutable { ch.send(1); ch.send(2); });
      await_parked(s.id(), tendril::WaitReason::channel_send);
      (void)ch.recv();
      r.join();
      s.join();
    }
    {
      tendril::Channel<int> gate;
      auto child = tendril::spawn([=]() mutable { (void)gate.recv(); });
      auto joiner = tendril::spawn([&] { child.join(); });
      await_parked(joiner.id(), tendril::WaitReason::join);
      gate.send(1);
      joiner.join();
    }
    {
      std::atomic<bool> wake{false};
      auto f = tendril::spawn([&] { tendril::this_fiber::sleep_for(60s); });
      (void)wake;
      const tendril::FiberInfo info = await_parked(f.id(), tendril::WaitReason::sleep);
      EXPECT_GE(info.worker, 0);
      // A sleep cannot be cut short: this one is left to the end of run().
      f.detach();
    }
    {
      std::atomic<bool> release{false};
      auto f = tendril::spawn([&] {
        tendril::blocking([&] {
          while (!release.load()) std::this_thread::sleep_for(1ms);
        });
      });
      await_parked(f.id(), tendril::WaitReason::blocking_call);
      release = true;
      f.join();
    }
  });
}

class FiberDumpIo : public ::testing::TestWithParam<std::string> {};

TEST_P(FiberDumpIo, IoAndNetWaitsNameTheirDescriptor) {
  tendril::run(two_workers(GetParam()), [] {
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
    {
      auto f = tendril::spawn([&] {
        char c;
        tendril::io::read(p[0], &c, 1);
      });
      const tendril::FiberInfo info = await_parked(f.id(), tendril::WaitReason::io_read);
      EXPECT_EQ(info.fd, p[0]);
      EXPECT_NE(tendril::format_fiber(info).find("parked: io read fd=" + std::to_string(p[0])), std::string::npos)
          << tendril::format_fiber(info);
      ASSERT_EQ(::write(p[1], "x", 1), 1);
      f.join();
    }
    {
      auto f = tendril::spawn([&] { tendril::io::poll(p[0], POLLIN); });
      EXPECT_EQ(await_parked(f.id(), tendril::WaitReason::io_poll).fd, p[0]);
      ASSERT_EQ(::write(p[1], "x", 1), 1);
      f.join();
      char c;
      ASSERT_EQ(::read(p[0], &c, 1), 1);
    }
    {
      std::vector<char> big(1 << 20, 'x');  // more than the pipe holds
      // A pipe takes what fits and reports a short write; the next write waits.
      auto f = tendril::spawn([&] {
        for (std::size_t done = 0; done < big.size();)
          done += tendril::io::write(p[1], big.data() + done, big.size() - done);
      });
      EXPECT_EQ(await_parked(f.id(), tendril::WaitReason::io_write).fd, p[1]);
      std::vector<char> sink(1 << 16);
      std::size_t got = 0;
      while (got < big.size()) got += tendril::io::read(p[0], sink.data(), sink.size());
      f.join();
    }
    close(p[0]);
    close(p[1]);

    auto listener = tendril::net::TcpListener::bind("127.0.0.1", 0, 0);
    const std::uint16_t port = listener.local_port();
    {
      tendril::net::TcpStream accepted;
      auto f = tendril::spawn([&] { accepted = listener.accept(); });
      const tendril::FiberInfo info = await_parked(f.id(), tendril::WaitReason::net_accept);
      EXPECT_GE(info.fd, 0);
      auto client = tendril::net::TcpStream::connect("127.0.0.1", port);
      f.join();
      char c;
      auto r = tendril::spawn([&] { accepted.read(&c, 1); });
      EXPECT_GE(await_parked(r.id(), tendril::WaitReason::net_read).fd, 0);
      client.write("y", 1);
      r.join();
      // A peer that does not read: the writer fills both socket buffers.
      std::vector<char> big(64 << 20, 'z');
      std::atomic<bool> written{false};
      auto w = tendril::spawn([&] {
        try {
          client.write_all(big.data(), big.size());
        } catch (const std::system_error&) {
        }
        written = true;
      });
      EXPECT_GE(await_parked(w.id(), tendril::WaitReason::net_write).fd, 0);
      accepted.close();  // the writer gets a reset
      client.close();
      w.join();
    }
    {
      // Backlog 0 holds one unaccepted connection; the next one's SYN is
      // dropped, so its connect waits for a retransmission.
      auto first = tendril::net::TcpStream::connect("127.0.0.1", port);
      auto f = tendril::spawn([&] {
        try {
          auto second = tendril::net::TcpStream::connect("127.0.0.1", port, 30s);
        } catch (const std::system_error&) {
        }
      });
      EXPECT_GE(await_parked(f.id(), tendril::WaitReason::net_connect).fd, 0);
      auto a = listener.accept();  // room again: the retransmitted SYN gets in
      f.join();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Backends, FiberDumpIo, ::testing::Values("uring", "epoll"),
                         [](const auto& i) { return i.param; });

TEST(FiberDump, StateIsRunningOrRunnableOnceResumed) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> ch(1);
    std::atomic<bool> stop{false};
    auto f = tendril::spawn([&]() mutable {
      (void)ch.recv();
      while (!stop.load()) tendril::this_fiber::yield();
    });
    await_parked(f.id(), tendril::WaitReason::channel_recv);
    ch.send(1);
    const auto give_up = std::chrono::steady_clock::now() + 20s;
    std::optional<tendril::FiberInfo> info;
    do {
      tendril::this_fiber::sleep_for(1ms);
      info = info_of(f.id());
    } while (info && info->state == tendril::FiberState::parked && std::chrono::steady_clock::now() < give_up);
    ASSERT_TRUE(info);
    EXPECT_NE(info->state, tendril::FiberState::parked) << tendril::format_fiber(*info);
    EXPECT_EQ(info->reason, tendril::WaitReason::none);
    stop = true;
    f.join();
  });
}

// Woken but not run yet (the only worker is busy with the waker): the park
// is over as soon as the fiber is made runnable, for the dump and for the
// compactor, which reads the same word and would otherwise compact a fiber
// that only waits for its turn in a run queue.
TEST(FiberDump, AWokenFiberIsRunnableBeforeItRuns) {
  // The environment overrides the options: another worker would run it.
  if (std::getenv("TENDRIL_WORKERS") != nullptr) GTEST_SKIP() << "TENDRIL_WORKERS is set";
  tendril::Options o = two_workers();
  o.workers = 1;
  tendril::run(o, [] {
    tendril::WaitGroup gate;
    gate.add(1);
    auto f = tendril::spawn([&] { gate.wait(); });
    await_parked(f.id(), tendril::WaitReason::wait_group);
    gate.done();  // f is queued on this worker, which does not yield below
    // The snapshot is taken on a plain thread: the worker must not run f
    // meanwhile, and fibers() may park its calling fiber.
    std::optional<tendril::FiberInfo> info;
    std::atomic<bool> taken{false};
    std::thread reader([&] {
      info = info_of(f.id());
      taken = true;
    });
    while (!taken.load()) {
    }
    reader.join();
    ASSERT_TRUE(info);
    EXPECT_EQ(info->state, tendril::FiberState::runnable) << tendril::format_fiber(*info);
    EXPECT_EQ(info->reason, tendril::WaitReason::none);
    f.join();
  });
}

TEST(FiberDump, DumpNamesFibersSitesAndFrames) {
  CaptureStderr cap;
  tendril::run(two_workers(), [] {
    tendril::Mutex m;
    m.lock();
    auto f = tendril::spawn(tendril::SpawnOptions{"the-named-one"}, [&] { debug_test_user_function_that_parks(m); });
    await_parked(f.id(), tendril::WaitReason::mutex);
    tendril::dump_fibers();
    m.unlock();
    f.join();
  });
  cap.restore();
  const std::string text = cap.text();
  EXPECT_NE(text.find("\"the-named-one\" [parked: mutex, "), std::string::npos) << text;
  EXPECT_NE(text.find("debug_test_user_function_that_parks"), std::string::npos) << text;
  // The caller is parked on the dump itself, which runs off the workers.
  EXPECT_NE(text.find("\"main\" [parked: blocking call"), std::string::npos) << text;
  EXPECT_NE(text.find("spawned as "), std::string::npos) << text;
  EXPECT_NE(text.find("tendril: 2 fibers"), std::string::npos) << text;
}

TEST(FiberDump, CompleteWithManyFibersWhileWorkersRun) {
  // 100k in a normal build; far fewer under ThreadSanitizer, where each
  // unwound frame's allocations are tens of times dearer.
  const long n = kStressScale >= 50 ? 500 : stress_count(100000, 2000);
  char path[] = "/tmp/tendril-dump-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  std::size_t entries = 0;
  std::uint64_t ticks_during_dump = 0;
  tendril::run(two_workers(), [&] {
    tendril::WaitGroup gate;
    gate.add(1);
    tendril::WaitGroup done;
    tendril::WaitGroup arrived;  // each waiter is about to park on the gate
    for (long i = 0; i < n; ++i) {
      done.add(1);
      arrived.add(1);
      tendril::spawn([=]() mutable {
        arrived.done();
        gate.wait();
        done.done();
      }).detach();
    }
    arrived.wait();
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> ticks{0};
    auto ticker = tendril::spawn([&] {
      while (!stop.load()) {
        ticks.fetch_add(1);
        tendril::this_fiber::yield();
      }
    });
    const std::uint64_t before = ticks.load();
    tendril::dump_fibers(fd);
    ticks_during_dump = ticks.load() - before;
    stop = true;
    ticker.join();
    gate.done();
    done.wait();
  });
  std::string text;
  char buf[1 << 16];
  for (off_t off = 0;;) {
    const ssize_t r = pread(fd, buf, sizeof buf, off);
    if (r <= 0) break;
    text.append(buf, std::size_t(r));
    off += r;
  }
  close(fd);
  entries = count_of(text, "\nfiber ");
  // n gate waiters, the ticker and main (which ran the dump).
  EXPECT_EQ(entries, std::size_t(n) + 2);
  EXPECT_EQ(count_of(text, "[parked: wait group, "), std::size_t(n));
  EXPECT_NE(text.find("tendril: " + std::to_string(n + 2) + " fibers"), std::string::npos);
  // The workers went on running fibers while the dump was written.
  EXPECT_GT(ticks_during_dump, 0u);
}

TEST(FiberDump, SignalWritesTheDumpWhileWorkersAreBusy) {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer defers an asynchronous signal until the thread it landed
  // on calls one of its interceptors; busy workers that only yield never do.
  GTEST_SKIP() << "signal delivery is deferred under ThreadSanitizer";
#endif
  CaptureStderr cap;
  tendril::Options o = two_workers();
  o.dump_signal = SIGUSR2;
  tendril::run(o, [&] {
    std::atomic<bool> stop{false};
    std::vector<tendril::Fiber> busy;
    for (int i = 0; i < 4; ++i)
      busy.push_back(tendril::spawn(tendril::SpawnOptions{"busy"}, [&] {
        while (!stop.load()) tendril::this_fiber::yield();
      }));
    tendril::Semaphore never(0);
    auto parked = tendril::spawn(tendril::SpawnOptions{"signal-visible"}, [&] { never.try_acquire_for(60s); });
    await_parked(parked.id(), tendril::WaitReason::semaphore);
    ASSERT_EQ(::kill(getpid(), SIGUSR2), 0);
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    while (cap.text().find(" fibers\n") == std::string::npos && std::chrono::steady_clock::now() < give_up)
      tendril::this_fiber::sleep_for(5ms);
    stop = true;
    for (auto& b : busy) b.join();
    never.release();
    parked.join();
  });
  cap.restore();
  const std::string text = cap.text();
  EXPECT_NE(text.find("\"signal-visible\" [parked: semaphore, "), std::string::npos) << text;
  EXPECT_EQ(count_of(text, "\"busy\" ["), 4u) << text;
  // After run() the handler is gone again: the default action is restored.
  struct sigaction now {};
  sigaction(SIGUSR2, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
}

// Spins for `d` of this thread's CPU time: on a loaded machine the worker is
// preempted, and the watchdog (rightly) does not count that as a stall.
__attribute__((noinline)) void debug_test_spin_without_yielding(std::chrono::milliseconds d) {
  auto cpu_ns = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  };
  const std::int64_t end = cpu_ns() + std::chrono::nanoseconds(d).count();
  while (cpu_ns() < end) asm volatile("" ::: "memory");
}

TEST(StallWatchdog, OneReportForAFiberThatSpins) {
  CaptureStderr cap;
  tendril::Options o = two_workers();
  o.stall_threshold = 100ms;
  std::uint64_t stalls = 0;
  tendril::run(o, [&] {
    auto f = tendril::spawn(tendril::SpawnOptions{"spinner"},
                            [] { debug_test_spin_without_yielding(300ms); });
    f.join();
    stalls = tendril::stats().stalls;
  });
  cap.restore();
  const std::string text = cap.text();
  EXPECT_EQ(count_of(text, "tendril: stall: "), 1u) << text;
  EXPECT_NE(text.find("\"spinner\" has run "), std::string::npos) << text;
  EXPECT_NE(text.find(" without yielding"), std::string::npos) << text;
#if !defined(__SANITIZE_THREAD__)
  // ThreadSanitizer holds signals back until the thread reaches one of its
  // interceptors, which a spinning loop never does: no sample there.
  EXPECT_NE(text.find("debug_test_spin_without_yielding"), std::string::npos) << text;
#endif
  EXPECT_EQ(stalls, 1u);
}

TEST(StallWatchdog, NoReportForABusyServerThatYields) {
  CaptureStderr cap;
  tendril::Options o = two_workers();
  // Under a sanitizer one step of this loop (a spawn, a channel operation)
  // can itself take tens of milliseconds; the threshold scales with it.
  o.stall_threshold = 100ms * (kStressScale > 1 ? 10 : 1);
  std::uint64_t stalls = 1;
  tendril::run(o, [&] {
    std::vector<tendril::Fiber> workers;
    const auto end = std::chrono::steady_clock::now() + 5 * o.stall_threshold;
    tendril::Channel<int> ch(16);
    for (int i = 0; i < 4; ++i)
      workers.push_back(tendril::spawn([=]() mutable {
        while (std::chrono::steady_clock::now() < end) {
          debug_test_spin_without_yielding(1ms);
          ch.try_send(1);
          (void)ch.try_recv();
          tendril::this_fiber::yield();
        }
      }));
    for (auto& w : workers) w.join();
    stalls = tendril::stats().stalls;
  });
  cap.restore();
  EXPECT_EQ(count_of(cap.text(), "tendril: stall: "), 0u) << cap.text();
  EXPECT_EQ(stalls, 0u);
}

TEST(DebugOptions, DumpSignalAndStallThresholdFromTheEnvironment) {
  struct Env {
    const char* name;
    explicit Env(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
    ~Env() { unsetenv(name); }
  };
  {
    Env e("TENDRIL_DUMP_SIGNAL", "USR1");
    EXPECT_EQ(tendril::Options{}.with_environment().dump_signal, SIGUSR1);
  }
  {
    Env e("TENDRIL_DUMP_SIGNAL", "SIGUSR2");
    EXPECT_EQ(tendril::Options{}.with_environment().dump_signal, SIGUSR2);
  }
  {
    Env e("TENDRIL_DUMP_SIGNAL", "10");
    EXPECT_EQ(tendril::Options{}.with_environment().dump_signal, 10);
  }
  {
    Env e("TENDRIL_DUMP_SIGNAL", "rtmin+2");
    EXPECT_EQ(tendril::Options{}.with_environment().dump_signal, SIGRTMIN + 2);
  }
  for (const char* bad : {"USR3", "SIGSEGV", "KILL", "URG", "0", "99999", "-1", "USR1x"}) {
    Env e("TENDRIL_DUMP_SIGNAL", bad);
    try {
      (void)tendril::Options{}.with_environment();
      ADD_FAILURE() << "accepted TENDRIL_DUMP_SIGNAL=" << bad;
    } catch (const std::invalid_argument& ex) {
      EXPECT_NE(std::string(ex.what()).find("TENDRIL_DUMP_SIGNAL"), std::string::npos) << ex.what();
    }
  }
  {
    Env e("TENDRIL_STALL_MS", "250");
    EXPECT_EQ(tendril::Options{}.with_environment().stall_threshold, 250ms);
  }
  for (const char* bad : {"abc", "-5", "", "99999999"}) {
    Env e("TENDRIL_STALL_MS", bad);
    EXPECT_THROW((void)tendril::Options{}.with_environment(), std::invalid_argument) << bad;
  }
  tendril::Options o;
  o.dump_signal = SIGSEGV;
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o.dump_signal = 0;
  o.stall_threshold = -1ms;
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
}

TEST(DebugOptions, FibersOutsideRunIsEmpty) {
  EXPECT_TRUE(tendril::fibers().empty());
  tendril::dump_fibers(-1);  // nothing to write, no crash
}
