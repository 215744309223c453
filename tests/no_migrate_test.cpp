// this_fiber::NoMigrate: a pinned fiber resumes on the same OS thread after
// every kind of park (yield, sleep, channel, mutex, I/O, blocking(), join),
// while other fibers keep both workers busy and stealing from each other; the
// same fiber without it is seen to move (so these tests can fail).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>
#include <tendril/tendril.hpp>

#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

tendril::Options two_workers(const char* io_backend = "") {
  tendril::Options o;
  o.workers = 2;
  o.io_backend = io_backend;
  return o;
}

// Fibers that keep both workers busy: they yield, sleep a little and spawn
// short children, so the run queues fill and the workers steal from each
// other all the time.
struct Churn {
  std::atomic<bool> stop{false};
  std::vector<tendril::Fiber> fibers;

  void start(int n) {
    for (int i = 0; i < n; ++i) {
      fibers.push_back(tendril::spawn([this, i] {
        for (unsigned k = 0; !stop.load(std::memory_order_relaxed); ++k) {
          if ((k + unsigned(i)) % 16 == 0) {
            tendril::spawn([] { tendril::this_fiber::yield(); }).detach();
          } else if ((k + unsigned(i)) % 61 == 0) {
            tendril::this_fiber::sleep_for(20us);
          } else {
            tendril::this_fiber::yield();
          }
        }
      }));
    }
  }
  void finish() {
    stop.store(true);
    for (auto& f : fibers) f.join();
  }
};

// One round of parks of every kind. `peer` is a fiber on the other end of
// `to_peer` and `from_peer` (it echoes), `rd`/`wr` a pipe it writes to when
// asked. Calls check() after every park.
template <class Check>
void park_in_every_way(int round, tendril::Channel<int>& to_peer, tendril::Channel<int>& from_peer,
                       int rd, tendril::Mutex& mu, Check&& check) {
  tendril::this_fiber::yield();
  check("yield");
  if (round % 8 == 0) {
    tendril::this_fiber::sleep_for(50us);
    check("sleep_for");
  }
  to_peer.send(round);  // the peer sends it back, and writes one byte on odd rounds
  check("Channel::send");
  EXPECT_EQ(from_peer.recv(), round);
  check("Channel::recv");
  if (round % 2 == 1) {
    char c = 0;
    EXPECT_EQ(tendril::io::read(rd, &c, 1), 1u);
    check("io::read");
  }
  {
    std::lock_guard<tendril::Mutex> g(mu);  // the peer holds it for a moment now and then
    check("Mutex::lock");
  }
  if (round % 16 == 0) {
    tendril::blocking([] { ::usleep(50); });
    check("blocking");
    tendril::spawn([] { tendril::this_fiber::sleep_for(10us); }).join();
    check("Fiber::join");
  }
}

struct Observed {
  long parks = 0;
  long moves = 0;  // parks after which the fiber ran on another thread
};

// Runs `rounds` rounds of park_in_every_way in a fiber, with or without a
// NoMigrate around them, while Churn keeps the workers busy.
Observed run_parks(bool pinned, long rounds, const char* io_backend = "") {
  Observed seen;
  tendril::run(two_workers(io_backend), [&] {
    Churn churn;
    churn.start(6);
    tendril::Channel<int> to_peer, from_peer;
    tendril::Mutex mu;
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    tendril::Fiber peer = tendril::spawn([&] {
      while (std::optional<int> v = to_peer.recv()) {
        if (*v % 5 == 0) {
          std::lock_guard<tendril::Mutex> g(mu);
          tendril::this_fiber::yield();
        }
        from_peer.send(*v);
        if (*v % 2 == 1) {
          tendril::this_fiber::yield();  // so the reader parks first, sometimes
          const char c = 'x';
          tendril::io::write(p[1], &c, 1);
        }
      }
    });
    tendril::Fiber subject = tendril::spawn([&] {
      std::optional<tendril::this_fiber::NoMigrate> stay;
      if (pinned) stay.emplace();
      pid_t tid = ::gettid();
      auto check = [&](const char* what) {
        ++seen.parks;
        const pid_t now = ::gettid();
        if (now != tid) {
          ++seen.moves;
          if (pinned) ADD_FAILURE() << "a pinned fiber moved after " << what;
          tid = now;
        }
      };
      for (long r = 0; r < rounds; ++r) park_in_every_way(int(r), to_peer, from_peer, p[0], mu, check);
    });
    subject.join();
    to_peer.close();
    peer.join();
    churn.finish();
    ::close(p[0]);
    ::close(p[1]);
    EXPECT_GT(tendril::stats().steals, 0u) << "the workers never stole: the test proves nothing";
  });
  return seen;
}

}  // namespace

TEST(NoMigrate, APinnedFiberResumesOnItsThreadAfterEveryKindOfPark) {
  const Observed seen = run_parks(/*pinned=*/true, stress_count(4000, 200));
  EXPECT_GT(seen.parks, 0);
  EXPECT_EQ(seen.moves, 0);
}

TEST(NoMigrate, OnBothIoBackends) {
  for (const char* backend : {"uring", "epoll"}) {
    SCOPED_TRACE(backend);
    const Observed seen = run_parks(/*pinned=*/true, stress_count(1000, 100), backend);
    EXPECT_EQ(seen.moves, 0);
  }
}

