// Channel<T>: exact delivery under MPMC load, rendezvous, close semantics,
// try_ operations, and use from plain threads.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/park_probe.hpp"
#include "tests/scale.hpp"

#include <algorithm>
#include <chrono>
#include <system_error>
#include <atomic>
#include <memory>
#include <optional>
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

namespace {

// A value that counts its live copies; Pad makes it wider than a Waiter's
// hand-off buffer, so both ways a parked operation holds a value are seen.
std::atomic<int> g_live{0};
template <std::size_t Pad>
struct Counted {
  int v = 0;
  char pad[Pad] = {};
  explicit Counted(int x) : v(x) { ++g_live; }
  Counted(Counted&& o) noexcept : v(o.v) { ++g_live; }
  Counted& operator=(Counted&& o) noexcept {
    v = o.v;
    return *this;
  }
  ~Counted() { --g_live; }
};

// Parked senders whose value is taken, parked senders the close turns away,
// parked receivers that get a value: every value is destroyed once, and
// each receiver gets what was sent.
template <class T>
void parked_values_destroyed_once() {
  g_live = 0;
  tendril::run(two_workers(), [] {
    tendril::Channel<T> ch(0);
    std::vector<tendril::Fiber> fibers;
    std::atomic<int> delivered{0}, refused{0}, received_sum{0};
    for (int i = 0; i < 20; ++i)
      fibers.push_back(tendril::spawn([&, ch, i]() mutable { (ch.send(T(i)) ? delivered : refused)++; }));
    for (int i = 0; i < 10; ++i) {
      std::optional<T> got = ch.recv();
      ASSERT_TRUE(got.has_value());
      received_sum += got->v;
    }
    // Until the other 10 senders are parked in the channel (the fiber dump
    // says so), so that the close turns parked sends away.
    for (;;) {
      int parked = 0;
      for (const tendril::FiberInfo& f : tendril::fibers())
        parked += f.state == tendril::FiberState::parked && f.reason == tendril::WaitReason::channel_send;
      if (parked == 10) break;
      tendril::this_fiber::sleep_for(std::chrono::milliseconds(1));
    }
    ch.close();
    for (auto& f : fibers) f.join();
    EXPECT_EQ(delivered.load(), 10);
    EXPECT_EQ(refused.load(), 10);
    fibers.clear();

    tendril::Channel<T> back(0);
    for (int i = 0; i < 10; ++i)
      fibers.push_back(tendril::spawn([&, back, i]() mutable {
        std::optional<T> got = back.recv();
        EXPECT_TRUE(got.has_value() && got->v >= 100);
      }));
    for (int i = 0; i < 10; ++i) EXPECT_TRUE(back.send(T(100 + i)));
    for (auto& f : fibers) f.join();
  });
  EXPECT_EQ(g_live.load(), 0);
}

}  // namespace

