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
// in bytes against a client that keeps sending. It drains into the
// connection's own buffer: a buffer of its own would sit in serve_connection's
// frame (inlined) and push every call of the request loop 4 KiB deeper.
void close_gracefully(sample::Stream& s, char* buf, std::size_t size) {
  s.shutdown();
  std::size_t drained = 0;
  try {
    while (drained < (std::size_t(1) << 20)) {
      const std::size_t n = s.read(buf, size);
      if (n == 0) break;
      drained += n;
    }
  } catch (const std::exception&) {
  }
}

}  // namespace

void serve_connection(sample::Stream& s, const ConnectionConfig& cfg, const Handler& handler) {
  Session session(cfg.limits, handler);
  std::string out;
  // Small: every byte of it is stack that each of thousands of connections
  // keeps mapped. With the parser on the worker's stack (session.cpp) a busy
  // connection's fiber stays within its first page (3 pages with a 2 KiB
  // buffer and the parser on the fiber's stack, 4-5 with 8 KiB). Requests
  // larger than one read accumulate in the Session.
  char buf[1024];
  try {
    if (cfg.idle_timeout_ms > 0) s.set_timeout(sample::Millis(cfg.idle_timeout_ms));
    s.set_nodelay();
    for (;;) {
      std::error_code ec;
      const std::size_t n = s.read(buf, sizeof buf, ec);
      // The client closed (or a stop shut us down), reset (as load
      // generators do at the end) or went idle past the timeout: no
      // exception for these, whose unwinding would grow thousands of
      // connection fibers' stacks by a page each, all at once.
      if (n == 0) return;
      out.clear();
      const bool open = session.feed(std::string_view(buf, n), out);
      // Every response for this read in one write: pipelined requests cost one call.
      if (!out.empty()) s.write_all(out.data(), out.size());
      if (!open) break;
    }
  } catch (const std::exception&) {
    return;  // reset, timed out (idle) or shut down: nothing more to say
  }
  close_gracefully(s, buf, sizeof buf);
}

}  // namespace sample_http
