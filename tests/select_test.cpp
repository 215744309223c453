// tendril::select / try_select: every case kind, try_select never parking,
// case_after, fairness, select from fibers and plain threads, exactly-once
// under racing selects, senders, receivers and close (counted), and
// cancellation by cancel() and by deadline.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include "tests/scale.hpp"

#include <atomic>
#include <chrono>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

tendril::Options two_workers() {
  tendril::Options o;
  o.workers = 2;
  return o;
}

const std::error_code kCanceled = std::make_error_code(std::errc::operation_canceled);
const std::error_code kTimedOut = std::make_error_code(std::errc::timed_out);

}  // namespace

TEST(Select, RecvCaseTakesABufferedValue) {
  tendril::Channel<int> a(1), b(1);
  ASSERT_TRUE(b.try_send(5));
  std::optional<int> got;
  const std::size_t k = tendril::select(tendril::case_recv(a, [&](std::optional<int>) { FAIL(); }),
                                        tendril::case_recv(b, [&](std::optional<int> v) { got = v; }));
  EXPECT_EQ(k, 1u);
  EXPECT_EQ(got, std::optional<int>(5));
  EXPECT_EQ(b.size(), 0u);
}

TEST(Select, RecvCaseSeesClose) {
  tendril::Channel<int> a;
  a.close();
  bool closed = false;
  EXPECT_EQ(tendril::select(tendril::case_recv(a, [&](std::optional<int> v) { closed = !v; })), 0u);
  EXPECT_TRUE(closed);
}

TEST(Select, SendCaseFillsTheBufferOrReportsClose) {
  tendril::Channel<std::string> a(1);
  bool sent = false;
  EXPECT_EQ(tendril::select(tendril::case_send(a, std::string("x"), [&](bool s) { sent = s; })), 0u);
  EXPECT_TRUE(sent);
  EXPECT_EQ(a.try_recv(), std::optional<std::string>("x"));
  a.close();
  sent = true;
  EXPECT_EQ(tendril::select(tendril::case_send(a, std::string("y"), [&](bool s) { sent = s; })), 0u);
  EXPECT_FALSE(sent);
}

TEST(Select, ParksUntilACaseCanProceed) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> a, b, out;
    std::optional<int> got;
    tendril::Fiber late = tendril::spawn([b]() mutable {
      tendril::this_fiber::sleep_for(10ms);
      EXPECT_TRUE(b.send(42));
    });
    const std::size_t k = tendril::select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                                          tendril::case_recv(b, [&](std::optional<int> v) { got = v; }),
                                          tendril::case_send(out, 1, [](bool) { FAIL(); }));
    EXPECT_EQ(k, 1u);
    EXPECT_EQ(got, std::optional<int>(42));
    late.join();
    // The cases not chosen left nothing behind: a, out still work normally.
    tendril::Fiber r = tendril::spawn([out]() mutable { EXPECT_EQ(out.recv(), std::optional<int>(3)); });
    EXPECT_TRUE(out.send(3));
    r.join();
    EXPECT_EQ(a.try_recv(), std::nullopt);
  });
}

TEST(Select, SendCaseMeetsAParkedReceiver) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> a, b;
    tendril::Fiber r = tendril::spawn([b]() mutable { EXPECT_EQ(b.recv(), std::optional<int>(8)); });
    tendril::this_fiber::sleep_for(5ms);
    bool sent = false;
    const std::size_t k = tendril::select(tendril::case_send(a, 7, [](bool) { FAIL(); }),
                                          tendril::case_send(b, 8, [&](bool s) { sent = s; }));
    EXPECT_EQ(k, 1u);
    EXPECT_TRUE(sent);
    r.join();
  });
}

TEST(Select, CloseWakesAParkedSelect) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> a, b;
    tendril::Fiber closer = tendril::spawn([b]() mutable {
      tendril::this_fiber::sleep_for(5ms);
      b.close();
    });
    bool send_failed = false;
    const std::size_t k = tendril::select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                                          tendril::case_send(b, 1, [&](bool s) { send_failed = !s; }));
    EXPECT_EQ(k, 1u);
    EXPECT_TRUE(send_failed);
    closer.join();
  });
}

TEST(Select, SelectMeetsSelect) {
  tendril::run(two_workers(), [] {
    tendril::Channel<int> ch, never, other;
    std::optional<int> got;
    tendril::Fiber r = tendril::spawn([&, ch, never]() mutable {
      tendril::select(tendril::case_recv(ch, [&](std::optional<int> v) { got = v; }),
                      tendril::case_recv(never, [](std::optional<int>) { FAIL(); }));
    });
    tendril::this_fiber::sleep_for(5ms);
    bool sent = false;
    tendril::select(tendril::case_send(other, 0, [](bool) { FAIL(); }),
                    tendril::case_send(ch, 11, [&](bool s) { sent = s; }));
    r.join();
    EXPECT_TRUE(sent);
    EXPECT_EQ(got, std::optional<int>(11));
  });
}

