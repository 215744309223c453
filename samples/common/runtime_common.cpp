// The parts of samples/common/runtime.hpp that are the same on both runtimes.
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <mutex>

#include "samples/common/connections.hpp"
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

void Group::add(int n) {
  std::lock_guard<Mutex> g(m_);
  count_ += n;
}

void Group::done() {
  std::lock_guard<Mutex> g(m_);
  if (--count_ == 0) cv_.notify_all();
}

bool Group::wait_until(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<Mutex> lk(m_);
  return cv_.wait_until(lk, deadline, [&] { return count_ <= 0; });
}

void Group::wait() {
  std::unique_lock<Mutex> lk(m_);
  cv_.wait(lk, [&] { return count_ <= 0; });
}

void block_stop_signals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

void accept_until_stopped(Listener& l, StopToken& stop, const std::function<void(Stream&)>& serve,
                          const std::function<void()>& on_stop,
                          const std::function<void(const std::exception&)>& on_drop) {
  Connections conns;
  // The stop callback runs on the signal watcher; it shares `callback` with
  // this frame, which waits for it before `l` and `conns` go away.
  auto callback = std::make_shared<Group>();
  callback->add(1);
  stop.on_stop([&l, &conns, &on_stop, callback] {
    l.close();
    if (on_stop) on_stop();
    conns.shutdown_all();
    callback->done();
  });
  while (auto c = l.accept()) {
    auto* s = new Stream(std::move(*c));
    auto it = conns.add(s);
    if (stop.stop_requested()) s->shutdown();
    try {
      go([s, it, &conns, &serve] {
        serve(*s);
        conns.remove(it);
        delete s;
      });
    } catch (const std::exception& e) {
      if (on_drop) on_drop(e);
      conns.remove(it);
      delete s;
    }
  }
  callback->wait();  // accept() ends only once the callback closed `l`
  conns.wait();
}

void ThrottledReport::operator()(const std::string& line) {
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::steady_clock::now().time_since_epoch()).count();
  if (last_second_.exchange(now) != now) std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace sample
