// share/tendril/tendril-gdb.py driven through real gdb in batch mode: the
// fiber listing and a fiber's backtrace, on a live process (gdb -p) and on
// the core file of the same program after it aborted.
//
// gdb_target (gdb_target.cpp) parks fibers in known ways and says which ids
// they have; CMake passes the paths of gdb, the script and the target.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// Every gdb run is bounded: a hung attach fails the test instead of hanging it.
constexpr const char* kGdbTimeout = "120";

struct Target {
  pid_t pid = -1;
  int to_child = -1;  // the target's stdin
  unsigned long long user = 0, mutex = 0, sleeper = 0, main = 0;
};

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Starts gdb_target in `dir` (where its core lands) and reads its ready line.
Target start_target(const fs::path& dir, const char* mode = nullptr) {
  int in[2], out[2];
  if (pipe(in) != 0 || pipe(out) != 0) ADD_FAILURE() << "pipe: " << std::strerror(errno);
  Target t;
  t.pid = fork();
  if (t.pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]); close(in[1]); close(out[0]); close(out[1]);
    if (chdir(dir.c_str()) != 0) _exit(126);
    const rlimit core{RLIM_INFINITY, RLIM_INFINITY};
    if (setrlimit(RLIMIT_CORE, &core) != 0) {
      const rlimit some{rlim_t(1) << 40, rlim_t(1) << 40};  // as much as the hard limit allows
      setrlimit(RLIMIT_CORE, &some);
    }
    execl(TENDRIL_GDB_TARGET, TENDRIL_GDB_TARGET, mode, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  t.to_child = in[1];
  std::string line;
  char c;
  while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
  close(out[0]);
  if (std::sscanf(line.c_str(), "ready pid=%*d user=%llu mutex=%llu sleeper=%llu main=%llu", &t.user, &t.mutex,
                  &t.sleeper, &t.main) != 4)
    ADD_FAILURE() << "gdb_target did not get ready: '" << line << "'";
  return t;
}

int finish_target(Target& t, const char* command) {
  if (t.to_child >= 0) {
    if (command != nullptr) (void)!write(t.to_child, command, std::strlen(command));
    close(t.to_child);
    t.to_child = -1;
  }
  int status = 0;
  waitpid(t.pid, &status, 0);
  return status;
}

// Runs gdb in batch mode with the script sourced and `commands`; returns
// what it printed (stdout and stderr).
std::string run_gdb(const std::string& target_args, const std::vector<std::string>& commands) {
  std::string cmd = std::string("timeout ") + kGdbTimeout + " " + quoted(TENDRIL_GDB) +
                    " -nx -batch -iex 'set auto-load python-scripts off' -ex " + quoted(std::string("source ") + TENDRIL_GDB_SCRIPT);
  for (const std::string& c : commands) cmd += " -ex " + quoted(c);
  cmd += " " + target_args + " 2>&1 </dev/null";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
  }
  return out;
}

std::string fiber_line(unsigned long long id, const std::string& name, const std::string& state) {
  return "fiber " + std::to_string(id) + " \"" + name + "\" [" + state;
}

// What both the live process and the core must show for the parked fibers.
void expect_parked_fibers(const std::string& out, const Target& t) {
  EXPECT_NE(out.find(fiber_line(t.user, "gdb-user", "parked: channel recv")), std::string::npos) << out;
  EXPECT_NE(out.find(fiber_line(t.mutex, "gdb-mutex", "parked: mutex")), std::string::npos) << out;
  EXPECT_NE(out.find(fiber_line(t.sleeper, "gdb-sleeper", "parked: sleep")), std::string::npos) << out;
  // The backtrace of the named fiber reaches into the user's function.
  EXPECT_NE(out.find("in (anonymous namespace)::gdb_target_wait_for_order"), std::string::npos) << out;
  EXPECT_NE(out.find("gdb_target.cpp"), std::string::npos) << out;
  EXPECT_EQ(out.find("Python Exception"), std::string::npos) << out;
}

class GdbExtension : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tendril-gdb-test." + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

