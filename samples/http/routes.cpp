// Routes: maps a request's path to its answer and checks its arguments. The
// query is a plain "a=1&b=2" list of decimal integers, so no decoding.
#include "samples/http/routes.hpp"

#include <charconv>
#include <exception>
#include <optional>
#include <string_view>

#include "samples/common/runtime.hpp"

namespace sample_http {

namespace {

constexpr const char* kJson = "application/json";

Reply text(int status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

Reply json(std::string body) {
  Reply r;
  r.content_type = kJson;
  r.body = std::move(body);
  return r;
}

// The value of the first `key=` in query, or nullopt.
std::optional<std::string_view> param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const std::size_t eq = item.find('=');
    if (item.substr(0, eq) == key) return eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
  }
  return std::nullopt;
}

// A decimal integer in [lo, hi], digits only; nullopt if absent or not that.
std::optional<int> int_param(std::string_view query, std::string_view key, int lo, int hi) {
  const auto v = param(query, key);
  if (!v || v->empty() || v->size() > 9) return std::nullopt;
  int x = 0;
  const auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), x);
  if (ec != std::errc() || end != v->data() + v->size() || x < lo || x > hi) return std::nullopt;
  return x;
}

}  // namespace

Routes::Routes(Actions actions, std::shared_ptr<Counters> counters)
    : actions_(std::move(actions)), counters_(std::move(counters)) {}

Reply Routes::operator()(const Request& req) const {
  counters_->requests_served.fetch_add(1, std::memory_order_relaxed);
  try {
    return route(req);
  } catch (const std::exception& e) {
    // Out of threads, descriptors or memory for this request: say so, keep serving.
    return text(503, std::string("unavailable: ") + e.what() + "\n");
  }
}

Reply Routes::route(const Request& req) const {
  const std::size_t q = req.target.find('?');
  const std::string_view path = req.target.substr(0, q);
  const std::string_view query = q == std::string_view::npos ? std::string_view() : req.target.substr(q + 1);

  const bool known =
      path == "/" || path == "/stats" || path == "/sleep" || path == "/fanout" || path == "/debug/fibers";
  if (!known) return text(404, "not found\n");
  if (req.method != "GET") {
    Reply r = text(405, "method not allowed\n");
    r.allow = "GET";
    return r;
  }

  if (path == "/") return text(200, std::string("hello from ") + sample::runtime_name() + "\n");

  if (path == "/stats") return json(actions_.stats());

  if (path == "/debug/fibers") {
    std::string dump = actions_.fiber_dump ? actions_.fiber_dump() : std::string();
    if (dump.empty()) return text(404, "no fibers here: this server runs a thread per connection\n");
    return text(200, std::move(dump));
  }

  if (path == "/sleep") {
    const auto ms = int_param(query, "ms", 0, kMaxSleepMs);
    if (!ms) return text(400, "/sleep needs ms=0.." + std::to_string(kMaxSleepMs) + "\n");
    if (!actions_.sleep(std::chrono::milliseconds(*ms))) return text(503, "server stopping\n");
    return text(200, "slept " + std::to_string(*ms) + " ms\n");
  }

  // /fanout
  const auto n = int_param(query, "n", 1, kMaxFanout);
  const auto ms = int_param(query, "ms", 0, kMaxSleepMs);
  if (!n || !ms)
    return text(400, "/fanout needs n=1.." + std::to_string(kMaxFanout) + " and ms=0.." +
                         std::to_string(kMaxSleepMs) + "\n");
  const FanoutResult r = actions_.fanout(*n, *ms);
  return json("{\"asked\":" + std::to_string(r.asked) + ",\"answered\":" + std::to_string(r.answered) +
              ",\"late\":" + std::to_string(r.asked - r.answered) + "}");
}

}  // namespace sample_http
