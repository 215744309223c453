// Starting a sample server (or its client) as a child process whose stdout
// is a pipe to the caller: what the sample tests and the whole-run
// benchmarks do to drive the real binaries. Header-only; Linux.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace sample {

// Runs argv (argv[0] is a path) with stdout on a new pipe; stderr is shared.
// The child dies with the calling thread's process (PR_SET_PDEATHSIG, and an
// exit if the parent is already gone). Returns the pid with *out the pipe's
// read end, or -1 with errno set if the pipe or fork failed.
inline pid_t spawn_with_stdout_pipe(const std::vector<std::string>& argv, int* out) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(p[0]);
    ::close(p[1]);
    return -1;
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(p[1], STDOUT_FILENO);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(p[1]);
  *out = p[0];
  return pid;
}

}  // namespace sample
