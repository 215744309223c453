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
#include <stdexcept>

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

bool parse_bool(const char* var, const char* value) {
  if (!std::strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcasecmp(value, "on")) return true;
  if (!std::strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcasecmp(value, "off")) return false;
  bad_env(var, value, "expected 1/0, true/false, yes/no or on/off");
}

void validate(const Options& o) {
  if (o.workers > 256) throw std::invalid_argument("tendril: Options::workers must be at most 256");
  if (o.stack_limit < 16 * 1024 || o.stack_limit > (std::size_t{1} << 30))
    throw std::invalid_argument("tendril: Options::stack_limit must be within [16 KiB, 1 GiB]");
  if (o.spin_before_park.count() < 0 || o.spin_before_park > std::chrono::seconds(1))
    throw std::invalid_argument("tendril: Options::spin_before_park must be within [0, 1 s]");
  if (!o.io_backend.empty() && o.io_backend != "uring" && o.io_backend != "epoll")
    throw std::invalid_argument("tendril: I/O backend must be \"uring\" or \"epoll\", not \"" + o.io_backend + "\"");
  if (!o.stack_mode.empty() && o.stack_mode != "uffd" && o.stack_mode != "kernel")
    throw std::invalid_argument("tendril: stack mode must be \"uffd\" or \"kernel\", not \"" + o.stack_mode + "\"");
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

Options Options::with_environment() const {
  Options o = *this;
  if (const char* v = std::getenv("TENDRIL_WORKERS")) {
    const unsigned long long n = parse_unsigned("TENDRIL_WORKERS", v);
    if (n > 256) bad_env("TENDRIL_WORKERS", v, "at most 256");
    o.workers = static_cast<unsigned>(n);
  }
  if (const char* v = std::getenv("TENDRIL_STACK_LIMIT")) o.stack_limit = parse_size("TENDRIL_STACK_LIMIT", v);
  if (const char* v = std::getenv("TENDRIL_SPIN_US")) {
    const unsigned long long n = parse_unsigned("TENDRIL_SPIN_US", v);
    if (n > 1000000) bad_env("TENDRIL_SPIN_US", v, "at most 1000000");
    o.spin_before_park = std::chrono::microseconds(n);
  }
  if (const char* v = std::getenv("TENDRIL_PIN")) o.pin_workers = parse_bool("TENDRIL_PIN", v);
  if (const char* v = std::getenv("TENDRIL_STACK_MODE")) {
    if (std::strcmp(v, "uffd") != 0 && std::strcmp(v, "kernel") != 0 && *v != '\0')
      bad_env("TENDRIL_STACK_MODE", v, "expected uffd or kernel");
    o.stack_mode = v;
  }
  if (const char* v = std::getenv("TENDRIL_STACK_CACHE_BYTES"))
    o.stack_cache_bytes = parse_size("TENDRIL_STACK_CACHE_BYTES", v);
  if (const char* v = std::getenv("TENDRIL_IO")) {
    if (std::strcmp(v, "uring") != 0 && std::strcmp(v, "epoll") != 0 && *v != '\0')
      bad_env("TENDRIL_IO", v, "expected uring or epoll");
    o.io_backend = v;
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
  detail::StackConfig sc;
  sc.default_limit = opts.stack_limit;
  sc.workers = sched.worker_count() + 1;  // + one index shared by plain threads
  sc.mode = opts.stack_mode;
  sc.cache_bytes = opts.stack_cache_bytes;
  detail::stack_init(sc);
  detail::IoConfig ioc;
  ioc.workers = sched.worker_count();
  ioc.backend = opts.io_backend;
  try {
    detail::io_init(ioc);
  } catch (...) {
    detail::stack_shutdown();
    throw;
  }
  detail::set_current_scheduler(&sched);
  sched.start();

  std::exception_ptr error;
  try {
    Fiber f = spawn(SpawnOptions{"main", 0}, [&main] { main(); });
    f.join();
  } catch (...) {
    error = std::current_exception();
  }
  sched.stop();
  {
    // Under the lock that stats() holds while it reads the live scheduler, so
    // a plain thread calling stats() now never sees it half destroyed.
    std::lock_guard<std::mutex> g(g_last_stats_mu);
    g_last_stats = sched.snapshot();
    detail::set_current_scheduler(nullptr);
  }
  detail::io_shutdown();
  detail::stack_shutdown();
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
