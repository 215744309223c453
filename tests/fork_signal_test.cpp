// fork(2) and signal handlers in a tendril process: the rules written down in
// the README ("fork and signals"), one test each. The suite runs in both
// stack modes (the .kernel_mode copies), so the userfaultfd cases are covered
// where uffd is allowed.
#include <gtest/gtest.h>
#include "tests/scale.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "tendril/tendril.hpp"

namespace {

TENDRIL_TEST_SKIP_SUITE_UNDER_TSAN("it defers signals to its interceptors, and its own allocator and threads meet the injected failures and limits first");

using namespace std::chrono_literals;

tendril::Options small_options() {
  tendril::Options o;
  o.workers = 2;
  o.pin_workers = false;
  return o;
}

// Waits for a child without blocking the worker thread.
int wait_child(pid_t pid) {
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (tendril::in_runtime()) {
      tendril::this_fiber::sleep_for(1ms);
    } else {
      ::usleep(1000);
    }
  }
}

// Writes a stack region of `bytes` below the caller, top to bottom (page by
// page, as a growing stack does), and returns a checksum.
__attribute__((noinline)) unsigned touch_stack(std::size_t bytes) {
  volatile char* p = static_cast<volatile char*>(__builtin_alloca(bytes));
  for (std::size_t i = bytes; i-- > 0;) p[i] = static_cast<char>(i);
  unsigned sum = 0;
  for (std::size_t i = 0; i < bytes; i += 4096) sum += static_cast<unsigned char>(p[i]);
  return sum + 1;
}

bool maps_contain(const char* needle) {
  const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  static char buf[1 << 20];  // async-signal-safe: no allocation in the child
  std::size_t n = 0;
  ssize_t r;
  while (n < sizeof buf - 1 && (r = ::read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += static_cast<std::size_t>(r);
  ::close(fd);
  buf[n] = '\0';
  return std::strstr(buf, needle) != nullptr;
}

// Runs child() in a fork taken on a fiber (or the caller) and returns its
// wait status; the child's stderr goes to *err.
template <class F>
int fork_and_wait(F child, std::string* err = nullptr) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(p[1], STDERR_FILENO);
    child();
    ::_exit(99);  // child() returns only when a rule was broken
  }
  ::close(p[1]);
  const int status = wait_child(pid);
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0)
    if (err != nullptr) err->append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  return status;
}

