// Seeing every fiber: a dump of all live fibers with what they wait for and
// where in their code they are, a snapshot of the same for programs, and the
// stall watchdog's report format.
//
//   tendril::dump_fibers();            // to stderr, while the program runs
//
//   fiber 7 "conn 10.0.0.3:5123" [parked: net read fd=12, 41 s] worker 1, 1 page mapped, high water 4 KiB, spawned as serve_connection(...)::{lambda()#1}
//     #0 tendril::net::TcpStream::read(void*, unsigned long) at net.cpp:281
//     #1 serve_connection(tendril::net::TcpStream) at main.cpp:40
//     ...
//
//   for (const tendril::FiberInfo& f : tendril::fibers())
//     if (f.state == tendril::FiberState::parked && f.parked_for > std::chrono::seconds(30))
//       log("fiber %llu waits for %s", f.id, tendril::to_string(f.reason));
//
// A fiber's state is `running` (on a worker now), `runnable` (queued) or
// `parked: <reason>, <how long>`. Reasons are the words of to_string(WaitReason):
// mutex, condvar, semaphore, wait group, channel send, channel recv, join,
// sleep, io read/write/poll fd=N, net accept/read/write/connect fd=N, blocking
// call, select.
//
// Frames come from the fiber's saved registers and stack, unwound with the
// program's call-frame information and symbolized from its symbol tables (a
// program built with -g, without -rdynamic, shows its own functions; file:line
// where there is debug info). A parked fiber is read without stopping it: if it
// is resumed while being read, the dump says so instead of printing frames
// that may be torn. Frames of other running or runnable fibers are not taken
// (their stacks are changing); the calling fiber's own frames are.
//
// Nothing stops the runtime: workers keep running fibers while a dump is
// written. The dump takes a consistent reading of each fiber, not of all of
// them at one instant.
//
// TENDRIL_DUMP_SIGNAL=USR1 (a name with or without SIG, or a number) makes the
// runtime write the dump to stderr on that signal, from a thread of its own
// (not inside the handler); the process keeps running, like Go's SIGQUIT dump
// without the exit.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "tendril/detail/wait_reason.hpp"
#include "tendril/fiber.hpp"

namespace tendril {

enum class FiberState : std::uint8_t { running, runnable, parked };

const char* to_string(FiberState s) noexcept;

struct FiberFrame {
  std::uintptr_t pc = 0;
  std::string function;  // demangled; empty when no symbol covers pc
  std::string file;      // from debug info; empty without it
  int line = 0;
};

struct FiberInfo {
  FiberId id = 0;
  std::string name;
  FiberState state = FiberState::runnable;
  WaitReason reason = WaitReason::none;  // parked only
  int fd = -1;                           // io_* and net_* reasons
  std::chrono::nanoseconds parked_for{0};
  int worker = -1;                       // running on / parked on; -1: not known (runnable)
  std::size_t stack_mapped = 0;          // bytes of its stack resident now
  std::size_t stack_high_water = 0;      // deepest extent reached, bytes
  std::string spawn_site;                // the callable's type, or SpawnOptions::site's symbol
  std::vector<FiberFrame> frames;        // innermost first; empty when not taken
};

// A snapshot of every live fiber, in fiber id order. Callable from a fiber or
// a plain thread, inside run(); outside run() it returns an empty vector.
std::vector<FiberInfo> fibers();

// Writes one entry per live fiber to `fd` (see the example above). Returns
// when everything is written; write errors (a closed pipe) end it quietly.
void dump_fibers(int fd = 2);

// One entry as dump_fibers writes it (first line and frames, each ending in
// a newline).
std::string format_fiber(const FiberInfo& f);

}  // namespace tendril
