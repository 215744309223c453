// Faults at every resource limit, injected through the runtime's test hook
// (runtime/inject/fault_inject.hpp) or produced for real (RLIMIT_AS,
// RLIMIT_NOFILE): each must give a clear error, no crash, no hang, and lose
// nothing (the operation can be retried, the other fibers keep running).
#include <gtest/gtest.h>
#include "tests/scale.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <exception>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <system_error>
#include <vector>

#include "runtime/inject/fault_inject.hpp"
#include "tendril/tendril.hpp"

namespace {

TENDRIL_TEST_SKIP_SUITE_UNDER_TSAN("it defers signals to its interceptors, and its own allocator and threads meet the injected failures and limits first");

using namespace std::chrono_literals;
using tendril::detail::FaultPoint;

// The pool's size is read when it starts: two threads, so it saturates.
const bool kBlockingThreads = (setenv("TENDRIL_BLOCKING_THREADS", "2", 1), true);

tendril::Options small_options() {
  tendril::Options o;
  o.workers = 2;
  o.pin_workers = false;
  return o;
}

// The hook: fail the next `count` calls at `point` with `err`.
std::atomic<unsigned> g_point{~0u};
std::atomic<int> g_errno{0};
std::atomic<int> g_left{0};
std::atomic<int> g_hits{0};

int hook(FaultPoint p) noexcept {
  if (static_cast<unsigned>(p) != g_point.load()) return 0;
  if (g_left.fetch_sub(1) <= 0) return 0;
  g_hits.fetch_add(1);
  return g_errno.load();
}

struct Inject {
  Inject(FaultPoint p, int err, int count) {
    g_point = static_cast<unsigned>(p);
    g_errno = err;
    g_left = count;
    g_hits = 0;
    tendril::detail::set_fault_hook(hook);
  }
  ~Inject() {
    tendril::detail::set_fault_hook(nullptr);
    g_point = ~0u;
  }
  static int hits() { return g_hits.load(); }
};

// This process's address space size (VmSize), in bytes.
std::size_t vm_size_bytes() {
  FILE* f = std::fopen("/proc/self/status", "re");
  char line[256];
  unsigned long kb = 0;
  while (f != nullptr && std::fgets(line, sizeof line, f) != nullptr)
    if (std::sscanf(line, "VmSize: %lu kB", &kb) == 1) break;
  if (f != nullptr) std::fclose(f);
  return std::size_t(kb) << 10;
}

// A fiber that proves the runtime still schedules: spawns, sleeps, joins.
void runtime_still_works() {
  std::atomic<int> n{0};
  std::vector<tendril::Fiber> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(tendril::spawn([&] {
    tendril::this_fiber::sleep_for(1ms);
    n.fetch_add(1);
  }));
  for (auto& f : fs) f.join();
  EXPECT_EQ(n.load(), 8);
}

// ---- stacks ----------------------------------------------------------------

TEST(FaultInjection, ArenaReservationFailsSpawnThrowsAndRetrySucceeds) {
  tendril::run(small_options(), [] {
    tendril::SpawnOptions big;
    big.stack_limit = std::size_t(256) << 20;  // a size class nothing reserved yet
    tendril::Semaphore go(0);
    std::atomic<int> ran{0};
    tendril::Fiber existing = tendril::spawn([&] {
      go.acquire();
      ran = 1;
    });
    {
      Inject inj(FaultPoint::arena_reserve, ENOMEM, 1000);
      try {
        tendril::spawn(big, [] {}).join();
        ADD_FAILURE() << "spawn succeeded without an arena";
      } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOMEM);
        EXPECT_NE(std::string(e.what()).find("stack arena"), std::string::npos) << e.what();
      }
      EXPECT_GT(Inject::hits(), 0);
      go.release();  // a fiber that existed runs on
      existing.join();
      EXPECT_EQ(ran.load(), 1);
    }
    runtime_still_works();
    tendril::spawn(big, [] {}).join();  // nothing was left half-built
  });
}

