// tendril::Options: how the runtime is configured.
//
// Every field has a TENDRIL_* environment variable. A variable that is set
// overrides the value passed in code, so an operator can retune a deployed binary
// without rebuilding it; a malformed value makes run() throw
// std::invalid_argument naming the variable.
//
//   tendril::Options opts;
//   opts.workers = 2;                  // or TENDRIL_WORKERS=2
//   opts.stack_limit = 1 << 20;        // or TENDRIL_STACK_LIMIT=1M
//   tendril::run(opts, [] { /* ... */ });
//
// | field            | variable                 | default                          |
// |------------------|--------------------------|----------------------------------|
// | workers          | TENDRIL_WORKERS          | 0: one per CPU in the affinity mask |
// | stack_limit      | TENDRIL_STACK_LIMIT      | 256 KiB (suffixes K, M, G)       |
// | spin_before_park | TENDRIL_SPIN_US          | 50 microseconds                  |
// | pin_workers      | TENDRIL_PIN              | true (1/0, true/false)           |
// | stack_mode       | TENDRIL_STACK_MODE       | "" (automatic): "uffd" or "kernel" |
// | io_backend       | TENDRIL_IO               | "" (automatic): "uring" or "epoll" |
// | stack_cache_bytes| TENDRIL_STACK_CACHE_BYTES| 64 MiB (suffixes K, M, G); 0: no cache |
// | stack_fill       | TENDRIL_STACK_FILL       | "" (copy): "copy" or "move"      |
// | stack_grow_pages | TENDRIL_STACK_GROW       | 16 (1..16)                       |
// | stack_burst      | TENDRIL_STACK_BURST_US   | 1000 microseconds; 0: no bursts  |
// | stack_learn_depth| TENDRIL_STACK_LEARN      | true (1/0, true/false)           |
// | stack_defer      | TENDRIL_STACK_DEFER      | true (1/0, true/false)           |
// | stack_numa_check | TENDRIL_STACK_NUMA_CHECK | false (1/0, true/false)          |
// | stack_place      | TENDRIL_STACK_PLACE      | "" (faulter with several nodes, else owner) |
// | blocking_threads | TENDRIL_BLOCKING_THREADS | 64 (1..4096)                     |
// | stall_threshold  | TENDRIL_STALL_MS         | 100 ms; 0: no stall watchdog     |
// | dump_signal      | TENDRIL_DUMP_SIGNAL      | 0: none (USR1, SIGUSR1 or a number) |
// | compact_after    | TENDRIL_COMPACT_MS       | 1000 ms; 0: off (at most 1 h)    |
//
// The stack_* tuning fields after stack_cache_bytes apply to the userfaultfd
// stack mode; they exist to measure alternatives, the defaults are the
// measured best.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace tendril {

struct Options {
  // Worker threads (one per CPU, pinned). 0: one per CPU in the process's
  // affinity mask (sched_getaffinity).
  unsigned workers = 0;
  // Default largest stack of a fiber, in bytes, rounded up to whole pages.
  // SpawnOptions::stack_limit overrides it per fiber.
  std::size_t stack_limit = 256 * 1024;
  // How long an idle worker looks for work before it parks its thread.
  std::chrono::microseconds spin_before_park{50};
  // Pin worker i to the i-th CPU of the affinity mask.
  bool pin_workers = true;
  // Stack growth mechanism: "" chooses (userfaultfd where allowed, else kernel
  // demand paging), "uffd" or "kernel" force one.
  std::string stack_mode;
  // I/O backend: "" chooses (io_uring where the kernel allows it, else
  // epoll), "uring" or "epoll" force one.
  std::string io_backend;
  // Memory budget of the free-stack cache: resident pages that freed fiber
  // stacks may keep so the next spawn takes no page fault and no system call.
  // The cache grows under spawn/exit churn up to this and gives the pages back
  // when churn stops. 0 disables it (every exit returns its stack's pages).
  std::size_t stack_cache_bytes = std::size_t(64) << 20;
  // How a stack fault is filled: "" or "copy" copies zero pages in
  // (UFFDIO_COPY); "move" moves them from per-worker page pools (UFFDIO_MOVE).
  std::string stack_fill;
  // Most pages one stack fault maps (1 to 16; 16 pages is the zero source).
  unsigned stack_grow_pages = 16;
  // Faults of one stack this close together are a burst: the next fault maps
  // stack_grow_pages at once. 0: no bursts.
  std::chrono::microseconds stack_burst{1000};
  // Remember per spawn site how deep its stacks grew and hand out stacks
  // already mapped that deep.
  bool stack_learn_depth = true;
  // Give a fiber spawned on a worker its stack when it first runs, not at
  // spawn, when its callable fits in its control block (96 bytes, moved
  // without throwing): fibers queued behind a spawner hold no pages. Spawn
  // still throws when the stack arena is full. Such a fiber is in the fiber
  // dump (runnable, no frames) but not in the gdb script's list until it
  // runs; false gives every fiber its stack at spawn. Both stack modes.
  bool stack_defer = true;
  // Check which NUMA node a released stack's pages are on even on a machine
  // with one node (the check always runs with several nodes).
  bool stack_numa_check = false;
  // On which node a stack fault's pages are allocated: "faulter" (the node of
  // the worker whose fiber faulted: a stolen fiber grows on the node it runs
  // on), "owner" (the slot owner's handler's node), "" (faulter where there
  // is more than one node, else owner).
  std::string stack_place;
  // Most threads that run blocking calls (tendril/blocking.hpp) at once.
  unsigned blocking_threads = 64;
  // Stall watchdog: a fiber that holds a worker this long without switching
  // (running, or blocked in a system call; not counting time the kernel kept
  // the thread off the CPU) is reported once on stderr, with its backtrace,
  // and counted in stats().stalls (see <tendril/debug.hpp>). 0: off.
  std::chrono::milliseconds stall_threshold{100};
  // A signal on which the runtime writes the fiber dump to stderr and the
  // process goes on (0: none). Not SIGKILL, SIGSTOP, the fault signals
  // (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT) or SIGURG, which the
  // stall watchdog uses to sample a running fiber. run() throws
  // std::system_error if the pipe or the thread behind it cannot be made.
  int dump_signal = 0;
  // Idle-stack compaction (userfaultfd stack mode only): a fiber parked this
  // long has the used part of its stack copied into a buffer sized to it
  // and all of its pages given back; they come back with their
  // content when the fiber next runs, or when anything touches them first
  // (stats().compactions, restores, fibers_compacted, compact_bytes).
  // Compacting costs the worker tens of microseconds per fiber and a resume
  // a few more (a page copy), once per idle period; the worker compacts in
  // its idle time and gives it at most a tenth of its time while it has
  // other work, so a burst of fibers that all park at once is compacted
  // over the following idle time, not at the cost of the fibers that run.
  // An idle fiber then costs about 1.8 KiB instead of 5 KiB (a parked
  // connection about 2.9 KiB instead of 5.9 KiB). 0: off. Needs Linux 6.8+
  // (UFFDIO_MOVE); ignored (off) in kernel stack mode.
  std::chrono::milliseconds compact_after{1000};

  // The values in *this with every TENDRIL_* variable that is set applied on
  // top. Throws std::invalid_argument for a malformed or out-of-range value.
  Options with_environment() const;
};

}  // namespace tendril
