#include "samples/fanout/connection.hpp"

#include <charconv>
#include <exception>
#include <vector>

#include "samples/common/proc_status.hpp"
#include "samples/fanout/fan_out.hpp"

namespace sample_fanout {
namespace {

constexpr std::size_t kMaxLine = 4096;  // bytes before the newline
constexpr std::size_t kMaxId = 128;

std::string stats_json(Server& srv) {
  const Counters& c = srv.counters;
  std::string j = "{\"runtime\":\"";
  j += sample::runtime_name();
  j += '"';
  auto field = [&j](const char* name, std::uint64_t v) {
    j += ",\"";
    j += name;
    j += "\":";
    j += std::to_string(v);
  };
  field("connections_open", c.connections_open.load());
  field("requests_served", c.requests_served.load());
  field("calls_made", c.calls_made.load());
  field("calls_answered", c.calls_answered.load());
  field("calls_late", c.calls_late.load());
  field("calls_failed", c.calls_failed.load());
  field("calls_refused", c.calls_refused.load());
  field("live_tasks", static_cast<std::uint64_t>(c.live_tasks.load()));
  field("peak_tasks", static_cast<std::uint64_t>(c.peak_tasks.load()));
  field("live_calls", static_cast<std::uint64_t>(c.live_calls.load()));
  field("peak_calls", static_cast<std::uint64_t>(c.peak_calls.load()));
  field("requests_waiting", srv.slots.waiting());
  field("backend_conns", srv.pool.open());
  field("backend_connects", srv.pool.connects());
  field("threads", sample::proc_status_field("Threads").value_or(0));
  field("rss_bytes", sample::proc_status_field("VmRSS").value_or(0));
  field("rss_peak_bytes", sample::proc_status_field("VmHWM").value_or(0));
#if !SAMPLE_PTHREAD
  field("fibers_live", tendril::stats().fibers_live);
#endif
  j += "}\n";
  return j;
}

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    const std::size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

}  // namespace

std::string handle_line(Server& srv, std::string_view line) {
  const auto w = split(line);
  if (w.empty()) return "err empty line\n";
  if (w[0] == "stats") {
    if (w.size() != 1) return "err usage: stats\n";
    return stats_json(srv);
  }
  if (w[0] != "q") return "err unknown command (want: q <id> [k] | stats)\n";
  if (w.size() < 2 || w.size() > 3) return "err usage: q <id> [k]\n";
  if (w[1].size() > kMaxId) return "err id longer than " + std::to_string(kMaxId) + " bytes\n";
  int k = srv.cfg.k;
  if (w.size() == 3) {
    auto [end, ec] = std::from_chars(w[2].data(), w[2].data() + w[2].size(), k);
    if (ec != std::errc() || end != w[2].data() + w[2].size() || k < 1 || k > srv.cfg.max_k)
      return "err k must be an integer in 1.." + std::to_string(srv.cfg.max_k) + "\n";
  }
  return fan_out(srv, w[1], k);
}

void serve_connection(Server& srv, sample::Stream& s) {
  s.set_nodelay();
  static const char kTooLong[] = "err line longer than 4096 bytes\n";
  std::string in;
  char chunk[4096];
  try {
    for (;;) {
      std::size_t nl;
      while ((nl = in.find('\n')) != std::string::npos && nl <= kMaxLine) {
        std::string_view line(in.data(), nl);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        const std::string reply = handle_line(srv, line);
        s.write_all(reply.data(), reply.size());
        in.erase(0, nl + 1);
      }
      if (nl != std::string::npos || in.size() > kMaxLine) {  // a line over the limit: close
        s.write_all(kTooLong, sizeof kTooLong - 1);
        return;
      }
      const std::size_t n = s.read(chunk, sizeof chunk);
      if (n == 0) return;
      in.append(chunk, n);
    }
  } catch (const std::exception&) {
    // A reset peer, or a stop that shut the connection down, ends it only.
  }
}

}  // namespace sample_fanout
