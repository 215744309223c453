// libFuzzer target: the fanout sample's line protocol, end to end in one
// process. The sample's own sources (main renamed fanout_sample_main) serve on
// a loopback port with one tendril worker; a thread runs an echo backend.
// Each input is one client connection: the first byte seeds how the rest is
// split into writes, the rest is sent, the write side shut, and everything
// read back until the server closes. The answer must come within seconds (no
// hang), be one line per complete request line ("ok <id> <answered> <k>" with
// answered <= k, "err ..." or a JSON object), and end with the too-long error
// exactly when a line exceeds 4096 bytes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

int fanout_sample_main(int argc, char** argv);

namespace {

constexpr std::size_t kMaxLine = 4096;
std::uint16_t g_port = 0;

[[noreturn]] void fail(const char* what, std::string_view in, const std::string& out) {
  std::fprintf(stderr, "fanout_lines_fuzz: %s\ninput (%zu bytes): %.*s\noutput: %s\n", what, in.size(),
               static_cast<int>(std::min<std::size_t>(in.size(), 512)), in.data(), out.c_str());
  std::abort();
}

int listen_any(std::uint16_t* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 128) != 0) {
    std::perror("fanout_lines_fuzz: listen");
    std::exit(1);
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// The backend: echoes every byte, a thread per connection.
void echo_backend(int lfd) {
  for (;;) {
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::thread([c] {
      char buf[4096];
      for (;;) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        if (::write(c, buf, static_cast<std::size_t>(n)) != n) break;
      }
      ::close(c);
    }).detach();
  }
}

int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{10, 0};  // a server that answers nothing for this long hangs
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

bool digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// "ok <id> <answered> <k>" with answered <= k <= 8.
bool valid_ok(std::string_view line) {
  line.remove_prefix(3);
  const std::size_t a = line.rfind(' ');
  if (a == std::string_view::npos) return false;
  const std::string_view k = line.substr(a + 1);
  line = line.substr(0, a);
  const std::size_t b = line.rfind(' ');
  if (b == std::string_view::npos || b == 0) return false;
  const std::string_view answered = line.substr(b + 1);
  if (!digits(k) || !digits(answered) || k.size() > 2 || answered.size() > 2) return false;
  return std::stoi(std::string(answered)) <= std::stoi(std::string(k)) && std::stoi(std::string(k)) <= 8;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::uint16_t backend_port = 0;
  const int lfd = listen_any(&backend_port);
  std::thread(echo_backend, lfd).detach();
  // A free port for the server (closed again; the server binds it).
  const int probe = listen_any(&g_port);
  ::close(probe);
  std::thread([backend_port] {
    static std::string port = std::to_string(g_port);
    static std::string backend = "127.0.0.1:" + std::to_string(backend_port);
    static std::vector<std::string> args = {"fanout",  "--port",    port,  "--backend", backend,
                                            "--workers", "1",       "--k", "2",         "--max-k",
                                            "8",       "--max-calls", "64", "--call-deadline-ms", "200"};
    static std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::exit(fanout_sample_main(static_cast<int>(args.size()), argv.data()));
  }).detach();
  for (int i = 0; i < 500; ++i) {
    const int fd = connect_to(g_port);
    if (fd >= 0) {
      ::close(fd);
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "fanout_lines_fuzz: the server did not start\n");
  std::exit(1);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  std::uint64_t seed = data[0];
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  // What the server must answer: one line per complete line, until a line
  // (complete or not) longer than the limit, which gets the too-long error.
  std::size_t expect_lines = 0;
  bool expect_too_long = false;
  for (std::size_t at = 0; at <= in.size();) {
    const std::size_t nl = in.find('\n', at);
    const std::size_t len = (nl == std::string_view::npos ? in.size() : nl) - at;
    if (len > kMaxLine) {
      expect_too_long = true;
      break;
    }
    if (nl == std::string_view::npos) break;
    ++expect_lines;
    at = nl + 1;
  }

  const int fd = connect_to(g_port);
  if (fd < 0) fail("cannot connect to the server", in, "");
  std::string out;
  // Reads what has arrived without waiting, so a long input never fills both
  // directions' buffers.
  auto drain = [&](int flags) {
    char buf[8192];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, flags);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0) return true;  // the server closed
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return true;
      fail("recv failed or timed out (server hung)", in, out);
    }
  };
  bool closed = false;
  for (std::size_t at = 0; at < in.size() && !closed;) {
    const std::uint64_t r = splitmix(seed);
    const std::size_t left = in.size() - at;
    const std::size_t piece = (seed & 1) != 0 ? left : 1 + r % std::min<std::size_t>(left, 200);
    const ssize_t n = ::send(fd, in.data() + at, piece, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EPIPE || errno == ECONNRESET) break;  // closed on a too-long line
      fail("send failed or timed out (server not reading)", in, out);
    }
    at += static_cast<std::size_t>(n);
    closed = drain(MSG_DONTWAIT);
  }
  ::shutdown(fd, SHUT_WR);
  if (!closed) drain(0);
  ::close(fd);

  std::size_t lines = 0;
  bool saw_too_long = false;
  std::string_view rest = out;
  while (!rest.empty()) {
    const std::size_t nl = rest.find('\n');
    if (nl == std::string_view::npos) fail("answer without a newline", in, out);
    const std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl + 1);
    if (saw_too_long) fail("an answer after the too-long error", in, out);
    if (line == "err line longer than 4096 bytes" && expect_too_long && lines == expect_lines) {
      saw_too_long = true;
      continue;
    }
    ++lines;
    if (line.substr(0, 3) == "ok ") {
      if (!valid_ok(line)) fail("malformed ok line", in, out);
    } else if (line.substr(0, 4) == "err ") {
    } else if (line.size() < 2 || line.front() != '{' || line.back() != '}') {
      fail("answer is neither ok, err nor JSON", in, out);
    }
  }
  if (lines != expect_lines) fail("wrong number of answers", in, out);
  if (expect_too_long && !saw_too_long) fail("no too-long error for a line over the limit", in, out);
  return 0;
}
