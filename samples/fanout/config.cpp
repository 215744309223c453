#include "samples/fanout/config.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "samples/common/flags.hpp"
#include "samples/common/runtime.hpp"

namespace sample_fanout {
namespace {

[[noreturn]] void bad_flag(const std::string& why) {
  std::fprintf(stderr, "%s: %s (see --help)\n", program_name(), why.c_str());
  std::exit(2);
}

void add_flags(sample::Flags& flags, Config& cfg) {
  flags.add("host", &cfg.host, "address to listen on");
  flags.add("port", &cfg.port, "port to listen on (0: any, printed at start)");
  flags.add("backend", &cfg.backend, "backends, host:port[,host:port...], round robin (required)");
  flags.add("k", &cfg.k, "calls per request when the request names none");
  flags.add("call-deadline-ms", &cfg.call_deadline_ms,
            "deadline of a request's calls, from when they start: the answer counts the calls back by then");
  flags.add("max-k", &cfg.max_k, "largest k a request may ask for (at most --max-calls)");
  flags.add("max-calls", &cfg.max_calls,
            "calls live at once in the process (a request waits until its k fit), and most backend connections open");
  flags.add("workers", &cfg.workers, "tendril worker threads (0: one per CPU; ignored by the pthread twin)");
  flags.add("backlog", &cfg.backlog, "listen backlog");
}

void check(Config& cfg) {
  std::string why;
  if (cfg.backend.empty()) bad_flag("--backend is required");
  if (!sample::parse_host_port_list(cfg.backend, &cfg.backends, &why)) bad_flag(why);
  if (cfg.port < 0 || cfg.port > 65535) bad_flag("--port must be 0..65535");
  if (cfg.max_k < 1) bad_flag("--max-k must be at least 1");
  if (cfg.k < 1 || cfg.k > cfg.max_k) bad_flag("--k must be 1..--max-k");
  if (cfg.call_deadline_ms < 1) bad_flag("--call-deadline-ms must be at least 1");
  if (cfg.max_calls < 1) bad_flag("--max-calls must be at least 1");
  if (cfg.max_k > cfg.max_calls) bad_flag("--max-k must not exceed --max-calls");
  if (cfg.backlog < 1) bad_flag("--backlog must be at least 1");
}

}  // namespace

const char* program_name() { return std::strcmp(sample::runtime_name(), "pthread") == 0 ? "fanout-pthread" : "fanout"; }

Config parse_config(int argc, char** argv) {
  Config cfg;
  sample::Flags flags(program_name(), std::string("scatter-gather aggregator on ") + sample::runtime_name() +
                                          ": each request fans out to k backend calls with a deadline");
  add_flags(flags, cfg);
  flags.parse(argc, argv);
  check(cfg);
  return cfg;
}

}  // namespace sample_fanout
