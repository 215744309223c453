// tendril::run(): start the runtime, run a main fiber, stop.
//
//   int main() {
//     tendril::run([] {
//       auto f = tendril::spawn([] { std::puts("hello from a fiber"); });
//       f.join();
//     });
//   }
//
// run() starts Options::workers worker threads, runs `main` as a fiber on them,
// and returns when `main` returns, rethrowing an exception that escaped it.
// Like Go's main, returning from `main` ends the program's fibers: fibers that
// are still running or parked are abandoned (their destructors do not run), so
// join what must finish. Calling run() while a run() is in progress, from any
// thread, throws std::logic_error. run() may be called again after it returned.
// If what it starts cannot be had (a worker thread, a worker's I/O poller, the
// dump signal's pipe or thread), run() throws std::system_error naming the
// call, with its errno, before `main` runs; everything it started is stopped.
#pragma once

#include <functional>

#include "tendril/options.hpp"

namespace tendril {

void run(std::function<void()> main);
void run(const Options& options, std::function<void()> main);

// True on a thread that is a worker of the running runtime (so a fiber is
// running on this thread).
bool in_runtime() noexcept;

}  // namespace tendril
