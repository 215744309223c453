// Idle-stack compaction (Options::compact_after, userfaultfd mode): a fiber
// parked longer than compact_after has the used part of its stack (its top
// page included) copied into a buffer and its pages given back; they come back, with every
// byte, when the fiber runs again or when anything touches them first.
//
// ctest runs these once as is (uffd) and once with TENDRIL_STACK_MODE=kernel,
// where compaction is off and the counters stay 0; on a kernel without
// UFFDIO_MOVE (before 6.8) it is off in uffd mode too (stats().stack_compaction
// says which), and the tests check the bytes and that nothing was compacted.
// No timing assertions: the waits for "compacted" are bounded loops that
// fail the test if nothing happens within a generous time, never
// measurements.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/sched/compact_policy.hpp"
#include "runtime/sched/compact_testing.hpp"
#include "tests/capture_stderr.hpp"

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kBufBytes = 6 * kKiB;  // spans pages below the top one

tendril::Options compacting(std::chrono::milliseconds after = 1ms) {
  tendril::Options o;
  o.workers = 2;
  o.compact_after = after;
  o.stall_threshold = 0ms;  // a sender waking hundreds of fibers in a row is no stall
  return o;
}

// Compaction is on in this run (inside run()).
bool compaction_on() { return tendril::stats().stack_compaction; }

// Compacts a fiber at its worker's first look after it parked, for the
// runtimes made while it lives: the tests that race wakers and I/O against
// compaction want it as early as it can come.
struct CompactAtOnce {
  CompactAtOnce() { tendril::detail::set_compact_delay_for_tests(0); }
  ~CompactAtOnce() { tendril::detail::set_compact_delay_for_tests(-1); }
};

unsigned char pattern(std::uint64_t seed, std::size_t i) { return static_cast<unsigned char>(seed * 131 + i * 7 + (i >> 8)); }

// Fills a buffer on this fiber's stack, runs `park` (which parks the fiber),
// and returns how many bytes no longer hold the pattern.
template <class Park>
__attribute__((noinline)) std::size_t fill_park_check(std::uint64_t seed, Park&& park) {
  unsigned char buf[kBufBytes];
  for (std::size_t i = 0; i < kBufBytes; ++i) buf[i] = pattern(seed, i);
  asm volatile("" : : "r"(buf) : "memory");  // the buffer is live across the park
  park();
  asm volatile("" : : "r"(buf) : "memory");
  std::size_t bad = 0;
  for (std::size_t i = 0; i < kBufBytes; ++i) bad += buf[i] != pattern(seed, i);
  return bad;
}

// Waits (bounded) until `pred` holds; false if it never did.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::seconds limit = 30s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    tendril::this_fiber::sleep_for(2ms);
  }
  return true;
}

// Unsets an environment variable for the lifetime of the object.
class UnsetEnv {
 public:
  explicit UnsetEnv(const char* name) : name_(name) {
    if (const char* v = std::getenv(name)) {
      had_ = true;
      saved_ = v;
    }
    unsetenv(name);
  }
  ~UnsetEnv() {
    if (had_) setenv(name_, saved_.c_str(), 1);
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string saved_;
};

using tendril_test::CaptureStderr;

}  // namespace

#if defined(__SANITIZE_THREAD__)
constexpr int kManyFibers = 1000;  // ThreadSanitizer makes each switch and fault tens of times dearer
#else
constexpr int kManyFibers = 3000;
#endif

TEST(StackCompact, EveryByteSurvivesAcrossThousandsOfFibers) {
  constexpr int kFibers = kManyFibers;
  std::atomic<std::size_t> bad{0};
  std::atomic<int> checked{0};
  tendril::Stats before, after;
  tendril::run(compacting(), [&] {
    // One channel each: the value lands in each receiver's (compacted) stack.
    std::vector<tendril::Channel<std::uint64_t>> chans;
    for (int i = 0; i < kFibers; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        std::uint64_t got = 0;
        bad += fill_park_check(std::uint64_t(i), [&] { got = *chans[std::size_t(i)].recv(); });
        if (got != std::uint64_t(i) + 1) bad += 1;
        checked.fetch_add(1);
      }));
    before = tendril::stats();
    if (compaction_on()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= kFibers / 4; }))
          << tendril::stats().fibers_compacted << " compacted, " << tendril::stats().compactions << " compactions";
    }
    for (int i = 0; i < kFibers; ++i) chans[std::size_t(i)].send(std::uint64_t(i) + 1);
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(checked.load(), kFibers);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_compaction) {
    EXPECT_GT(after.compactions, 0u);
    EXPECT_GE(after.restores, after.compactions);
    EXPECT_EQ(after.fibers_compacted, 0u);  // every one was resumed
    EXPECT_EQ(after.compact_bytes, 0u);
  } else {
    EXPECT_EQ(after.compactions, 0u);
    EXPECT_EQ(after.restores, 0u);
  }
}