TEST(Channel, ValuesOfParkedOperationsAreDestroyedOnce) {
  static_assert(tendril::detail::channel::handoff_fits_send<Counted<8>>);
  static_assert(!tendril::detail::channel::handoff_fits<Counted<64>>);
  parked_values_destroyed_once<Counted<8>>();   // held in the parked fiber's Waiter
  parked_values_destroyed_once<Counted<64>>();  // held on the parked fiber's stack
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

// ---------------------------------------------------------------------------
// Stress tests for the lock-free hand-off: they check exact delivery and
// per-sender order under contention, with more operations in flight than the
// channel's ring has cells, try_ operations mixed with blocking ones, close()
// racing parked senders and receivers, and plain threads next to fibers.

namespace {

// A value that says who sent it and in which order: sender << 32 | sequence.
std::int64_t tagged(std::int64_t sender, std::int64_t seq) { return sender << 32 | seq; }
std::int64_t sender_of(std::int64_t v) { return v >> 32; }
std::int64_t seq_of(std::int64_t v) { return v & 0xffffffff; }

// Every receiver sees each sender's values in increasing order, and every
// value sent arrives exactly once.
void fifo_exact(std::size_t capacity, int senders, int receivers, std::int64_t per_sender) {
  std::vector<std::vector<std::int64_t>> got(static_cast<std::size_t>(receivers));
  tendril::run(two_workers(), [&] {
    tendril::Channel<std::int64_t> ch(capacity);
    std::vector<tendril::Fiber> rs, ss;
    for (int r = 0; r < receivers; ++r) {
      rs.push_back(tendril::spawn([&, ch, r]() mutable {
        auto& mine = got[static_cast<std::size_t>(r)];
        while (auto v = ch.recv()) mine.push_back(*v);
      }));
    }
    for (int s = 0; s < senders; ++s) {
      ss.push_back(tendril::spawn([ch, s, per_sender]() mutable {
        for (std::int64_t i = 0; i < per_sender; ++i) ASSERT_TRUE(ch.send(tagged(s, i)));
      }));
    }
    for (auto& f : ss) f.join();
    ch.close();
    for (auto& f : rs) f.join();
  });
  std::vector<std::vector<unsigned char>> seen(static_cast<std::size_t>(senders),
                                               std::vector<unsigned char>(static_cast<std::size_t>(per_sender), 0));
  std::int64_t total = 0;
  for (const auto& mine : got) {
    std::vector<std::int64_t> last(static_cast<std::size_t>(senders), -1);
    for (std::int64_t v : mine) {
      const auto s = static_cast<std::size_t>(sender_of(v));
      ASSERT_LT(s, seen.size());
      ASSERT_LT(seq_of(v), per_sender);
      EXPECT_GT(seq_of(v), last[s]) << "sender " << s << " out of order";
      last[s] = seq_of(v);
      EXPECT_EQ(seen[s][static_cast<std::size_t>(seq_of(v))]++, 0) << "duplicate " << v;
      ++total;
    }
  }
  EXPECT_EQ(total, senders * per_sender);
}

}  // namespace

TEST(Channel, StressFifoPerSenderUnbuffered) { fifo_exact(0, 6, 5, stress_count(40000)); }
TEST(Channel, StressFifoPerSenderCapacityOne) { fifo_exact(1, 6, 5, stress_count(40000)); }
TEST(Channel, StressFifoPerSenderCapacityThree) { fifo_exact(3, 7, 3, stress_count(40000)); }
TEST(Channel, StressFifoPerSenderCapacity64) { fifo_exact(64, 5, 6, stress_count(40000)); }
// More parked operations than the ring has cells (operations wait for a lap).
TEST(Channel, StressManyMoreSendersThanCells) { fifo_exact(0, 100, 3, stress_count(2000, 100)); }
TEST(Channel, StressManyMoreReceiversThanCells) { fifo_exact(2, 3, 100, stress_count(20000, 1000)); }

// try_send / try_recv interleaved with send / recv: nothing lost, nothing
// duplicated, and no cell left behind that blocks the blocking operations.
TEST(Channel, StressMixedTryAndBlockingExact) {
  for (std::size_t capacity : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{64}}) {
    const std::int64_t per_sender = stress_count(20000);
    const int senders = 4, receivers = 4;
    std::atomic<std::int64_t> sum{0}, count{0}, try_hits{0};
    tendril::run(two_workers(), [&] {
      tendril::Channel<std::int64_t> ch(capacity);
      std::vector<tendril::Fiber> rs, ss;
      for (int r = 0; r < receivers; ++r) {
        rs.push_back(tendril::spawn([&, ch, r]() mutable {
          std::int64_t s = 0, n = 0, hits = 0;
          for (std::int64_t i = 0;; ++i) {
            std::optional<std::int64_t> v;
            if ((i + r) % 3 != 0) {
              v = ch.try_recv();
              if (v) ++hits;
              else if (i % 7 == 0) tendril::this_fiber::yield();
            }
            if (!v) v = ch.recv();
            if (!v) break;
            s += *v;
            ++n;
          }
          sum += s;
          count += n;
          try_hits += hits;
        }));
      }
      for (int p = 0; p < senders; ++p) {
        ss.push_back(tendril::spawn([&, ch, p]() mutable {
          for (std::int64_t i = 1; i <= per_sender; ++i) {
            std::int64_t v = i * senders + p;
            if ((i + p) % 2 == 0) {
              if (ch.try_send(v)) continue;
              EXPECT_EQ(v, i * senders + p);  // untouched on failure
            }
            ASSERT_TRUE(ch.send(v));
          }
        }));
      }
      for (auto& f : ss) f.join();
      ch.close();
      for (auto& f : rs) f.join();
      EXPECT_FALSE(ch.try_send(std::int64_t{1}));
      EXPECT_EQ(ch.try_recv(), std::nullopt);
      EXPECT_EQ(ch.size(), 0u);
    });
    const std::int64_t n = per_sender * senders;
    EXPECT_EQ(count.load(), n) << "capacity " << capacity;
    // values are senders..senders*(per_sender+1)-1, i.e. sum over k in [senders, n + senders)
    EXPECT_EQ(sum.load(), (n + senders) * (n + senders - 1) / 2 - senders * (senders - 1) / 2)
        << "capacity " << capacity;
  }
}

