// Runs one measurement in a forked child, so that each starts from a fresh
// process (no stacks, caches or freed memory left by the one before), and
// hands its plain-data result back through a pipe.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace bench {

template <class Result, class Measure>
Result measure_in_child(Measure&& measure) {
  static_assert(std::is_trivially_copyable_v<Result>, "the result crosses a pipe");
  int fd[2];
  if (pipe(fd) != 0) std::abort();
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    const Result r = measure();
    (void)!write(fd[1], &r, sizeof r);
    _exit(0);
  }
  close(fd[1]);
  Result r{};
  if (read(fd[0], &r, sizeof r) != ssize_t(sizeof r)) std::fprintf(stderr, "child failed\n");
  close(fd[0]);
  waitpid(pid, nullptr, 0);
  return r;
}

}  // namespace bench