TEST(Select, TrySelectNeverParksAndTakesNothingWhenNothingIsReady) {
  tendril::Channel<int> a, b(2);
  std::optional<std::size_t> k = tendril::try_select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                                                     tendril::case_recv(b, [](std::optional<int>) { FAIL(); }),
                                                     tendril::case_send(a, 1, [](bool) { FAIL(); }),
                                                     tendril::case_after(1h, [] { FAIL(); }));
  EXPECT_EQ(k, std::nullopt);
  ASSERT_TRUE(b.try_send(3));
  std::optional<int> got;
  k = tendril::try_select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                          tendril::case_recv(b, [&](std::optional<int> v) { got = v; }));
  EXPECT_EQ(k, std::optional<std::size_t>(1));
  EXPECT_EQ(got, std::optional<int>(3));
  bool fired = false;
  EXPECT_EQ(tendril::try_select(tendril::case_after(0ms, [&] { fired = true; })), std::optional<std::size_t>(0));
  EXPECT_TRUE(fired);
}

TEST(Select, AfterFiresWhenNothingElseDoes) {
  tendril::Channel<int> a;
  bool fired = false;
  // On a plain thread.
  EXPECT_EQ(tendril::select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                            tendril::case_after(5ms, [&] { fired = true; })),
            1u);
  EXPECT_TRUE(fired);
  // In a fiber, with and without a scope around it.
  tendril::run(two_workers(), [&] {
    fired = false;
    EXPECT_EQ(tendril::select(tendril::case_after(1h, [] { FAIL(); }), tendril::case_after(3ms, [&] { fired = true; }),
                              tendril::case_recv(a, [](std::optional<int>) { FAIL(); })),
              1u);
    EXPECT_TRUE(fired);
    tendril::Scope s(10s);
    s.spawn([&] {
      EXPECT_EQ(tendril::select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                                tendril::case_after(3ms, [] {})),
                1u);
    });
    s.join();
  });
  // A value that comes first wins over the timeout, and the timer does not
  // fire later into a finished select.
  tendril::run(two_workers(), [&] {
    tendril::Channel<int> b;
    tendril::Fiber f = tendril::spawn([b]() mutable { EXPECT_TRUE(b.send(1)); });
    EXPECT_EQ(tendril::select(tendril::case_recv(b, [](std::optional<int> v) { EXPECT_EQ(v, 1); }),
                              tendril::case_after(50ms, [] { FAIL(); })),
              0u);
    f.join();
    tendril::this_fiber::sleep_for(60ms);
  });
}

TEST(Select, PlainThreadsSelect) {
  tendril::Channel<int> a, b;
  std::thread t([&] {
    for (int i = 0; i < 100; ++i) {
      tendril::select(tendril::case_send(a, i, [](bool s) { EXPECT_TRUE(s); }),
                      tendril::case_send(b, i, [](bool s) { EXPECT_TRUE(s); }));
    }
  });
  long sum = 0;
  tendril::run(two_workers(), [&] {
    for (int i = 0; i < 100; ++i) {
      tendril::select(tendril::case_recv(a, [&](std::optional<int> v) { sum += *v; }),
                      tendril::case_recv(b, [&](std::optional<int> v) { sum += *v; }));
    }
    // The thread's last send may still be waking a worker: it must be done
    // before run() tears the workers down.
    tendril::blocking([&] { t.join(); });
  });
  EXPECT_EQ(sum, 99 * 100 / 2);
}

TEST(Select, FairBetweenReadyCases) {
  tendril::Channel<int> a(1), b(1);
  int picks[2] = {0, 0};
  constexpr int kRounds = 4000;
  for (int i = 0; i < kRounds; ++i) {
    ASSERT_TRUE(a.try_send(0) || a.size() == 1);
    ASSERT_TRUE(b.try_send(1) || b.size() == 1);
    ++picks[tendril::select(tendril::case_recv(a, [](std::optional<int>) {}),
                            tendril::case_recv(b, [](std::optional<int>) {}))];
  }
  EXPECT_GT(picks[0], kRounds / 4);
  EXPECT_GT(picks[1], kRounds / 4);
}

// ---- exactly once under racing selects, senders, receivers and close