// For real: the address space limit below what the arena reserves.
TEST(FaultInjection, ArenaReservationUnderRlimitAsThrowsSystemError) {
  const pid_t pid = ::fork();  // the limit stays in the child
  if (pid == 0) {
    rlimit rl{};
    ::getrlimit(RLIMIT_AS, &rl);
    int code = 0;
    tendril::Options o = small_options();
    // Not what this test is about, and under the tight limit even the error
    // message may find no memory: one thread fewer keeps the heap as it was.
    o.stall_threshold = std::chrono::milliseconds(0);
    tendril::run(o, [&] {
      tendril::SpawnOptions big;
      big.stack_limit = std::size_t(512) << 20;
      rlimit tight{std::size_t(8) << 30, rl.rlim_max};  // far below an arena reservation
      ::setrlimit(RLIMIT_AS, &tight);
      try {
        tendril::spawn(big, [] {}).join();
        code = 1;
      } catch (const std::system_error& e) {
        code = e.code().value() == ENOMEM && std::strstr(e.what(), "stack arena") != nullptr ? 0 : 2;
      } catch (const std::bad_alloc&) {
        code = 3;
      }
      ::setrlimit(RLIMIT_AS, &rl);
      tendril::spawn([] {}).join();  // existing classes keep working
      tendril::spawn(big, [] {}).join();
    });
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: spawn succeeded, 2: wrong error, 3: bad_alloc";
}

// Transient ENOMEM or EAGAIN from UFFDIO_COPY: the fault handler waits and
// retries; the fiber's stack grows as if nothing happened.
void grow_stack_under(int err) {
  tendril::Options o = small_options();
  o.stack_cache_bytes = 0;  // fresh stacks: every page is a fault
  tendril::run(o, [err] {
    if (tendril::stats().stack_mode != "uffd") GTEST_SKIP() << "stack mode is not uffd";
    // The top page is mapped at spawn, by the spawning thread: inject only
    // once the fiber is waiting, so the faults below go to the handler.
    tendril::Semaphore go(0);
    std::atomic<unsigned> sum{0};
    tendril::Fiber f = tendril::spawn([&] {
      go.acquire();
      volatile char buf[96 * 1024];
      for (std::size_t i = sizeof buf; i-- > 0;) buf[i] = static_cast<char>(i);
      unsigned s = 0;
      for (std::size_t i = 0; i < sizeof buf; i += 4096) s += static_cast<unsigned char>(buf[i]);
      sum = s + 1;
    });
    tendril::this_fiber::sleep_for(5ms);
    Inject inj(FaultPoint::uffd_copy, err, 20);
    go.release();
    f.join();
    EXPECT_GT(sum.load(), 0u);
    EXPECT_GT(Inject::hits(), 0);
  });
}

TEST(FaultInjection, UffdCopyEnomemIsWaitedOut) { grow_stack_under(ENOMEM); }
TEST(FaultInjection, UffdCopyEagainIsRetried) { grow_stack_under(EAGAIN); }

// Lasting ENOMEM: the process stops with a message, it does not spin.
TEST(FaultInjectionDeathTest, UffdCopyLastingEnomemStopsWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        tendril::Options o = small_options();
        o.stack_cache_bytes = 0;
        tendril::run(o, [] {
          if (tendril::stats().stack_mode != "uffd") {
            std::fprintf(stderr, "out of memory: no page for a fiber's stack (skipped: kernel mode)\n");
            std::abort();
          }
          tendril::Semaphore go(0);
          tendril::Fiber f = tendril::spawn([&] {
            go.acquire();
            volatile char buf[64 * 1024];
            for (std::size_t i = sizeof buf; i-- > 0;) buf[i] = 1;
          });
          tendril::this_fiber::sleep_for(5ms);
          tendril::detail::set_fault_hook(
              [](FaultPoint p) noexcept { return p == FaultPoint::uffd_copy ? ENOMEM : 0; });
          go.release();
          f.join();
        });
      },
      "out of memory: no page for a fiber's stack");
}

// UFFDIO_COPY failing at spawn (the top page is mapped by the spawning
// thread): spawn throws std::system_error naming it, and the next spawn works.
TEST(FaultInjection, UffdCopyEnomemAtSpawnThrows) {
  tendril::Options o = small_options();
  o.stack_cache_bytes = 0;
  tendril::run(o, [] {
    if (tendril::stats().stack_mode != "uffd") GTEST_SKIP() << "stack mode is not uffd";
    {
      Inject inj(FaultPoint::uffd_copy, ENOMEM, 1);
      // A callable too big to wait in the fiber's record: its stack is
      // made at spawn, which reports the failure.
      struct Big {
        char bytes[512] = {};
      } big;
      try {
        tendril::spawn([big] { (void)big; }).join();
        ADD_FAILURE() << "spawn succeeded";
      } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), ENOMEM);
        EXPECT_NE(std::string(e.what()).find("UFFDIO_COPY"), std::string::npos) << e.what();
      }
    }
    runtime_still_works();
  });
}