// A fiber whose whole stack fits in its top page gives that page back too:
// once every such fiber is compacted, the live stacks hold far fewer pages
// than there are fibers (one each before compaction), and the buffers hold
// the few hundred live bytes of each, not a page. The fibers park on a
// WaitGroup, whose Waiter is in the fiber's control block, so nothing
// touches their stacks until they run again.
TEST(StackCompact, TopPageOfAShallowFiberIsGivenBack) {
  constexpr int kFibers = 1000;
  constexpr std::size_t kSmall = 512;
  std::atomic<std::size_t> bad{0};
  std::atomic<int> checked{0};
  tendril::Stats parked, compacted, after;
  tendril::run(compacting(), [&] {
    tendril::WaitGroup gate;
    gate.add(1);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        unsigned char buf[kSmall];
        for (std::size_t k = 0; k < kSmall; ++k) buf[k] = pattern(std::uint64_t(i), k);
        asm volatile("" : : "r"(buf) : "memory");
        gate.wait();
        asm volatile("" : : "r"(buf) : "memory");
        std::size_t wrong = 0;
        for (std::size_t k = 0; k < kSmall; ++k) wrong += buf[k] != pattern(std::uint64_t(i), k);
        bad += wrong;
        checked.fetch_add(1);
      }));
    parked = tendril::stats();
    if (compaction_on()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kFibers); }))
          << tendril::stats().fibers_compacted << " compacted";
      compacted = tendril::stats();
    }
    gate.done();
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(checked.load(), kFibers);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_compaction) {
    // Without the top page each compacted fiber would still hold one page.
    // Not under ASan: there each fiber went a page deeper before it parked,
    // and the dead pages below a compacted run stay resident.
#if !defined(__SANITIZE_ADDRESS__)
    EXPECT_LT(compacted.stack_pages_mapped, std::uint64_t(kFibers) / 2)
        << "parked: " << parked.stack_pages_mapped << " pages";
#endif
    // The live bytes, not pages: about 670 B each in Release, 2.3 KiB under
    // ASan (its frames are bigger).
    EXPECT_LT(compacted.compact_bytes, std::uint64_t(kFibers) * 3072);
    EXPECT_GE(compacted.compact_bytes, std::uint64_t(kFibers) * kSmall);
    EXPECT_EQ(after.fibers_compacted, 0u);
    EXPECT_EQ(after.compact_bytes, 0u);
  }
}

// A fiber that parks, is woken and parks again before its worker looks at
// its list (a connection that answers a request and waits for the next) is
// compacted at its last park: it is listed once, and the later park replaces
// the one it was listed with.
TEST(StackCompact, AFiberThatParksAgainSoonIsCompactedAtItsLastPark) {
  constexpr int kFibers = 100;
  std::atomic<int> done{0};
  tendril::Stats compacted;
  // Long enough that each fiber's second park comes before the first is due.
  tendril::run(compacting(300ms), [&] {
    if (!compaction_on()) return;
    std::vector<tendril::Channel<int>> chans;
    for (int i = 0; i < kFibers; ++i) chans.emplace_back(0);
    tendril::WaitGroup gate;
    gate.add(1);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        chans[std::size_t(i)].recv();  // the first park
        gate.wait();                   // the one that lasts
        done.fetch_add(1);
      }));
    for (int i = 0; i < kFibers; ++i) chans[std::size_t(i)].send(i);
    EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kFibers); }))
        << tendril::stats().fibers_compacted << " compacted";
    gate.done();
    for (auto& f : fibers) f.join();
    EXPECT_EQ(done.load(), kFibers);
  });
}

