// echo: a TCP echo server, one fiber (or, in echo-pthread, one thread) per
// connection. Writes back every byte it reads until the peer closes.
//
//   build/samples/echo --port 7000 &
//   printf hello | nc -q1 127.0.0.1 7000
//
// SIGINT or SIGTERM stops accepting, closes the open connections and exits 0.
#include <cstdio>
#include <exception>
#include <string>

#include "samples/common/connections.hpp"
#include "samples/common/flags.hpp"
#include "samples/common/runtime.hpp"

namespace {

struct Config {
  std::string host = "127.0.0.1";
  int port = 7000;
  int backlog = 4096;
  unsigned workers = 0;
  int idle_timeout_ms = 0;
};

void serve_connection(sample::Stream& s, int idle_timeout_ms) {
  if (idle_timeout_ms > 0) s.set_timeout(sample::Millis(idle_timeout_ms));
  char buf[4096];
  try {
    for (;;) {
      const std::size_t n = s.read(buf, sizeof buf);
      if (n == 0) break;
      s.write_all(buf, n);
    }
  } catch (const std::exception&) {
    // A reset or timed-out peer ends its connection only.
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  sample::Flags flags(std::string("echo") + (std::string(sample::runtime_name()) == "pthread" ? "-pthread" : ""),
                      std::string("TCP echo server on ") + sample::runtime_name());
  flags.add("host", &cfg.host, "address to listen on");
  flags.add("port", &cfg.port, "port to listen on (0: any, printed at start)");
  flags.add("backlog", &cfg.backlog, "listen backlog");
  flags.add("workers", &cfg.workers, "tendril worker threads (0: one per CPU; ignored by the pthread twin)");
  flags.add("idle-timeout-ms", &cfg.idle_timeout_ms, "close a connection idle this long (0: never)");
  flags.parse(argc, argv);
  if (cfg.port < 0 || cfg.port > 65535) {
    std::fprintf(stderr, "echo: --port must be 0..65535\n");
    return 2;
  }

  sample::block_stop_signals();
  sample::raise_fd_limit();
  int status = 0;
  try {
    sample::serve(cfg.workers, [&](sample::StopToken& stop) {
      auto l = sample::Listener::bind(cfg.host, static_cast<std::uint16_t>(cfg.port), cfg.backlog);
      std::printf("echo (%s) listening on %s:%u\n", sample::runtime_name(), cfg.host.c_str(), l.port());
      std::fflush(stdout);
      sample::accept_until_stopped(
          l, stop, [&](sample::Stream& s) { serve_connection(s, cfg.idle_timeout_ms); }, {},
          [](const std::exception& e) { std::fprintf(stderr, "echo: %s\n", e.what()); });
      std::printf("echo: stopped\n");
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo: %s\n", e.what());
    status = 1;
  }
  return status;
}
