// The /stats body: the runtime's own counters (tendril::stats(), or the
// thread count for the twin), the server's counters and the process RSS, as
// one flat JSON object, so a benchmark script can compare the two runtimes.
#pragma once

#include <cstdint>
#include <string>

#include "samples/http/routes.hpp"

namespace sample_http {

std::string stats_json(const Counters& counters);

// From /proc/self: resident bytes (statm) and thread count (status); 0 if unreadable.
std::uint64_t rss_bytes();
std::uint64_t thread_count();

}  // namespace sample_http
