// End-to-end tests over real sockets, for both binaries: each test starts
// the server as a child process, reads its port from the first stdout line,
// talks HTTP to it, and stops it with SIGTERM. Waits are reads of the
// child's output or of a socket (with generous timeouts so a broken server
// fails the test instead of hanging it), never sleeps.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "samples/common/child_process.hpp"
#include "samples/http/http_test_util.hpp"

namespace sample_http {
namespace {

using namespace std::chrono_literals;
using test::Response;

constexpr auto kIoTimeout = 30s;  // a broken server fails, not hangs

using Child = sample::ChildProcess;  // killed when destroyed, and if the test dies

// The binary at path with args.
std::vector<std::string> command(const std::string& path, std::vector<std::string> args) {
  args.insert(args.begin(), path);
  return args;
}

// A server child started with --port 0; port() is what it printed.
class Server {
 public:
  Server(const std::string& bin, const std::string& runtime, std::vector<std::string> args) {
    args.insert(args.end(), {"--port", "0", "--workers", "2"});
    child_ = std::make_unique<Child>(command(bin, args));
    const std::string line = child_->read_line().value_or("");
    const std::string prefix = runtime + " listening on 127.0.0.1:";
    if (line.rfind(prefix, 0) != 0) throw std::runtime_error("unexpected first line: '" + line + "'");
    port_ = static_cast<std::uint16_t>(std::stoi(line.substr(prefix.size())));
  }
  std::uint16_t port() const { return port_; }
  Child& child() { return *child_; }

