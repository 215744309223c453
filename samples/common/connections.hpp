// The open connections of a sample server, so that a stop can wake their
// readers, and a count of the connection tasks still running, to wait for.
//
//   sample::Connections conns;
//   auto h = conns.add(stream);            // before the task starts
//   sample::go([&, h] { ...; conns.remove(h); });
//   ...on stop: conns.shutdown_all(); conns.wait();
#pragma once

#include <exception>
#include <functional>
#include <list>
#include <mutex>

#include "samples/common/runtime.hpp"

namespace sample {

class Connections {
 public:
  using Handle = std::list<Stream*>::iterator;

  Handle add(Stream* s) {
    live_.add(1);
    std::lock_guard<Mutex> g(m_);
    return open_.insert(open_.end(), s);
  }
  // The connection's task is done with s (it may be closed and freed next).
  void remove(Handle h) {
    {
      std::lock_guard<Mutex> g(m_);
      open_.erase(h);
    }
    live_.done();
  }
  // Wakes every open connection's reads and writes (they end promptly).
  void shutdown_all() {
    std::lock_guard<Mutex> g(m_);
    for (Stream* s : open_) s->shutdown();
  }
  // Until every added connection was removed.
  void wait() { live_.wait(); }

 private:
  Mutex m_;
  std::list<Stream*> open_;  // guarded by m_
  Group live_;
};

// The accept loop every sample server runs: each connection is served by
// serve(stream) on its own fiber (or thread, in the twin). A stop request
// closes `l`, runs `on_stop` (say, to cut sleeps short), and shuts every open
// connection down; the call returns once the stop callback is done and every
// connection's task has ended, so `l` and whatever serve uses may go away
// then. A connection whose task cannot start (the twin out of threads) is
// dropped and reported to `on_drop`.
void accept_until_stopped(Listener& l, StopToken& stop, const std::function<void(Stream&)>& serve,
                          const std::function<void()>& on_stop = {},
                          const std::function<void(const std::exception&)>& on_drop = {});

}  // namespace sample
