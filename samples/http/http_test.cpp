// Session-level tests of the http sample: requests in, responses out, no
// sockets. Routes are the real ones; their blocking actions are stand-ins,
// except in HttpRuntime, which runs the real sleep and fan-out on tendril.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "samples/http/fanout.hpp"
#include "samples/http/http_test_util.hpp"
#include "samples/http/interrupt.hpp"
#include "samples/http/routes.hpp"
#include "samples/http/session.hpp"
#include "samples/http/stats_json.hpp"

namespace sample_http {
namespace {

using test::parse_all;
using test::Response;

class HttpSession : public ::testing::Test {
 protected:
  HttpSession() : counters_(std::make_shared<Counters>()), routes_(fake_.actions(counters_), counters_) {}

  std::unique_ptr<Session> make(Limits limits = {}) {
    return std::make_unique<Session>(limits, [this](const Request& r) { return routes_(r); });
  }

  // Feeds bytes to a fresh session in one piece; the responses, and whether
  // the session stays open.
  std::vector<Response> run(std::string_view bytes, bool* open = nullptr, Limits limits = {}) {
    auto s = make(limits);
    std::string out;
    const bool o = s->feed(bytes, out);
    if (open) *open = o;
    auto rs = parse_all(out);
    EXPECT_TRUE(rs.has_value()) << "not a response sequence:\n" << out;
    return rs.value_or(std::vector<Response>{});
  }

  // One request that must get status and close the connection.
  void expect_error_closes(std::string_view bytes, int status, Limits limits = {}) {
    bool open = true;
    // A valid request pipelined after the bad one must not be answered.
    const auto rs = run(std::string(bytes) + "GET / HTTP/1.1\r\n\r\n", &open, limits);
    ASSERT_EQ(rs.size(), 1u) << bytes.substr(0, 200);
    EXPECT_EQ(rs[0].status, status) << bytes.substr(0, 200);
    EXPECT_EQ(rs[0].connection, "close");
    EXPECT_FALSE(open);
  }

