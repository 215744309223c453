// idle_conns: how many idle keep-alive HTTP connections fit in 1 GiB of server
// memory, tendril's http sample against its thread-per-connection twin.
//
// For each server (build/samples/http and http-pthread, found beside this
// binary's build tree) it starts the server, takes its RSS, opens N
// connections that each make one GET / and then stay open and idle (the
// server's fiber or thread is parked in its next read), takes the RSS again,
// and reports (RSS_N - RSS_0) / N per connection and 1 GiB divided by that.
// Kernel memory that RSS does not show is reported beside it: the system's
// KernelStack (16 KiB per thread) and socket memory grow by the same amount
// for both servers except for the thread stacks. The client is a tendril
// program (fibers), the same for both servers.
//
// The first row runs the tendril server with idle-stack compaction off
// (TENDRIL_COMPACT_MS=0; it is on by default), a third with it on
// (--compact-ms, default 200; 0 leaves the row out): its
// RSS is taken once the connections have been idle past compact_after and
// the server's RSS has stopped falling.
//
//   idle_conns [--conns N] [--compact-ms MS] [--markdown FILE] [--quick]
//
// N defaults to 10,000 and is capped by RLIMIT_NOFILE (the client and the
// server each need one descriptor per connection).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <tendril/tendril.hpp>
#include "samples/common/child_process.hpp"
#include "samples/common/fd_limit.hpp"
#include "samples/common/host_port.hpp"
#include "samples/common/proc_status.hpp"

