// serve_connection and Connections: the only code here that touches sockets.
#include "samples/http/connection.hpp"

#include <exception>
#include <mutex>
#include <string>

namespace sample_http {

namespace {

// Closing with unread input makes the kernel send a reset, which can destroy
// the response still on its way to the client. So: shut down (the client
// reads the response, then end of stream), and take what it already sent.
// After the shutdown reads no longer wait, so this is bounded in time, and
// in bytes against a client that keeps sending. Its buffer is its own frame's
// (not inlined): in serve_connection's it would be live in every idle wait.
__attribute__((noinline)) void close_gracefully(sample::Stream& s) {
  char buf[1024];
  s.shutdown();
  std::size_t drained = 0;
  try {
    while (drained < (std::size_t(1) << 20)) {
      const std::size_t n = s.read(buf, sizeof buf);
      if (n == 0) break;
      drained += n;
    }
  } catch (const std::exception&) {
  }
}

enum class Next { more, closed, quit };

// Reads what arrived and answers it. The read buffer lives in this frame
// only, not in the idle wait's: an idle connection's fiber keeps only
// serve_connection's frame and the wait's live, which is what compaction
// keeps (about 2 KiB less per idle connection than waiting in the read).
// Small: with the parser on the worker's stack (session.cpp) a busy
// connection's fiber stays within its first page. Requests larger than one
// read accumulate in the Session.
__attribute__((noinline)) Next serve_what_arrived(sample::Stream& s, Session& session, std::string& out) {
  char buf[1024];
  std::error_code ec;
  const std::size_t n = s.read(buf, sizeof buf, ec);
  // The client closed (or a stop shut us down), reset (as load generators
  // do at the end) or went idle past the timeout: no exception for these,
  // whose unwinding would grow thousands of connection fibers' stacks by a
  // page each, all at once.
  if (n == 0) return Next::quit;
  out.clear();
  const bool open = session.feed(std::string_view(buf, n), out);
  // Every response for this read in one write: pipelined requests cost one call.
  if (!out.empty()) s.write_all(out.data(), out.size());
  return open ? Next::more : Next::closed;
}

}  // namespace

void serve_connection(sample::Stream& s, const ConnectionConfig& cfg, const Handler& handler) {
  Session session(cfg.limits, handler);
  std::string out;
  try {
    if (cfg.idle_timeout_ms > 0) s.set_timeout(sample::Millis(cfg.idle_timeout_ms));
    s.set_nodelay();
    for (;;) {
      std::error_code ec;
      s.wait_readable(ec);  // idle here
      if (ec) return;       // idle past the timeout, or shut down: as a read's error
      const Next next = serve_what_arrived(s, session, out);
      if (next == Next::quit) return;
      if (next == Next::closed) break;
    }
  } catch (const std::exception&) {
    return;  // reset, timed out (idle) or shut down: nothing more to say
  }
  close_gracefully(s);
}

}  // namespace sample_http
