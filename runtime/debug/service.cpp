// The stall watchdog and the dump-on-signal thread (see service.hpp).
#include "runtime/debug/service.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <strings.h>
#include <new>
#include <string>
#include <system_error>
#include <utility>

#include "runtime/debug/inspect.hpp"
#include "runtime/inject/fault_inject.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/debug.hpp"

namespace tendril::detail {

int parse_signal(const char* text) noexcept {
  if (text == nullptr || *text == '\0') return -1;
  if (*text >= '0' && *text <= '9') {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > SIGRTMAX) return -1;
    return int(v);
  }
  if (strncasecmp(text, "SIG", 3) == 0) text += 3;
  static const struct { const char* name; int sig; } kNames[] = {
      {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT},     {"ILL", SIGILL},   {"TRAP", SIGTRAP},
      {"ABRT", SIGABRT}, {"BUS", SIGBUS},   {"FPE", SIGFPE},       {"KILL", SIGKILL}, {"USR1", SIGUSR1},
      {"SEGV", SIGSEGV}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE},     {"ALRM", SIGALRM}, {"TERM", SIGTERM},
      {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},     {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN},
      {"TTOU", SIGTTOU}, {"URG", SIGURG},   {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM},
      {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"IO", SIGIO},       {"PWR", SIGPWR},   {"SYS", SIGSYS},
  };
  for (const auto& n : kNames)
    if (strcasecmp(text, n.name) == 0) return n.sig;
  if (strncasecmp(text, "RTMIN", 5) == 0) {
    const char* rest = text + 5;
    if (*rest == '\0') return SIGRTMIN;
    if (*rest != '+') return -1;
    char* end = nullptr;
    const long v = std::strtol(rest + 1, &end, 10);
    if (*end != '\0' || rest[1] == '\0' || v < 0 || SIGRTMIN + v > SIGRTMAX) return -1;
    return int(SIGRTMIN + v);
  }
  return -1;
}

const char* unusable_dump_signal(int sig) noexcept {
  if (sig < 1 || sig > SIGRTMAX) return "not a signal number";
  switch (sig) {
    case SIGKILL: case SIGSTOP: return "cannot be caught";
    case SIGSEGV: case SIGBUS: case SIGILL: case SIGFPE: case SIGTRAP: case SIGABRT:
      return "reserved for faults (stack overflow diagnostics, aborts)";
    case kStallSampleSignal: return "used by the stall watchdog to sample running fibers";
    default: return nullptr;
  }
}