// Rule: a child of a fiber may exec.
TEST(Fork, ChildOfAFiberMayExec) {
  int status = -1;
  tendril::run(small_options(), [&] {
    tendril::spawn([&] {
      status = fork_and_wait([] { ::execl("/bin/sh", "sh", "-c", "exit 7", static_cast<char*>(nullptr)); });
    }).join();
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 7);
}

// The child runs on the forking fiber's stack until it execs. Its stack
// grows by the kernel's demand paging there (the userfaultfd registrations
// are not inherited without UFFD_FEATURE_EVENT_FORK, and the arena is not
// MADV_DONTFORK so that this stack exists in the child), and the parent's
// io_uring rings are not mapped in the child (MADV_DONTFORK).
TEST(Fork, ChildGrowsTheForkingFibersStackAndHasNoRings) {
  int status = -1;
  std::string err;
  tendril::run(small_options(), [&] {
    tendril::spawn([&] {
      status = fork_and_wait(
          [] {
            if (touch_stack(96 * 1024) == 0) ::_exit(3);
            if (maps_contain("io_uring")) ::_exit(4);
            ::_exit(0);
          },
          &err);
    }).join();
  });
  ASSERT_TRUE(WIFEXITED(status)) << status << " " << err;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: stack growth failed, 4: the parent's rings are mapped in the child";
}

// Rule: the parent's runtime cannot be used in the child; spawn and run
// throw std::logic_error naming fork.
TEST(Fork, ChildSpawnAndRunThrowLogicError) {
  int spawn_status = -1, run_status = -1;
  tendril::run(small_options(), [&] {
    tendril::spawn([&] {
      spawn_status = fork_and_wait([] {
        try {
          tendril::spawn([] {}).detach();
        } catch (const std::logic_error& e) {
          ::_exit(std::strstr(e.what(), "fork") != nullptr ? 0 : 1);
        }
      });
      run_status = fork_and_wait([] {
        try {
          tendril::run([] {});
        } catch (const std::logic_error& e) {
          ::_exit(std::strstr(e.what(), "fork") != nullptr ? 0 : 1);
        }
      });
    }).join();
  });
  ASSERT_TRUE(WIFEXITED(spawn_status)) << spawn_status;
  EXPECT_EQ(WEXITSTATUS(spawn_status), 0);
  ASSERT_TRUE(WIFEXITED(run_status)) << run_status;
  EXPECT_EQ(WEXITSTATUS(run_status), 0);
}

// Rule: a fiber that parks in the child (sleep, join, a lock, I/O) stops the
// child with a message, instead of hanging or running copies of the
// parent's fibers.
TEST(Fork, ChildFiberThatParksStopsWithAMessage) {
  int status = -1;
  std::string err;
  tendril::run(small_options(), [&] {
    tendril::spawn([&] { status = fork_and_wait([] { tendril::this_fiber::sleep_for(1ms); }, &err); }).join();
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << status << " " << err;
  EXPECT_EQ(WTERMSIG(status), SIGABRT);
  EXPECT_NE(err.find("child of fork()"), std::string::npos) << err;
  EXPECT_NE(err.find("parked"), std::string::npos) << err;
}

TEST(Fork, ChildFiberIoStopsWithAMessage) {
  int status = -1;
  std::string err;
  tendril::run(small_options(), [&] {
    tendril::spawn([&] {
      status = fork_and_wait(
          [] {
            int p[2];
            if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) ::_exit(5);
            char c;
            tendril::io::read(p[0], &c, 1);  // nothing to read: would wait on the parent's ring
          },
          &err);
    }).join();
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << status << " " << err;
  EXPECT_NE(err.find("I/O on a fiber"), std::string::npos) << err;
}

// Rule: a plain thread of the child that waits on a tendril primitive stops
// with a message (the runtime that would wake it is gone).
TEST(Fork, ChildPlainThreadWaitStopsWithAMessage) {
  std::atomic<bool> up{false}, done{false};
  tendril::Semaphore sem(0);
  std::thread rt([&] {
    tendril::run(small_options(), [&] {
      up = true;
      while (!done) tendril::this_fiber::sleep_for(1ms);
    });
  });
  while (!up) std::this_thread::sleep_for(1ms);
  std::string err;
  const int status = fork_and_wait([&] { sem.acquire(); }, &err);  // from this plain thread
  done = true;
  rt.join();
  ASSERT_TRUE(WIFSIGNALED(status)) << status << " " << err;
  EXPECT_NE(err.find("child of fork()"), std::string::npos) << err;
}

// Rule: fork before run() or after it returned is an ordinary process, and
// the child may start its own run().
TEST(Fork, ChildOfAFinishedRunMayRunItsOwn) {
  tendril::run(small_options(), [] { tendril::spawn([] {}).join(); });
  const int status = fork_and_wait([] {
    int sum = 0;
    try {
      tendril::run(small_options(), [&] {
        tendril::Fiber a = tendril::spawn([&] { sum += 1; });
        a.join();
        tendril::Fiber b = tendril::spawn([&] { sum += touch_stack(64 * 1024) > 0 ? 2 : 0; });
        b.join();
      });
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(sum == 3 ? 0 : 1);
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// ---- signals -------------------------------------------------------------

std::atomic<int> g_handled{0};
std::atomic<unsigned> g_handler_sum{0};

void big_frame_handler(int) {
  // 48 KiB written top to bottom: the kernel wrote the signal frame below the
  // fiber's stack pointer, and this frame grows the stack further.
  g_handler_sum.fetch_add(touch_stack(48 * 1024));
  g_handled.fetch_add(1);
}

struct ScopedHandler {
  int sig;
  struct sigaction old {};
  ScopedHandler(int s, void (*fn)(int), int flags) : sig(s) {
    struct sigaction sa {};
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, &old);
  }
  ~ScopedHandler() { sigaction(sig, &old, nullptr); }
};

// Rule: a handler without SA_ONSTACK runs on the interrupted fiber's stack,
// and its frame (the kernel's signal frame, then the handler's own) grows
// that stack as a call would, in either stack mode. Fresh stacks (no cache),
// at every offset within the first pages, so the signal frame lands on pages
// not mapped yet.
TEST(Signals, HandlerFrameGrowsTheFibersStack) {
  ScopedHandler h(SIGUSR1, big_frame_handler, 0);
  tendril::Options o = small_options();
  o.stack_cache_bytes = 0;
  g_handled = 0;
  int sent = 0;
  tendril::run(o, [&] {
    for (std::size_t depth = 0; depth <= 12 * 1024; depth += 768) {
      tendril::spawn([depth] {
        if (depth > 0) touch_stack(depth);
        ::pthread_kill(::pthread_self(), SIGUSR1);  // delivered before pthread_kill returns
      }).join();
      ++sent;
    }
  });
  EXPECT_EQ(g_handled.load(), sent);
}

// A handler whose frame goes past the fiber's stack limit gets the overflow
// report naming the fiber, like any other overflow.
void huge_frame_handler(int) { g_handler_sum.fetch_add(touch_stack(192 * 1024)); }

TEST(SignalsDeathTest, HandlerPastTheStackLimitReportsOverflow) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ScopedHandler h(SIGUSR1, huge_frame_handler, 0);
        tendril::run(small_options(), [] {
          tendril::SpawnOptions so;
          so.name = "small-stack";
          so.stack_limit = 64 * 1024;
          tendril::spawn(so, [] { ::pthread_kill(::pthread_self(), SIGUSR1); }).join();
        });
      },
      "small-stack");
}

// Rule: an SA_ONSTACK handler runs on the worker thread's alternate stack
// (tendril installs one per worker for its overflow report; 64 KiB), not on
// the fiber's. Replace it with sigaltstack() only with one at least as large.
void onstack_handler(int) {
  stack_t cur{};
  ::sigaltstack(nullptr, &cur);
  g_handled.fetch_add((cur.ss_flags & SS_ONSTACK) != 0 ? 1 : 1000);
}

TEST(Signals, OnStackHandlerRunsOnTheWorkersAlternateStack) {
  ScopedHandler h(SIGUSR2, onstack_handler, SA_ONSTACK);
  g_handled = 0;
  tendril::run(small_options(), [] {
    tendril::spawn([] { ::pthread_kill(::pthread_self(), SIGUSR2); }).join();
  });
  EXPECT_EQ(g_handled.load(), 1);
}

}  // namespace