bool attach_refused(const std::string& out) {
  return out.find("ptrace: Operation not permitted") != std::string::npos;
}

TEST_F(GdbExtension, ListsAndBacktracesFibersOfALiveProcess) {
  Target t = start_target(dir_);
  ASSERT_NE(t.user, 0u);
  const std::string out = run_gdb("-p " + std::to_string(t.pid),
                                  {"info tendril-fibers", "tendril-fiber-bt " + std::to_string(t.user),
                                   "tendril-fiber-bt " + std::to_string(t.mutex)});
  finish_target(t, nullptr);
  if (attach_refused(out)) GTEST_SKIP() << "this system does not let gdb attach (ptrace): " << out;
  expect_parked_fibers(out, t);
  // The main fiber is parked reading its stdin.
  EXPECT_NE(out.find(fiber_line(t.main, "main", "parked: io read fd=0")), std::string::npos) << out;
  EXPECT_NE(out.find("in tendril::Mutex::lock"), std::string::npos) << out;
}

// A fiber that has not run yet has no stack (deferred stacks): the script
// finds it in the control-block caches.
TEST_F(GdbExtension, ListsAFiberThatHasNotStartedYet) {
  // The target inherits the environment, which overrides its options.
  for (const char* v : {"TENDRIL_WORKERS", "TENDRIL_STACK_DEFER"})
    if (std::getenv(v) != nullptr) GTEST_SKIP() << v << " is set: the target's fiber may start";
  Target t = start_target(dir_, "unstarted");
  ASSERT_NE(t.user, 0u);
  const std::string out = run_gdb("-p " + std::to_string(t.pid),
                                  {"info tendril-fibers", "tendril-fiber-bt " + std::to_string(t.user)});
  finish_target(t, nullptr);
  if (attach_refused(out)) GTEST_SKIP() << "this system does not let gdb attach (ptrace): " << out;
  EXPECT_NE(out.find(fiber_line(t.user, "gdb-unstarted", "runnable] not started")), std::string::npos) << out;
  EXPECT_NE(out.find("not started: it has no stack and no frames yet"), std::string::npos) << out;
  // The main fiber runs (it blocks the worker's thread in read(2)).
  EXPECT_NE(out.find(fiber_line(t.main, "main", "running")), std::string::npos) << out;
  EXPECT_NE(out.find("2 fibers"), std::string::npos) << out;
  EXPECT_EQ(out.find("Python Exception"), std::string::npos) << out;
}

TEST_F(GdbExtension, ListsAndBacktracesFibersOfACoreFile) {
  // A core pattern that pipes to a program (systemd-coredump, apport) or
  // writes elsewhere keeps the core out of our reach.
  std::string pattern;
  std::getline(std::ifstream("/proc/sys/kernel/core_pattern"), pattern);
  if (pattern.empty() || pattern[0] == '|' || pattern.find('/') != std::string::npos)
    GTEST_SKIP() << "kernel.core_pattern is '" << pattern << "': cores do not land in the working directory";
  Target t = start_target(dir_);
  ASSERT_NE(t.user, 0u);
  const int status = finish_target(t, "abort\n");
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) << status;
  if (!WCOREDUMP(status)) GTEST_SKIP() << "no core was dumped (RLIMIT_CORE or core_pattern)";
  fs::path core;
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().filename().string().rfind("core", 0) == 0) core = e.path();
  ASSERT_FALSE(core.empty()) << "core dumped, but not in " << dir_;

  const std::string out = run_gdb(quoted(TENDRIL_GDB_TARGET) + " " + quoted(core.string()),
                                  {"info tendril-fibers", "tendril-fiber-bt " + std::to_string(t.user),
                                   "tendril-fiber-bt " + std::to_string(t.main)});
  expect_parked_fibers(out, t);
  // The main fiber called abort(): it is running, on the thread that aborted,
  // and its backtrace is that thread's.
  EXPECT_NE(out.find(fiber_line(t.main, "main", "running")), std::string::npos) << out;
  EXPECT_NE(out.find("abort"), std::string::npos) << out;
}

}  // namespace
