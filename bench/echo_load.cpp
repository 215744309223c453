// echo_load: request/response echo over loopback in one process. Client fibers
// (tendril, the same client for every server) each send N requests of 64 bytes
// and wait for each echo, against three servers:
//   uring   - tendril fibers, io_uring backend (client and server in one run)
//   epoll   - tendril fibers, epoll backend
//   pthread - a blocking thread-per-connection server (client: tendril, uring)
// at 100, 1,000 and 10,000 connections. Prints requests/s, p99 latency and
// ratios. Progress goes to stderr.
//
//   echo_load [--quick] [--requests N] [--workers W]
//
// 10,000 connections need 20,000 descriptors here (both ends): the count is
// capped to what RLIMIT_NOFILE allows and the table says so. A pthread row is
// skipped (and says so) when thread creation fails.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "bench/report/table.hpp"
#include "samples/common/fd_limit.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMsg = 64;

struct Result {
  double rps = 0;
  double p99_us = 0;
  std::uint64_t errors = 0;
  bool skipped = false;
  std::string note;
};

struct Config {
  int requests = 200;
  unsigned workers = 0;
  bool quick = false;
};

// ---- the pthread server ----

struct PthreadServer {
  int listen_fd = -1;
  std::uint16_t port = 0;
  pthread_t acceptor{};
  std::atomic<bool> creation_failed{false};
  std::atomic<int> threads{0};
  std::mutex mu;
  std::vector<int> fds;  // to shut down at the end

  static void* serve(void* arg) {
    const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(arg));
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        const ssize_t w = ::write(fd, buf + off, static_cast<std::size_t>(n - off));
        if (w <= 0) return nullptr;
        off += w;
      }
    }
    return nullptr;
  }

  static void* accept_loop(void* arg) {
    auto* s = static_cast<PthreadServer*>(arg);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
      const int fd = ::accept4(s->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) break;  // listener shut down
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      {
        std::lock_guard<std::mutex> g(s->mu);
        s->fds.push_back(fd);
      }
      pthread_t t;
      if (pthread_create(&t, &attr, serve, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd))) != 0) {
        s->creation_failed = true;
        ::shutdown(fd, SHUT_RDWR);  // the client sees the failure
      } else {
        s->threads.fetch_add(1);
      }
    }
    pthread_attr_destroy(&attr);
    return nullptr;
  }

  void start() {
    listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd, 4096) != 0) {
      std::perror("pthread server");
      std::exit(1);
    }
    socklen_t len = sizeof a;
    getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    pthread_create(&acceptor, nullptr, accept_loop, this);
  }

  void stop() {
    ::shutdown(listen_fd, SHUT_RDWR);
    pthread_join(acceptor, nullptr);
    ::close(listen_fd);
    std::lock_guard<std::mutex> g(mu);
    for (int fd : fds) ::shutdown(fd, SHUT_RDWR);  // serving threads see EOF and exit
  }
};

// ---- the client (shared by all three) ----

// Connects `conns` client fibers to port, waits until all are connected, then
// each does `requests` 64-byte round trips. Returns throughput and p99.
Result run_clients(std::uint16_t port, int conns, int requests) {
  std::vector<std::vector<std::uint64_t>> lat(static_cast<std::size_t>(conns));  // ns per request
  std::atomic<std::uint64_t> errors{0};
  tendril::WaitGroup connected, done;
  connected.add(conns);
  done.add(conns);
  Clock::time_point start;
  std::atomic<bool> started{false};
  for (int i = 0; i < conns; ++i) {
    tendril::spawn([&, i] {
      std::vector<std::uint64_t>& mine = lat[static_cast<std::size_t>(i)];
      mine.reserve(static_cast<std::size_t>(requests));
      tendril::net::TcpStream c;
      try {
        c = tendril::net::TcpStream::connect("127.0.0.1", port);
        c.set_nodelay(true);
      } catch (const std::exception&) {
        errors.fetch_add(1);
      }
      connected.done();
      connected.wait();
      if (!started.exchange(true)) start = Clock::now();
      char out[kMsg], in[kMsg];
      std::memset(out, 'a' + i % 26, kMsg);
      try {
        for (int k = 0; c.is_open() && k < requests; ++k) {
          const auto t0 = Clock::now();
          c.write_all(out, kMsg);
          c.read_exact(in, kMsg);
          mine.push_back(static_cast<std::uint64_t>((Clock::now() - t0).count()));
        }
      } catch (const std::exception&) {
        errors.fetch_add(1);
      }
      done.done();
    }).detach();
  }
  done.wait();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<std::uint64_t> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  Result r;
  r.errors = errors.load();
  if (all.empty()) return r;
  const std::size_t k = std::min(all.size() - 1, all.size() * 99 / 100);
  std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
  r.p99_us = all[k] / 1000.0;
  r.rps = static_cast<double>(all.size()) / secs;
  return r;
}

