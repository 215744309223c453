// Fair service of many busy connections: with every worker saturated by
// request/response traffic, no connection may be left waiting while the
// others go round (completions reaped while a worker is busy queue behind the
// global backlog, io_uring's deferred completions are all reaped, and the
// global queue is taken in batches).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <tendril/tendril.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <numeric>
#include <vector>

#include "tests/scale.hpp"

using namespace std::chrono_literals;
using tendril::net::TcpListener;
using tendril::net::TcpStream;

namespace {

class IoFairness : public ::testing::TestWithParam<std::string> {};

bool ensure_nofile(rlim_t need) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need) {
    rl.rlim_cur = std::min<rlim_t>(std::max<rlim_t>(rl.rlim_max, need), need);
    if (rl.rlim_max < need) rl.rlim_max = need;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur >= need;
}

}  // namespace

TEST_P(IoFairness, EveryBusyConnectionKeepsGettingService) {
  const int kConns = static_cast<int>(stress_count(1000, 100));
  if (!ensure_nofile(2 * kConns + 64)) GTEST_SKIP() << "RLIMIT_NOFILE too low";
  tendril::Options o;
  o.workers = 2;
  o.io_backend = GetParam();
  std::vector<long> rounds(kConns, 0);
  tendril::run(o, [&] {
    auto l = TcpListener::bind("127.0.0.1", 0, 4096);
    tendril::spawn([&] {
      for (int i = 0; i < kConns; ++i) {
        tendril::spawn([s = l.accept()]() mutable {
          char buf[64];
          while (std::size_t n = s.read(buf, sizeof buf)) s.write_all(buf, n);
        }).detach();
      }
    }).detach();
    std::vector<std::unique_ptr<TcpStream>> clients;
    for (int i = 0; i < kConns; ++i)
      clients.push_back(std::make_unique<TcpStream>(TcpStream::connect("127.0.0.1", l.local_port(), 5s)));
    // Service is measured once every connection has gone round once (both
    // of its fibers run): how soon spawned fibers first run is not what this
    // test is about, and that start-up is slow under the sanitizers.
    std::atomic<int> warmed{0};
    std::atomic<bool> counting{false};
    std::atomic<bool> stop{false};
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kConns; ++i) {
      fibers.push_back(tendril::spawn([&, i] {
        char c = 'x';
        bool warm = false;
        while (!stop.load(std::memory_order_relaxed)) {
          clients[i]->write_all(&c, 1);
          if (clients[i]->read(&c, 1) != 1) break;
          if (!warm) {
            warm = true;
            warmed.fetch_add(1);
          }
          if (counting.load(std::memory_order_relaxed)) ++rounds[i];
        }
      }));
    }
    while (warmed.load() < kConns) tendril::this_fiber::sleep_for(1ms);
    counting = true;
    tendril::this_fiber::sleep_for(1500ms);
    stop = true;
    for (auto& f : fibers) f.join();
    for (auto& c : clients) c->close();
  });
  const long total = std::accumulate(rounds.begin(), rounds.end(), 0L);
  const long least = *std::min_element(rounds.begin(), rounds.end());
  const long mean = total / kConns;
  ASSERT_GT(mean, 0);
  // FIFO-ish service gives every connection about the mean; starvation shows
  // as connections that went round a handful of times at most.
  EXPECT_GE(least * 10, mean) << "least " << least << " mean " << mean;
}

INSTANTIATE_TEST_SUITE_P(Backends, IoFairness, ::testing::Values("uring", "epoll"));