// While its worker has other work, compaction takes only a share of it, in
// batches: the one fiber that keeps running (yielding) on the only worker
// sees the count of compactions grow by at most one batch between two of
// its turns, and every parked fiber is compacted all the same. Without the
// batches one walk would compact all of them between two turns.
TEST(StackCompact, ABurstOfParkedFibersIsCompactedInBatchesBetweenTheTurnsOfARunningFiber) {
  const CompactAtOnce at_once;
#if defined(__SANITIZE_THREAD__)
  constexpr std::uint64_t kParked = 300;
#else
  constexpr std::uint64_t kParked = 2000;
#endif
  tendril::Options o = compacting();
  o.workers = 1;
  // Stacks at spawn: with deferred stacks the fibers would get theirs between
  // the running fiber's turns, and those turns would be further apart than
  // the pacing of batches assumes (it is paced by time, not by turns).
  o.stack_defer = false;
  std::uint64_t compactions = 0, largest_step = 0;
  bool on = false;
  tendril::run(o, [&] {
    on = compaction_on();
    tendril::WaitGroup gate;
    gate.add(1);
    std::vector<tendril::Fiber> fibers;
    for (std::uint64_t i = 0; i < kParked; ++i) fibers.push_back(tendril::spawn([&] { gate.wait(); }));
    const auto give_up = std::chrono::steady_clock::now() + 60s;  // a bound, not a measurement
    while (on && compactions < kParked && std::chrono::steady_clock::now() < give_up) {
      tendril::this_fiber::yield();
      const std::uint64_t now = tendril::stats().compactions;
      largest_step = std::max(largest_step, now - compactions);
      compactions = now;
    }
    gate.done();
    for (auto& f : fibers) f.join();
  });
  if (!on) return;
  EXPECT_EQ(compactions, kParked);
  EXPECT_GT(largest_step, 0u);
  EXPECT_LE(largest_step, tendril::detail::kCompactBatch);
}

// Fibers that park once and end do not keep their stacks until their
// listing worker's next compaction (an hour away here): the list lets go of
// ended fibers once they are half of it, or before the worker sleeps.
TEST(StackCompact, EndedFibersDoNotWaitForTheNextCompactionToLetGoOfTheirStacks) {
  constexpr int kFibers = 1000;
  tendril::run(compacting(std::chrono::hours(1)), [&] {
    if (!compaction_on()) return;
    const std::uint64_t base = tendril::stats().stack_pages_mapped;
    std::vector<tendril::Channel<int>> chans;
    for (int i = 0; i < kFibers; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kFibers; ++i) fibers.push_back(tendril::spawn([&, i] { chans[std::size_t(i)].recv(); }));
    for (int i = 0; i < kFibers; ++i) chans[std::size_t(i)].send(i);  // each parked once: listed
    for (auto& f : fibers) f.join();
    // Some pages may stay with fibers still on their way out; not one each.
    EXPECT_TRUE(eventually([&] { return tendril::stats().stack_pages_mapped < base + kFibers / 10; }))
        << tendril::stats().stack_pages_mapped << " pages mapped in live stacks, " << base << " before the spawns";
  });
}

// A listed fiber that ends gives its stack back like any other, even while
// its listing worker is busy and nowhere near a walk of its list (compaction
// an hour away, a fiber that keeps yielding, and the ended fibers too few of
// the list to call for a walk of their own). Before, the list held a
// reference to each listed fiber, so their stacks waited for a walk. (One
// that ends on another worker than its lister: FaultInjection.ArenaFull...,
// whose slots must come back once its fibers are joined.)
TEST(StackCompact, AListedFiberThatEndsGivesItsStackBackAtOnce) {
  constexpr int kStaying = 1500, kEnding = 500;
  std::uint64_t base = 0, with_all = 0, after_ends = 0;
  bool on = false, released = false;
  tendril::Options o = compacting(std::chrono::hours(1));
  o.workers = 1;
  tendril::run(o, [&] {
    on = compaction_on();
    std::atomic<bool> stop{false};
    std::vector<tendril::Fiber> busy;
    busy.push_back(tendril::spawn([&] {
      while (!stop.load(std::memory_order_relaxed)) tendril::this_fiber::yield();
    }));
    base = tendril::stats().stack_pages_mapped;
    tendril::WaitGroup stay;
    stay.add(1);
    std::vector<tendril::Channel<int>> chans;
    for (int i = 0; i < kEnding; ++i) chans.emplace_back(0);
    std::atomic<int> parked{0};
    std::vector<tendril::Fiber> staying, ending;
    for (int i = 0; i < kStaying; ++i) staying.push_back(tendril::spawn([&] {
      parked.fetch_add(1);
      stay.wait();
    }));
    for (int i = 0; i < kEnding; ++i) ending.push_back(tendril::spawn([&, i] {
      parked.fetch_add(1);
      chans[std::size_t(i)].recv();  // parks once: listed
    }));
    eventually([&] { return parked.load() == kStaying + kEnding; });
    tendril::this_fiber::sleep_for(20ms);  // every one switched out and listed
    with_all = tendril::stats().stack_pages_mapped;
    for (int i = 0; i < kEnding; ++i) chans[std::size_t(i)].send(i);
    for (auto& f : ending) f.join();
    released = eventually(
        [&] { return tendril::stats().stack_pages_mapped < with_all - std::uint64_t(kEnding) * 9 / 10; }, 10s);
    after_ends = tendril::stats().stack_pages_mapped;
    stay.done();
    for (auto& f : staying) f.join();
    stop = true;
    for (auto& f : busy) f.join();
  });
  if (!on) return;
  EXPECT_GE(with_all, base + kStaying + kEnding);
  EXPECT_TRUE(released) << after_ends << " pages mapped in live stacks after the ends, " << with_all
                        << " with all parked, " << base << " before the spawns";
}