// A tendril echo server: one fiber per connection.
void serve_tendril(tendril::net::TcpListener& l, int conns) {
  for (int i = 0; i < conns; ++i) {
    tendril::net::TcpStream s;
    try {
      s = l.accept();
    } catch (const std::exception&) {
      return;
    }
    tendril::spawn([s = std::move(s)]() mutable {
      s.set_nodelay(true);
      char buf[4096];
      try {
        while (std::size_t n = s.read(buf, sizeof buf)) s.write_all(buf, n);
      } catch (const std::exception&) {
      }
    }).detach();
  }
}

tendril::Options options(const Config& cfg, const char* backend) {
  tendril::Options o;
  o.workers = cfg.workers;
  o.io_backend = backend;
  return o;
}

Result bench_tendril(const Config& cfg, const char* backend, int conns) {
  Result r;
  tendril::run(options(cfg, backend), [&] {
    auto l = tendril::net::TcpListener::bind("127.0.0.1", 0, 4096);
    tendril::Fiber server = tendril::spawn([&] { serve_tendril(l, conns); });
    r = run_clients(l.local_port(), conns, cfg.requests);
    server.join();
    if (tendril::stats().io_backend != backend) r.note = "ran " + tendril::stats().io_backend;
  });
  return r;
}

Result bench_pthread(const Config& cfg, int conns) {
  PthreadServer server;
  server.start();
  Result r;
  tendril::run(options(cfg, "uring"), [&] { r = run_clients(server.port, conns, cfg.requests); });
  server.stop();
  if (server.creation_failed) {
    r.skipped = true;
    r.note = "thread creation failed after " + std::to_string(server.threads.load()) + " threads";
  }
  // Let the serving threads see EOF and exit before their descriptors close.
  for (int i = 0; i < 200 && server.threads.load() > 0; ++i) usleep(1000);
  for (int fd : server.fds) ::close(fd);
  return r;
}

int fitting_connections(int wanted) {
  const long fit = (static_cast<long>(sample::raise_fd_limit()) - 300) / 2;
  return static_cast<int>(std::min<long>(wanted, fit));
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      cfg.quick = true;
      cfg.requests = 50;
    } else if (!std::strcmp(argv[i], "--requests") && i + 1 < argc) {
      cfg.requests = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--workers") && i + 1 < argc) {
      cfg.workers = static_cast<unsigned>(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--requests N] [--workers W]\n", argv[0]);
      return 2;
    }
  }
  std::vector<int> counts = {100, 1000, 10000};
  if (cfg.quick) counts = {100, 1000};
  std::printf("echo_load: %d requests of %zu bytes per connection, loopback, workers=%s\n",
              cfg.requests, kMsg, cfg.workers ? std::to_string(cfg.workers).c_str() : "all CPUs");
  std::printf("%-8s %-8s %12s %10s %8s  %s\n", "conns", "server", "req/s", "p99 us", "vs pthr", "notes");
  for (int wanted : counts) {
    const int conns = fitting_connections(wanted);
    const std::string capped =
        conns < wanted ? "capped from " + std::to_string(wanted) + " by RLIMIT_NOFILE" : "";
    std::fprintf(stderr, "[%d connections] pthread...\n", conns);
    const Result pt = bench_pthread(cfg, conns);
    std::fprintf(stderr, "[%d connections] uring...\n", conns);
    const Result ur = bench_tendril(cfg, "uring", conns);
    std::fprintf(stderr, "[%d connections] epoll...\n", conns);
    const Result ep = bench_tendril(cfg, "epoll", conns);
    auto row = [&](const char* name, const Result& r) {
      std::string notes = capped;
      if (!r.note.empty()) notes += (notes.empty() ? "" : "; ") + r.note;
      if (r.errors) notes += (notes.empty() ? "" : "; ") + std::to_string(r.errors) + " client errors";
      const bool have_base = !pt.skipped && pt.rps > 0;
      std::printf("%-8d %-8s %12s %10s %8s  %s\n", conns, name, bench::cell(r.rps, "%.0f").c_str(),
                  bench::cell(r.p99_us, "%.1f").c_str(),
                  have_base ? bench::cell(r.rps / pt.rps, "%.2fx").c_str() : "-", notes.c_str());
    };
    if (pt.skipped) {
      std::printf("%-8d %-8s %12s %10s %8s  skipped: %s\n", conns, "pthread", "-", "-", "-", pt.note.c_str());
    } else {
      row("pthread", pt);
    }
    row("uring", ur);
    row("epoll", ep);
    if (ep.rps > 0) std::printf("%-8d %-8s %12s %10s %8s  uring/epoll = %.2fx\n", conns, "", "", "", "", ur.rps / ep.rps);
    std::fflush(stdout);
  }
  return 0;
}