// A receiver that registers in a cell and withdraws (here a select whose
// case_after fires) ends that cell's lap; the lap's sender, if it looked at
// the cell before the registration, draws again. A sender delayed between
// looking at the cell and writing its value there must not write into the
// cell once the lap has gone on to the next sender (that sender's value
// would be overwritten, and the late one delivered twice). The value's move
// constructor now and then pauses before it writes, which is where such a
// sender is delayed; plain threads, more than there are CPUs.
namespace {
struct SlowMove {
  int v = -1;
  explicit SlowMove(int x) : v(x) {}
  SlowMove(SlowMove&& o) noexcept {
    thread_local unsigned moves = 0;
    if (++moves % 16 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
    v = o.v;
  }
  SlowMove& operator=(SlowMove&& o) noexcept {
    v = o.v;
    return *this;
  }
};
}  // namespace

TEST(Channel, StressDelayedSendersWhileReceiversWithdraw) {
  for (std::size_t capacity : {std::size_t{0}, std::size_t{1}, std::size_t{4}}) {
    const int per_sender = static_cast<int>(stress_count(3000, 500));
    constexpr int kSenders = 3, kReceivers = 3;
    std::vector<std::atomic<int>> received(static_cast<std::size_t>(per_sender * kSenders));
    tendril::Channel<SlowMove> ch(capacity);
    std::atomic<int> senders_left{kSenders};
    std::vector<std::thread> threads;
    for (int p = 0; p < kSenders; ++p) {
      threads.emplace_back([&, p] {
        for (int i = 0; i < per_sender; ++i) EXPECT_TRUE(ch.send(SlowMove(p * per_sender + i)));
        if (senders_left.fetch_sub(1) == 1) ch.close();
      });
    }
    for (int r = 0; r < kReceivers; ++r) {
      threads.emplace_back([&] {
        for (;;) {
          std::optional<SlowMove> m;
          bool open = true;
          tendril::select(tendril::case_recv(ch, [&](std::optional<SlowMove> x) { open = x.has_value(); m = std::move(x); }),
                          tendril::case_after(std::chrono::microseconds(5), [] {}));
          if (m) {
            received[static_cast<std::size_t>(m->v)].fetch_add(1);
          } else if (!open) {
            // Closed: what is still in flight comes out of a blocking recv.
            while (std::optional<SlowMove> w = ch.recv()) received[static_cast<std::size_t>(w->v)].fetch_add(1);
            return;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    int lost = 0, duplicated = 0;
    for (const auto& n : received) {
      lost += n.load() == 0;
      duplicated += n.load() > 1;
    }
    EXPECT_EQ(lost, 0) << "capacity " << capacity;
    EXPECT_EQ(duplicated, 0) << "capacity " << capacity;
  }
}

// With capacity C exactly C try_sends succeed on an idle channel, whatever
// failed try_ operations came before, and values come out in order.
TEST(Channel, TryOperationsKeepExactCapacity) {
  tendril::run([] {
    tendril::Channel<int> ch(3);
    for (int round = 0; round < 200; ++round) {
      EXPECT_EQ(ch.try_recv(), std::nullopt);
      int sent = 0;
      while (ch.try_send(round * 10 + sent)) ++sent;
      EXPECT_EQ(sent, 3);
      EXPECT_EQ(ch.size(), 3u);
      for (int i = 0; i < 3; ++i) EXPECT_EQ(ch.try_recv(), round * 10 + i);
      EXPECT_EQ(ch.try_recv(), std::nullopt);
      EXPECT_EQ(ch.size(), 0u);
    }
    tendril::Channel<int> rendezvous(0);
    for (int round = 0; round < 200; ++round) {
      EXPECT_FALSE(rendezvous.try_send(round));
      EXPECT_EQ(rendezvous.try_recv(), std::nullopt);
    }
    auto r = tendril::spawn([rendezvous]() mutable { EXPECT_EQ(rendezvous.recv(), 7); });
    while (!rendezvous.try_send(7)) tendril::this_fiber::yield();
    r.join();
  });
}

// close() racing senders and receivers, parked or not: every value whose
// send returned true is received exactly once, no value whose send returned
// false is received, and once a send fails every later one does too.
TEST(Channel, StressCloseRacesParkedSendersAndReceivers) {
  const int iterations = static_cast<int>(stress_count(600, 40));
  for (int it = 0; it < iterations; ++it) {
    const std::size_t capacity = std::size_t{0} + (it % 4 == 3 ? 64 : it % 4);  // 0, 1, 2, 64
    // Every third iteration has more senders and receivers than the ring has
    // cells, so close() also meets operations waiting for a lap.
    const bool crowd = it % 3 == 2;
    const int senders = crowd ? 40 : 3 + it % 5, receivers = crowd ? 30 : 1 + it % 4;
    const std::int64_t per_sender = crowd ? 10 : 40;
    const bool with_thread = it % 5 == 0;
    std::vector<std::vector<std::int64_t>> accepted(static_cast<std::size_t>(senders));
    std::vector<std::vector<std::int64_t>> got(static_cast<std::size_t>(receivers + 1));
    tendril::run(two_workers(), [&] {
      tendril::Channel<std::int64_t> ch(capacity);
      std::vector<tendril::Fiber> fs;
      auto drain = [ch](std::vector<std::int64_t>& mine) mutable {
        while (auto v = ch.recv()) mine.push_back(*v);
      };
      for (int r = 0; r < receivers; ++r)
        fs.push_back(tendril::spawn([&, r] { drain(got[static_cast<std::size_t>(r)]); }));
      std::thread t;
      if (with_thread) t = std::thread([&] { drain(got.back()); });
      for (int s = 0; s < senders; ++s) {
        fs.push_back(tendril::spawn([&, ch, s]() mutable {
          bool failed = false;
          for (std::int64_t i = 0; i < per_sender; ++i) {
            const std::int64_t v = tagged(s, i);
            const bool ok = (i % 4 == 1) ? ch.try_send(v) || ch.send(v) : ch.send(v);
            if (ok) {
              EXPECT_FALSE(failed) << "send succeeded after one failed";
              accepted[static_cast<std::size_t>(s)].push_back(v);
            } else {
              failed = true;
            }
          }
        }));
      }
      fs.push_back(tendril::spawn([ch, it]() mutable {
        for (int i = 0; i < (it * 7) % 23; ++i) tendril::this_fiber::yield();
        ch.close();
        ch.close();
      }));
      for (auto& f : fs) f.join();
      if (t.joinable()) t.join();
      EXPECT_TRUE(ch.closed());
      EXPECT_FALSE(ch.send(1));
      EXPECT_EQ(ch.recv(), std::nullopt);
    });
    std::vector<std::int64_t> sent, received;
    for (auto& a : accepted) sent.insert(sent.end(), a.begin(), a.end());
    for (auto& g : got) received.insert(received.end(), g.begin(), g.end());
    std::sort(sent.begin(), sent.end());
    std::sort(received.begin(), received.end());
    ASSERT_EQ(received, sent) << "iteration " << it << " capacity " << capacity;
  }
}

// close() wakes operations that wait for a lap of the ring, not only the ones
// parked in a cell: far more parked senders and receivers than cells.
TEST(Channel, CloseWakesManyParkedOperations) {
  tendril::run(two_workers(), [] {
    for (std::size_t capacity : {std::size_t{0}, std::size_t{4}}) {
      tendril::Channel<int> to_senders(capacity), to_receivers(capacity);
      std::atomic<int> failed_sends{0}, empty_recvs{0}, delivered{0};
      std::vector<tendril::Fiber> fs;
      for (int i = 0; i < 150; ++i) {
        fs.push_back(tendril::spawn([&, to_senders, i]() mutable {
          if (to_senders.send(i)) ++delivered; else ++failed_sends;
        }));
        fs.push_back(tendril::spawn([&, to_receivers]() mutable {
          if (!to_receivers.recv()) ++empty_recvs;
        }));
      }
      tendril::this_fiber::sleep_for(std::chrono::milliseconds(20));
      to_senders.close();
      to_receivers.close();
      for (auto& f : fs) f.join();
      int drained = 0;
      while (to_senders.recv()) ++drained;
      // Senders beyond the buffer cannot have succeeded; the ones that did left
      // their values for the receivers.
      EXPECT_LE(delivered.load(), static_cast<int>(capacity));
      EXPECT_EQ(drained, delivered.load());
      EXPECT_EQ(failed_sends.load() + delivered.load(), 150);
      EXPECT_EQ(empty_recvs.load(), 150);
    }
  });
}

// Plain OS threads and fibers on both ends of one channel, blocking and try_.
TEST(Channel, StressPlainThreadsAndFibersMixed) {
  for (std::size_t capacity : {std::size_t{0}, std::size_t{3}}) {
    const std::int64_t per_sender = stress_count(20000);
    std::atomic<std::int64_t> sum{0}, count{0};
    tendril::run(two_workers(), [&] {
      tendril::Channel<std::int64_t> ch(capacity);
      auto receive = [&, ch]() mutable {
        std::int64_t s = 0, n = 0;
        while (auto v = ch.recv()) {
          s += *v;
          ++n;
        }
        sum += s;
        count += n;
      };
      auto send = [ch, per_sender](std::int64_t base) mutable {
        for (std::int64_t i = 0; i < per_sender; ++i) {
          std::int64_t v = base + i;
          if (i % 5 == 0 && ch.try_send(v)) continue;
          ASSERT_TRUE(ch.send(v));
        }
      };
      // The sending threads report back over a channel, so this fiber waits
      // without blocking its worker.
      tendril::Channel<int> threads_done(2);
      auto thread_send = [send, threads_done](std::int64_t base) mutable {
        send(base);
        threads_done.send(1);
      };
      std::thread tr(receive);
      std::thread ts1(thread_send, 0), ts2(thread_send, per_sender);
      std::vector<tendril::Fiber> fs;
      fs.push_back(tendril::spawn(receive));
      fs.push_back(tendril::spawn(receive));
      fs.push_back(tendril::spawn(send, 2 * per_sender));
      fs.push_back(tendril::spawn(send, 3 * per_sender));
      threads_done.recv();
      threads_done.recv();
      ts1.join();
      ts2.join();
      fs[2].join();
      fs[3].join();
      ch.close();
      tr.join();
      fs[0].join();
      fs[1].join();
    });
    const std::int64_t n = 4 * per_sender;
    EXPECT_EQ(count.load(), n) << "capacity " << capacity;
    EXPECT_EQ(sum.load(), n * (n - 1) / 2) << "capacity " << capacity;
  }
}

// ---- cancellation: a parked send or recv in a Scope ends with
// operation_canceled (cancel) or timed_out (deadline) and takes effect not at
// all: a cancelled send delivered nothing, a cancelled recv took nothing.

namespace {

using namespace std::chrono_literals;

const std::error_code kCanceled = std::make_error_code(std::errc::operation_canceled);
const std::error_code kTimedOut = std::make_error_code(std::errc::timed_out);

// Runs `op` in a child of a scope that is cancelled once the child has had
// time to park (or, with `deadline`, that has a short deadline); returns the
// error the child's op threw.
template <class Op>
std::error_code error_of_interrupted(bool deadline, Op op) {
  std::error_code got;
  tendril::run(two_workers(), [&] {
    std::optional<tendril::Scope> s;
    if (deadline) {
      s.emplace(30ms);
    } else {
      s.emplace();
    }
    s->spawn([&] {
      try {
        op();
      } catch (const std::system_error& e) {
        got = e.code();
      }
    });
    if (!deadline) {
      tendril::this_fiber::sleep_for(20ms);
      s->cancel();
    }
    s->join();
  });
  return got;
}

}  // namespace

TEST(ChannelCancel, ParkedRecvThrowsAndTakesNothing) {
  for (bool deadline : {false, true}) {
    for (std::size_t cap : {0u, 2u}) {
      tendril::Channel<int> ch(cap);
      EXPECT_EQ(error_of_interrupted(deadline, [&] { ch.recv(); }), deadline ? kTimedOut : kCanceled);
      // The withdrawn receiver's cell does not swallow the next value.
      tendril::run(two_workers(), [&] {
        tendril::Fiber f = tendril::spawn([ch]() mutable { EXPECT_TRUE(ch.send(7)); });
        EXPECT_EQ(ch.recv(), std::optional<int>(7));
        f.join();
      });
    }
  }
}

TEST(ChannelCancel, ParkedSendThrowsAndDeliversNothing) {
  for (bool deadline : {false, true}) {
    for (std::size_t cap : {0u, 1u}) {
      tendril::Channel<int> ch(cap);
      if (cap == 1) {
        ASSERT_TRUE(ch.try_send(1));  // full: the next send parks
      }
      EXPECT_EQ(error_of_interrupted(deadline, [&] { ch.send(99); }), deadline ? kTimedOut : kCanceled);
      if (cap == 1) {
        EXPECT_EQ(ch.try_recv(), std::optional<int>(1));
      }
      EXPECT_EQ(ch.try_recv(), std::nullopt) << "a cancelled send delivered its value";
      ch.close();
      EXPECT_EQ(ch.try_recv(), std::nullopt);
    }
  }
}

TEST(ChannelCancel, SendOrRecvThatNeedNotParkCompleteInACancelledScope) {
  tendril::Channel<int> ch(1);
  std::optional<int> got;
  tendril::run(two_workers(), [&] {
    tendril::Scope s;
    s.cancel();
    s.spawn([&] {
      EXPECT_TRUE(ch.send(5));
      got = ch.recv();
    });
    s.join();
  });
  EXPECT_EQ(got, std::optional<int>(5));
}

namespace {

// Senders and receivers in a scope, cancelled (or timed out) while values
// flow; afterwards the channel is closed and drained. Every value whose send
// returned true is received exactly once, no other value is received.
void cancel_races_exact(std::size_t capacity, bool deadline, int rounds) {
  constexpr int kSenders = 4, kReceivers = 4, kPerSender = 2000;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::atomic<int>> sent(kSenders * kPerSender), received(kSenders * kPerSender);
    tendril::run(two_workers(), [&] {
      tendril::Channel<int> ch(capacity);
      {
        std::optional<tendril::Scope> s;
        if (deadline) {
          s.emplace(std::chrono::microseconds(200 + 300 * (round % 7)));
        } else {
          s.emplace();
        }
        for (int p = 0; p < kSenders; ++p) {
          s->spawn([&, ch, p]() mutable {
            try {
              for (int i = 0; i < kPerSender; ++i) {
                const int v = p * kPerSender + i;
                if (!ch.send(v)) return;
                sent[static_cast<std::size_t>(v)]++;
              }
            } catch (const std::system_error& e) {
              EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
            }
          });
        }
        for (int c = 0; c < kReceivers; ++c) {
          s->spawn([&, ch]() mutable {
            try {
              while (std::optional<int> v = ch.recv()) received[static_cast<std::size_t>(*v)]++;
            } catch (const std::system_error& e) {
              EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
            }
          });
        }
        if (!deadline) {
          tendril::this_fiber::sleep_for(std::chrono::microseconds(100 + 200 * (round % 5)));
          s->cancel();
        }
        s->join();
      }
      ch.close();
      while (std::optional<int> v = ch.recv()) received[static_cast<std::size_t>(*v)]++;
    });
    for (std::size_t v = 0; v < sent.size(); ++v) {
      ASSERT_LE(received[v].load(), 1) << "value " << v << " received twice";
      ASSERT_EQ(received[v].load(), sent[v].load()) << "value " << v << (sent[v] ? " lost" : " received but never sent");
    }
  }
}

}  // namespace

TEST(ChannelCancel, StressCancelRacesSendersAndReceiversUnbuffered) { cancel_races_exact(0, false, int(stress_count(40, 4))); }
TEST(ChannelCancel, StressCancelRacesSendersAndReceiversBuffered) { cancel_races_exact(3, false, int(stress_count(40, 4))); }
TEST(ChannelCancel, StressDeadlineRacesSendersAndReceiversUnbuffered) { cancel_races_exact(0, true, int(stress_count(40, 4))); }
TEST(ChannelCancel, StressDeadlineRacesSendersAndReceiversBuffered) { cancel_races_exact(2, true, int(stress_count(40, 4))); }

// ---- cancellation of operations still waiting for their turn: more
// operations in flight than the ring has cells (capacity + 8, at least 16),
// so most of them wait for an earlier lap of their cell to end, not in it.

namespace {

// Runs `n` copies of `op` in a scope, ends the scope by cancel() or by its
// deadline, and returns how many of them threw `want`. A wait that the scope
// cannot end would hang here: after a generous bound the channel is closed
// instead (which releases every waiter) and the count comes out short.
template <class Op>
int interrupted_in_flight(tendril::Channel<int> ch, int n, bool deadline, Op op) {
  std::atomic<int> threw{0}, ended{0};
  const std::error_code want = deadline ? kTimedOut : kCanceled;
  std::optional<tendril::Scope> s;
  if (deadline) {
    s.emplace(50ms);
  } else {
    s.emplace();
  }
  for (int i = 0; i < n; ++i) {
    s->spawn([&, i] {
      try {
        op(i);
      } catch (const std::system_error& e) {
        if (e.code() == want) threw++;
      }
      ended++;
    });
  }
  if (!deadline) {
    tendril::this_fiber::sleep_for(20ms);
    s->cancel();
  }
  for (int waited = 0; ended < n && waited < 20000; ++waited) tendril::this_fiber::sleep_for(1ms);
  if (ended < n) ch.close();  // a wait the scope could not end
  s->join();
  return threw.load();
}

}  // namespace

// Operations outside the scope hold every cell's current lap (parked there,
// or a buffered value), so the scope's operations all wait for a turn.
TEST(ChannelCancel, SendersWaitingForTheirTurnThrowAndDeliverNothing) {
  constexpr int kCells = 16, kSenders = 60;
  for (bool deadline : {false, true}) {
    for (std::size_t cap : {0u, 2u}) {
      tendril::run(two_workers(), [&] {
        tendril::Channel<int> ch(cap);
        std::vector<tendril::Fiber> holders;  // not in the scope: never cancelled
        for (int i = 0; i < kCells; ++i) holders.push_back(tendril::spawn([ch, i]() mutable { ASSERT_TRUE(ch.send(1000 + i)); }));
        // The rest park in their cells before the scope's senders come.
        tendril_test::wait_until_parked_count(tendril::WaitReason::channel_send, kCells - cap);
        EXPECT_EQ(interrupted_in_flight(ch, kSenders, deadline, [&](int i) { ch.send(i); }), kSenders)
            << "capacity " << cap << (deadline ? ", deadline" : ", cancel");
        // The holders' values, then fresh ones, each exactly once: the
        // abandoned tickets leave no cell waiting for a party that is gone.
        std::vector<int> got(1000 + kCells, 0);
        for (int k = 0; k < kCells; ++k) {
          std::optional<int> v = ch.recv();
          ASSERT_TRUE(v.has_value());
          ASSERT_GE(*v, 1000) << "a cancelled send delivered its value";
          got[static_cast<std::size_t>(*v)]++;
        }
        for (auto& f : holders) f.join();
        EXPECT_EQ(ch.try_recv(), std::nullopt) << "a cancelled send delivered its value";
        tendril::Fiber rx = tendril::spawn([&, ch]() mutable {
          for (int k = 0; k < 200; ++k) {
            std::optional<int> v = ch.recv();
            ASSERT_TRUE(v.has_value());
            got[static_cast<std::size_t>(*v)]++;
          }
        });
        for (int k = 0; k < 200; ++k) ASSERT_TRUE(ch.send(k));
        rx.join();
        EXPECT_EQ(std::count(got.begin(), got.end(), 1), 200 + kCells);
        if (cap > 0) {
          ASSERT_TRUE(ch.try_send(7));
          EXPECT_EQ(ch.try_recv(), std::optional<int>(7));
        }
      });
    }
  }
}

TEST(ChannelCancel, ReceiversWaitingForTheirTurnThrowAndTakeNothing) {
  constexpr int kCells = 16, kReceivers = 60;
  for (bool deadline : {false, true}) {
    for (std::size_t cap : {0u, 2u}) {
      tendril::run(two_workers(), [&] {
        tendril::Channel<int> ch(cap);
        std::vector<int> got(200 + kCells, 0);
        std::vector<tendril::Fiber> holders;  // parked in every cell, never cancelled
        for (int i = 0; i < kCells; ++i) {
          holders.push_back(tendril::spawn([&, ch]() mutable {
            std::optional<int> v = ch.recv();
            ASSERT_TRUE(v.has_value());
            got[static_cast<std::size_t>(*v)]++;
          }));
        }
        tendril_test::wait_until_parked_count(tendril::WaitReason::channel_recv, kCells);
        std::atomic<int> took{0};
        EXPECT_EQ(interrupted_in_flight(ch, kReceivers, deadline,
                                        [&](int) {
                                          if (ch.recv()) took++;
                                        }),
                  kReceivers)
            << "capacity " << cap << (deadline ? ", deadline" : ", cancel");
        EXPECT_EQ(took.load(), 0);
        // Values sent now reach the holders and then the next receivers,
        // each exactly once; none is left in a cell an abandoned receiver held.
        tendril::Fiber tx = tendril::spawn([ch, n = 200 + kCells]() mutable {
          for (int k = 0; k < n; ++k) ASSERT_TRUE(ch.send(k));
        });
        for (auto& f : holders) f.join();
        for (int k = 0; k < 200; ++k) {
          std::optional<int> v = ch.recv();
          ASSERT_TRUE(v.has_value());
          got[static_cast<std::size_t>(*v)]++;
        }
        tx.join();
        EXPECT_EQ(std::count(got.begin(), got.end(), 1), 200 + kCells);
        EXPECT_EQ(ch.try_recv(), std::nullopt);
      });
    }
  }
}

// 5 cancelled senders withdraw from their cells; 40 also abandon tickets
// whose lap had not begun.
TEST(ChannelCancel, TryAndSelectGetPastWithdrawnAndAbandonedTickets) {
  for (int senders : {5, 40}) tendril::run(two_workers(), [&] {
    tendril::Channel<int> ch(2);
    ASSERT_TRUE(ch.try_send(1));
    ASSERT_TRUE(ch.try_send(2));
    EXPECT_EQ(interrupted_in_flight(ch, senders, false, [&](int i) { ch.send(100 + i); }), senders);
    // Only non-blocking operations from here on: they must settle the
    // abandoned tickets themselves, since no blocking party comes by.
    EXPECT_EQ(ch.try_recv(), std::optional<int>(1));
    EXPECT_EQ(ch.try_recv(), std::optional<int>(2));
    EXPECT_EQ(ch.try_recv(), std::nullopt);
    for (int k = 0; k < 100; ++k) {
      ASSERT_TRUE(ch.try_send(k)) << k;
      std::optional<int> got;
      ASSERT_EQ(tendril::try_select(tendril::case_recv(ch, [&](std::optional<int> v) { got = v; })),
                std::optional<std::size_t>(0))
          << k;
      ASSERT_EQ(got, std::optional<int>(k));
    }
  });
}

namespace {

// cancel_races_exact with many more operations in flight than cells, and
// with senders and receivers outside the scope, which hold laps that the
// scope's operations wait behind when it is cancelled.
void cancel_races_many_exact(std::size_t capacity, bool deadline, int rounds) {
  constexpr int kSenders = 40, kReceivers = 40, kSteady = 6, kPerSender = 200;
  constexpr int kValues = (kSenders + kSteady) * kPerSender;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::atomic<int>> sent(kValues), received(kValues);
    tendril::run(two_workers(), [&] {
      tendril::Channel<int> ch(capacity);
      auto send_all = [&, ch](int p) mutable {
        for (int i = 0; i < kPerSender; ++i) {
          const int v = p * kPerSender + i;
          if (!ch.send(v)) return;
          sent[static_cast<std::size_t>(v)]++;
        }
      };
      std::vector<tendril::Fiber> steady;  // never cancelled
      for (int p = kSenders; p < kSenders + kSteady; ++p) steady.push_back(tendril::spawn(send_all, p));
      for (int c = 0; c < kSteady; ++c) {
        steady.push_back(tendril::spawn([&, ch]() mutable {
          while (std::optional<int> v = ch.recv()) {
            if (*v >= 0) received[static_cast<std::size_t>(*v)]++;
          }
        }));
      }
      {
        std::optional<tendril::Scope> s;
        if (deadline) {
          s.emplace(std::chrono::microseconds(300 + 400 * (round % 7)));
        } else {
          s.emplace();
        }
        for (int p = 0; p < kSenders; ++p) {
          s->spawn([&, p] {
            try {
              send_all(p);
            } catch (const std::system_error& e) {
              EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
            }
          });
        }
        for (int c = 0; c < kReceivers; ++c) {
          s->spawn([&, ch]() mutable {
            try {
              while (std::optional<int> v = ch.recv()) received[static_cast<std::size_t>(*v)]++;
            } catch (const std::system_error& e) {
              EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
            }
          });
        }
        if (!deadline) {
          tendril::this_fiber::sleep_for(std::chrono::microseconds(200 + 300 * (round % 5)));
          s->cancel();
        }
        s->join();
      }
      // Fresh operations still meet (no cell waits for a ticket that was
      // abandoned); then close and drain.
      for (int k = 0; k < 100; ++k) ASSERT_TRUE(ch.send(-1));
      ch.close();
      for (auto& f : steady) f.join();
    });
    for (std::size_t v = 0; v < sent.size(); ++v) {
      ASSERT_LE(received[v].load(), 1) << "value " << v << " received twice";
      ASSERT_EQ(received[v].load(), sent[v].load()) << "value " << v << (sent[v] ? " lost" : " received but never sent");
    }
  }
}

}  // namespace

TEST(ChannelCancel, StressCancelRacesManyMoreOperationsThanCellsUnbuffered) {
  cancel_races_many_exact(0, false, int(stress_count(30, 3)));
}
TEST(ChannelCancel, StressCancelRacesManyMoreOperationsThanCellsBuffered) {
  cancel_races_many_exact(3, false, int(stress_count(30, 3)));
}
TEST(ChannelCancel, StressDeadlineRacesManyMoreOperationsThanCellsUnbuffered) {
  cancel_races_many_exact(0, true, int(stress_count(30, 3)));
}
TEST(ChannelCancel, StressDeadlineRacesManyMoreOperationsThanCellsBuffered) {
  cancel_races_many_exact(2, true, int(stress_count(30, 3)));
}