// Receivers park over and over with a buffer on their stacks; senders on
// both workers wake them at random moments, many right while a worker
// compacts them (the delay is 0: a parked fiber is compacted at the first
// look; senders pause now and then). The values are too big for the
// receiver's Waiter (Waiter::kHandoffBytes), so the channel builds each one
// on the receiver's stack, and wakers also touch compacted pages through the
// fault handler.
struct WideValue {
  std::uint64_t words[8];  // 64 B: more than a Waiter's hand-off buffer
};
static_assert(!tendril::detail::channel::handoff_fits<WideValue>);

TEST(StackCompact, WakersRacingCompactionLoseNothing) {
  CompactAtOnce at_once;
  constexpr int kReceivers = 200;
  constexpr int kRounds = 30;
  std::atomic<std::size_t> bad{0};
  std::atomic<int> done{0};
  tendril::Stats after;
  tendril::run(compacting(), [&] {
    std::vector<tendril::Channel<WideValue>> chans;
    for (int i = 0; i < kReceivers; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kReceivers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        for (int r = 0; r < kRounds; ++r) {
          WideValue got{};
          const std::uint64_t seed = std::uint64_t(i) * 1000 + std::uint64_t(r);
          bad += fill_park_check(seed, [&] { got = *chans[std::size_t(i)].recv(); });
          for (std::size_t k = 0; k < 8; ++k) bad += got.words[k] != seed + 1 + k;
        }
        done.fetch_add(1);
      }));
    std::vector<tendril::Fiber> senders;
    for (int s = 0; s < 2; ++s)
      senders.push_back(tendril::spawn([&, s] {
        std::uint32_t rng = 12345u + std::uint32_t(s);
        for (int r = 0; r < kRounds; ++r)
          for (int i = s; i < kReceivers; i += 2) {
            rng = rng * 1103515245u + 12345u;
            if ((rng >> 16) % 64 == 0) tendril::this_fiber::sleep_for(std::chrono::microseconds((rng >> 8) % 3000));
            WideValue v;
            for (std::size_t k = 0; k < 8; ++k) v.words[k] = std::uint64_t(i) * 1000 + std::uint64_t(r) + 1 + k;
            chans[std::size_t(i)].send(v);
          }
      }));
    for (auto& f : senders) f.join();
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(done.load(), kReceivers);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_compaction) {
    EXPECT_GT(after.compactions, 0u);
    EXPECT_GT(after.restores_on_touch, 0u);  // a sender built a value on a compacted receiver's stack
    EXPECT_EQ(after.fibers_compacted, 0u);
    EXPECT_EQ(after.compact_bytes, 0u);
  } else {
    EXPECT_EQ(after.compactions, 0u);
  }
}

// A value that fits in the receiver's Waiter (a std::string, whose
// characters live on the heap) is built there, in the fiber's control
// block: a send to a compacted receiver touches nothing on its stack, and
// the receiver's worker puts the stack back when it switches to it, with no
// fault. Without the hand-off buffer every send here is a restore on touch.
TEST(StackCompact, ASendToACompactedReceiverDoesNotTouchItsStack) {
  static_assert(tendril::detail::channel::handoff_fits<std::string>);
  constexpr int kReceivers = 300;
  std::atomic<std::size_t> bad{0};
  tendril::Stats compacted, after;
  tendril::run(compacting(), [&] {
    std::vector<tendril::Channel<std::string>> chans;
    for (int i = 0; i < kReceivers; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kReceivers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        std::string got;
        bad += fill_park_check(std::uint64_t(i), [&] { got = *chans[std::size_t(i)].recv(); });
        if (got != std::string(100, char('a' + i % 26)) + std::to_string(i)) bad += 1;
      }));
    if (compaction_on()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kReceivers); }))
          << tendril::stats().fibers_compacted << " compacted";
    }
    compacted = tendril::stats();
    for (int i = 0; i < kReceivers; ++i)
      chans[std::size_t(i)].send(std::string(100, char('a' + i % 26)) + std::to_string(i));
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_compaction) {
    EXPECT_EQ(after.restores_on_touch, compacted.restores_on_touch);
    EXPECT_GE(after.restores - compacted.restores, std::uint64_t(kReceivers));
    EXPECT_EQ(after.fibers_compacted, 0u);
  }
}