namespace {

// ---- stall sampling ------------------------------------------------------------

constexpr std::size_t kSampleBytes = 64 * 1024;
constexpr std::int64_t kReportIntervalNs = 1'000'000'000;  // at most one written report per second
// kRequested -> kCopying (the handler claims the sample) -> kTaken or kMissed;
// or kRequested -> kIdle (the watchdog gives up first). Whoever moves it out
// of kRequested owns the buffer, so a late signal never writes into it.
enum : int { kIdle = 0, kRequested = 1, kCopying = 2, kTaken = 3, kMissed = 4 };

// What the handler on the stalled worker copies for the watchdog. One at a
// time: the watchdog requests a sample and waits for it.
struct StallSample {
  std::atomic<int> state{kIdle};
  unsigned worker = 0;
  FiberCtl* fiber = nullptr;
  MachineRegs regs;
  FiberId id = 0;
  char name[sizeof(FiberCtl::name)] = {};
  StackImage img;
  std::size_t copied = 0;
};

std::atomic<StallSample*> g_sample{nullptr};

[[maybe_unused]] void on_sample_signal(int, siginfo_t*, void* ucv) {  // unused under TSan
  StallSample* s = g_sample.load(std::memory_order_acquire);
  if (s == nullptr) return;
  Worker* w = current_worker();
  if (w == nullptr || w->index() != s->worker) return;
  int expected = kRequested;
  if (!s->state.compare_exchange_strong(expected, kCopying, std::memory_order_acq_rel)) return;
  FiberCtl* f = w->current();
  if (f != s->fiber) {
    s->state.store(kMissed, std::memory_order_release);
    return;
  }
  const auto* uc = static_cast<const ucontext_t*>(ucv);
  const greg_t* g = uc->uc_mcontext.gregs;
  s->regs.rip = std::uint64_t(g[REG_RIP]);
  s->regs.rsp = std::uint64_t(g[REG_RSP]);
  s->regs.rbp = std::uint64_t(g[REG_RBP]);
  s->regs.rbx = std::uint64_t(g[REG_RBX]);
  s->regs.r12 = std::uint64_t(g[REG_R12]);
  s->regs.r13 = std::uint64_t(g[REG_R13]);
  s->regs.r14 = std::uint64_t(g[REG_R14]);
  s->regs.r15 = std::uint64_t(g[REG_R15]);
  s->regs.pc_is_exact = true;
  s->id = f->id;
  std::memcpy(s->name, f->name, sizeof s->name);
  s->copied = 0;
  const auto lo = reinterpret_cast<std::uintptr_t>(f->stack.lo), hi = reinterpret_cast<std::uintptr_t>(f->stack.hi);
  // Only the fiber's own stack is copied (not a worker stack it may be on).
  if (s->regs.rsp > lo + 128 && s->regs.rsp < hi) {
    const std::uintptr_t from = (s->regs.rsp - 128) & ~std::uintptr_t{7};  // the red zone too
    std::size_t n = std::min<std::size_t>(hi - from, kSampleBytes) & ~std::size_t{7};
    copy_stack_words(s->img.words.data(), reinterpret_cast<const void*>(from), n);
    s->img.lo = from;
    s->copied = n;
  }
  s->state.store(kTaken, std::memory_order_release);
}

bool install(int sig, void (*handler)(int, siginfo_t*, void*), struct sigaction* old) {
  struct sigaction sa {};
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, old) == 0;
}

// ---- dump on a signal ----------------------------------------------------------

std::atomic<int> g_dump_pipe_write{-1};

void on_dump_signal(int, siginfo_t*, void*) {
  const int saved = errno;
  const int fd = g_dump_pipe_write.load(std::memory_order_acquire);
  if (fd >= 0) {
    const char b = 'd';
    [[maybe_unused]] ssize_t n = ::write(fd, &b, 1);  // full pipe: a dump is pending anyway
  }
  errno = saved;
}

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += std::size_t(n);
  }
}

// Nanoseconds thread `tid` has spent waiting for a CPU (runnable but not
// running): the second field of /proc/<tid>/schedstat. A worker the kernel
// preempted has not stalled; that time does not count. 0 without schedstat.
std::int64_t runqueue_wait_ns(int fd) {
  if (fd < 0) return 0;
  char buf[96];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  unsigned long long run = 0, wait = 0;
  if (std::sscanf(buf, "%llu %llu", &run, &wait) != 2) return 0;
  return std::int64_t(wait);
}

std::int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

