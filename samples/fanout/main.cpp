// fanout: a scatter-gather aggregator, the shape of search and feed servers.
// Each request fans out to k backend calls made concurrently (one fiber each;
// in fanout-pthread, one thread each), every call bounded by a deadline, and
// the answer says how many came back in time.
//
//   build/samples/echo --port 7000 &
//   build/samples/fanout/fanout --backend 127.0.0.1:7000 &
//   printf 'q 1 10\nstats\n' | nc -q1 127.0.0.1 7100
//   ok 1 10 10
//   {"runtime":"tendril","connections_open":1,...}
//
// The parts:
//   config.*      flags and their checks
//   connection.*  the line protocol of a client connection (q, stats)
//   fan_out.*     one request's calls, gathered by its deadline, and what
//                 counts as answered, late or failed
//   server.*      counters, the room for live calls (--max-calls), shared
//   backend.*     the pool of backend connections and a call's round trip
//
// A backend call sends "call <n>\n" to one of the --backend addresses (round
// robin) and expects the same line back (the echo sample is the backend). Its
// connect, write and read are bounded by the request's deadline. A call
// holds at most one backend connection, so the process never has more than
// --max-calls of them, nor the twin more than --max-calls call threads (plus
// one per client connection). Size --max-calls to about the calls per second
// the server sustains times the deadline (the default, 1000, suits 2 CPUs
// and 50 ms): with more in flight than the backends and CPUs turn around
// within the deadline, every call is late.
//
// SIGINT or SIGTERM stops accepting, closes the open connections, waits for
// the calls in flight (each ends by its deadline) and exits 0.
#include <cstdio>
#include <exception>
#include <string>

#include "samples/common/connections.hpp"
#include "samples/common/runtime.hpp"
#include "samples/fanout/config.hpp"
#include "samples/fanout/connection.hpp"
#include "samples/fanout/server.hpp"

namespace {

using sample_fanout::Config;
using sample_fanout::program_name;
using sample_fanout::Server;

// Serves until a stop; connections end once the stop shuts them down, their
// calls by their deadlines (srv.live).
void serve_until_stopped(const Config& cfg, sample::StopToken& stop) {
  Server srv(cfg);
  auto l = sample::Listener::bind(cfg.host, static_cast<std::uint16_t>(cfg.port), cfg.backlog);
  std::printf("fanout (%s) listening on %s:%u\n", sample::runtime_name(), cfg.host.c_str(), l.port());
  std::fflush(stdout);
  sample::accept_until_stopped(
      l, stop,
      [&srv](sample::Stream& s) {
        srv.counters.connections_open.fetch_add(1);
        srv.counters.task_started();
        sample_fanout::serve_connection(srv, s);
        srv.counters.connections_open.fetch_sub(1);
        srv.counters.task_ended();
      },
      {},
      [](const std::exception& e) {  // the twin could not start a thread
        static sample::ThrottledReport report;
        report(std::string(program_name()) + ": connection dropped: " + e.what());
      });
  srv.live.wait();
  srv.pool.close_idle();
  std::printf("%s: stopped\n", program_name());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Config cfg = sample_fanout::parse_config(argc, argv);
  sample::block_stop_signals();
  sample::raise_fd_limit();
  try {
    sample::serve(cfg.workers, [&](sample::StopToken& stop) { serve_until_stopped(cfg, stop); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program_name(), e.what());
    return 1;
  }
  return 0;
}