// The other direction: a parked sender moves its value into its Waiter, so
// a receiver that takes it from a compacted sender touches nothing on the
// sender's stack. Without that every receive here is a restore on touch.
TEST(StackCompact, ARecvFromACompactedSenderDoesNotTouchItsStack) {
  static_assert(tendril::detail::channel::handoff_fits_send<std::string>);
  constexpr int kSenders = 300;
  std::atomic<std::size_t> bad{0};
  std::atomic<int> sent{0};
  std::size_t wrong_values = 0;
  tendril::Stats compacted, after;
  tendril::run(compacting(), [&] {
    std::vector<tendril::Channel<std::string>> chans;
    for (int i = 0; i < kSenders; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kSenders; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        bool ok = false;
        bad += fill_park_check(std::uint64_t(i), [&] {
          ok = chans[std::size_t(i)].send(std::string(100, char('a' + i % 26)) + std::to_string(i));
        });
        if (ok) sent.fetch_add(1);
      }));
    if (compaction_on()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kSenders); }))
          << tendril::stats().fibers_compacted << " compacted";
    }
    compacted = tendril::stats();
    for (int i = 0; i < kSenders; ++i) {
      const std::optional<std::string> got = chans[std::size_t(i)].recv();
      if (got != std::string(100, char('a' + i % 26)) + std::to_string(i)) ++wrong_values;
    }
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(wrong_values, 0u);
  EXPECT_EQ(sent.load(), kSenders);
  if (after.stack_compaction) {
    EXPECT_EQ(after.restores_on_touch, compacted.restores_on_touch);
    EXPECT_GE(after.restores - compacted.restores, std::uint64_t(kSenders));
  }
}

namespace {

// A fiber parked inside a catch block, with a buffer on its stack: what it
// sees after it is woken.
struct ParkedInCatch {
  std::size_t hw_before = 0, hw_after = 0;  // stack_high_water before and after the park
  std::string what;
  bool had_exception = false;
  std::size_t bad = 0;
  std::uint64_t compactions = 0;
  bool compaction = false;
};

ParkedInCatch park_in_catch(std::chrono::milliseconds compact_after) {
  ParkedInCatch r;
  tendril::Options o = compacting(compact_after);
  // One worker: the fiber is resumed the same way in both runs (by the
  // parent's switch out of join). With two, who resumes it (the parent, or
  // the other worker's loop) varies with timing, and so does how deep the
  // resumption's own frames reach below the park.
  o.workers = 1;
  // Its stack at spawn, for the same reason: a deferred stack is bound on
  // the spawner's switch or on the scheduler context, depending on what the
  // cache holds, and the first switch's frames on the new stack differ.
  o.stack_defer = false;
  tendril::run(o, [&] {
    r.compaction = compaction_on();
    tendril::Channel<int> ch(0);
    tendril::Fiber f = tendril::spawn([&] {
      try {
        throw std::runtime_error("kept across compaction");
      } catch (...) {
        r.bad = fill_park_check(7, [&] {
          r.hw_before = tendril::this_fiber::stack_high_water();
          ch.recv();
          r.hw_after = tendril::this_fiber::stack_high_water();
        });
        r.had_exception = std::current_exception() != nullptr;
        try {
          throw;
        } catch (const std::runtime_error& e) {
          r.what = e.what();
        }
      }
    });
    if (r.compaction) {
      EXPECT_TRUE(eventually([] { return tendril::stats().fibers_compacted >= 1; }));
    } else {
      tendril::this_fiber::sleep_for(5ms);
    }
    r.compactions = tendril::stats().compactions;
    ch.send(1);
    f.join();
  });
  return r;
}

}  // namespace

