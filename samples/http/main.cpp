// http: an HTTP/1.1 server, one fiber (or, in http-pthread, one thread) per
// connection, with keep-alive and pipelining. Routes: / /stats /debug/fibers /sleep /fanout
// (routes.hpp). This file reads the flags and runs the accept loop.
//
//   build/samples/http --port 8080 &
//   curl -s 127.0.0.1:8080/stats
//   wrk -t2 -c1000 -d5s http://127.0.0.1:8080/
//
// SIGINT or SIGTERM stops accepting, closes the open connections, waits for
// them and exits 0.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "samples/common/flags.hpp"
#include "samples/common/runtime.hpp"
#include "samples/http/connection.hpp"
#include "samples/http/fanout.hpp"
#include "samples/http/interrupt.hpp"
#include "samples/http/routes.hpp"
#include "samples/http/stats_json.hpp"

namespace {

struct Config {
  std::string host = "127.0.0.1";
  int port = 8080;
  int backlog = 4096;
  unsigned workers = 0;
  std::size_t max_header_bytes = 8192;
  std::size_t max_body_bytes = 1 << 20;
  int idle_timeout_ms = 60000;
  int fanout_deadline_ms = 200;
  std::string backend;
};

const char* program() { return std::string_view(sample::runtime_name()) == "pthread" ? "http-pthread" : "http"; }

[[noreturn]] void bad_flag(const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n", program(), msg.c_str());
  std::exit(2);
}

// Reports a failure that repeats under load (no threads, no descriptors) at
// most once a second.
}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  sample::Flags flags(program(),
                      std::string("HTTP/1.1 server on ") + sample::runtime_name() +
                          " (routes: / /stats /debug/fibers /sleep?ms=N /fanout?n=K&ms=M)");
  flags.add("host", &cfg.host, "address to listen on");
  flags.add("port", &cfg.port, "port to listen on (0: any, printed at start)");
  flags.add("backlog", &cfg.backlog, "listen backlog");
  flags.add("workers", &cfg.workers, "tendril worker threads (0: one per CPU; ignored by the pthread twin)");
  flags.add("max-header-bytes", &cfg.max_header_bytes, "largest request header (more: 431)");
  flags.add("max-body-bytes", &cfg.max_body_bytes, "largest request body (more: 413)");
  flags.add("idle-timeout-ms", &cfg.idle_timeout_ms, "close a keep-alive connection idle this long (0: never)");
  flags.add("fanout-deadline-ms", &cfg.fanout_deadline_ms, "how long /fanout waits for its calls");
  flags.add("backend", &cfg.backend, "host:port of an echo server /fanout calls (empty: simulated calls)");
  flags.parse(argc, argv);
  if (cfg.port < 0 || cfg.port > 65535) bad_flag("--port must be 0..65535");
  if (cfg.backlog < 1) bad_flag("--backlog must be at least 1");
  if (cfg.max_header_bytes < 64 || cfg.max_header_bytes > (1u << 24)) bad_flag("--max-header-bytes must be 64..16777216");
  if (cfg.idle_timeout_ms < 0) bad_flag("--idle-timeout-ms must be 0 or more");
  if (cfg.fanout_deadline_ms < 0) bad_flag("--fanout-deadline-ms must be 0 or more");
  std::optional<sample_http::Backend> backend;
  if (!cfg.backend.empty()) {
    backend = sample_http::parse_backend(cfg.backend);
    if (!backend) bad_flag("--backend must be host:port, not '" + cfg.backend + "'");
  }

  sample::block_stop_signals();
  sample::raise_fd_limit();
  int status = 0;
  try {
    sample::serve(cfg.workers, [&](sample::StopToken& stop) {
      auto l = sample::Listener::bind(cfg.host, static_cast<std::uint16_t>(cfg.port), cfg.backlog);
      std::printf("http (%s) listening on %s:%u\n", sample::runtime_name(), cfg.host.c_str(), l.port());
      std::fflush(stdout);

      // Shared ownership: late fan-out calls may still hold these after a stop.
      auto counters = std::make_shared<sample_http::Counters>();
      auto interrupt = std::make_shared<sample_http::Interrupt>();
      const sample_http::Fanout fanout(backend, std::chrono::milliseconds(cfg.fanout_deadline_ms), interrupt);
      sample_http::Actions actions;
      actions.sleep = [interrupt](std::chrono::milliseconds d) { return interrupt->sleep_for(d); };
      actions.fanout = fanout;
      actions.stats = [counters] { return sample_http::stats_json(*counters); };
      actions.fiber_dump = sample::fiber_dump;
      const sample_http::Handler handler = sample_http::Routes(std::move(actions), counters);
      sample_http::ConnectionConfig conn_cfg;
      conn_cfg.limits.max_header_bytes = cfg.max_header_bytes;
      conn_cfg.limits.max_body_bytes = cfg.max_body_bytes;
      conn_cfg.idle_timeout_ms = cfg.idle_timeout_ms;

      sample::accept_until_stopped(
          l, stop,
          [&](sample::Stream& s) {
            counters->connections_open.fetch_add(1);
            sample_http::serve_connection(s, conn_cfg, handler);
            counters->connections_open.fetch_sub(1);
          },
          [interrupt] { interrupt->trigger(); },
          [](const std::exception& e) {  // no thread or stack for it: dropped
            static sample::ThrottledReport report;
            report(std::string(program()) + ": " + e.what());
          });
      // Calls still out (a slow backend) get a moment; simulated ones ended at the stop.
      fanout.drain_until(std::chrono::steady_clock::now() + std::chrono::seconds(2));
      std::printf("http: stopped\n");
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program(), e.what());
    status = 1;
  }
  return status;
}
