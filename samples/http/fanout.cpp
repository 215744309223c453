// Fanout: spawns the calls, counts the answers that beat the deadline. Each
// call holds shared_ptrs to what it touches, so a late one outlives the
// request that started it safely.
#include "samples/http/fanout.hpp"

#include <algorithm>
#include <atomic>
#include <exception>

#include "samples/common/runtime.hpp"

namespace sample_http {

struct Fanout::Shared {
  std::optional<Backend> backend;
  std::chrono::milliseconds io_timeout{};
  std::shared_ptr<Interrupt> interrupt;
  sample::Group running;  // calls not finished, late ones included

  // One backend call; true if it answered correctly.
  bool call(int i, int ms) const {
    if (!backend) {
      const int jitter = (i * 7) % (ms / 10 + 1);  // up to 10% of ms, by call index
      return interrupt->sleep_for(std::chrono::milliseconds(ms + jitter));
    }
    if (!interrupt->sleep_for(std::chrono::milliseconds(ms))) return false;
    sample::Stream s = sample::Stream::connect(backend->host, backend->port, io_timeout);
    s.set_timeout(io_timeout);
    s.set_nodelay();
    const std::string line = "fanout call " + std::to_string(i) + "\n";
    s.write_all(line.data(), line.size());
    std::string echoed;
    char buf[64];
    while (echoed.size() < line.size()) {
      const std::size_t n = s.read(buf, std::min(sizeof buf, line.size() - echoed.size()));
      if (n == 0) return false;
      echoed.append(buf, n);
    }
    return echoed == line;
  }
};

Fanout::Fanout(std::optional<Backend> backend, std::chrono::milliseconds deadline,
               std::shared_ptr<Interrupt> interrupt)
    : shared_(std::make_shared<Shared>()), deadline_(deadline) {
  shared_->backend = std::move(backend);
  // A backend that stalls must not keep a late call (and its socket) forever.
  shared_->io_timeout = std::max(deadline, std::chrono::milliseconds(1000));
  shared_->interrupt = std::move(interrupt);
}

FanoutResult Fanout::operator()(int n, int ms) const {
  struct Call {
    sample::Group pending;
    std::atomic<int> answered{0};
  };
  auto call = std::make_shared<Call>();
  const auto deadline = std::chrono::steady_clock::now() + deadline_;
  for (int i = 0; i < n; ++i) {
    call->pending.add(1);
    shared_->running.add(1);
    try {
      sample::go([call, shared = shared_, i, ms] {
        bool ok = false;
        try {
          ok = shared->call(i, ms);
        } catch (const std::exception&) {
          // A refused, reset or timed-out backend call is not an answer.
        }
        if (ok) call->answered.fetch_add(1);
        call->pending.done();
        shared->running.done();
      });
    } catch (const std::exception&) {
      // Out of threads or stacks: the calls not started count as late.
      call->pending.done();
      shared_->running.done();
      break;
    }
  }
  call->pending.wait_until(deadline);
  return FanoutResult{n, call->answered.load()};
}

bool Fanout::drain_until(std::chrono::steady_clock::time_point t) const {
  return shared_->running.wait_until(t);
}

}  // namespace sample_http
