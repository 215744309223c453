// The socket side of a connection: the loop that reads, feeds a Session and
// writes its responses (the registry of open connections is
// samples/common/connections.hpp).
#pragma once

#include "samples/common/connections.hpp"
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

using Connections = sample::Connections;

}  // namespace sample_http
