// libFuzzer target: the http sample's request handling. The input is split
// into reads of varying sizes (the first byte seeds the split) and fed to a
// Session with the real routes (non-blocking stand-in actions). Every output
// must be a well-formed sequence of HTTP/1.1 responses with an allowed status
// and Content-Length, one per request answered, keep-alive on all but the
// last, Connection: close on errors and when the session closed, nothing
// after close, and the session's buffer within its header limit.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "samples/http/http_test_util.hpp"
#include "samples/http/routes.hpp"
#include "samples/http/session.hpp"

namespace {

using namespace sample_http;

[[noreturn]] void fail(const char* what, const std::string& out) {
  std::fprintf(stderr, "http_session_fuzz: %s\noutput:\n%s\n", what, out.c_str());
  std::abort();
}

struct Fixture {
  std::shared_ptr<Counters> counters = std::make_shared<Counters>();
  test::FakeActions fake;
  Handler handler;
  Fixture() {
    Actions a = fake.actions(counters);
    a.stats = [] { return std::string(R"({"runtime":"fuzz"})"); };
    handler = Routes(a, counters);
  }
};

std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture fx;
  if (size < 1) return 0;
  std::uint64_t seed = data[0];
  // Bit 7 of the first byte: small limits (mutations cross them often) or the
  // server's defaults.
  Limits limits;
  if (data[0] & 0x80) {
    limits.max_header_bytes = 512;
    limits.max_body_bytes = 1024;
  }
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  {
    std::lock_guard<std::mutex> g(fx.fake.m);  // keep the stand-ins' logs short
    fx.fake.sleeps.clear();
    fx.fake.fanouts.clear();
  }
  Session s(limits, fx.handler);
  std::string out;
  bool open = true;
  std::size_t at = 0;
  while (at < input.size()) {
    const std::size_t left = input.size() - at;
    const std::uint64_t r = splitmix(seed);
    const std::size_t piece = (seed & 0x40) != 0 || r % 4 == 0 ? left : 1 + (r >> 8) % std::min<std::size_t>(left, 97);
    const std::size_t before = out.size();
    const bool was_open = open;
    open = s.feed(input.substr(at, piece), out);
    at += piece;
    if (!was_open && out.size() != before) fail("output after the session closed", out);
    if (s.buffered() > limits.max_header_bytes + 4) fail("session buffered past its header limit", out);
  }
  const auto rs = test::parse_all(out);
  if (!rs) fail("output is not a sequence of HTTP/1.1 responses", out);
  if (rs->size() != s.responses()) fail("response count differs from Session::responses()", out);
  for (std::size_t i = 0; i < rs->size(); ++i) {
    const auto& resp = (*rs)[i];
    const bool last = i + 1 == rs->size();
    if (resp.version != 11) fail("response not HTTP/1.1", out);
    if (!test::allowed_statuses().count(resp.status)) fail("status not allowed", out);
    if (!resp.has_length || resp.content_type.empty()) fail("response without Content-Length or Content-Type", out);
    if (!last && resp.connection != "keep-alive") fail("a response after Connection: close", out);
    if (resp.status >= 400 && resp.connection != "close") fail("error answer keeps the connection", out);
  }
  if (open && !rs->empty() && rs->back().connection != "keep-alive") fail("open session said close", out);
  if (!open && (rs->empty() || rs->back().connection != "close")) fail("closed session without a closing answer", out);
  return 0;
}