// A fiber whose stack is made at its first run (deferred at spawn) meets
// the failure there: out of memory is waited out as a fault waits it out.
TEST(FaultInjection, UffdCopyEnomemAtFirstRunIsWaitedOut) {
  tendril::Options o = small_options();
  o.stack_cache_bytes = 0;
  tendril::run(o, [] {
    if (tendril::stats().stack_mode != "uffd") GTEST_SKIP() << "stack mode is not uffd";
    bool ran = false;
    {
      Inject inj(FaultPoint::uffd_copy, ENOMEM, 3);
      tendril::spawn([&ran] { ran = true; }).join();
      EXPECT_EQ(Inject::hits(), 3);
    }
    EXPECT_TRUE(ran);
    runtime_still_works();
  });
}

// Any other failure there has nobody to report to: the process stops and
// says why.
TEST(FaultInjectionDeathTest, NoStackAtFirstRunStopsWithAMessage) {
  std::string mode;
  tendril::run(small_options(), [&mode] { mode = tendril::stats().stack_mode; });
  if (mode != "uffd") GTEST_SKIP() << "stack mode is not uffd";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        tendril::Options o = small_options();
        o.stack_cache_bytes = 0;
        tendril::run(o, [] {
          Inject inj(FaultPoint::uffd_copy, EIO, 1);
          tendril::spawn([] {}).join();
        });
      },
      "no stack for a fiber at its first run");
}

// The arena of a size class full (every slot held by a live fiber): spawn
// throws, the fibers that exist run on, and once they end spawn works again.
TEST(FaultInjection, ArenaFullSpawnThrowsAndExistingFibersRunOn) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan poisons and unpoisons the whole of every 1 GiB stack: filling the arena takes minutes";
#endif
  tendril::Options o = small_options();
  o.stack_cache_bytes = 0;
  tendril::run(o, [] {
    tendril::SpawnOptions big;
    big.stack_limit = std::size_t(1) << 30;  // the largest class: fewest slots
    tendril::Semaphore go(0);
    std::atomic<int> ran{0};
    std::vector<tendril::Fiber> held;
    bool threw = false;
    for (int i = 0; i < 100000 && !threw; ++i) {
      try {
        held.push_back(tendril::spawn(big, [&] {
          go.acquire();
          ran.fetch_add(1);
        }));
      } catch (const std::bad_alloc& e) {
        threw = true;
        EXPECT_NE(std::string(e.what()).find("stack arena"), std::string::npos) << e.what();
      } catch (const std::system_error& e) {
        threw = true;
        EXPECT_NE(std::string(e.what()).find("stack"), std::string::npos) << e.what();
      }
    }
    ASSERT_TRUE(threw) << "the arena never filled";
    ASSERT_FALSE(held.empty());
    runtime_still_works();  // other classes
    go.release(static_cast<std::int64_t>(held.size()));
    for (auto& f : held) f.join();
    EXPECT_EQ(ran.load(), static_cast<int>(held.size()));
    tendril::spawn(big, [] {}).join();  // slots came back
  });
}