namespace {

// A thread of the debug service, or a std::system_error naming it (the
// std::thread one says only "Resource temporarily unavailable").
template <class F>
std::thread start_thread(const char* what, F&& body) {
  try {
    return std::thread(std::forward<F>(body));
  } catch (const std::system_error& e) {
    throw std::system_error(e.code(), std::string("tendril::run: starting ") + what);
  }
}

// Runs a debug thread's body; if it runs out of memory (a tight RLIMIT_AS),
// the thread ends with a line on stderr instead of terminating the program:
// it is a diagnostic, the program runs on without it.
template <class F>
void out_of_memory_ends(const char* who, F&& body) noexcept {
  try {
    body();
  } catch (const std::bad_alloc&) {
    char line[128];
    const int n = std::snprintf(line, sizeof line, "tendril: %s stopped: out of memory\n", who);
    if (n > 0) {
      [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, line, static_cast<std::size_t>(n));
    }
  }
}

// Samples fiber `f`, running on worker `w` (index `i`), where it is: a signal
// to that worker copies its registers and the top of its stack into
// `sample`. Returns the sample's final state: kTaken, kMissed, or kRequested
// when no handler took it in time (the fiber switched first, or the signal
// was held back).
int sample_stalled_fiber(StallSample& sample, Worker& w, unsigned i, FiberCtl* f, bool signal_installed) {
  sample.worker = i;
  sample.fiber = f;
  sample.state.store(kRequested, std::memory_order_release);
  g_sample.store(&sample, std::memory_order_release);
  if (signal_installed && pthread_kill(w.native_handle(), kStallSampleSignal) == 0) {
    for (int waited = 0; waited < 100 && sample.state.load(std::memory_order_acquire) == kRequested; ++waited)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int state = kRequested;
  if (sample.state.compare_exchange_strong(state, kIdle, std::memory_order_acq_rel)) {
    state = kRequested;  // not sampled; a late handler now finds kIdle and leaves the buffer alone
  } else {
    while ((state = sample.state.load(std::memory_order_acquire)) == kCopying) std::this_thread::yield();
  }
  g_sample.store(nullptr, std::memory_order_release);
  return state;
}

// The report of a stall of `held` ns: with a backtrace when the sample was
// taken, otherwise the fiber named from its control block.
std::string stall_report(StallSample& sample, unsigned i, FiberCtl* f, std::int64_t held, int state) {
  const long long ms = held / 1000000;
  if (state != kTaken) {
    FiberId id = 0;
    char name[sizeof(FiberCtl::name)];
    read_identity(f, &id, name);
    return "tendril: stall: fiber " + std::to_string(id) + " \"" + name + "\" has run " + std::to_string(ms) +
           " ms on worker " + std::to_string(i) + " without yielding (no backtrace: it could not be sampled)\n";
  }
  std::string report = "tendril: stall: fiber " + std::to_string(sample.id) + " \"" + sample.name + "\" has run " +
                       std::to_string(ms) + " ms on worker " + std::to_string(i) + " without yielding\n";
  Unwinder u;
  sample.img.words.resize(sample.copied / 8);
  std::vector<FiberFrame> frames;
  if (sample.copied != 0) {
    frames = u.backtrace(sample.regs, sample.img);
  } else {
    const std::uintptr_t pc = sample.regs.rip;
    frames = u.symbolize(&pc, 1);
  }
  sample.img.words.resize(kSampleBytes / 8);
  trim_runtime_frames(&frames, /*park_frames=*/false);
  report += format_frames(frames);
  return report;
}

}  // namespace

DebugService::DebugService(Scheduler& sched, const Options& options)
    : sched_(sched), threshold_(options.stall_threshold), dump_signal_(options.dump_signal) {
  try {
    if (threshold_.count() > 0) start_watchdog();
    if (dump_signal_ != 0) start_dump_service();
  } catch (...) {
    stop();  // the part that started; the destructor does not run
    throw;
  }
}

void DebugService::start_watchdog() {
#if !TENDRIL_TSAN
  // Not under ThreadSanitizer: it defers a signal to its next interceptor,
  // where the handler would run on whatever the worker switched to since,
  // and its shadow state of the fiber stacks does not survive that. Stalls
  // are still reported there, without a backtrace.
  sample_installed_ = install(kStallSampleSignal, on_sample_signal, &old_sample_action_);
#endif
  watchdog_ = start_thread("the stall watchdog thread (Options::stall_threshold)",
                           [this] { out_of_memory_ends("the stall watchdog", [this] { watch_for_stalls(); }); });
}

// The dump signal's handler only writes a byte to a pipe; a thread reads it
// and dumps. Without the pipe or the thread the signal would do nothing, so
// run() fails instead, naming the call.
void DebugService::start_dump_service() {
  int err = injected_fault(FaultPoint::pipe);
  if (err == 0 && pipe2(dump_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) err = errno;
  if (err != 0)
    throw std::system_error(err, std::generic_category(), "tendril::run: pipe2 for the dump signal (Options::dump_signal)");
  g_dump_pipe_write.store(dump_pipe_[1], std::memory_order_release);
  dump_installed_ = install(dump_signal_, on_dump_signal, &old_dump_action_);
  dumper_ = start_thread("the dump-signal thread (Options::dump_signal)",
                         [this] { out_of_memory_ends("the dump-signal thread", [this] { serve_dump_signal(); }); });
}

void DebugService::stop() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (dump_pipe_[1] >= 0) {
    const char b = 'q';
    [[maybe_unused]] ssize_t n = ::write(dump_pipe_[1], &b, 1);
  }
  if (watchdog_.joinable()) watchdog_.join();
  if (dumper_.joinable()) dumper_.join();
  // The sample handler stays harmless after this (no request is pending), so
  // a late SIGURG finds nothing to do; restore the previous dispositions.
  if (sample_installed_) sigaction(kStallSampleSignal, &old_sample_action_, nullptr);
  if (dump_installed_) sigaction(dump_signal_, &old_dump_action_, nullptr);
  g_dump_pipe_write.store(-1, std::memory_order_release);
  for (int& fd : dump_pipe_)
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
}

void DebugService::serve_dump_signal() {
  pollfd p{dump_pipe_[0], POLLIN, 0};
  for (;;) {
    if (::poll(&p, 1, -1) < 0 && errno != EINTR) return;
    char buf[64];
    bool dump = false;
    for (ssize_t n; (n = ::read(dump_pipe_[0], buf, sizeof buf)) > 0;)
      for (ssize_t i = 0; i < n; ++i) dump |= buf[i] == 'd';
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    if (dump) dump_fibers(2);
  }
}

void DebugService::watch_for_stalls() {
  const unsigned n = sched_.worker_count();
  struct Seen {
    std::uint64_t switches = ~std::uint64_t{0};
    FiberCtl* fiber = nullptr;
    std::int64_t since = 0;
    std::int64_t waited_before = 0;  // runqueue wait of the worker at `since`
    bool reported = false;
  };
  std::vector<Seen> seen(n);
  std::vector<int> schedstat(n, -1);
  for (unsigned i = 0; i < n; ++i) {
    const std::string path = "/proc/self/task/" + std::to_string(sched_.worker(i).os_tid()) + "/schedstat";
    schedstat[i] = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  StallSample sample;
  sample.img.words.resize(kSampleBytes / 8);
  std::int64_t last_report = 0;
  std::uint64_t suppressed = 0;
  const auto period = std::max(std::chrono::milliseconds(1), threshold_ / 4);
  const std::int64_t threshold_ns = std::chrono::nanoseconds(threshold_).count();
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    const std::int64_t now = now_ns();
    for (unsigned i = 0; i < n; ++i) {
      Worker& w = sched_.worker(i);
      const std::uint64_t sw = w.counters().switches.load(std::memory_order_relaxed);
      FiberCtl* f = w.current();
      Seen& s = seen[i];
      if (f == nullptr || sw != s.switches || f != s.fiber) {
        s = Seen{sw, f, now, runqueue_wait_ns(schedstat[i]), false};
        continue;
      }
      if (s.reported || now - s.since < threshold_ns) continue;
      const std::int64_t held = now - s.since - (runqueue_wait_ns(schedstat[i]) - s.waited_before);
      if (held < threshold_ns) continue;  // mostly preempted by the kernel, not stalled
      s.reported = true;  // once per stall: until this worker switches
      sched_.stalls.fetch_add(1, std::memory_order_relaxed);
      if (last_report != 0 && now - last_report < kReportIntervalNs) {
        ++suppressed;
        continue;
      }
      last_report = now;
      std::string report = stall_report(sample, i, f, held, sample_stalled_fiber(sample, w, i, f, sample_installed_));
      if (suppressed != 0) {
        report += "tendril: stall: " + std::to_string(suppressed) +
                  " earlier stall(s) not shown (at most one report per second; see stats().stalls)\n";
        suppressed = 0;
      }
      write_all(2, report);
    }
    lock.lock();
  }
  for (int fd : schedstat)
    if (fd >= 0) ::close(fd);
}

}  // namespace tendril::detail
