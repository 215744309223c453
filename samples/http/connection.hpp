// The socket side of a connection: the loop that reads, feeds a Session and
// writes its responses, and the registry of open connections that a stop
// shuts down and waits for (as in the echo sample).
#pragma once

#include <list>

#include "samples/common/runtime.hpp"
#include "samples/http/session.hpp"

namespace sample_http {

struct ConnectionConfig {
  Limits limits;
  int idle_timeout_ms = 60000;  // 0: never
};

// Serves requests on s until the client closes, asks to close, errs, or
// stays idle too long. Returns normally in every case (errors end only this
// connection); the caller owns and closes s.
void serve_connection(sample::Stream& s, const ConnectionConfig& cfg, const Handler& handler);

// The open connections, so a stop can wake their readers, and a count of the
// connection tasks still running, to wait for them.
class Connections {
 public:
  using Handle = std::list<sample::Stream*>::iterator;
  Handle add(sample::Stream* s);
  void remove(Handle h);
  // Wakes every open connection's reads and writes (they end promptly).
  void shutdown_all();
  // Until every added connection was removed.
  void wait();

 private:
  sample::Mutex m_;
  std::list<sample::Stream*> open_;  // guarded by m_
  sample::Group live_;
};

}  // namespace sample_http
