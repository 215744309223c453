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
// in bytes against a client that keeps sending.
void close_gracefully(sample::Stream& s) {
  s.shutdown();
  char buf[4096];
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

}  // namespace

void serve_connection(sample::Stream& s, const ConnectionConfig& cfg, const Handler& handler) {
  Session session(cfg.limits, handler);
  std::string out;
  try {
    if (cfg.idle_timeout_ms > 0) s.set_timeout(sample::Millis(cfg.idle_timeout_ms));
    s.set_nodelay();
    // Small: every byte of it is stack that each of thousands of connections
    // keeps mapped (2 KiB: 3 pages per busy connection instead of 4-5 with
    // 8 KiB). Requests larger than one read accumulate in the Session.
    char buf[2048];
    for (;;) {
      const std::size_t n = s.read(buf, sizeof buf);
      if (n == 0) return;  // the client closed (or a stop shut us down)
      out.clear();
      const bool open = session.feed(std::string_view(buf, n), out);
      // Every response for this read in one write: pipelined requests cost one call.
      if (!out.empty()) s.write_all(out.data(), out.size());
      if (!open) break;
    }
  } catch (const std::exception&) {
    return;  // reset, timed out (idle) or shut down: nothing more to say
  }
  close_gracefully(s);
}

}  // namespace sample_http