  test::FakeActions fake_;
  std::shared_ptr<Counters> counters_;
  Routes routes_;
};

TEST_F(HttpSession, GetRootAnswers200) {
  bool open = false;
  const auto rs = run("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &open);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 200);
  EXPECT_EQ(rs[0].version, 11u);
  EXPECT_EQ(rs[0].body, "hello from tendril\n");
  EXPECT_EQ(rs[0].connection, "keep-alive");
  EXPECT_TRUE(rs[0].has_length);
  EXPECT_EQ(rs[0].content_type, "text/plain; charset=utf-8");
  EXPECT_TRUE(open);
  EXPECT_EQ(counters_->requests_served.load(), 1u);
}

TEST_F(HttpSession, KeepAliveServesRequestsOneAfterAnother) {
  auto s = make();
  for (int i = 0; i < 5; ++i) {
    std::string out;
    ASSERT_TRUE(s->feed("GET /sleep?ms=" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n", out));
    const auto rs = parse_all(out);
    ASSERT_TRUE(rs && rs->size() == 1u) << out;
    EXPECT_EQ((*rs)[0].body, "slept " + std::to_string(i) + " ms\n");
    EXPECT_EQ((*rs)[0].connection, "keep-alive");
    EXPECT_EQ(s->buffered(), 0u);
  }
  EXPECT_EQ(fake_.sleeps, (std::vector<int>{0, 1, 2, 3, 4}));
}

// Several requests of each kind (with a body, chunked, HTTP/1.0 keep-alive).
const std::string kPipeline =
    "GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    "GET /fanout?n=4&ms=2 HTTP/1.1\r\nHost: x\r\n\r\n"
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    "GET /sleep?ms=3 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    "GET /sleep?ms=4 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    "GET /stats HTTP/1.1\r\n\r\n"
    "GET /sleep?ms=5 HTTP/1.1\r\n\r\n";

void expect_pipeline_answers(const std::vector<Response>& rs) {
  ASSERT_EQ(rs.size(), 7u);
  EXPECT_EQ(rs[0].body, "slept 1 ms\n");
  EXPECT_EQ(rs[1].body, R"({"asked":4,"answered":2,"late":2})");
  EXPECT_EQ(rs[1].content_type, "application/json");
  EXPECT_EQ(rs[2].body, "hello from tendril\n");
  EXPECT_EQ(rs[3].body, "slept 3 ms\n");
  EXPECT_EQ(rs[4].body, "slept 4 ms\n");
  EXPECT_EQ(rs[5].content_type, "application/json");
  EXPECT_EQ(rs[6].body, "slept 5 ms\n");
  for (const auto& r : rs) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.connection, "keep-alive");
  }
}

TEST_F(HttpSession, PipelinedRequestsInOneBufferAreAnsweredInOrder) {
  bool open = false;
  const auto rs = run(kPipeline, &open);
  expect_pipeline_answers(rs);
  EXPECT_TRUE(open);
  EXPECT_EQ(fake_.fanouts, (std::vector<std::pair<int, int>>{{4, 2}}));
}

TEST_F(HttpSession, PipelinedRequestsSplitAtEveryByteBoundary) {
  for (std::size_t cut = 0; cut <= kPipeline.size(); ++cut) {
    auto s = make();
    std::string out;
    ASSERT_TRUE(s->feed(std::string_view(kPipeline).substr(0, cut), out));
    ASSERT_TRUE(s->feed(std::string_view(kPipeline).substr(cut), out));
    ASSERT_EQ(s->buffered(), 0u);
    const auto rs = parse_all(out);
    ASSERT_TRUE(rs) << "cut at " << cut;
    expect_pipeline_answers(*rs);
  }
  // And one byte at a time.
  auto s = make();
  std::string out;
  for (char c : kPipeline) ASSERT_TRUE(s->feed(std::string_view(&c, 1), out));
  const auto rs = parse_all(out);
  ASSERT_TRUE(rs);
  expect_pipeline_answers(*rs);
}

TEST_F(HttpSession, ManyPipelinedRequestsBeyondTheHeaderLimit) {
  // Together far more than max_header_bytes; each one well within it.
  std::string in;
  for (int i = 0; i < 500; ++i) in += "GET /sleep?ms=" + std::to_string(i) + " HTTP/1.1\r\nHost: example\r\n\r\n";
  bool open = false;
  const auto rs = run(in, &open);
  ASSERT_EQ(rs.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(rs[i].body, "slept " + std::to_string(i) + " ms\n");
  EXPECT_TRUE(open);
}

TEST_F(HttpSession, Http10ClosesUnlessKeepAlive) {
  bool open = true;
  auto rs = run("GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n", &open);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 200);
  EXPECT_EQ(rs[0].connection, "close");
  EXPECT_FALSE(open);

  rs = run("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n", &open);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].connection, "keep-alive");
  EXPECT_EQ(rs[1].connection, "close");
  EXPECT_FALSE(open);
}

TEST_F(HttpSession, ConnectionCloseIsTheLastAnswer) {
  bool open = true;
  const auto rs = run("GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n", &open);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].connection, "keep-alive");
  EXPECT_EQ(rs[1].status, 200);
  EXPECT_EQ(rs[1].connection, "close");
  EXPECT_FALSE(open);
  // Later input is ignored.
  auto s = make();
  std::string out;
  EXPECT_FALSE(s->feed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", out));
  out.clear();
  EXPECT_FALSE(s->feed("GET / HTTP/1.1\r\n\r\n", out));
  EXPECT_TRUE(out.empty());
}