 private:
  std::unique_ptr<Child> child_;
  std::uint16_t port_ = 0;
};

// A blocking client socket.
class Client {
 public:
  explicit Client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
    timeval tv{static_cast<time_t>(kIoTimeout.count()), 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Client() { ::close(fd_); }

  void send(std::string_view s) {
    while (!s.empty()) {
      const ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
      s.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // The next response; nullopt at end of stream or on a timeout.
  std::optional<Response> response() {
    for (;;) {
      std::size_t used = 0;
      if (auto r = test::parse_one(buf_, used)) {
        buf_.erase(0, used);
        return r;
      }
      if (!fill()) return std::nullopt;
    }
  }

  // True if the server closed the connection (and sent nothing more).
  bool at_eof() { return buf_.empty() && !fill() && eof_; }

 private:
  bool fill() {
    char b[4096];
    const ssize_t n = ::recv(fd_, b, sizeof b, 0);
    if (n <= 0) {
      eof_ = n == 0 || errno == ECONNRESET;
      return false;
    }
    buf_.append(b, static_cast<std::size_t>(n));
    return true;
  }
  int fd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

Response get(Client& c, const std::string& target) {
  c.send("GET " + target + " HTTP/1.1\r\nHost: test\r\n\r\n");
  auto r = c.response();
  if (!r) throw std::runtime_error("no response to " + target);
  return *r;
}

// The value of "key":<digits> in a flat JSON object; 0 if absent.
std::uint64_t json_number(const std::string& j, const std::string& key) {
  const std::size_t at = j.find("\"" + key + "\":");
  return at == std::string::npos ? 0 : std::strtoull(j.c_str() + at + key.size() + 3, nullptr, 10);
}

struct Binary {
  const char* path;
  const char* runtime;  // as in the first line: "http (tendril)"
};

class HttpE2E : public ::testing::TestWithParam<Binary> {
 protected:
  std::unique_ptr<Server> start(std::vector<std::string> args = {}) {
    return std::make_unique<Server>(GetParam().path, GetParam().runtime, std::move(args));
  }
  static std::string rt() { return std::string(GetParam().runtime).substr(6, 7); }
};

TEST_P(HttpE2E, KeepAliveAndPipelining) {
  auto s = start();
  Client c(s->port());
  for (int i = 0; i < 3; ++i) {
    const Response r = get(c, "/");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "hello from " + rt() + "\n");
    EXPECT_EQ(r.connection, "keep-alive");
  }
  // Three requests in one write, answered in order on the same connection.
  c.send("GET /sleep?ms=1 HTTP/1.1\r\n\r\nGET /fanout?n=3&ms=0 HTTP/1.1\r\n\r\nGET /sleep?ms=2 HTTP/1.1\r\n\r\n");
  auto r1 = c.response(), r2 = c.response(), r3 = c.response();
  ASSERT_TRUE(r1 && r2 && r3);
  EXPECT_EQ(r1->body, "slept 1 ms\n");
  EXPECT_EQ(r2->content_type, "application/json");
  EXPECT_NE(r2->body.find(R"("asked":3,)"), std::string::npos) << r2->body;
  EXPECT_EQ(r3->body, "slept 2 ms\n");
  // Connection: close is honoured.
  c.send("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  auto last = c.response();
  ASSERT_TRUE(last);
  EXPECT_EQ(last->connection, "close");
  EXPECT_TRUE(c.at_eof());
}

TEST_P(HttpE2E, StatsReportTheRuntime) {
  auto s = start();
  Client c(s->port());
  get(c, "/");
  const Response r = get(c, "/stats");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  const std::string& j = r.body;
  EXPECT_NE(j.find("\"runtime\":\"" + rt() + "\""), std::string::npos) << j;
  EXPECT_NE(j.find(R"("connections_open":1,)"), std::string::npos) << j;
  EXPECT_NE(j.find(R"("requests_served":2,)"), std::string::npos) << j;
  std::vector<std::string> keys = {"rss_bytes", "threads"};
  if (rt() == "tendril")
    keys.insert(keys.end(), {"fibers_spawned", "fibers_live", "context_switches", "steals", "stack_mode",
                             "io_backend", "stack_faults", "stack_pages_mapped", "cache_hits"});
  for (const auto& k : keys) EXPECT_NE(j.find("\"" + k + "\":"), std::string::npos) << k << " in " << j;
  EXPECT_EQ(j.find(R"("rss_bytes":0)"), std::string::npos) << j;
}

TEST_P(HttpE2E, DebugFibersShowsParkedConnections) {
  auto s = start();
  Client idle(s->port());
  get(idle, "/");  // this connection's fiber now waits for its next request
  Client c(s->port());
  const Response r = get(c, "/debug/fibers");
  if (rt() != "tendril") {
    EXPECT_EQ(r.status, 404);
    return;
  }
  ASSERT_EQ(r.status, 200);
  // The idle connection parks in a socket read; the request being answered
  // is the fiber running the dump's caller.
  EXPECT_NE(r.body.find("[parked: net read fd="), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("serve_connection"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("[parked: net accept fd="), std::string::npos) << r.body;
}

TEST_P(HttpE2E, FanoutWithSimulatedBackend) {
  // A deadline no healthy run reaches: every call answers.
  auto s = start({"--fanout-deadline-ms", "60000"});
  Client c(s->port());
  const Response r = get(c, "/fanout?n=100&ms=1");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"asked":100,"answered":100,"late":0})");
  EXPECT_EQ(get(c, "/fanout?n=0&ms=1").status, 400);
}

TEST_P(HttpE2E, LateFanoutCallsDoNotHoldTheStop) {
  // Calls of a minute against a deadline of 1 ms: all late, still running.
  auto s = start({"--fanout-deadline-ms", "1"});
  Client c(s->port());
  EXPECT_EQ(get(c, "/fanout?n=200&ms=60000").body, R"({"asked":200,"answered":0,"late":200})");
  EXPECT_EQ(get(c, "/").status, 200);
  s->child().signal(SIGTERM);
  EXPECT_EQ(sample::exit_code(s->child().wait(20s)), 0);
}

TEST_P(HttpE2E, FanoutWithEchoBackend) {
  Child echo(command(ECHO_BIN, {"--port", "0", "--workers", "1"}));
  const std::string line = echo.read_line().value_or("");
  const std::string prefix = "echo (tendril) listening on ";
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
  auto s = start({"--fanout-deadline-ms", "60000", "--backend", line.substr(prefix.size())});
  Client c(s->port());
  const Response r = get(c, "/fanout?n=50&ms=0");
  EXPECT_EQ(r.body, R"({"asked":50,"answered":50,"late":0})");
  echo.signal(SIGTERM);
  EXPECT_EQ(sample::exit_code(echo.wait(30s)), 0);
}

TEST_P(HttpE2E, BadRequestsCloseAndTheServerStaysUp) {
  auto s = start({"--max-body-bytes", "1000"});
  const std::vector<std::pair<std::string, int>> cases = {
      {"NOT HTTP AT ALL\r\n\r\n", 400},
      {std::string("GET /\0\xff HTTP/1.1\r\n\r\n", 20), 400},
      {"GET / HTTP/1.1\r\nX-Big: " + std::string(10000, 'x') + "\r\n\r\n", 431},
      {"GET / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n" + std::string(1001, 'b'), 413},
      {"GET /missing HTTP/1.1\r\n\r\n", 404},
      {"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405},
  };
  for (const auto& [bytes, status] : cases) {
    SCOPED_TRACE(status);
    Client c(s->port());
    c.send(bytes);
    const auto r = c.response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status);
    EXPECT_EQ(r->connection, "close");
    EXPECT_TRUE(c.at_eof());
  }
  // Garbage without an end, then the client goes: nothing to answer.
  {
    Client c(s->port());
    c.send("GET / HTTP/1.1\r\nHost: trunc");
  }
  Client next(s->port());
  EXPECT_EQ(get(next, "/").status, 200);
}

TEST_P(HttpE2E, IdleKeepAliveConnectionIsClosed) {
  auto s = start({"--idle-timeout-ms", "50"});
  Client c(s->port());
  EXPECT_EQ(get(c, "/").status, 200);
  EXPECT_TRUE(c.at_eof());  // the server's idle timeout, well before the client's
  Client next(s->port());
  EXPECT_EQ(get(next, "/").status, 200);
}

TEST_P(HttpE2E, SigtermStopsWithOpenConnections) {
  auto s = start();
  Client idle(s->port());
  EXPECT_EQ(get(idle, "/").status, 200);  // accepted and served, now idle
  // Another connection is in a one-minute /sleep when the stop comes. The
  // server counts a request before handling it, so /stats tells when it is in.
  Client sleeper(s->port());
  sleeper.send("GET /sleep?ms=60000 HTTP/1.1\r\n\r\n");
  Client probe(s->port());
  for (std::uint64_t probes = 1;; ++probes) {
    const Response r = get(probe, "/stats");
    ASSERT_EQ(r.status, 200);
    if (json_number(r.body, "requests_served") == 2 + probes) break;  // "/", "/sleep" and the probes
  }
  s->child().signal(SIGTERM);
  std::string rest;
  EXPECT_EQ(sample::exit_code(s->child().wait(20s, &rest)), 0);
  EXPECT_EQ(rest, "http: stopped\n");
  EXPECT_TRUE(idle.at_eof());
  // The sleeper's answer, if the stop let it out, says the server is stopping.
  if (auto r = sleeper.response()) {
    EXPECT_EQ(r->status, 503);
  }
}

TEST_P(HttpE2E, FlagsHelpAndErrors) {
  {
    Child help(command(GetParam().path, {"--help"}));
    std::string out;
    EXPECT_EQ(sample::exit_code(help.wait(30s, &out)), 0);
    EXPECT_NE(out.find("--fanout-deadline-ms"), std::string::npos) << out;
    EXPECT_NE(out.find("--backend"), std::string::npos) << out;
  }
  for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
           {"--port", "70000"}, {"--bogus"}, {"--backend", "nocolon"}, {"--idle-timeout-ms", "-1"}, {"--port", "x"}}) {
    Child c(command(GetParam().path, bad));
    EXPECT_EQ(sample::exit_code(c.wait(30s)), 2) << bad[0];
  }
}

INSTANTIATE_TEST_SUITE_P(Binaries, HttpE2E,
                         ::testing::Values(Binary{HTTP_BIN, "http (tendril)"},
                                           Binary{HTTP_PTHREAD_BIN, "http (pthread)"}),
                         [](const ::testing::TestParamInfo<Binary>& i) {
                           return std::string(i.param.runtime).substr(6, 7);
                         });

}  // namespace
}  // namespace sample_http