namespace {

struct Ledger {
  explicit Ledger(std::size_t n) : sent(n), received(n) {}
  std::vector<std::atomic<int>> sent, received;
  void check() const {
    for (std::size_t v = 0; v < sent.size(); ++v) {
      ASSERT_LE(received[v].load(), 1) << "value " << v << " received twice";
      ASSERT_EQ(received[v].load(), sent[v].load()) << "value " << v << (sent[v] ? " lost" : " received but never sent");
    }
  }
};

// Two channels (capacities ca, cb). Plain senders on a, select-senders over
// a and b, plain receivers on b, select-receivers over a and b; half of them
// fibers on two workers, some plain threads. A closer closes both channels
// part-way (`close_early`) or after every sender finished; receivers drain
// until both are closed.
void select_exact(std::size_t ca, std::size_t cb, bool close_early) {
  constexpr int kSendersEach = 2000;
  const int per = int(stress_count(kSendersEach, 200));
  constexpr int kPlainSenders = 2, kSelectSenders = 3, kThreadSenders = 1;
  constexpr int kAllSenders = kPlainSenders + kSelectSenders + kThreadSenders;
  Ledger ledger(static_cast<std::size_t>(kAllSenders * per));
  tendril::Channel<int> a(ca), b(cb);
  auto select_sender = [&, a, b](int id) mutable {
    for (int i = 0; i < per; ++i) {
      const int v = id * per + i;
      bool sent = false;
      tendril::select(tendril::case_send(a, v, [&](bool s) { sent = s; }),
                      tendril::case_send(b, v, [&](bool s) { sent = s; }));
      if (!sent) return;
      ledger.sent[static_cast<std::size_t>(v)]++;
    }
  };
  auto select_receiver = [&, a, b]() mutable {
    bool a_open = true, b_open = true;
    while (a_open || b_open) {
      tendril::select(tendril::case_recv(a, [&](std::optional<int> v) {
                        if (v) ledger.received[static_cast<std::size_t>(*v)]++; else a_open = false;
                      }),
                      tendril::case_recv(b, [&](std::optional<int> v) {
                        if (v) ledger.received[static_cast<std::size_t>(*v)]++; else b_open = false;
                      }));
    }
  };
  std::thread thread_sender([&] { select_sender(kPlainSenders + kSelectSenders); });
  std::thread thread_receiver(select_receiver);
  tendril::run(two_workers(), [&] {
    std::vector<tendril::Fiber> senders, receivers;
    for (int p = 0; p < kPlainSenders; ++p) {
      senders.push_back(tendril::spawn([&, a, p]() mutable {
        for (int i = 0; i < per; ++i) {
          const int v = p * per + i;
          if (!a.send(v)) return;
          ledger.sent[static_cast<std::size_t>(v)]++;
        }
      }));
    }
    for (int p = 0; p < kSelectSenders; ++p) senders.push_back(tendril::spawn(select_sender, kPlainSenders + p));
    for (int c = 0; c < 2; ++c) receivers.push_back(tendril::spawn(select_receiver));
    receivers.push_back(tendril::spawn([&, b]() mutable {
      while (std::optional<int> v = b.recv()) ledger.received[static_cast<std::size_t>(*v)]++;
    }));
    if (close_early) {
      tendril::this_fiber::sleep_for(2ms);
    } else {
      for (auto& f : senders) f.join();
    }
    a.close();
    b.close();
    for (auto& f : senders) {
      if (f.joinable()) f.join();
    }
    for (auto& f : receivers) f.join();
  });
  thread_sender.join();
  thread_receiver.join();
  ledger.check();
}

}  // namespace

TEST(Select, StressExactlyOnceUnbuffered) { select_exact(0, 0, false); }
TEST(Select, StressExactlyOnceBuffered) { select_exact(3, 1, false); }
TEST(Select, StressExactlyOnceCloseRaces) {
  for (int i = 0; i < int(stress_count(20, 3)); ++i) select_exact(i % 2 == 0 ? 0 : 2, 0, true);
}

// ---- cancellation

