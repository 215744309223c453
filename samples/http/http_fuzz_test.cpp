// A deterministic mutation fuzzer for request handling: valid requests,
// mutated (flips, insertions, deletions, splices, huge headers, pipelines)
// and fed to a Session in random pieces. Every output must be a well-formed
// sequence of HTTP/1.1 responses with an allowed status, closing exactly when
// the session says it closes, and the session must stay within its limits.
//
// HTTP_FUZZ_ITERATIONS (default 200000) and HTTP_FUZZ_SEED change the run;
// a failure prints the seed and the input.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "samples/http/http_test_util.hpp"
#include "samples/http/routes.hpp"
#include "samples/http/session.hpp"

namespace sample_http {
namespace {

// splitmix64: the same numbers on every platform and library.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform enough in [0, n), n > 0.
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
  bool one_in(std::size_t n) { return below(n) == 0; }

 private:
  std::uint64_t s_;
};

const std::vector<std::string> kCorpus = {
    "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /stats HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    "GET /sleep?ms=5 HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /fanout?n=10&ms=3 HTTP/1.1\r\nHost: a\r\nUser-Agent: fuzz\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "GET /sleep?ms=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: t\r\n\r\n",
    "GET /nope HTTP/1.1\r\n\r\n",
    "HEAD / HTTP/1.1\r\n\r\n",
    "GET /fanout?ms=0&n=1000 HTTP/1.1\r\nX-A: 1\r\nX-B:  spaced  \r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
};

// Pieces that parsers care about, for insertions.
const std::vector<std::string> kTokens = {
    "\r\n", "\r\n\r\n", ":", " ", "\t", std::string(1, '\0'), "\n", "\r", "?", "&", "=", "/", "%",
    "0", "1", "9", "-", "ms=", "n=", "60001", "99999999999999999999", "chunked", "close", "keep-alive",
    "Content-Length: ", "Transfer-Encoding: chunked\r\n", "Connection: close\r\n", "HTTP/1.1", "HTTP/1.0",
    "GET ", "\xff", "\x80", ";", "\"", "ffffffffffffffff\r\n",
};

std::string mutate(Rng& rng, std::string s, std::size_t max_header) {
  const int rounds = 1 + static_cast<int>(rng.below(4));
  for (int r = 0; r < rounds; ++r) {
    switch (rng.below(9)) {
      case 0:  // flip a bit
        if (!s.empty()) s[rng.below(s.size())] ^= static_cast<char>(1u << rng.below(8));
        break;
      case 1:  // any byte
        if (!s.empty()) s[rng.below(s.size())] = static_cast<char>(rng.below(256));
        break;
      case 2:  // insert a token
        s.insert(rng.below(s.size() + 1), kTokens[rng.below(kTokens.size())]);
        break;
      case 3: {  // delete a range
        if (s.empty()) break;
        const std::size_t at = rng.below(s.size());
        s.erase(at, 1 + rng.below(std::min<std::size_t>(16, s.size() - at)));
        break;
      }
      case 4: {  // splice: this one's front with another's back
        const std::string& o = kCorpus[rng.below(kCorpus.size())];
        s = s.substr(0, rng.below(s.size() + 1)) + o.substr(rng.below(o.size() + 1));
        break;
      }
      case 5:  // pipeline another request after this one
        s += kCorpus[rng.below(kCorpus.size())];
        break;
      case 6: {  // a huge header field, around the limit
        const std::size_t eol = s.find("\r\n");
        const std::size_t at = eol == std::string::npos ? s.size() : eol + 2;
        const std::size_t len = max_header / 2 + rng.below(max_header * 2);
        s.insert(at, "X-Huge: " + std::string(len, 'h') + "\r\n");
        break;
      }
      case 7: {  // duplicate a range in place
        if (s.empty()) break;
        const std::size_t at = rng.below(s.size());
        const std::string piece = s.substr(at, 1 + rng.below(32));
        s.insert(at, piece);
        break;
      }
      case 8:  // a big body length
        s.insert(rng.below(s.size() + 1), "Content-Length: " + std::to_string(rng.below(1u << 16)) + "\r\n");
        break;
    }
  }
  return s;
}

// Feeds input in one piece or in random ones; checks the output of every
// feed and of all of them; adds the statuses to seen.
void check_one(Rng& rng, bool in_pieces, const Limits& limits, const Handler& handler, const std::string& input,
               std::vector<int>& seen) {
  Session s(limits, handler);
  std::string out;
  bool open = true;
  std::size_t at = 0;
  while (at < input.size()) {
    const std::size_t left = input.size() - at;
    const std::size_t piece = !in_pieces || rng.one_in(3) ? left : 1 + rng.below(std::min<std::size_t>(left, 64));
    const bool was_open = open;
    const std::size_t before = out.size();
    open = s.feed(std::string_view(input).substr(at, piece), out);
    at += piece;
    if (!was_open) {
      ASSERT_EQ(out.size(), before) << "output after close";
    }
    ASSERT_LE(s.buffered(), limits.max_header_bytes + 4);
  }
  const auto rs = test::parse_all(out);
  ASSERT_TRUE(rs.has_value()) << "output is not a response sequence:\n" << out;
  ASSERT_EQ(rs->size(), s.responses());
  for (std::size_t i = 0; i < rs->size(); ++i) {
    const auto& r = (*rs)[i];
    ++seen[static_cast<std::size_t>(r.status) % seen.size()];
    ASSERT_EQ(r.version, 11u);
    ASSERT_TRUE(test::allowed_statuses().count(r.status)) << r.status;
    ASSERT_TRUE(r.has_length);
    ASSERT_FALSE(r.content_type.empty());
    const bool last = i + 1 == rs->size();
    if (!last) {
      ASSERT_EQ(r.connection, "keep-alive") << "a response after Connection: close";
    }
    if (r.status >= 400) {
      ASSERT_EQ(r.connection, "close");
    }
  }
  if (open) {
    ASSERT_TRUE(rs->empty() || rs->back().connection == "keep-alive");
  } else {
    ASSERT_FALSE(rs->empty()) << "closed without an answer";
    ASSERT_EQ(rs->back().connection, "close");
  }
}

std::uint64_t env_or(const char* name, std::uint64_t def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : def;
}

TEST(HttpFuzz, MutatedRequestsGetWellFormedAnswers) {
  const std::uint64_t iterations = env_or("HTTP_FUZZ_ITERATIONS", 200000);
  const std::uint64_t seed = env_or("HTTP_FUZZ_SEED", 20240601);
  auto counters = std::make_shared<Counters>();
  test::FakeActions fake;
  Actions actions = fake.actions(counters);
  actions.stats = [] { return std::string(R"({"runtime":"fuzz"})"); };  // /proc reads would dominate
  const Handler handler = Routes(actions, counters);
  // Small limits, so that mutations cross them often.
  Limits limits;
  limits.max_header_bytes = 1024;
  limits.max_body_bytes = 4096;

  Rng rng(seed);
  std::vector<int> seen(600, 0);
  const auto start = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < iterations; ++i) {
    std::string input = kCorpus[rng.below(kCorpus.size())];
    if (!rng.one_in(10)) input = mutate(rng, std::move(input), limits.max_header_bytes);
    for (const bool in_pieces : {false, true}) {
      check_one(rng, in_pieces, limits, handler, input, seen);
      if (::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "seed " << seed << ", iteration " << i << (in_pieces ? ", in pieces" : ", whole")
                      << ", input (" << input.size() << " bytes):\n" << ::testing::PrintToString(input);
        return;
      }
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu inputs in %.2f s; statuses: 200 x%d, 400 x%d, 404 x%d, 405 x%d, 413 x%d, 431 x%d\n",
              static_cast<unsigned long long>(iterations), secs, seen[200], seen[400], seen[404], seen[405],
              seen[413], seen[431]);
  // A fuzzer that never reaches the error paths tests little.
  if (iterations >= 10000) {
    for (int status : {200, 400, 404, 405, 413, 431}) EXPECT_GT(seen[status], 0) << status;
  }
}

}  // namespace
}  // namespace sample_http