// For real, and tighter: no address space left at all, and the heap used up
// first, so that even the error's message finds no memory. spawn must still
// throw (std::system_error or std::bad_alloc, saying what ran out) instead of
// terminating, and the fibers that exist must run on. The debug threads meet
// the same limit: the stall watchdog may end (saying so), never the program.
TEST(FaultInjection, SpawnWithNoMemoryLeftThrowsAndExistingFibersRunOn) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan's allocator aborts when it runs out instead of returning nullptr, which using up the heap needs";
#endif
  const pid_t pid = ::fork();  // the limit stays in the child
  if (pid == 0) {
    int code = 0;
    tendril::run(small_options(), [&] {
      constexpr int kExisting = 4;
      tendril::Semaphore go(0);
      std::atomic<int> ran{0};
      std::vector<tendril::Fiber> existing;
      for (int i = 0; i < kExisting; ++i) existing.push_back(tendril::spawn([&] {
        go.acquire();
        ran.fetch_add(1);
      }));
      std::vector<void*> hoard;
      hoard.reserve(1 << 20);
      rlimit rl{};
      ::getrlimit(RLIMIT_AS, &rl);
      rlimit none{static_cast<rlim_t>(vm_size_bytes()), rl.rlim_max};  // no new mapping fits
      ::setrlimit(RLIMIT_AS, &none);
      while (hoard.size() < hoard.capacity()) {  // what the heap still has
        void* p = std::malloc(512);
        if (p == nullptr) break;
        hoard.push_back(p);
      }
      // A size class nothing reserved yet needs a new arena: none fits.
      int spawned = 0;
      code = 1;  // every size class spawned: nothing ran out
      for (std::size_t limit = std::size_t(32) << 10; limit <= (std::size_t(1) << 30); limit *= 2) {
        tendril::SpawnOptions so;
        so.stack_limit = limit;
        try {
          tendril::spawn(so, [&] {
            go.acquire();
            ran.fetch_add(1);
          }).detach();
          ++spawned;
          continue;
        } catch (const std::system_error& e) {
          code = std::strstr(e.what(), "stack arena") != nullptr ? 0 : 2;
        } catch (const std::bad_alloc& e) {
          code = std::strstr(e.what(), "stack arena") != nullptr ? 0 : 3;
        }
        break;
      }
      for (void* p : hoard) std::free(p);
      ::setrlimit(RLIMIT_AS, &rl);
      go.release(kExisting + spawned);
      for (auto& f : existing) f.join();
      while (ran.load() < kExisting + spawned) tendril::this_fiber::sleep_for(1ms);
      runtime_still_works();
    });
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "terminated by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: nothing ran out, 2: a system_error not naming the stack arena, 3: a bad_alloc not naming it";
}

// ---- io_uring ----------------------------------------------------------------

// Pipe I/O between fibers with the submission queue reported full and enter
// failing: every byte arrives.
void pipe_round_trips() {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  constexpr int kMessages = 200;
  tendril::Fiber reader = tendril::spawn([&] {
    for (int i = 0; i < kMessages; ++i) {
      int v = -1;
      std::size_t got = 0;
      while (got < sizeof v) got += tendril::io::read(p[0], reinterpret_cast<char*>(&v) + got, sizeof v - got);
      EXPECT_EQ(v, i);
    }
  });
  for (int i = 0; i < kMessages; ++i) tendril::io::write(p[1], &i, sizeof i);
  reader.join();
  ::close(p[0]);
  ::close(p[1]);
}

void uring_under(FaultPoint point, int err) {
  tendril::run(small_options(), [point, err] {
    if (tendril::stats().io_backend != "uring") GTEST_SKIP() << "I/O backend is not io_uring";
    {
      Inject inj(point, err, 50);
      tendril::detail::set_fault_hook(hook);
      pipe_round_trips();
    }
    pipe_round_trips();
  });
}

TEST(FaultInjection, UringSqFullIsSubmittedThrough) { uring_under(FaultPoint::uring_sq_full, 1); }

// Enter failing while the SQ is full: the worker reaps and retries.
std::atomic<int> g_sq_full_left{0};
TEST(FaultInjection, UringSqFullWithEnterEbusyAndEagain) {
  for (const int err : {EBUSY, EAGAIN}) {
    tendril::run(small_options(), [err] {
      if (tendril::stats().io_backend != "uring") GTEST_SKIP() << "I/O backend is not io_uring";
      g_sq_full_left = 40;
      g_errno = err;
      g_left = 40;
      g_hits = 0;
      tendril::detail::set_fault_hook([](FaultPoint p) noexcept {
        if (p == FaultPoint::uring_sq_full) return g_sq_full_left.fetch_sub(1) > 0 ? 1 : 0;
        if (p == FaultPoint::uring_submit && g_left.fetch_sub(1) > 0) {
          g_hits.fetch_add(1);
          return g_errno.load();
        }
        return 0;
      });
      pipe_round_trips();
      tendril::detail::set_fault_hook(nullptr);
      EXPECT_GT(g_hits.load(), 0);
      pipe_round_trips();
    });
  }
}