// A fiber parked inside a catch block keeps its exception state after its
// stack was compacted and restored, and stack_high_water reads what it reads
// in the same run without compaction (the park itself may deepen the stack:
// under ASan its frames take a page more than before it).
TEST(StackCompact, ExceptionStateAndHighWaterAfterRestore) {
  const UnsetEnv compact_env("TENDRIL_COMPACT_MS");  // the reference run has it off
  // The process's first throw sets up the unwinder, on a deeper stack: not
  // in the runs compared.
  park_in_catch(0ms);
  const ParkedInCatch plain = park_in_catch(0ms);
  const ParkedInCatch compacted = park_in_catch(1ms);
  EXPECT_FALSE(plain.compaction);
  EXPECT_EQ(plain.compactions, 0u);
  for (const ParkedInCatch* r : {&plain, &compacted}) {
    EXPECT_EQ(r->bad, 0u);
    EXPECT_TRUE(r->had_exception);
    EXPECT_EQ(r->what, "kept across compaction");
  }
  EXPECT_EQ(compacted.hw_before, plain.hw_before);
  EXPECT_EQ(compacted.hw_after, plain.hw_after);
  if (compacted.compaction) {
    EXPECT_GE(compacted.compactions, 1u);
  }
}

// ---- I/O into a compacted stack -------------------------------------------
//
// A fiber parks in a read whose buffer lies on its stack, below the top page;
// it is compacted while it waits; then the data comes. With io_uring the
// kernel copies the data into the buffer before it posts the completion, so
// it touches the missing page first and the slot owner's fault handler puts
// the run back for it (stats().restores_on_touch); with epoll the woken
// fiber reads itself, after its worker restored the stack at switch-in.
// Pipes and socketpairs through tendril::io::read, TCP over loopback through
// tendril::net::TcpStream::read.
namespace {

constexpr std::size_t kPayload = 1500;

unsigned char payload_byte(int reader, std::size_t i) { return static_cast<unsigned char>(reader * 37 + i * 11 + 1); }

// The buffer is in this frame, below fill_park_check's 6 KiB one: never on
// the top page. Returns the bytes read that are wrong or missing.
template <class Read>
__attribute__((noinline)) std::size_t read_into_stack(int reader, Read&& read) {
  unsigned char rbuf[kPayload];
  std::memset(rbuf, 0, sizeof rbuf);  // resident, and no stale payload
  asm volatile("" : : "r"(rbuf) : "memory");
  std::size_t got = 0;
  while (got < kPayload) {
    const std::size_t n = read(rbuf + got, kPayload - got);
    if (n == 0) break;
    got += n;
  }
  std::size_t bad = kPayload - got;
  for (std::size_t i = 0; i < got; ++i) bad += rbuf[i] != payload_byte(reader, i);
  return bad;
}

class CompactIo : public ::testing::TestWithParam<std::string> {};

TEST_P(CompactIo, ReadIntoACompactedStackDeliversTheBytes) {
  CompactAtOnce at_once;
  constexpr int kEach = 6;  // pipes, socketpairs and TCP connections each
  constexpr int kReaders = 3 * kEach;
  tendril::Options o = compacting();
  o.io_backend = GetParam();
  std::atomic<std::size_t> bad{0};
  std::atomic<int> finished{0};
  tendril::Stats before, after;
  std::string backend;
  tendril::run(o, [&] {
    backend = tendril::stats().io_backend;
    int rfd[2 * kEach], wfd[2 * kEach];
    for (int i = 0; i < kEach; ++i) {
      int p[2];
      ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
      rfd[i] = p[0];
      wfd[i] = p[1];
      ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p), 0);
      rfd[kEach + i] = p[0];
      wfd[kEach + i] = p[1];
    }
    auto listener = tendril::net::TcpListener::bind("127.0.0.1", 0);
    std::vector<tendril::net::TcpStream> clients, served;
    for (int i = 0; i < kEach; ++i) {
      clients.push_back(tendril::net::TcpStream::connect("127.0.0.1", listener.local_port()));
      served.push_back(listener.accept());
    }
    std::vector<tendril::Fiber> readers;
    for (int r = 0; r < kReaders; ++r)
      readers.push_back(tendril::spawn([&, r] {
        bad += fill_park_check(std::uint64_t(r), [&] {
          if (r < 2 * kEach) {
            bad += read_into_stack(r, [&](unsigned char* b, std::size_t n) { return tendril::io::read(rfd[r], b, n); });
          } else {
            tendril::net::TcpStream& s = served[std::size_t(r - 2 * kEach)];
            bad += read_into_stack(r, [&](unsigned char* b, std::size_t n) { return s.read(b, n); });
          }
        });
        finished.fetch_add(1);
      }));
    // This fiber's own stack is put back before it runs and looks: the
    // compacted ones are readers, all of them.
    if (compaction_on()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kReaders); }))
          << tendril::stats().fibers_compacted << " of " << kReaders << " compacted";
    } else {
      tendril::this_fiber::sleep_for(20ms);  // they park in their reads
    }
    before = tendril::stats();
    unsigned char out[kPayload];
    for (int r = 0; r < kReaders; ++r) {
      for (std::size_t i = 0; i < kPayload; ++i) out[i] = payload_byte(r, i);
      if (r < 2 * kEach) {
        ASSERT_EQ(::write(wfd[r], out, kPayload), ssize_t(kPayload));
      } else {
        clients[std::size_t(r - 2 * kEach)].write_all(out, kPayload);
      }
    }
    for (auto& f : readers) f.join();
    after = tendril::stats();
    for (int i = 0; i < 2 * kEach; ++i) {
      close(rfd[i]);
      close(wfd[i]);
    }
  });
  EXPECT_EQ(finished.load(), kReaders);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_compaction) {
    EXPECT_GE(after.restores - before.restores, std::uint64_t(kReaders));
    EXPECT_EQ(after.fibers_compacted, 0u);
    // io_uring: the kernel wrote each buffer before its reader could run.
    if (backend == "uring") {
      EXPECT_GE(after.restores_on_touch - before.restores_on_touch, std::uint64_t(kReaders));
    }
  } else {
    EXPECT_EQ(after.compactions, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CompactIo, ::testing::Values("uring", "epoll"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ---- signals ------------------------------------------------------------------

std::atomic<long> g_signals_handled{0};
void count_signal(int) { g_signals_handled.fetch_add(1, std::memory_order_relaxed); }

// The worker threads of this process, by the names they give themselves.
std::vector<pid_t> worker_tids() {
  std::vector<pid_t> tids;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return tids;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[320], comm[32] = {};
    std::snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE* f = std::fopen(path, "r");
    if (f == nullptr) continue;
    if (std::fgets(comm, sizeof comm, f) != nullptr && std::strncmp(comm, "tendril-w", 9) == 0)
      tids.push_back(pid_t(std::atoi(e->d_name)));
    std::fclose(f);
  }
  closedir(d);
  return tids;
}

}  // namespace

// Signals rain on both workers (a handler without SA_RESTART, so system
// calls are interrupted) while they put compacted stacks back at switch-in,
// and while their fault handlers do for wakers: every byte survives.
TEST(StackCompact, SignalsToWorkersWhileTheyRestore) {
  struct sigaction sa {}, old {};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old), 0);
  constexpr int kFibers = kManyFibers / 2;
  constexpr int kRounds = 3;
  std::atomic<std::size_t> bad{0};
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  g_signals_handled = 0;
  tendril::Stats after;
  tendril::run(compacting(), [&] {
    const std::vector<pid_t> tids = worker_tids();
    EXPECT_EQ(tids.size(), 2u);
    std::thread signaller([&] {
      // Bounded: stops when told, or after a million signals.
      for (long n = 0; !stop.load(std::memory_order_relaxed) && n < 1000000; ++n) {
        for (pid_t t : tids)
          if (syscall(SYS_tgkill, getpid(), t, SIGUSR2) == 0) sent.fetch_add(1, std::memory_order_relaxed);
        if (n % 64 == 0) std::this_thread::yield();
      }
    });
    for (int round = 0; round < kRounds; ++round) {
      std::vector<tendril::Channel<int>> chans;
      for (int i = 0; i < kFibers; ++i) chans.emplace_back(0);
      std::vector<tendril::Fiber> fibers;
      for (int i = 0; i < kFibers; ++i)
        fibers.push_back(tendril::spawn([&, i] {
          bad += fill_park_check(std::uint64_t(i) + std::uint64_t(round) * 7919, [&] { chans[std::size_t(i)].recv(); });
        }));
      if (compaction_on()) {
        EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= std::uint64_t(kFibers) / 2; }));
      }
      for (int i = 0; i < kFibers; ++i) chans[std::size_t(i)].send(i);
      for (auto& f : fibers) f.join();
    }
    stop = true;
    signaller.join();
    after = tendril::stats();
  });
  sigaction(SIGUSR2, &old, nullptr);
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(sent.load(), 0);
  EXPECT_GT(g_signals_handled.load(), 0);
  if (after.stack_compaction) {
    EXPECT_GT(after.restores, 0u);
    EXPECT_EQ(after.fibers_compacted, 0u);
  }
}

