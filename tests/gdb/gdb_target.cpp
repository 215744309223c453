// The program gdb_extension_test drives gdb against: fibers parked in known
// ways, one named fiber parked inside a known user function.
//
// Protocol: once every fiber is parked it writes one line to stdout,
//   ready pid=<pid> user=<id> mutex=<id> sleeper=<id> main=<id>
// then waits for a line on stdin: "abort" makes the main fiber call
// std::abort() (a core dump, if the parent allowed one); end of input exits.
// An alarm ends it if the parent disappears without closing stdin.
//
// `gdb_target unstarted`: one worker; the main fiber spawns a fiber named
// "gdb-unstarted", says `ready ... user=<its id> ... main=<id>` and then
// blocks the only worker in a plain read of stdin, so that fiber never gets
// to run (and never gets its stack) while gdb looks.
#include <tendril/tendril.hpp>

#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// The user function the backtrace must show: noinline, so it is a frame of
// its own even in an optimised build.
[[gnu::noinline]] int gdb_target_wait_for_order(tendril::Channel<int>& orders) {
  std::optional<int> v = orders.recv();
  asm volatile("" ::: "memory");  // keeps the frame (no tail call)
  return v.value_or(-1);
}

bool all_parked(std::size_t want) {
  std::size_t parked = 0;
  for (const tendril::FiberInfo& f : tendril::fibers())
    parked += f.state == tendril::FiberState::parked && f.reason != tendril::WaitReason::blocking_call;
  return parked >= want;
}

}  // namespace

// Reads a line from stdin; "abort" aborts, anything else exits.
[[noreturn]] void obey(bool blocking_the_worker) {
  std::string line;
  char c;
  if (blocking_the_worker) {
    while (::read(0, &c, 1) == 1 && c != '\n') line += c;
  } else {
    while (tendril::io::read(0, &c, 1) == 1 && c != '\n') line += c;
  }
  if (line == "abort") std::abort();
  std::_Exit(0);  // the parked fibers are left as they are
}

void run_unstarted() {
  tendril::Options opts;
  opts.workers = 1;
  opts.stall_threshold = std::chrono::milliseconds(0);  // the worker is blocked on purpose
  tendril::run(opts, [] {
    auto never = tendril::spawn({.name = "gdb-unstarted"}, [] { std::_Exit(3); });
    std::printf("ready pid=%d user=%llu mutex=0 sleeper=0 main=%llu\n", int(getpid()),
                (unsigned long long)never.id(), (unsigned long long)tendril::this_fiber::id());
    std::fflush(stdout);
    obey(/*blocking_the_worker=*/true);
  });
}

int main(int argc, char** argv) {
  alarm(300);
  // gdb is the test's child, not our ancestor: where Yama restricts ptrace
  // to ancestors, allow it in.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  if (argc > 1 && std::string(argv[1]) == "unstarted") {
    run_unstarted();
    return 0;
  }
  tendril::Options opts;
  opts.workers = 2;
  tendril::run(opts, [] {
    tendril::Mutex mu;
    tendril::Channel<int> orders(0);
    mu.lock();
    auto user = tendril::spawn({.name = "gdb-user"}, [&orders] { gdb_target_wait_for_order(orders); });
    auto waiter = tendril::spawn({.name = "gdb-mutex"}, [&mu] { mu.lock(); mu.unlock(); });
    auto sleeper = tendril::spawn({.name = "gdb-sleeper"},
                                  [] { tendril::this_fiber::sleep_for(std::chrono::hours(1)); });
    while (!all_parked(3)) tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
    std::printf("ready pid=%d user=%llu mutex=%llu sleeper=%llu main=%llu\n", int(getpid()),
                (unsigned long long)user.id(), (unsigned long long)waiter.id(), (unsigned long long)sleeper.id(),
                (unsigned long long)tendril::this_fiber::id());
    std::fflush(stdout);
    obey(/*blocking_the_worker=*/false);
  });
}