// A worker whose io_uring cannot be created uses epoll; I/O works everywhere.
TEST(FaultInjection, UringCreateFailsWorkerFallsBackToEpoll) {
  const char* io = std::getenv("TENDRIL_IO");
  if (io != nullptr && std::string(io) == "epoll") GTEST_SKIP() << "TENDRIL_IO=epoll";
  Inject inj(FaultPoint::uring_create, ENOMEM, 1);
  tendril::Options o = small_options();
  tendril::run(o, [] {
    std::vector<tendril::Fiber> fs;
    for (int i = 0; i < 8; ++i) fs.push_back(tendril::spawn([] { pipe_round_trips(); }));
    for (auto& f : fs) f.join();
  });
  EXPECT_EQ(Inject::hits(), 1);  // one worker on epoll, the other on io_uring (if the kernel allows it)
}

// ---- descriptors ---------------------------------------------------------

TEST(FaultInjection, SocketEmfileAndEnfileNameTheCall) {
  tendril::run(small_options(), [] {
    for (const int err : {EMFILE, ENFILE}) {
      Inject inj(FaultPoint::socket, err, 1);
      try {
        tendril::net::TcpListener::bind("127.0.0.1", 0);
        ADD_FAILURE() << "bind without a socket";
      } catch (const std::system_error& e) {
        EXPECT_EQ(e.code().value(), err);
        EXPECT_NE(std::string(e.what()).find("bind"), std::string::npos) << e.what();
      }
    }
    tendril::net::TcpListener::bind("127.0.0.1", 0);  // and then it works
  });
}

TEST(FaultInjection, AcceptAndConnectEmfileEnfileLoseNothing) {
  tendril::run(small_options(), [] {
    auto l = tendril::net::TcpListener::bind("127.0.0.1", 0);
    const std::uint16_t port = l.local_port();
    for (const int err : {EMFILE, ENFILE}) {
      {
        Inject inj(FaultPoint::connect, err, 1);
        try {
          tendril::net::TcpStream::connect("127.0.0.1", port, 1s);
          ADD_FAILURE() << "connect succeeded";
        } catch (const std::system_error& e) {
          EXPECT_EQ(e.code().value(), err);
          EXPECT_NE(std::string(e.what()).find("connect"), std::string::npos) << e.what();
        }
      }
      auto c = tendril::net::TcpStream::connect("127.0.0.1", port, 1s);
      c.write_all("x", 1);
      {
        Inject inj(FaultPoint::accept, err, 1);
        try {
          l.accept(1s);
          ADD_FAILURE() << "accept succeeded";
        } catch (const std::system_error& e) {
          EXPECT_EQ(e.code().value(), err);
          EXPECT_NE(std::string(e.what()).find("accept"), std::string::npos) << e.what();
        }
      }
      auto s = l.accept(1s);  // the queued connection was not lost
      char ch = 0;
      s.read_exact(&ch, 1);
      EXPECT_EQ(ch, 'x');
    }
  });
}

// For real: no descriptor left at accept (RLIMIT_NOFILE).
TEST(FaultInjection, AcceptAtRlimitNofileThrowsEmfileAndKeepsTheConnection) {
  tendril::run(small_options(), [] {
    auto l = tendril::net::TcpListener::bind("127.0.0.1", 0);
    auto c = tendril::net::TcpStream::connect("127.0.0.1", l.local_port(), 1s);
    c.write_all("y", 1);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    int highest = 0;
    for (int fd = 0; fd < 4096; ++fd)
      if (::fcntl(fd, F_GETFD) != -1) highest = fd;
    rlimit tight{static_cast<rlim_t>(highest + 1), rl.rlim_max};
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
    std::vector<int> fillers;  // take every free descriptor below the limit
    for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.push_back(fd);
    // Look at the error only once descriptors are free again: UBSan's check
    // of a call through a vtable needs a pipe of its own.
    std::exception_ptr error;
    try {
      l.accept(1s);
    } catch (...) {
      error = std::current_exception();
    }
    for (int fd : fillers) ::close(fd);
    ::setrlimit(RLIMIT_NOFILE, &rl);
    int code = 0;
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::system_error& e) {
      code = e.code().value();
    }
    EXPECT_EQ(code, EMFILE);
    auto s = l.accept(1s);
    char ch = 0;
    s.read_exact(&ch, 1);
    EXPECT_EQ(ch, 'y');
  });
}

