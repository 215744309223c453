// Fanout: spawns the calls, counts the answers that beat the deadline. On
// tendril the calls are the children of a tendril::Scope with the request's
// deadline, so none outlives it; in the twin each call holds shared_ptrs to
// what it touches, so a late thread outlives the request safely.
#include "samples/http/fanout.hpp"

#include <algorithm>
#include <atomic>
#include <exception>

#include "samples/common/runtime.hpp"

namespace sample_http {

struct Fanout::Shared {
  std::optional<Backend> backend;
  std::shared_ptr<Interrupt> interrupt;
  sample::Group running;  // calls not finished, late ones included

  // One backend call; true if it answered correctly by the deadline. Each
  // step's timeout is what is left until the deadline, so a stalled backend
  // keeps a late call (and its socket) no longer than that.
  bool call(int i, int ms, std::chrono::steady_clock::time_point deadline) const {
    if (!backend) {
      const int jitter = (i * 7) % (ms / 10 + 1);  // up to 10% of ms, by call index
      return interrupt->sleep_for(std::chrono::milliseconds(ms + jitter));
    }
    if (!interrupt->sleep_for(std::chrono::milliseconds(ms))) return false;
    sample::Stream s = sample::Stream::connect(backend->host, backend->port, sample::left_until(deadline));
    s.set_nodelay();
    const std::string line = "fanout call " + std::to_string(i) + "\n";
    s.set_timeout(sample::left_until(deadline));
    s.write_all(line.data(), line.size());
    std::string echoed;
    char buf[64];
    while (echoed.size() < line.size()) {
      s.set_timeout(sample::left_until(deadline));
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
  shared_->interrupt = std::move(interrupt);
}

FanoutResult Fanout::operator()(int n, int ms) const {
  const auto deadline = std::chrono::steady_clock::now() + deadline_;
  auto answered = std::make_shared<std::atomic<int>>(0);  // a late twin thread may outlive this call
  sample::CallScope calls(deadline);  // on tendril, late calls end at the deadline
  for (int i = 0; i < n; ++i) {
    shared_->running.add(1);
    try {
      calls.go([answered, shared = shared_, i, ms, deadline] {
        bool ok = false;
        try {
          ok = shared->call(i, ms, deadline);
        } catch (const std::exception&) {
          // A refused, reset or timed-out backend call is not an answer, nor
          // a call whose sleep the deadline cut short (tendril).
        }
        if (ok && std::chrono::steady_clock::now() <= deadline) answered->fetch_add(1);
        shared->running.done();
      });
    } catch (const std::exception&) {
      // Out of threads or stacks: the calls not started count as late.
      shared_->running.done();
      break;
    }
  }
  calls.wait();
  return FanoutResult{n, answered->load()};
}

bool Fanout::drain_until(std::chrono::steady_clock::time_point t) const {
  return shared_->running.wait_until(t);
}

}  // namespace sample_http
