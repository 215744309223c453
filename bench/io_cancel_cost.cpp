// The cost of a cancellable I/O park: a net echo round trip over loopback TCP
// between two fibers that belong to no scope (their parks cannot be
// interrupted) against the same two fibers spawned by a tendril::Scope (every
// park publishes an Interrupt; no cancel happens), A/B alternating in one run,
// for each backend.
//
//   io_cancel_cost [--rounds N] [--trips N] [--workers N]
//
// Each round measures `trips` round trips (8 bytes each way: two parks per
// trip, the echo's read and the client's read) for A, then for B (the order
// swaps every round); the table reports the median over rounds of ns per
// round trip, the difference per park, and the spread of the per-round
// differences (a spread that straddles 0 means the cost is below the noise).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tendril/tendril.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  int rounds = 31;
  long trips = 20000;
  unsigned workers = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--rounds") a.rounds = std::atoi(argv[i + 1]);
    else if (k == "--trips") a.trips = std::atol(argv[i + 1]);
    else if (k == "--workers") a.workers = unsigned(std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "usage: io_cancel_cost [--rounds N] [--trips N] [--workers N]\n");
      std::exit(2);
    }
  }
  return a;
}

void echo(tendril::net::TcpStream& s, long trips) {
  char buf[8];
  for (long i = 0; i < trips; ++i) {
    s.read_exact(buf, sizeof buf);
    s.write_all(buf, sizeof buf);
  }
}

// ns per round trip over `trips` trips after a warm-up.
double client(tendril::net::TcpStream& s, long warm, long trips) {
  char buf[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  for (long i = 0; i < warm; ++i) {
    s.write_all(buf, sizeof buf);
    s.read_exact(buf, sizeof buf);
  }
  const auto t0 = Clock::now();
  for (long i = 0; i < trips; ++i) {
    s.write_all(buf, sizeof buf);
    s.read_exact(buf, sizeof buf);
  }
  return double(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()) / double(trips);
}

// One measurement: a fresh connection, the echo and the client as fibers,
// in a Scope or not.
double measure(tendril::net::TcpListener& l, bool scoped, long trips) {
  const long warm = trips / 10;
  tendril::net::TcpStream server;
  tendril::net::TcpStream conn;
  {
    tendril::Fiber a = tendril::spawn([&] { server = l.accept(); });
    conn = tendril::net::TcpStream::connect("127.0.0.1", l.local_port());
    a.join();
  }
  server.set_nodelay(true);
  conn.set_nodelay(true);
  double ns = 0;
  if (scoped) {
    tendril::Scope s;
    s.spawn([&] { echo(server, warm + trips); });
    s.spawn([&] { ns = client(conn, warm, trips); });
    s.join();
  } else {
    tendril::Fiber e = tendril::spawn([&] { echo(server, warm + trips); });
    tendril::Fiber c = tendril::spawn([&] { ns = client(conn, warm, trips); });
    c.join();
    e.join();
  }
  return ns;
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::size_t(q * double(v.size() - 1) + 0.5)];
}

// Per-round differences B - A (the rounds pair each A with the B next to
// it, so load that drifts across the run cancels).
std::vector<double> paired_delta(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> d;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) d.push_back(b[i] - a[i]);
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  std::printf("io_cancel_cost: net echo round trip (8 B each way, loopback TCP), %u worker(s), "
              "%d rounds x %ld trips, A/B alternating; median ns per round trip\n",
              args.workers, args.rounds, args.trips);
  std::printf("%-8s %12s %12s %10s %12s %22s\n", "backend", "plain ns/rt", "scoped ns/rt", "delta",
              "delta/park", "paired delta p25..p75");
  for (const char* backend : {"uring", "epoll"}) {
    tendril::Options o;
    o.workers = args.workers;
    o.io_backend = backend;
    std::vector<double> plain, scoped;
    std::string ran;
    tendril::run(o, [&] {
      ran = tendril::stats().io_backend;
      auto l = tendril::net::TcpListener::bind("127.0.0.1", 0);
      for (int r = 0; r < args.rounds; ++r) {
        const bool scoped_first = (r & 1) != 0;
        for (int k = 0; k < 2; ++k) {
          const bool in_scope = (k == 0) == scoped_first;
          (in_scope ? scoped : plain).push_back(measure(l, in_scope, args.trips));
        }
      }
    });
    const double a = quantile(plain, 0.5), b = quantile(scoped, 0.5);
    const std::vector<double> d = paired_delta(plain, scoped);
    std::printf("%-8s %12.0f %12.0f %+10.0f %+12.1f %10.0f..%-+10.0f\n", ran.c_str(), a, b, b - a, (b - a) / 2,
                quantile(d, 0.25), quantile(d, 0.75));
  }
  return 0;
}