TEST(SelectCancel, CancelAndDeadlineEndAParkedSelect) {
  for (bool deadline : {false, true}) {
    tendril::Channel<int> a, b(1);
    ASSERT_TRUE(b.try_send(1));  // full: a send case on b parks
    std::error_code got;
    tendril::run(two_workers(), [&] {
      std::optional<tendril::Scope> s;
      if (deadline) {
        s.emplace(20ms);
      } else {
        s.emplace();
      }
      s->spawn([&] {
        try {
          tendril::select(tendril::case_recv(a, [](std::optional<int>) { FAIL(); }),
                          tendril::case_send(b, 2, [](bool) { FAIL(); }),
                          tendril::case_after(1h, [] { FAIL(); }));
        } catch (const std::system_error& e) {
          got = e.code();
        }
      });
      if (!deadline) {
        tendril::this_fiber::sleep_for(10ms);
        s->cancel();
      }
      s->join();
    });
    EXPECT_EQ(got, deadline ? kTimedOut : kCanceled);
    // Nothing was taken or sent: b holds its one value, a is empty, and both
    // still meet new parties.
    EXPECT_EQ(b.try_recv(), std::optional<int>(1));
    EXPECT_EQ(b.try_recv(), std::nullopt);
    tendril::run(two_workers(), [&] {
      tendril::Fiber f = tendril::spawn([a]() mutable { EXPECT_TRUE(a.send(9)); });
      EXPECT_EQ(a.recv(), std::optional<int>(9));
      f.join();
    });
  }
}

TEST(SelectCancel, AfterEarlierThanTheDeadlineIsChosen) {
  std::size_t k = 99;
  tendril::run(two_workers(), [&] {
    tendril::Scope s(10s);
    s.spawn([&] {
      tendril::Channel<int> a;
      k = tendril::select(tendril::case_recv(a, [](std::optional<int>) {}), tendril::case_after(2ms, [] {}));
    });
    s.join();
  });
  EXPECT_EQ(k, 1u);
}

namespace {

// Select-senders and select-receivers in a scope that is cancelled (or
// times out) while values flow, with plain senders and receivers outside
// it; afterwards both channels are closed and drained.
void select_cancel_exact(bool deadline, int round) {
  const int per = int(stress_count(1000, 200));
  constexpr int kSenders = 4;
  Ledger ledger(static_cast<std::size_t>(kSenders * per));
  tendril::run(two_workers(), [&] {
    tendril::Channel<int> a(round % 3), b;
    std::vector<tendril::Fiber> outside;
    // One plain sender and one plain receiver outside the scope.
    outside.push_back(tendril::spawn([&, a]() mutable {
      for (int i = 0; i < per; ++i) {
        if (!a.send(i)) return;
        ledger.sent[static_cast<std::size_t>(i)]++;
      }
    }));
    outside.push_back(tendril::spawn([&, b]() mutable {
      while (std::optional<int> v = b.recv()) ledger.received[static_cast<std::size_t>(*v)]++;
    }));
    {
      std::optional<tendril::Scope> s;
      if (deadline) {
        s.emplace(std::chrono::microseconds(300 + 250 * (round % 5)));
      } else {
        s.emplace();
      }
      for (int p = 1; p < kSenders; ++p) {
        s->spawn([&, a, b, p]() mutable {
          try {
            for (int i = 0; i < per; ++i) {
              const int v = p * per + i;
              bool sent = false;
              tendril::select(tendril::case_send(a, v, [&](bool x) { sent = x; }),
                              tendril::case_send(b, v, [&](bool x) { sent = x; }));
              if (!sent) return;
              ledger.sent[static_cast<std::size_t>(v)]++;
            }
          } catch (const std::system_error& e) {
            EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
          }
        });
      }
      for (int c = 0; c < 3; ++c) {
        s->spawn([&, a, b]() mutable {
          try {
            for (;;) {
              bool open = true;
              tendril::select(tendril::case_recv(a, [&](std::optional<int> v) {
                                if (v) ledger.received[static_cast<std::size_t>(*v)]++; else open = false;
                              }),
                              tendril::case_recv(b, [&](std::optional<int> v) {
                                if (v) ledger.received[static_cast<std::size_t>(*v)]++; else open = false;
                              }));
              if (!open) return;
            }
          } catch (const std::system_error& e) {
            EXPECT_TRUE(e.code() == kCanceled || e.code() == kTimedOut) << e.what();
          }
        });
      }
      if (!deadline) {
        tendril::this_fiber::sleep_for(std::chrono::microseconds(200 + 200 * (round % 5)));
        s->cancel();
      }
      s->join();
    }
    a.close();
    b.close();
    outside[0].join();
    while (std::optional<int> v = a.recv()) ledger.received[static_cast<std::size_t>(*v)]++;
    outside[1].join();
  });
  ledger.check();
}

}  // namespace

TEST(SelectCancel, StressCancelRacesSelectsSendersAndReceivers) {
  for (int round = 0; round < int(stress_count(30, 4)); ++round) select_cancel_exact(false, round);
}
TEST(SelectCancel, StressDeadlineRacesSelectsSendersAndReceivers) {
  for (int round = 0; round < int(stress_count(30, 4)); ++round) select_cancel_exact(true, round);
}