// ---- blocking() ------------------------------------------------------------

// Twenty calls on a pool of two: they queue, all finish, results intact.
TEST(FaultInjection, BlockingPoolSaturatedQueuesEveryCall) {
  ASSERT_TRUE(kBlockingThreads);
  tendril::run(small_options(), [] {
    std::vector<tendril::Fiber> fs;
    std::atomic<int> sum{0};
    for (int i = 0; i < 20; ++i) fs.push_back(tendril::spawn([i, &sum] {
      sum.fetch_add(tendril::blocking([i] {
        ::usleep(2000);
        return i;
      }));
    }));
    runtime_still_works();  // the workers are not blocked meanwhile
    for (auto& f : fs) f.join();
    EXPECT_EQ(sum.load(), 190);
  });
}

// No pool thread can be started: the call runs on the caller's thread.
TEST(FaultInjection, BlockingPoolThreadStartFailsCallStillRuns) {
  tendril::run(small_options(), [] {
    ::usleep(20000);
    Inject inj(FaultPoint::blocking_thread, EAGAIN, 1000);
    int v = tendril::blocking([] { return 42; });
    EXPECT_EQ(v, 42);
  });
}

// ---- run() set-up ----------------------------------------------------------

// The dump signal's pipe cannot be made: run() fails naming the call, with
// errno kept, leaves no handler behind, and the next run() works.
void run_fails_at_dump_pipe(int err) {
  tendril::Options o = small_options();
  o.dump_signal = SIGUSR2;
  struct sigaction before {};
  ::sigaction(SIGUSR2, nullptr, &before);
  bool ran = false;
  {
    Inject inj(FaultPoint::pipe, err, 1);
    try {
      tendril::run(o, [&] { ran = true; });
      ADD_FAILURE() << "run() started without its dump-signal pipe";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code().value(), err);
      EXPECT_NE(std::string(e.what()).find("pipe2 for the dump signal"), std::string::npos) << e.what();
    }
    EXPECT_EQ(Inject::hits(), 1);
  }
  EXPECT_FALSE(ran);
  struct sigaction after {};
  ::sigaction(SIGUSR2, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);
  tendril::run(o, [&] {
    ran = true;
    runtime_still_works();
  });
  EXPECT_TRUE(ran);
}

TEST(FaultInjection, DumpSignalPipeEmfileFailsRunNamingTheCall) { run_fails_at_dump_pipe(EMFILE); }
TEST(FaultInjection, DumpSignalPipeEnfileFailsRunNamingTheCall) { run_fails_at_dump_pipe(ENFILE); }

// Fails every io_uring and epoll creation (a worker then has no poller).
std::atomic<int> g_poller_fails{0};
int fail_pollers(FaultPoint p) noexcept {
  if (p != FaultPoint::uring_create && p != FaultPoint::epoll_create) return 0;
  g_poller_fails.fetch_add(1);
  return g_errno.load();
}

// A worker that can create no poller at start: run() throws naming it, the
// workers that started are stopped (no hang), main never runs, and the next
// run() works. `backend`: "" (io_uring, then epoll) or "epoll".
void run_fails_at_poller(const char* backend, int err) {
  tendril::Options o = small_options();
  o.io_backend = backend;
  bool ran = false;
  g_errno = err;
  g_poller_fails = 0;
  tendril::detail::set_fault_hook(fail_pollers);
  try {
    tendril::run(o, [&] { ran = true; });
    ADD_FAILURE() << "run() started without I/O pollers";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), err);
    EXPECT_NE(std::string(e.what()).find("I/O poller"), std::string::npos) << e.what();
  }
  tendril::detail::set_fault_hook(nullptr);
  EXPECT_GT(g_poller_fails.load(), 0);
  EXPECT_FALSE(ran);
  tendril::run(o, [&] {
    ran = true;
    runtime_still_works();
    pipe_round_trips();
  });
  EXPECT_TRUE(ran);
}

TEST(FaultInjection, NoPollerAtWorkerStartFailsRunEmfile) { run_fails_at_poller("", EMFILE); }
TEST(FaultInjection, NoEpollAtWorkerStartFailsRunEnfile) { run_fails_at_poller("epoll", ENFILE); }

}  // namespace
