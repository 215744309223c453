// A client connection of the fanout server: the line protocol.
//
// Lines over TCP, at most 4 KiB each; a longer line closes the connection:
//   q <id> [k]   fan out k calls (default --k, at most --max-k) and answer
//                "ok <id> <answered> <k>" once all k are back or the deadline
//                (--call-deadline-ms after the calls started) has passed
//   stats        one line of JSON: runtime, connections_open,
//                requests_served, requests_waiting, calls_made,
//                calls_answered, calls_late, calls_failed, calls_refused,
//                live_tasks, peak_tasks (connection + call tasks), live_calls,
//                peak_calls, backend_conns, backend_connects, threads,
//                rss_bytes, rss_peak_bytes, and on tendril fibers_live
// Anything else gets "err <reason>" and the connection stays usable.
#pragma once

#include <string>
#include <string_view>

#include "samples/common/runtime.hpp"
#include "samples/fanout/server.hpp"

namespace sample_fanout {

// The answer to one request line (without its newline).
std::string handle_line(Server& srv, std::string_view line);

// Serves s until the client closes it, a line is too long, or a stop shuts
// it down.
void serve_connection(Server& srv, sample::Stream& s);

}  // namespace sample_fanout
