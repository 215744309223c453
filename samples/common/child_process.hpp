// Starting a sample server (or its client) as a child process whose stdout
// is a pipe to the caller: what the sample tests and the whole-run
// benchmarks do to drive the real binaries. Header-only; Linux.
//
//   sample::ChildProcess echo({"build/samples/echo", "--port", "0"});
//   auto port = sample::listening_port(echo.read_line(10s).value_or(""));
//   ...
//   int status = echo.stop(10s);  // SIGTERM, then the wait status
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
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
    const int e = errno;
    ::close(p[0]);
    ::close(p[1]);
    errno = e;
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

// Exit code of a wait status: the code of a normal exit, 128 + the signal
// of a killed process (as a shell reports it), -1 for no status (-1).
inline int exit_code(int status) {
  if (status < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A child started by spawn_with_stdout_pipe, its stdout read line by line.
// Killed (SIGKILL) and reaped if still running when destroyed; it also dies
// with the thread that started it (PR_SET_PDEATHSIG), so start long-lived
// children from a thread that lives as long as they should.
class ChildProcess {
 public:
  using Millis = std::chrono::milliseconds;
  // Long enough for any sample to start or stop on a loaded machine: a wait
  // this long only turns a hang into a failure.
  static constexpr Millis kPatience{30000};

  // Throws std::system_error naming pipe2 or fork if the child could not be
  // started (a path that cannot be executed is a child exiting 127).
  explicit ChildProcess(const std::vector<std::string>& argv) {
    pid_ = spawn_with_stdout_pipe(argv, &out_);
    if (pid_ < 0) throw std::system_error(errno, std::generic_category(), "pipe2 or fork for " + argv.at(0));
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    kill();
    close_stdout();
  }

  pid_t pid() const { return pid_; }

  // The next line of stdout (without '\n'), or nullopt at its end or after
  // timeout.
  std::optional<std::string> read_line(Millis timeout = kPatience) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (const auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      if (!read_some(until)) return std::nullopt;
    }
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Reads stdout until the child closes it (kept for read_line, or moved to
  // *rest), then reaps the child: its wait status, or -1 if it did not end
  // within timeout (it is left running).
  int wait(Millis timeout = kPatience, std::string* rest = nullptr) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (out_ >= 0 && read_some(until)) {
    }
    if (rest != nullptr) rest->append(std::exchange(buf_, {}));
    for (;;) {
      if (pid_ <= 0) return -1;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      if (std::chrono::steady_clock::now() > until) return -1;
      ::usleep(5000);  // polling for an exit status: there is nothing to read
    }
  }

  // sig, then wait(timeout).
  int signal_and_wait(int sig, Millis timeout = kPatience, std::string* rest = nullptr) {
    signal(sig);
    return wait(timeout, rest);
  }

  // SIGTERM and the wait status; SIGKILL (and -1) if it did not end in time.
  int stop(Millis timeout) {
    const int status = signal_and_wait(SIGTERM, timeout);
    if (status < 0) kill();
    return status;
  }

  // SIGKILL, reaped.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // Later output goes nowhere (a child that writes more gets EPIPE).
  void close_stdout() {
    if (out_ >= 0) ::close(std::exchange(out_, -1));
  }

 private:
  // Appends what arrives before `until` to buf_; false at the end of stdout
  // (then closed) or at `until`.
  bool read_some(std::chrono::steady_clock::time_point until) {
    if (out_ < 0) return false;
    for (;;) {
      const auto left = std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd pfd{out_, POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(left));
      if (r < 0 && errno != EINTR) return false;
      if (r <= 0) continue;
      char b[512];
      const ssize_t n = ::read(out_, b, sizeof b);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close_stdout();
        return false;
      }
      buf_.append(b, static_cast<std::size_t>(n));
      return true;
    }
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
};

}  // namespace sample
