// The parts of samples/common/runtime.hpp that are the same on both runtimes.
#include <sys/resource.h>

#include <mutex>

#include "samples/common/runtime.hpp"

namespace sample {

void StopToken::on_stop(std::function<void()> fn) {
  {
    std::lock_guard<Mutex> g(m_);
    if (!stopped_.load()) {
      fns_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

bool StopToken::stop_requested() const noexcept { return stopped_.load(); }

void StopToken::request_stop() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<Mutex> g(m_);
    if (stopped_.exchange(true)) return;
    fns.swap(fns_);
  }
  for (auto& f : fns) f();
}

std::uint64_t raise_fd_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

}  // namespace sample
