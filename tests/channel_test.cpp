// Channel<T>: exact delivery under MPMC load, rendezvous, close semantics,
// try_ operations, and use from plain threads.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/scale.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

tendril::Options two_workers() {
  tendril::Options o;
  o.workers = 2;
  return o;
}

// Sends 1..total spread over `producers` fibers, receives with `consumers`
// fibers, and checks that every value arrived exactly once.
void mpmc_exact(std::size_t capacity, int producers, int consumers, std::int64_t total) {
  std::int64_t sum = 0, sum_sq = 0, count = 0;
  std::vector<unsigned char> seen(static_cast<std::size_t>(total) + 1, 0);
  bool duplicate = false;
  tendril::run(two_workers(), [&] {
    tendril::Channel<std::int64_t> ch(capacity);
    tendril::Mutex m;
    std::vector<tendril::Fiber> ps, cs;
    for (int c = 0; c < consumers; ++c) {
      cs.push_back(tendril::spawn([&, ch]() mutable {
        std::int64_t s = 0, sq = 0, n = 0;
        std::vector<std::int64_t> got;
        while (auto v = ch.recv()) {
          s += *v;
          sq += *v * *v;
          ++n;
          got.push_back(*v);
        }
        std::lock_guard<tendril::Mutex> g(m);
        sum += s;
        sum_sq += sq;
        count += n;
        for (auto v : got) {
          if (seen[static_cast<std::size_t>(v)]++) duplicate = true;
        }
      }));
    }
    for (int p = 0; p < producers; ++p) {
      ps.push_back(tendril::spawn([&, ch, p]() mutable {
        for (std::int64_t v = p + 1; v <= total; v += producers) ASSERT_TRUE(ch.send(v));
      }));
    }
    for (auto& f : ps) f.join();
    ch.close();
    for (auto& f : cs) f.join();
  });
  EXPECT_EQ(count, total);
  EXPECT_EQ(sum, total * (total + 1) / 2);
  EXPECT_EQ(sum_sq, total * (total + 1) * (2 * total + 1) / 6);
  EXPECT_FALSE(duplicate);
}

}  // namespace

TEST(Channel, MillionMessagesBufferedMpmcExact) { mpmc_exact(64, 4, 4, stress_count(1000000)); }
TEST(Channel, MillionMessagesUnbufferedMpmcExact) { mpmc_exact(0, 4, 4, stress_count(1000000)); }
TEST(Channel, CapacityOneManyProducersExact) { mpmc_exact(1, 8, 2, stress_count(200000)); }

TEST(Channel, FifoPerSender) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> ch(8);
    auto p = tendril::spawn([ch]() mutable {
      for (int i = 0; i < 10000; ++i) ch.send(i);
      ch.close();
    });
    int expect = 0;
    while (auto v = ch.recv()) EXPECT_EQ(*v, expect++);
    EXPECT_EQ(expect, 10000);
    p.join();
  });
}

TEST(Channel, UnbufferedSendWaitsForAReceiver) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> ch(0);
    std::atomic<bool> sent{false};
    auto s = tendril::spawn([&, ch]() mutable {
      ch.send(5);
      sent = true;
    });
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(sent.load());  // rendezvous: no receiver yet
    EXPECT_EQ(ch.recv(), 5);
    s.join();
    EXPECT_TRUE(sent.load());
  });
}

TEST(Channel, CloseWakesReceiversAndSendersAndKeepsBufferedValues) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> buffered(4);
    buffered.send(1);
    buffered.send(2);
    buffered.close();
    buffered.close();  // harmless
    EXPECT_TRUE(buffered.closed());
    EXPECT_FALSE(buffered.send(3));
    EXPECT_EQ(buffered.recv(), 1);
    EXPECT_EQ(buffered.recv(), 2);
    EXPECT_EQ(buffered.recv(), std::nullopt);
    EXPECT_EQ(buffered.try_recv(), std::nullopt);

    tendril::Channel<int> empty(0);
    std::vector<tendril::Fiber> rs;
    std::atomic<int> woke{0};
    for (int i = 0; i < 3; ++i)
      rs.push_back(tendril::spawn([&, empty]() mutable {
        if (!empty.recv()) ++woke;
      }));
    tendril::Channel<int> full(1);
    full.send(0);
    std::atomic<int> failed_sends{0};
    for (int i = 0; i < 3; ++i)
      rs.push_back(tendril::spawn([&, full]() mutable {
        if (!full.send(1)) ++failed_sends;
      }));
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(10));
    empty.close();
    full.close();
    for (auto& f : rs) f.join();
    EXPECT_EQ(woke.load(), 3);
    EXPECT_EQ(failed_sends.load(), 3);
    EXPECT_EQ(full.recv(), 0);
    EXPECT_EQ(full.recv(), std::nullopt);
  });
}

TEST(Channel, TryOperationsNeverPark) {
  tendril::run([] {
    tendril::Channel<std::unique_ptr<int>> ch(1);
    auto v = std::make_unique<int>(1);
    EXPECT_TRUE(ch.try_send(v));
    EXPECT_EQ(v, nullptr);  // moved on success
    auto w = std::make_unique<int>(2);
    EXPECT_FALSE(ch.try_send(w));
    EXPECT_NE(w, nullptr);  // untouched on failure
    auto r = ch.try_recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(**r, 1);
    EXPECT_FALSE(ch.try_recv().has_value());

    tendril::Channel<int> rendezvous(0);
    EXPECT_FALSE(rendezvous.try_send(1));  // nobody waiting
    auto receiver = tendril::spawn([rendezvous]() mutable { return (void)rendezvous.recv(); });
    while (!rendezvous.try_send(9)) tendril::this_fiber::yield();
    receiver.join();
  });
}

TEST(Channel, MoveOnlyAndNonTrivialValues) {
  tendril::run(two_workers(), [] {
    tendril::Channel<std::string> ch(0);
    auto p = tendril::spawn([ch]() mutable {
      for (int i = 0; i < 1000; ++i) ch.send(std::string(100, static_cast<char>('a' + i % 26)));
      ch.close();
    });
    int n = 0;
    while (auto s = ch.recv()) {
      EXPECT_EQ(s->size(), 100u);
      EXPECT_EQ((*s)[0], static_cast<char>('a' + n % 26));
      ++n;
    }
    EXPECT_EQ(n, 1000);
    p.join();
  });
}

TEST(Channel, PlainThreadsAndFibersTalk) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> to_thread(0), to_fiber(2);
    std::thread t([=]() mutable {
      EXPECT_FALSE(tendril::in_runtime());
      while (auto v = to_thread.recv()) to_fiber.send(*v * 2);
      to_fiber.close();
    });
    auto producer = tendril::spawn([to_thread]() mutable {
      for (int i = 1; i <= 1000; ++i) to_thread.send(i);
      to_thread.close();
    });
    long sum = 0;
    while (auto v = to_fiber.recv()) sum += *v;
    producer.join();
    t.join();
    EXPECT_EQ(sum, 1000L * 1001);
  });
}

TEST(Channel, HandleOutlivesRunAndCapacityLimit) {
  tendril::Channel<int> ch(2);
  tendril::run([ch]() mutable { ch.send(7); });
  EXPECT_EQ(ch.size(), 1u);
  EXPECT_EQ(ch.try_recv(), 7);
  EXPECT_THROW(tendril::Channel<int>((std::size_t{1} << 32) + 1), std::invalid_argument);
}