TEST_F(HttpSession, UnknownPathIs404) {
  expect_error_closes("GET /nope HTTP/1.1\r\n\r\n", 404);
  expect_error_closes("GET /stats/ HTTP/1.1\r\n\r\n", 404);
  expect_error_closes("POST /nope HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 404);
  expect_error_closes("GET http://x/ HTTP/1.1\r\n\r\n", 404);
}

TEST_F(HttpSession, WrongMethodIs405WithAllow) {
  expect_error_closes("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405);
  expect_error_closes("HEAD /stats HTTP/1.1\r\n\r\n", 405);
  expect_error_closes("DELETE /sleep?ms=1 HTTP/1.1\r\n\r\n", 405);
  EXPECT_TRUE(fake_.sleeps.empty());
  std::string out;
  make()->feed("PUT / HTTP/1.1\r\n\r\n", out);
  EXPECT_NE(out.find("\r\nAllow: GET\r\n"), std::string::npos) << out;
}

TEST_F(HttpSession, MalformedIs400) {
  expect_error_closes("garbage\r\n\r\n", 400);
  expect_error_closes("GET / HTTP/9\r\n\r\n", 400);
  expect_error_closes("GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400);
  expect_error_closes("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400);
  expect_error_closes("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
  expect_error_closes("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400);
  expect_error_closes(std::string("GET /\0 HTTP/1.1\r\n\r\n", 19), 400);
  expect_error_closes("\r\n\r\n", 400);
}

TEST_F(HttpSession, TooLargeBodyIs413) {
  Limits small;
  small.max_body_bytes = 100;
  expect_error_closes("GET / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413, small);
  expect_error_closes("GET / HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n", 413);
  expect_error_closes("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + std::string(64, 'a') +
                          "\r\n40\r\n" + std::string(64, 'a') + "\r\n0\r\n\r\n",
                      413, small);
  // Exactly at the limit is fine.
  bool open = false;
  const auto rs = run("GET / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'b'), &open, small);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 200);
  EXPECT_TRUE(open);
}

TEST_F(HttpSession, TooLargeHeaderIs431EvenInPieces) {
  const std::string big = "GET / HTTP/1.1\r\nX-Big: " + std::string(9000, 'a') + "\r\n\r\n";
  expect_error_closes(big, 431);
  // Arriving 100 bytes at a time, it is refused before it is all there, and
  // the session never holds much more than the limit.
  auto s = make();
  std::string out;
  std::size_t fed = 0;
  bool open = true;
  while (open && fed < big.size()) {
    open = s->feed(std::string_view(big).substr(fed, 100), out);
    fed += 100;
    EXPECT_LE(s->buffered(), Limits{}.max_header_bytes + 4);
  }
  EXPECT_FALSE(open);
  EXPECT_LT(fed, big.size());
  const auto rs = parse_all(out);
  ASSERT_TRUE(rs && rs->size() == 1u);
  EXPECT_EQ((*rs)[0].status, 431);
  // Many small fields add up as well.
  std::string many = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 1000; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  expect_error_closes(many + "\r\n", 431);
}

TEST_F(HttpSession, EndlessChunkLineIsCutOff) {
  // Beast has no limit on a chunk-size line; the session does.
  auto s = make();
  std::string out;
  ASSERT_TRUE(s->feed("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=", out));
  bool open = true;
  for (int i = 0; i < 1000 && open; ++i) {
    open = s->feed(std::string(100, 'x'), out);
    EXPECT_LE(s->buffered(), Limits{}.max_header_bytes + 4);
  }
  EXPECT_FALSE(open);
  const auto rs = parse_all(out);
  ASSERT_TRUE(rs && rs->size() == 1u);
  EXPECT_EQ((*rs)[0].status, 413);
  EXPECT_EQ((*rs)[0].connection, "close");
}

TEST_F(HttpSession, SleepArgumentsAreChecked) {
  for (const char* bad : {"/sleep", "/sleep?", "/sleep?ms", "/sleep?ms=", "/sleep?ms=-1", "/sleep?ms=60001",
                          "/sleep?ms=abc", "/sleep?ms=1e3", "/sleep?ms=+5", "/sleep?ms=5x", "/sleep?ms=99999999999",
                          "/sleep?msx=5", "/sleep?ms=%35"}) {
    SCOPED_TRACE(bad);
    expect_error_closes(std::string("GET ") + bad + " HTTP/1.1\r\n\r\n", 400);
  }
  EXPECT_TRUE(fake_.sleeps.empty());
  for (const char* good : {"/sleep?ms=0", "/sleep?ms=60000", "/sleep?x=1&ms=7", "/sleep?ms=00012"}) {
    SCOPED_TRACE(good);
    const auto rs = run(std::string("GET ") + good + " HTTP/1.1\r\n\r\n");
    ASSERT_EQ(rs.size(), 1u);
    EXPECT_EQ(rs[0].status, 200);
  }
  EXPECT_EQ(fake_.sleeps, (std::vector<int>{0, 60000, 7, 12}));
}

TEST_F(HttpSession, FanoutArgumentsAreChecked) {
  for (const char* bad : {"/fanout", "/fanout?n=1", "/fanout?ms=1", "/fanout?n=0&ms=1", "/fanout?n=1001&ms=1",
                          "/fanout?n=1&ms=60001", "/fanout?n=-1&ms=1", "/fanout?n=1&ms=-1", "/fanout?n=a&ms=1"}) {
    SCOPED_TRACE(bad);
    expect_error_closes(std::string("GET ") + bad + " HTTP/1.1\r\n\r\n", 400);
  }
  EXPECT_TRUE(fake_.fanouts.empty());
  const auto rs = run("GET /fanout?n=1000&ms=60000 HTTP/1.1\r\n\r\nGET /fanout?ms=0&n=1 HTTP/1.1\r\n\r\n");
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].body, R"({"asked":1000,"answered":500,"late":500})");
  EXPECT_EQ(rs[1].body, R"({"asked":1,"answered":0,"late":1})");
  EXPECT_EQ(fake_.fanouts, (std::vector<std::pair<int, int>>{{1000, 60000}, {1, 0}}));
}

TEST_F(HttpSession, StatsCountRequests) {
  counters_->connections_open = 3;
  const auto rs = run("GET / HTTP/1.1\r\n\r\nGET /stats HTTP/1.1\r\n\r\n");
  ASSERT_EQ(rs.size(), 2u);
  const std::string& j = rs[1].body;
  EXPECT_EQ(j.front(), '{');
  EXPECT_EQ(j.back(), '}');
  EXPECT_NE(j.find(R"("runtime":"tendril")"), std::string::npos) << j;
  EXPECT_NE(j.find(R"("connections_open":3,)"), std::string::npos) << j;
  EXPECT_NE(j.find(R"("requests_served":2,)"), std::string::npos) << j;
  for (const char* key : {"fibers_spawned", "fibers_live", "context_switches", "steals", "stack_mode", "io_backend",
                          "stack_faults", "stack_pages_mapped", "cache_hits", "stacks_prepared", "rss_bytes", "threads"})
    EXPECT_NE(j.find(std::string("\"") + key + "\":"), std::string::npos) << key;
  EXPECT_GT(rss_bytes(), 0u);
  EXPECT_GE(thread_count(), 1u);
}

// The real actions on the real runtime: sleeping, fanning out with a
// deadline, late calls, and a stop that cuts the waits short.
TEST(HttpRuntime, SleepAndFanoutOnTendril) {
  tendril::run([] {
    auto counters = std::make_shared<Counters>();
    auto interrupt = std::make_shared<Interrupt>();
    // A deadline no healthy run reaches, so every call answers.
    const Fanout patient(std::nullopt, std::chrono::seconds(60), interrupt);
    // A deadline every call misses: they wait a minute, or until the stop.
    const Fanout hasty(std::nullopt, std::chrono::milliseconds(1), interrupt);
    Actions a;
    a.sleep = [interrupt](std::chrono::milliseconds d) { return interrupt->sleep_for(d); };
    a.stats = [counters] { return stats_json(*counters); };
    a.fanout = patient;
    const Routes patient_routes(a, counters);
    a.fanout = hasty;
    const Routes hasty_routes(a, counters);

    std::string out;
    Session s(Limits{}, patient_routes);
    ASSERT_TRUE(s.feed("GET /sleep?ms=2 HTTP/1.1\r\n\r\nGET /fanout?n=50&ms=1 HTTP/1.1\r\n\r\n", out));
    auto rs = parse_all(out);
    ASSERT_TRUE(rs && rs->size() == 2u) << out;
    EXPECT_EQ((*rs)[0].body, "slept 2 ms\n");
    EXPECT_EQ((*rs)[1].body, R"({"asked":50,"answered":50,"late":0})");

    out.clear();
    Session h(Limits{}, hasty_routes);
    ASSERT_TRUE(h.feed("GET /fanout?n=20&ms=60000 HTTP/1.1\r\n\r\n", out));
    rs = parse_all(out);
    ASSERT_TRUE(rs && rs->size() == 1u) << out;
    EXPECT_EQ((*rs)[0].body, R"({"asked":20,"answered":0,"late":20})");
    // The late calls ran in a tendril::Scope with the request's deadline:
    // their sleeps ended there, so none outlives its request.
    EXPECT_TRUE(hasty.drain_until(std::chrono::steady_clock::now()));
    interrupt->trigger();

    out.clear();
    ASSERT_FALSE(s.feed("GET /sleep?ms=60000 HTTP/1.1\r\n\r\n", out));
    rs = parse_all(out);
    ASSERT_TRUE(rs && rs->size() == 1u) << out;
    EXPECT_EQ((*rs)[0].status, 503);

    const std::string j = stats_json(*counters);
    EXPECT_EQ(j.find(R"("fibers_spawned":0,)"), std::string::npos) << j;
    EXPECT_NE(j.find(R"("runtime":"tendril")"), std::string::npos) << j;
  });
}

TEST(HttpBackend, ParsesHostAndPort) {
  auto b = parse_backend("127.0.0.1:7000");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "127.0.0.1");
  EXPECT_EQ(b->port, 7000);
  b = parse_backend("localhost:1");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "localhost");
  b = parse_backend("[::1]:7000");  // an IPv6 host without its brackets
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "::1");
  for (const char* bad : {"", "host", ":80", "host:", "host:0", "host:65536", "host:8x", "host:-1", "[]:80"})
    EXPECT_FALSE(parse_backend(bad)) << bad;
}

}  // namespace
}  // namespace sample_http