namespace {

using namespace std::chrono_literals;

std::string exe_dir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

// Starts bin --port 0 and reads its port from "... listening on host:port";
// its later output is not read (it goes to a closed pipe).
std::unique_ptr<sample::ChildProcess> start_server(const std::string& bin, std::uint16_t* port, int compact_ms) {
  // The child inherits the variable; this process's own runtime is already
  // running and does not read it again.
  // 0 for the rows without compaction, which is on by default.
  setenv("TENDRIL_COMPACT_MS", std::to_string(compact_ms).c_str(), 1);
  auto srv = std::make_unique<sample::ChildProcess>(std::vector<std::string>{bin, "--port", "0", "--idle-timeout-ms", "0"});
  const std::string line = srv->read_line().value_or("");
  const auto p = sample::listening_port(line);
  unsetenv("TENDRIL_COMPACT_MS");
  if (!p) throw std::runtime_error(bin + " did not start (it printed '" + line + "')");
  srv->close_stdout();
  *port = *p;
  return srv;
}

// A /proc field in KiB (its kB fields), or 0.
long status_kib(pid_t pid, const char* key) { return static_cast<long>(sample::proc_status_field(key, pid).value_or(0) / 1024); }
long meminfo_kib(const char* key) { return static_cast<long>(sample::proc_field("/proc/meminfo", key).value_or(0) / 1024); }

struct Result {
  std::string server;
  int conns = 0;
  int opened = 0;
  long rss0_kib = 0, rss_kib = 0;
  long kstack_delta_kib = 0;
  long threads = 0;
  std::string error;
  double user_bytes_per_conn() const { return opened ? (rss_kib - rss0_kib) * 1024.0 / opened : 0; }
  double all_bytes_per_conn() const {
    return opened ? ((rss_kib - rss0_kib) + kstack_delta_kib) * 1024.0 / opened : 0;
  }
};

// The server's RSS once it stops falling (compaction on: every idle fiber
// compacted), sampled every 250 ms for at most 20 s.
long settled_rss_kib(pid_t pid) {
  long last = status_kib(pid, "VmRSS");
  for (int i = 0; i < 80; ++i) {
    tendril::this_fiber::sleep_for(250ms);
    const long now = status_kib(pid, "VmRSS");
    if (now >= last - last / 200) return now;  // fell by less than 0.5%
    last = now;
  }
  return last;
}

Result measure(const std::string& name, const std::string& bin, int conns, int compact_ms) {
  Result r;
  r.server = name;
  r.conns = conns;
  std::uint16_t port = 0;
  const auto srv = start_server(bin, &port, compact_ms);
  std::this_thread::sleep_for(200ms);
  r.rss0_kib = status_kib(srv->pid(), "VmRSS");
  const long kstack0 = meminfo_kib("KernelStack");
  std::atomic<int> opened{0}, failed{0};
  std::string first_error;
  std::atomic<bool> reported{false};
  tendril::Options o;
  o.workers = 2;
  tendril::run(o, [&] {
    tendril::Channel<int> release;  // closed when the measurement is done
    tendril::WaitGroup ready;
    ready.add(conns);
    tendril::Semaphore connecting(256);  // below the listener's backlog
    std::vector<tendril::Fiber> clients;
    clients.reserve(conns);
    for (int i = 0; i < conns; ++i) {
      clients.push_back(tendril::spawn([&, release]() mutable {
        tendril::net::TcpStream s;
        connecting.acquire();
        try {
          s = tendril::net::TcpStream::connect("127.0.0.1", port, 30s);
          s.set_timeout(30s);
          static const char req[] = "GET / HTTP/1.1\r\nHost: idle\r\n\r\n";
          s.write_all(req, sizeof req - 1);
          char buf[512];
          std::string got;
          while (got.find("\r\n\r\n") == std::string::npos) {
            const std::size_t n = s.read(buf, sizeof buf);
            if (n == 0) throw std::runtime_error("server closed the connection");
            got.append(buf, n);
          }
          if (got.rfind("HTTP/1.1 200", 0) != 0) throw std::runtime_error("unexpected response: " + got.substr(0, 40));
          opened.fetch_add(1);
        } catch (const std::exception& e) {
          failed.fetch_add(1);
          if (!reported.exchange(true)) first_error = e.what();
          s.close();
        }
        connecting.release();
        ready.done();
        release.recv();  // hold the connection, idle
      }));
    }
    ready.wait();
    tendril::this_fiber::sleep_for(300ms);  // let the server settle (thread stacks, buffers)
    if (compact_ms > 0) tendril::this_fiber::sleep_for(std::chrono::milliseconds(compact_ms));
    r.rss_kib = compact_ms > 0 ? settled_rss_kib(srv->pid()) : status_kib(srv->pid(), "VmRSS");
    r.threads = static_cast<long>(sample::proc_status_field("Threads", srv->pid()).value_or(0));
    r.kstack_delta_kib = meminfo_kib("KernelStack") - kstack0;
    release.close();
    for (auto& f : clients) f.join();
  });
  r.opened = opened.load();
  if (failed.load() > 0) r.error = std::to_string(failed.load()) + " connections failed: " + first_error;
  srv->stop(5s);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int conns = 10000;
  int compact_ms = 200;
  std::string markdown;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--conns") && i + 1 < argc) {
      conns = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--compact-ms") && i + 1 < argc) {
      compact_ms = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--markdown") && i + 1 < argc) {
      markdown = argv[++i];
    } else if (!std::strcmp(argv[i], "--quick")) {
      conns = 2000;
    } else {
      std::fprintf(stderr, "usage: %s [--conns N] [--compact-ms MS] [--markdown FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  if (conns < 1) {
    std::fprintf(stderr, "idle_conns: --conns must be at least 1\n");
    return 2;
  }
  if (compact_ms < 0) {
    std::fprintf(stderr, "idle_conns: --compact-ms must be 0 (no compacted row) or more\n");
    return 2;
  }
  const std::uint64_t nofile = sample::raise_fd_limit();  // the servers inherit it too
  const int fit = static_cast<int>(std::min<std::uint64_t>(nofile, 1u << 30)) - 200;
  std::string capped;
  if (conns > fit) {
    capped = " (capped from " + std::to_string(conns) + " by RLIMIT_NOFILE " + std::to_string(nofile) + ")";
    conns = fit;
  }
  const std::string dir = exe_dir() + "/../samples/";
  struct Server {
    std::string name, bin;
    int compact_ms;
  };
  std::vector<Server> servers{{"tendril, compaction off", dir + "http", 0}, {"pthread", dir + "http-pthread", 0}};
  if (compact_ms > 0)
    servers.push_back({"tendril, compacted after " + std::to_string(compact_ms) + " ms", dir + "http", compact_ms});
  std::vector<Result> rs;
  for (const auto& [name, bin, ms] : servers) {
    std::fprintf(stderr, "[idle_conns] %s: opening %d idle keep-alive connections...\n", name.c_str(), conns);
    try {
      rs.push_back(measure(name, bin, conns, ms));
    } catch (const std::exception& e) {
      Result r;
      r.server = name;
      r.conns = conns;
      r.error = e.what();
      rs.push_back(r);
    }
  }
  constexpr double kGiB = 1024.0 * 1024 * 1024;
  std::string table =
      "### Idle keep-alive connections per GiB\n\n"
      "Each connection made one `GET /` and then stayed open and idle" + capped + ". Per connection: the "
      "server's RSS growth; \"with kernel stacks\" adds the growth of the kernel's KernelStack (16 KiB per "
      "thread; socket buffers are the same for both servers and not counted).\n\n"
      "| server | connections | threads | RSS per connection | connections per GiB (RSS) | with kernel stacks | "
      "connections per GiB (with kernel stacks) |\n|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rs) {
    char row[512];
    if (r.opened == 0) {
      std::snprintf(row, sizeof row, "| %s | 0 of %d | | | | | %s |\n", r.server.c_str(), r.conns, r.error.c_str());
    } else {
      std::snprintf(row, sizeof row, "| %s | %d%s | %ld | %.0f B | %.0f | %.0f B | %.0f |\n", r.server.c_str(),
                    r.opened, r.error.empty() ? "" : (" (" + r.error + ")").c_str(), r.threads,
                    r.user_bytes_per_conn(), kGiB / std::max(1.0, r.user_bytes_per_conn()),
                    r.all_bytes_per_conn(), kGiB / std::max(1.0, r.all_bytes_per_conn()));
    }
    table += row;
  }
  if (rs.size() >= 2 && rs[0].opened && rs[1].opened) {
    char line[256];
    std::snprintf(line, sizeof line, "\npthread/tendril memory per idle connection: %.1fx (RSS), %.1fx (with kernel stacks)\n",
                  rs[1].user_bytes_per_conn() / std::max(1.0, rs[0].user_bytes_per_conn()),
                  rs[1].all_bytes_per_conn() / std::max(1.0, rs[0].all_bytes_per_conn()));
    table += line;
  }
  if (rs.size() == 3 && rs[0].opened && rs[2].opened) {
    char line[256];
    std::snprintf(line, sizeof line, "tendril without/with compaction, memory per idle connection: %.1fx (RSS)\n",
                  rs[0].user_bytes_per_conn() / std::max(1.0, rs[2].user_bytes_per_conn()));
    table += line;
  }
  std::fputs(table.c_str(), stdout);
  if (!markdown.empty()) {
    std::ofstream md(markdown, std::ios::app);
    md << table << "\n";
  }
  for (const auto& r : rs)
    if (r.opened == 0) return 1;
  return 0;
}