// The fiber dump reads a parked fiber's stack to unwind it: on a compacted
// one that read is a touch like any other, and the frames come out whole.
TEST(StackCompact, FiberDumpReadsCompactedStacks) {
  std::size_t bad = 0;
  bool found = false, framed = false;
  std::uint64_t touched = 0;
  tendril::run(compacting(), [&] {
    tendril::Channel<int> ch(0);
    tendril::Fiber f = tendril::spawn(tendril::SpawnOptions{"compacted-parked"}, [&] {
      bad = fill_park_check(11, [&] { ch.recv(); });
    });
    const bool on = compaction_on();
    if (on) {
      EXPECT_TRUE(eventually([] { return tendril::stats().fibers_compacted >= 1; }));
    }
    const std::uint64_t touches = tendril::stats().restores_on_touch;
    for (const tendril::FiberInfo& info : tendril::fibers()) {
      if (info.name != "compacted-parked") continue;
      found = true;
      for (const tendril::FiberFrame& fr : info.frames) framed |= fr.function.find("fill_park_check") != std::string::npos;
    }
    touched = tendril::stats().restores_on_touch - touches;
    if (on) {
      EXPECT_GE(touched, 1u);
    }
    ch.send(1);
    f.join();
  });
  EXPECT_TRUE(found);
  EXPECT_TRUE(framed);
  EXPECT_EQ(bad, 0u);
}

