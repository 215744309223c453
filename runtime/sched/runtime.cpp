// tendril::run(): brings a Scheduler and the stack subsystem up around the
// main fiber, and takes them down again.
#include "tendril/runtime.hpp"

#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "runtime/debug/service.hpp"
#include "runtime/io/poller.hpp"
#include "runtime/sched/fork.hpp"
#include "runtime/sched/scheduler.hpp"
#include "runtime/stack/stack.hpp"
#include "tendril/fiber.hpp"
#include "tendril/stats.hpp"

namespace tendril {

namespace detail {
bool run_in_progress() noexcept;
}

namespace {

std::atomic<bool> g_running{false};
std::mutex g_last_stats_mu;
Stats g_last_stats;

[[noreturn]] void bad_env(const char* var, const char* value, const char* why) {
  throw std::invalid_argument(std::string("tendril: ") + var + "=\"" + value + "\": " + why);
}

unsigned long long parse_unsigned(const char* var, const char* value) {
  if (*value == '\0' || *value == '-' || *value == '+') bad_env(var, value, "expected a non-negative integer");
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(value, &end, 10);
  if (errno != 0 || *end != '\0') bad_env(var, value, "expected a non-negative integer");
  return v;
}

std::size_t parse_size(const char* var, const char* value) {
  errno = 0;
  char* end = nullptr;
  if (*value == '\0' || *value == '-' || *value == '+') bad_env(var, value, "expected a size such as 262144, 256K or 1M");
  unsigned long long v = std::strtoull(value, &end, 10);
  if (errno != 0 || end == value) bad_env(var, value, "expected a size such as 262144, 256K or 1M");
  unsigned shift = 0;
  switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; ++end; break;
    case 'm': case 'M': shift = 20; ++end; break;
    case 'g': case 'G': shift = 30; ++end; break;
    default: bad_env(var, value, "expected a size such as 262144, 256K or 1M");
  }
  if (*end == 'i' || *end == 'B') ++end;  // accept KiB / KB spellings
  if (*end == 'B') ++end;
  if (*end != '\0') bad_env(var, value, "expected a size such as 262144, 256K or 1M");
  if (shift != 0 && v > (~0ULL >> shift)) bad_env(var, value, "too large");
  return static_cast<std::size_t>(v << shift);
}

unsigned parse_in_range(const char* var, const char* value, unsigned long long lo, unsigned long long hi) {
  const unsigned long long n = parse_unsigned(var, value);
  if (n < lo || n > hi)
    bad_env(var, value, ("expected " + std::to_string(lo) + " to " + std::to_string(hi)).c_str());
  return static_cast<unsigned>(n);
}

unsigned long long parse_at_most(const char* var, const char* value, unsigned long long hi) {
  const unsigned long long n = parse_unsigned(var, value);
  if (n > hi) bad_env(var, value, ("at most " + std::to_string(hi)).c_str());
  return n;
}

// "" (the automatic choice), `a` or `b`.
std::string parse_choice(const char* var, const char* value, const char* a, const char* b) {
  if (*value != '\0' && std::strcmp(value, a) != 0 && std::strcmp(value, b) != 0)
    bad_env(var, value, (std::string("expected ") + a + " or " + b).c_str());
  return value;
}

bool parse_bool(const char* var, const char* value) {
  if (!std::strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcasecmp(value, "on")) return true;
  if (!std::strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcasecmp(value, "off")) return false;
  bad_env(var, value, "expected 1/0, true/false, yes/no or on/off");
}

constexpr unsigned kMaxStackGrowPages = 16;  // the stack code's zero source is 16 pages
constexpr unsigned kMaxBlockingThreads = 4096;
constexpr unsigned long long kMaxBurstUs = 3600ull * 1000 * 1000;

void validate(const Options& o) {
  if (o.workers > 256) throw std::invalid_argument("tendril: Options::workers must be at most 256");
  if (o.stack_limit < 16 * 1024 || o.stack_limit > (std::size_t{1} << 30))
    throw std::invalid_argument("tendril: Options::stack_limit must be within [16 KiB, 1 GiB]");
  if (o.spin_before_park.count() < 0 || o.spin_before_park > std::chrono::seconds(1))
    throw std::invalid_argument("tendril: Options::spin_before_park must be within [0, 1 s]");
  if (!o.io_backend.empty() && o.io_backend != "uring" && o.io_backend != "epoll")
    throw std::invalid_argument("tendril: I/O backend must be \"uring\" or \"epoll\", not \"" + o.io_backend + "\"");
  if (o.stall_threshold.count() < 0 || o.stall_threshold > std::chrono::hours(1))
    throw std::invalid_argument("tendril: Options::stall_threshold must be within [0, 1 h]");
  if (o.dump_signal != 0) {
    if (const char* why = detail::unusable_dump_signal(o.dump_signal))
      throw std::invalid_argument("tendril: Options::dump_signal " + std::to_string(o.dump_signal) + ": " + why);
  }
  if (!o.stack_mode.empty() && o.stack_mode != "uffd" && o.stack_mode != "kernel")
    throw std::invalid_argument("tendril: stack mode must be \"uffd\" or \"kernel\", not \"" + o.stack_mode + "\"");
  if (!o.stack_place.empty() && o.stack_place != "owner" && o.stack_place != "faulter")
    throw std::invalid_argument("tendril: stack placement must be \"owner\" or \"faulter\", not \"" + o.stack_place + "\"");
  if (!o.stack_fill.empty() && o.stack_fill != "copy" && o.stack_fill != "move")
    throw std::invalid_argument("tendril: stack fill must be \"copy\" or \"move\", not \"" + o.stack_fill + "\"");
  if (o.stack_grow_pages < 1 || o.stack_grow_pages > kMaxStackGrowPages)
    throw std::invalid_argument("tendril: Options::stack_grow_pages must be within [1, 16]");
  if (o.stack_burst.count() < 0 || o.stack_burst.count() > static_cast<long long>(kMaxBurstUs))
    throw std::invalid_argument("tendril: Options::stack_burst must be within [0, 1 h]");
  if (o.compact_after.count() < 0 || o.compact_after > std::chrono::hours(1))
    throw std::invalid_argument("tendril: Options::compact_after must be within [0, 1 h]");
  if (o.blocking_threads < 1 || o.blocking_threads > kMaxBlockingThreads)
    throw std::invalid_argument("tendril: Options::blocking_threads must be within [1, 4096]");
}

// Servers hold a descriptor per connection: raise the soft limit to the hard
// one (documented in the README).
void raise_nofile_limit() noexcept {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// After the workers stopped (or never started): the last counters for
// stats(), then the I/O and stack subsystems go.
void tear_down(detail::Scheduler& sched) {
  {
    // Under the lock that stats() holds while it reads the live scheduler, so
    // a plain thread calling stats() now never sees it half destroyed.
    std::lock_guard<std::mutex> g(g_last_stats_mu);
    g_last_stats = sched.snapshot();
    detail::set_current_scheduler(nullptr);
  }
  detail::io_shutdown();
  detail::stack_shutdown();
}

struct RunGuard {
  RunGuard() {
    if (detail::forked_from_running_runtime()) throw std::logic_error(detail::used_after_fork_message());
    detail::watch_fork();
    bool expected = false;
    if (!g_running.compare_exchange_strong(expected, true))
      throw std::logic_error(detail::current_worker() != nullptr
                                 ? "tendril::run called from inside tendril::run (from a fiber)"
                                 : "tendril::run called while another tendril::run is in progress");
  }
  ~RunGuard() { g_running.store(false); }
};

}  // namespace

// Every TENDRIL_* variable is read here and nowhere else.
Options Options::with_environment() const {
  Options o = *this;
  if (const char* v = std::getenv("TENDRIL_WORKERS")) o.workers = parse_at_most("TENDRIL_WORKERS", v, 256);
  if (const char* v = std::getenv("TENDRIL_STACK_LIMIT")) o.stack_limit = parse_size("TENDRIL_STACK_LIMIT", v);
  if (const char* v = std::getenv("TENDRIL_SPIN_US"))
    o.spin_before_park = std::chrono::microseconds(parse_at_most("TENDRIL_SPIN_US", v, 1000000));
  if (const char* v = std::getenv("TENDRIL_PIN")) o.pin_workers = parse_bool("TENDRIL_PIN", v);
  if (const char* v = std::getenv("TENDRIL_STACK_MODE")) o.stack_mode = parse_choice("TENDRIL_STACK_MODE", v, "uffd", "kernel");
  if (const char* v = std::getenv("TENDRIL_STACK_CACHE_BYTES"))
    o.stack_cache_bytes = parse_size("TENDRIL_STACK_CACHE_BYTES", v);
  if (const char* v = std::getenv("TENDRIL_IO")) o.io_backend = parse_choice("TENDRIL_IO", v, "uring", "epoll");
  if (const char* v = std::getenv("TENDRIL_STACK_FILL")) o.stack_fill = parse_choice("TENDRIL_STACK_FILL", v, "copy", "move");
  if (const char* v = std::getenv("TENDRIL_STACK_GROW"))
    o.stack_grow_pages = parse_in_range("TENDRIL_STACK_GROW", v, 1, kMaxStackGrowPages);
  if (const char* v = std::getenv("TENDRIL_STACK_BURST_US"))
    o.stack_burst = std::chrono::microseconds(parse_at_most("TENDRIL_STACK_BURST_US", v, kMaxBurstUs));
  if (const char* v = std::getenv("TENDRIL_STACK_LEARN")) o.stack_learn_depth = parse_bool("TENDRIL_STACK_LEARN", v);
  if (const char* v = std::getenv("TENDRIL_STACK_DEFER")) o.stack_defer = parse_bool("TENDRIL_STACK_DEFER", v);
  if (const char* v = std::getenv("TENDRIL_STACK_NUMA_CHECK"))
    o.stack_numa_check = parse_bool("TENDRIL_STACK_NUMA_CHECK", v);
  if (const char* v = std::getenv("TENDRIL_STACK_PLACE")) o.stack_place = parse_choice("TENDRIL_STACK_PLACE", v, "owner", "faulter");
  if (const char* v = std::getenv("TENDRIL_BLOCKING_THREADS"))
    o.blocking_threads = parse_in_range("TENDRIL_BLOCKING_THREADS", v, 1, kMaxBlockingThreads);
  if (const char* v = std::getenv("TENDRIL_COMPACT_MS"))
    o.compact_after = std::chrono::milliseconds(parse_at_most("TENDRIL_COMPACT_MS", v, 3600000));
  if (const char* v = std::getenv("TENDRIL_STALL_MS")) {
    o.stall_threshold = std::chrono::milliseconds(parse_at_most("TENDRIL_STALL_MS", v, 3600000));
  }
  if (const char* v = std::getenv("TENDRIL_DUMP_SIGNAL")) {
    if (*v == '\0') {
      o.dump_signal = 0;
    } else {
      const int sig = detail::parse_signal(v);
      if (sig <= 0) bad_env("TENDRIL_DUMP_SIGNAL", v, "expected a signal name such as USR1 or SIGUSR1, or a number");
      if (const char* why = detail::unusable_dump_signal(sig)) bad_env("TENDRIL_DUMP_SIGNAL", v, why);
      o.dump_signal = sig;
    }
  }
  validate(o);
  return o;
}

void run(std::function<void()> main) { run(Options{}, std::move(main)); }

void run(const Options& options, std::function<void()> main) {
  if (!main) throw std::invalid_argument("tendril::run: empty main function");
  RunGuard guard;
  const Options opts = options.with_environment();
  raise_nofile_limit();

  detail::Scheduler sched(opts);
  // + one stack index shared by plain threads
  detail::stack_init(detail::stack_config(opts, sched.worker_count() + 1));
  detail::IoConfig ioc;
  ioc.workers = sched.worker_count();
  ioc.backend = opts.io_backend;
  ioc.blocking_threads = opts.blocking_threads;
  try {
    detail::io_init(ioc);
  } catch (...) {
    detail::stack_shutdown();
    throw;
  }
  detail::set_current_scheduler(&sched);
  std::optional<detail::DebugService> debug;
  try {
    sched.start();  // on failure, the workers that started are stopped again
    debug.emplace(sched, opts);
  } catch (...) {
    sched.stop();
    tear_down(sched);
    throw;
  }

  std::exception_ptr error;
  try {
    Fiber f = spawn(SpawnOptions{"main", 0}, [&main] { main(); });
    f.join();
  } catch (...) {
    error = std::current_exception();
  }
  debug->stop();
  sched.stop();
  tear_down(sched);
  if (error) std::rethrow_exception(error);
}

bool in_runtime() noexcept { return detail::current_worker() != nullptr; }

bool detail::run_in_progress() noexcept { return g_running.load(std::memory_order_relaxed); }

Stats stats() {
  std::lock_guard<std::mutex> g(g_last_stats_mu);
  if (detail::Scheduler* s = detail::current_scheduler()) return s->snapshot();
  return g_last_stats;
}

}  // namespace tendril