// The control: the same fiber without NoMigrate moves between the workers
// (a channel partner on the other worker wakes it there). Bounded: rounds
// until the first move, at most many thousands.
TEST(NoMigrate, WithoutItTheSameFiberMoves) {
  Observed seen;
  for (int attempt = 0; attempt < 20 && seen.moves == 0; ++attempt)
    seen = run_parks(/*pinned=*/false, stress_count(2000, 200));
  EXPECT_GT(seen.moves, 0);
}

// Nested guards: the fiber stays put until the outermost one goes, and may
// move again after it.
TEST(NoMigrate, NestsAndReleasesWithTheOutermost) {
  tendril::run(two_workers(), [] {
    Churn churn;
    churn.start(6);
    tendril::Channel<int> ping, pong;
    tendril::Fiber peer = tendril::spawn([&] {
      while (std::optional<int> v = ping.recv()) pong.send(*v);
    });
    const long kRounds = stress_count(2000, 200);
    long moves_after = 0;
    tendril::spawn([&] {
      const pid_t home = ::gettid();
      {
        tendril::this_fiber::NoMigrate outer;
        for (long r = 0; r < kRounds; ++r) {
          std::optional<tendril::this_fiber::NoMigrate> inner;
          if (r % 2 == 0) inner.emplace();
          {
            tendril::this_fiber::NoMigrate innermost;
            ping.send(int(r));
            pong.recv();
          }
          ASSERT_EQ(::gettid(), home) << "round " << r;
          tendril::this_fiber::yield();
          ASSERT_EQ(::gettid(), home) << "round " << r;
        }
      }
      // Unpinned again: it moves sooner or later (bounded). A wake-up by a
      // pool thread (blocking) lets whichever worker is free take it.
      pid_t tid = ::gettid();
      for (long r = 0; r < 100000 && moves_after == 0; ++r) {
        ping.send(int(r));
        pong.recv();
        if (r % 4 == 3) tendril::blocking([] {});
        if (::gettid() != tid) ++moves_after;
        tid = ::gettid();
      }
    }).join();
    ping.close();
    peer.join();
    churn.finish();
    EXPECT_GT(moves_after, 0);
  });
}

// Many pinned fibers at once, on both workers, woken by each other across
// workers: each stays on its own thread and every message arrives.
TEST(NoMigrate, ManyPinnedFibersWakingEachOther) {
  std::atomic<long> moves{0}, received{0};
  const long kMessages = stress_count(20000, 500);
  tendril::run(two_workers(), [&] {
    Churn churn;
    churn.start(4);
    constexpr int kPairs = 8;
    std::vector<tendril::Fiber> fibers;
    std::vector<tendril::Channel<long>> chans(kPairs * 2);
    for (int i = 0; i < kPairs; ++i) {
      tendril::Channel<long> a = chans[2 * i], b = chans[2 * i + 1];
      auto side = [&moves, &received, kMessages](tendril::Channel<long> in, tendril::Channel<long> out, bool first) {
        tendril::this_fiber::NoMigrate stay;
        const pid_t tid = ::gettid();
        for (long k = 0; k < kMessages / kPairs; ++k) {
          if (first) out.send(k);
          if (in.recv() != k) ADD_FAILURE() << "message " << k << " lost or reordered";
          received.fetch_add(1, std::memory_order_relaxed);
          if (!first) out.send(k);
          if (::gettid() != tid) moves.fetch_add(1, std::memory_order_relaxed);
          if (k % 7 == 0) tendril::this_fiber::sleep_for(5us);
        }
      };
      fibers.push_back(tendril::spawn(side, a, b, true));
      fibers.push_back(tendril::spawn(side, b, a, false));
    }
    for (auto& f : fibers) f.join();
    churn.finish();
  });
  EXPECT_EQ(moves.load(), 0);
  EXPECT_EQ(received.load(), 2 * (kMessages / 8) * 8);
}

// A plain thread: nothing to pin, nothing breaks; and a fiber woken by a
// plain thread (the global queue) still comes home.
TEST(NoMigrate, OnAPlainThreadAndWokenFromOne) {
  { tendril::this_fiber::NoMigrate nothing; }
  tendril::run(two_workers(), [] {
    Churn churn;
    churn.start(6);
    tendril::Channel<int> to_thread, from_thread;
    std::thread t([&] {
      tendril::this_fiber::NoMigrate also_nothing;
      while (std::optional<int> v = to_thread.recv()) from_thread.send(*v);
    });
    tendril::spawn([&] {
      tendril::this_fiber::NoMigrate stay;
      const pid_t home = ::gettid();
      for (int i = 0; i < int(stress_count(3000, 200)); ++i) {
        to_thread.send(i);
        ASSERT_EQ(from_thread.recv(), i);
        ASSERT_EQ(::gettid(), home) << "message " << i;
      }
    }).join();
    to_thread.close();
    t.join();
    churn.finish();
  });
}

TEST(NoMigrateDeathTest, DestroyedOnAnotherFiberStopsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(tendril::run([] {
                 tendril::Channel<tendril::this_fiber::NoMigrate*> made;
                 tendril::Channel<int> never;
                 tendril::Fiber owner = tendril::spawn([&] {
                   made.send(new tendril::this_fiber::NoMigrate);
                   never.recv();  // stays alive while main misuses its guard
                 });
                 delete *made.recv();
               }),
               "NoMigrate of fiber .* destroyed on another fiber");
}