namespace {
volatile bool g_keep_recursing = true;

__attribute__((noinline)) long recurse_forever(long depth) {
  volatile char frame[512];
  frame[0] = char(depth);
  if (!g_keep_recursing) return 0;
  return recurse_forever(depth + 1) + frame[0];
}
}  // namespace

TEST(StackCompact, OverflowStillDiagnosedAfterCompaction) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        tendril::run(compacting(), [] {
          tendril::Channel<int> ch(0);
          tendril::Fiber f = tendril::spawn(tendril::SpawnOptions{"compacted-deep", 64 * kKiB}, [&] {
            fill_park_check(3, [&] { ch.recv(); });
            recurse_forever(0);
          });
          if (compaction_on() && !eventually([] { return tendril::stats().fibers_compacted >= 1; })) std::abort();
          ch.send(1);
          f.join();
        });
      },
      "fiber [0-9]+ \"compacted-deep\" exceeded its stack limit of 65536 bytes");
}

// The mode line says whether compaction is on, and stats() agrees: on in
// uffd mode where the kernel has UFFDIO_MOVE; where it has not (before 6.8),
// a line says why it is off.
TEST(StackCompact, ModeLineSaysWhetherItIsOn) {
  CaptureStderr cap;
  bool on = false;
  std::string mode;
  tendril::run(compacting(), [&] {
    on = tendril::stats().stack_compaction;
    mode = tendril::stats().stack_mode;
  });
  cap.restore();
  const std::string log = cap.text();
  if (on) {
    EXPECT_EQ(mode, "uffd");
    EXPECT_NE(log.find("mode=uffd"), std::string::npos) << log;
    EXPECT_NE(log.find("idle-stack compaction on"), std::string::npos) << log;
  } else {
    EXPECT_NE(log.find("idle-stack compaction off"), std::string::npos) << log;
    if (mode == "uffd") {
      EXPECT_NE(log.find("compaction needs"), std::string::npos) << log;
    }
  }
}

TEST(StackCompact, OffInKernelMode) {
  const UnsetEnv mode_env("TENDRIL_STACK_MODE");  // it would override the mode under test
  tendril::Options o = compacting();
  o.stack_mode = "kernel";
  std::atomic<std::size_t> bad{0};
  tendril::Stats after;
  CaptureStderr cap;
  tendril::run(o, [&] {
    tendril::Channel<int> ch(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < 100; ++i)
      fibers.push_back(tendril::spawn([&, i] { bad += fill_park_check(std::uint64_t(i), [&] { ch.recv(); }); }));
    tendril::this_fiber::sleep_for(20ms);  // well past compact_after: nothing happens
    for (int i = 0; i < 100; ++i) ch.send(i);
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  cap.restore();
  EXPECT_EQ(after.stack_mode, "kernel");
  EXPECT_FALSE(after.stack_compaction);
  EXPECT_NE(cap.text().find("mode=kernel (demand paging, guards by"), std::string::npos) << cap.text();
  EXPECT_NE(cap.text().find("idle-stack compaction off"), std::string::npos) << cap.text();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(after.compactions, 0u);
  EXPECT_EQ(after.restores, 0u);
  EXPECT_EQ(after.fibers_compacted, 0u);
  EXPECT_EQ(after.compact_bytes, 0u);
}

TEST(StackCompact, OptionIsValidated) {
  const UnsetEnv compact_env("TENDRIL_COMPACT_MS");  // it would override the values under test
  tendril::Options o;
  o.compact_after = std::chrono::milliseconds(-1);
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o.compact_after = std::chrono::hours(2);
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
}
