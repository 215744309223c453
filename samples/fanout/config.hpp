// The fanout sample's command line: its flags, their checks, and the
// backends they name.
#pragma once

#include <string>
#include <vector>

#include "samples/common/host_port.hpp"

namespace sample_fanout {

struct Config {
  std::string host = "127.0.0.1";
  int port = 7100;
  int backlog = 4096;
  std::string backend;
  int k = 10;
  int call_deadline_ms = 50;
  unsigned workers = 0;
  int max_k = 1000;
  int max_calls = 1000;
  std::vector<sample::HostPort> backends;  // parsed from `backend`
};

// "fanout", or "fanout-pthread" in the twin.
const char* program_name();

// The flags of argv, checked. Exits 0 after --help and 2 after a bad flag or
// value, with a message on stderr.
Config parse_config(int argc, char** argv);

}  // namespace sample_fanout
