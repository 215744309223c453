// End-to-end tests of the fanout sample, run against both binaries (fanout on
// tendril, fanout-pthread): the test starts the echo sample as a live backend
// and the server under test as child processes, reads their ports from their
// first line of output, and talks the line protocol over TCP. Silent and dead
// backends are sockets of the test itself.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "samples/common/child_process.hpp"
#include "samples/common/host_port.hpp"

namespace {

constexpr int kReadTimeoutMs = 30000;  // only to fail instead of hanging

using Child = sample::ChildProcess;  // killed when destroyed, and if the test dies

// The port in a "<name> (<runtime>) listening on <host>:<port>" line.
int port_of(const std::optional<std::string>& line, const std::string& prefix) {
  if (!line || line->rfind(prefix, 0) != 0) return -1;
  const auto port = sample::listening_port(*line);
  return port ? *port : -1;
}

// A blocking client connection with a read timeout.
class Client {
 public:
  explicit Client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
    timeval tv{kReadTimeoutMs / 1000, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() { ::close(fd_); }

  void send(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send");
      off += static_cast<std::size_t>(n);
    }
  }
  // The next line, or nullopt at end of stream ("<timeout>" after the read
  // timeout, so that a comparison fails instead of the test hanging).
  std::optional<std::string> line() {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      char b[4096];
      const ssize_t n = ::recv(fd_, b, sizeof b, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::string("<timeout>");
      if (n <= 0) return std::nullopt;
      buf_.append(b, static_cast<std::size_t>(n));
    }
  }
  std::string ask(const std::string& request) {
    send(request);
    return line().value_or("<closed>");
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

// A listening socket that never accepts nor reads: connections complete in
// the kernel's backlog and then hear nothing.
class SilentBackend {
 public:
  SilentBackend() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 1024) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("silent backend");
    port_ = ntohs(a.sin_port);
  }
  ~SilentBackend() { ::close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A loopback port nobody listens on (bound, read, released).
int dead_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A flat JSON object of numbers and strings; nullopt if it is not one.
std::optional<std::map<std::string, std::string>> parse_flat_json(const std::string& s) {
  std::map<std::string, std::string> out;
  std::size_t i = 0;
  auto ws = [&] {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  };
  auto str = [&](std::string* v) {
    if (i >= s.size() || s[i] != '"') return false;
    const auto end = s.find('"', i + 1);
    if (end == std::string::npos) return false;
    *v = s.substr(i + 1, end - i - 1);
    i = end + 1;
    return true;
  };
  ws();
  if (i >= s.size() || s[i++] != '{') return std::nullopt;
  for (;;) {
    ws();
    std::string key, value;
    if (!str(&key)) return std::nullopt;
    ws();
    if (i >= s.size() || s[i++] != ':') return std::nullopt;
    ws();
    if (i < s.size() && s[i] == '"') {
      if (!str(&value)) return std::nullopt;
    } else {
      const std::size_t start = i;
      while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-' || s[i] == '.')) ++i;
      if (i == start) return std::nullopt;
      value = s.substr(start, i - start);
    }
    if (!out.emplace(key, value).second) return std::nullopt;
    ws();
    if (i < s.size() && s[i] == ',') {
      ++i;
      continue;
    }
    if (i < s.size() && s[i] == '}') {
      ++i;
      ws();
      return i == s.size() ? std::optional(out) : std::nullopt;
    }
    return std::nullopt;
  }
}

struct Runtime {
  const char* name;  // as in the listening line and the stats
  const char* bin;
};
void PrintTo(const Runtime& r, std::ostream* os) { *os << r.name; }  // test names in ctest

class FanoutTest : public ::testing::TestWithParam<Runtime> {
 protected:
  const char* bin() const { return GetParam().bin; }
  std::string prog() const { return std::string(GetParam().name) == "pthread" ? "fanout-pthread" : "fanout"; }

  // Starts an echo backend and returns its port.
  int start_echo() {
    echo_ = std::make_unique<Child>(std::vector<std::string>{ECHO_BIN, "--port", "0"});
    const int port = port_of(echo_->read_line(), "echo (");
    if (port <= 0) throw std::runtime_error("echo did not start");
    return port;
  }
  static std::string at(int port) { return "127.0.0.1:" + std::to_string(port); }

  // Starts the server under test on a free port with these flags. Unless the
  // test sets one, the deadline is generous: a live backend then answers
  // every call however slow the machine (sanitizers, a loaded host).
  int start(std::vector<std::string> flags) {
    if (std::find(flags.begin(), flags.end(), "--call-deadline-ms") == flags.end())
      flags.insert(flags.end(), {"--call-deadline-ms", "30000"});
    flags.insert(flags.begin(), {bin(), "--port", "0"});
    server_ = std::make_unique<Child>(flags);
    const int port = port_of(server_->read_line(), std::string("fanout (") + GetParam().name + ") listening on 127.0.0.1:");
    if (port <= 0) throw std::runtime_error(std::string(bin()) + " did not start");
    return port;
  }

  std::map<std::string, std::string> stats(Client& c) {
    const std::string line = c.ask("stats\n");
    auto j = parse_flat_json(line);
    if (!j) {
      ADD_FAILURE() << "stats is not a flat JSON object: " << line;
      return {};
    }
    return *j;
  }
  static long num(const std::map<std::string, std::string>& j, const std::string& key) {
    auto it = j.find(key);
    return it == j.end() ? -1 : std::stol(it->second);
  }

  std::unique_ptr<Child> echo_, server_;
};

TEST_P(FanoutTest, AnswersEveryCallWithALiveBackend) {
  const int port = start({"--backend", at(start_echo()), "--k", "3"});
  Client c(port);
  EXPECT_EQ(c.ask("q 1 5\n"), "ok 1 5 5");
  EXPECT_EQ(c.ask("q abc\n"), "ok abc 3 3");  // default k
  EXPECT_EQ(c.ask("q big 200\n"), "ok big 200 200");
  c.send("q p1 1\nq p2 2\n");  // pipelined: answered in order
  EXPECT_EQ(c.line(), "ok p1 1 1");
  EXPECT_EQ(c.line(), "ok p2 2 2");
  EXPECT_EQ(c.ask("q crlf 2\r\n"), "ok crlf 2 2");
}

TEST_P(FanoutTest, CallsGoRoundRobinOverTheBackends) {
  const int port = start({"--backend", at(start_echo()) + "," + at(dead_port()), "--call-deadline-ms", "20000"});
  Client c(port);
  EXPECT_EQ(c.ask("q r 4\n"), "ok r 2 4");
  EXPECT_EQ(c.ask("q s 6\n"), "ok s 3 6");
  auto j = stats(c);
  EXPECT_EQ(num(j, "calls_failed"), 5);
  EXPECT_EQ(num(j, "calls_answered"), 5);
}

TEST_P(FanoutTest, ReconnectsWhenAPooledConnectionDied) {
  const int echo_port = start_echo();
  const int port = start({"--backend", at(echo_port), "--call-deadline-ms", "20000"});
  Client c(port);
  EXPECT_EQ(c.ask("q before 4\n"), "ok before 4 4");  // leaves idle pooled connections
  const int st = echo_->signal_and_wait(SIGTERM);       // which the backend closes
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  echo_ = std::make_unique<Child>(std::vector<std::string>{ECHO_BIN, "--port", std::to_string(echo_port)});
  ASSERT_EQ(port_of(echo_->read_line(), "echo ("), echo_port);
  EXPECT_EQ(c.ask("q after 4\n"), "ok after 4 4");
  EXPECT_EQ(num(stats(c), "calls_failed"), 0);
}

TEST_P(FanoutTest, SilentBackendAnswersNoneAtTheDeadlineAndServerKeepsServing) {
  SilentBackend silent;
  const int port = start({"--backend", at(silent.port()), "--call-deadline-ms", "200"});
  Client c(port);
  EXPECT_EQ(c.ask("q s1 5\n"), "ok s1 0 5");
  EXPECT_EQ(c.ask("q s2 3\n"), "ok s2 0 3");
  Client other(port);
  EXPECT_EQ(other.ask("q s3 1\n"), "ok s3 0 1");
  // A call may still be ending when its answer goes out (the twin's late
  // threads count themselves as they end): wait until only the two
  // connections are left and the calls are all counted, then every call
  // must have ended late.
  auto j = stats(c);
  for (int i = 0; i < 3000 && (num(j, "live_tasks") != 2 || num(j, "calls_late") + num(j, "calls_answered") +
                                                                 num(j, "calls_failed") < 9); ++i)
    j = stats(c);
  EXPECT_EQ(num(j, "live_tasks"), 2);
  EXPECT_EQ(num(j, "requests_served"), 3);
  EXPECT_EQ(num(j, "calls_made"), 9);
  EXPECT_EQ(num(j, "calls_answered"), 0);
  EXPECT_EQ(num(j, "calls_failed"), 0);
  EXPECT_EQ(num(j, "calls_late"), 9);
}

// On tendril a request's calls run in a tendril::Scope with its deadline: the
// late ones have ended (their connections back in the pool) when the answer
// goes out. The twin's late threads may still be ending then.
TEST_P(FanoutTest, OnTendrilLateCallsHaveEndedWhenTheAnswerGoesOut) {
  if (std::string(GetParam().name) != "tendril") GTEST_SKIP() << "the twin's late calls end on their own";
  SilentBackend silent;
  const int port = start({"--backend", at(silent.port()), "--call-deadline-ms", "200"});
  Client c(port);
  EXPECT_EQ(c.ask("q s1 5\n"), "ok s1 0 5");
  const auto j = stats(c);
  EXPECT_EQ(num(j, "live_calls"), 0);
  EXPECT_EQ(num(j, "live_tasks"), 1);
  EXPECT_EQ(num(j, "calls_late"), 5);
  EXPECT_LE(num(j, "backend_conns"), 5);  // given back, not leaked
}

TEST_P(FanoutTest, DeadBackendFailsFastAndIsCounted) {
  // A ten-minute deadline: the answer only arrives within the client's read
  // timeout if the calls fail without waiting for it.
  const int port = start({"--backend", at(dead_port()), "--call-deadline-ms", "600000"});
  Client c(port);
  EXPECT_EQ(c.ask("q d 8\n"), "ok d 0 8");
  auto j = stats(c);
  EXPECT_EQ(num(j, "calls_failed"), 8);
  EXPECT_EQ(num(j, "calls_late"), 0);
  EXPECT_EQ(c.ask("q d2 2\n"), "ok d2 0 2");
}

TEST_P(FanoutTest, MaxCallsMakesRequestsWaitForRoom) {
  SilentBackend silent;  // calls stay live until their deadline
  const int port = start({"--backend", at(silent.port()), "--call-deadline-ms", "1500", "--max-calls", "2",
                          "--max-k", "2", "--k", "2"});
  Client a(port), b(port), watch(port);
  a.send("q a 2\n");
  long n = 0;
  for (int i = 0; i < 3000 && n != 2; ++i) n = num(stats(watch), "live_calls");
  ASSERT_EQ(n, 2);
  b.send("q b 2\n");  // no room until a's calls end
  for (int i = 0; i < 3000 && n != 1; ++i) n = num(stats(watch), "requests_waiting");
  EXPECT_EQ(n, 1);
  EXPECT_EQ(a.line(), "ok a 0 2");
  EXPECT_EQ(b.line(), "ok b 0 2");
  auto j = stats(watch);
  EXPECT_EQ(num(j, "peak_calls"), 2);
  EXPECT_EQ(num(j, "calls_made"), 4);
  EXPECT_EQ(num(j, "calls_refused"), 0);
  EXPECT_EQ(watch.ask("q c 3\n").rfind("err ", 0), 0u);  // more than --max-k
}

TEST_P(FanoutTest, BadLinesGetErrAndTheConnectionStaysUsable) {
  const int port = start({"--backend", at(start_echo()), "--max-k", "50"});
  Client c(port);
  for (const char* bad : {"\n", "   \n", "hello\n", "q\n", "q 1 2 3\n", "q 1 0\n", "q 1 -3\n", "q 1 x\n",
                          "q 1 51\n", "q 1 99999999999999999999\n", "stats now\n", "Q 1\n"}) {
    const std::string reply = c.ask(bad);
    EXPECT_EQ(reply.rfind("err ", 0), 0u) << "request " << bad << " got " << reply;
  }
  EXPECT_EQ(c.ask("q " + std::string(129, 'i') + " 1\n").rfind("err ", 0), 0u);
  EXPECT_EQ(c.ask("q still-here 2\n"), "ok still-here 2 2");
}

TEST_P(FanoutTest, OverlongLineClosesTheConnection) {
  const int port = start({"--backend", at(start_echo())});
  {
    Client c(port);
    c.send(std::string(5000, 'x'));  // no newline yet
    EXPECT_EQ(c.line().value_or("<closed>").rfind("err ", 0), 0u);
    EXPECT_EQ(c.line(), std::nullopt);
  }
  {
    Client c(port);
    c.send("q " + std::string(4200, 'y') + " 1\n");  // a complete line, too long
    EXPECT_EQ(c.line().value_or("<closed>").rfind("err ", 0), 0u);
    EXPECT_EQ(c.line(), std::nullopt);
  }
  {
    Client c(port);  // a line of exactly 4096 bytes is fine
    std::string id(4096 - 4, 'z');
    EXPECT_EQ(c.ask("q " + id.substr(0, 100) + " 1\n"), "ok " + id.substr(0, 100) + " 1 1");
    EXPECT_EQ(c.ask("q " + id + "\n").rfind("err id longer", 0), 0u);
    EXPECT_EQ(c.ask("q ok 1\n"), "ok ok 1 1");
  }
}

TEST_P(FanoutTest, StatsIsOneLineOfJsonWithTheCounters) {
  const int port = start({"--backend", at(start_echo())});
  Client c(port);
  EXPECT_EQ(c.ask("q a 4\n"), "ok a 4 4");
  auto j = stats(c);
  EXPECT_EQ(j["runtime"], GetParam().name);
  for (const char* key : {"connections_open", "requests_served", "calls_made", "calls_late", "calls_failed",
                          "peak_tasks", "threads", "rss_bytes"})
    EXPECT_GE(num(j, key), 0) << key << " missing";
  EXPECT_EQ(num(j, "connections_open"), 1);
  EXPECT_EQ(num(j, "requests_served"), 1);
  EXPECT_EQ(num(j, "calls_made"), 4);
  EXPECT_EQ(num(j, "calls_answered"), 4);
  EXPECT_EQ(num(j, "calls_late"), 0);
  EXPECT_EQ(num(j, "calls_failed"), 0);
  EXPECT_GE(num(j, "peak_tasks"), 2);  // the connection and at least one call
  EXPECT_GE(num(j, "threads"), 1);
  EXPECT_GT(num(j, "rss_bytes"), 0);
  if (std::string(GetParam().name) == "tendril") {
    EXPECT_GE(num(j, "fibers_live"), 1);
  } else {
    EXPECT_EQ(j.count("fibers_live"), 0u);
  }
  Client second(port);
  EXPECT_EQ(num(stats(second), "connections_open"), 2);
}

TEST_P(FanoutTest, SigtermWithAConnectionOpenExitsZero) {
  const int port = start({"--backend", at(start_echo())});
  Client c(port);
  EXPECT_EQ(c.ask("q 1 2\n"), "ok 1 2 2");
  const int status = server_->signal_and_wait(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(server_->read_line(), prog() + ": stopped");
  EXPECT_EQ(c.line(), std::nullopt);  // the server closed it
}

TEST_P(FanoutTest, SigintDuringARequestWaitsForItsCallsAndExitsZero) {
  SilentBackend silent;
  const int port = start({"--backend", at(silent.port()), "--call-deadline-ms", "2000"});
  Client c(port);
  c.send("q slow 20\n");  // its calls wait for the silent backend
  Client idle(port);
  // Both connections and the 20 calls are live.
  long live = 0;
  for (int i = 0; i < 3000 && live < 22; ++i) live = num(stats(idle), "live_tasks");
  ASSERT_EQ(live, 22);
  const int status = server_->signal_and_wait(SIGINT);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(idle.line(), std::nullopt);
  EXPECT_EQ(c.line(), std::nullopt);  // shut down before its answer could go out
}

TEST_P(FanoutTest, HelpAndBadFlags) {
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), bin());
    Child ch(args);
    while (ch.read_line()) {
    }
    return ch.wait();
  };
  int st = run({"--help"});
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  for (auto args : std::vector<std::vector<std::string>>{{},  // no --backend
                                                        {"--backend", "nonsense"},
                                                        {"--backend", "127.0.0.1:0"},
                                                        {"--backend", "127.0.0.1:7000", "--k", "0"},
                                                        {"--backend", "127.0.0.1:7000", "--k", "11", "--max-k", "10"},
                                                        {"--backend", "127.0.0.1:7000", "--port", "70000"},
                                                        {"--backend", "127.0.0.1:7000", "--call-deadline-ms", "0"},
                                                        {"--backend", "127.0.0.1:7000", "--max-k", "5", "--max-calls", "2"},
                                                        {"--backend", "127.0.0.1:7000", "--bogus", "1"}}) {
    st = run(args);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 2) << st << " for " << ::testing::PrintToString(args);
  }
}

INSTANTIATE_TEST_SUITE_P(Runtimes, FanoutTest,
                         ::testing::Values(Runtime{"tendril", FANOUT_BIN}, Runtime{"pthread", FANOUT_PTHREAD_BIN}),
                         [](const ::testing::TestParamInfo<Runtime>& i) { return std::string(i.param.name); });

}  // namespace
