// Test helpers shared by the http sample's tests: reading a server's output
// back as HTTP/1.1 responses (with Beast's response parser, so the check does
// not trust our own serializer), and stand-in route actions.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "samples/http/beast.hpp"
#include "samples/http/routes.hpp"
#include "samples/http/stats_json.hpp"

namespace sample_http::test {

struct Response {
  int status = 0;
  unsigned version = 0;
  std::string connection;    // the Connection header
  std::string content_type;  // the Content-Type header
  bool has_length = false;   // a Content-Length header was there
  std::string body;
};

// Parses one response from the front of bytes; nullopt if bytes do not start
// with a complete, well-formed one. Sets used to its length.
inline std::optional<Response> parse_one(std::string_view bytes, std::size_t& used) {
  namespace http = boost::beast::http;
  http::response_parser<http::string_body> p;
  p.eager(true);
  p.body_limit(std::uint64_t(64) << 20);
  p.header_limit(64 * 1024);
  used = 0;
  while (!p.is_done() && used < bytes.size()) {
    boost::beast::error_code ec;
    const std::size_t n = p.put(boost::asio::const_buffer(bytes.data() + used, bytes.size() - used), ec);
    used += n;
    if (ec) return std::nullopt;  // malformed, or need_more at the end of the bytes
    if (n == 0) return std::nullopt;
  }
  if (!p.is_done()) return std::nullopt;
  const auto& m = p.get();
  Response r;
  r.status = static_cast<int>(m.result_int());
  r.version = m.version();
  r.connection = std::string(m[http::field::connection]);
  r.content_type = std::string(m[http::field::content_type]);
  r.has_length = m.find(http::field::content_length) != m.end();
  r.body = m.body();
  return r;
}

// All of bytes as a sequence of responses; nullopt if any part is not one.
inline std::optional<std::vector<Response>> parse_all(std::string_view bytes) {
  std::vector<Response> out;
  while (!bytes.empty()) {
    std::size_t used = 0;
    auto r = parse_one(bytes, used);
    if (!r) return std::nullopt;
    out.push_back(std::move(*r));
    bytes.remove_prefix(used);
  }
  return out;
}

// Route actions that do not block: they record what they were asked.
struct FakeActions {
  std::mutex m;
  std::vector<int> sleeps;                    // ms of each /sleep
  std::vector<std::pair<int, int>> fanouts;  // (n, ms) of each /fanout

  Actions actions(const std::shared_ptr<Counters>& counters) {
    Actions a;
    a.sleep = [this](std::chrono::milliseconds d) {
      std::lock_guard<std::mutex> g(m);
      sleeps.push_back(static_cast<int>(d.count()));
      return true;
    };
    a.fanout = [this](int n, int ms) {
      std::lock_guard<std::mutex> g(m);
      fanouts.emplace_back(n, ms);
      return FanoutResult{n, n / 2};
    };
    a.stats = [counters] { return stats_json(*counters); };
    return a;
  }
};

inline const std::set<int>& allowed_statuses() {
  static const std::set<int> s{200, 400, 404, 405, 413, 431, 503};
  return s;
}

}  // namespace sample_http::test
