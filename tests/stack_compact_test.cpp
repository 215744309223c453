// Idle-stack compaction (Options::compact_after, userfaultfd mode): a fiber
// parked longer than compact_after has the used pages of its stack below the
// top page copied into a buffer and given back; they come back, with every
// byte, when the fiber runs again or when anything touches them first.
//
// ctest runs these once as is (uffd) and once with TENDRIL_STACK_MODE=kernel,
// where compaction is off and the counters stay 0. No timing assertions: the
// waits for "compacted" are bounded loops that fail the test if nothing
// happens within a generous time, never measurements.
#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kBufBytes = 6 * kKiB;  // spans pages below the top one

tendril::Options compacting(std::chrono::milliseconds after = 1ms) {
  tendril::Options o;
  o.workers = 2;
  o.compact_after = after;
  return o;
}

bool uffd_mode() { return tendril::stats().stack_mode == "uffd"; }

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
    if (uffd_mode()) {
      EXPECT_TRUE(eventually([&] { return tendril::stats().fibers_compacted >= kFibers / 4; }))
          << tendril::stats().fibers_compacted << " compacted, " << tendril::stats().compactions << " compactions";
    }
    for (int i = 0; i < kFibers; ++i) chans[std::size_t(i)].send(std::uint64_t(i) + 1);
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(checked.load(), kFibers);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_mode == "uffd") {
    EXPECT_GT(after.compactions, 0u);
    EXPECT_GE(after.restores, after.compactions);
    EXPECT_EQ(after.fibers_compacted, 0u);  // every one was resumed
    EXPECT_EQ(after.compact_bytes, 0u);
  } else {
    EXPECT_EQ(after.compactions, 0u);
    EXPECT_EQ(after.restores, 0u);
  }
}

// Receivers park over and over with a buffer on their stacks; senders on
// both workers wake them at random moments, some right while their worker
// compacts them (compact_after is 1 ms and senders pause now and then). The
// channel writes each value into the receiver's stack (its Waiter's
// storage), so wakers also touch compacted pages through the fault handler.
TEST(StackCompact, WakersRacingCompactionLoseNothing) {
  constexpr int kReceivers = 200;
  constexpr int kRounds = 30;
  std::atomic<std::size_t> bad{0};
  std::atomic<int> done{0};
  tendril::Stats after;
  tendril::run(compacting(), [&] {
    std::vector<tendril::Channel<std::uint64_t>> chans;
    for (int i = 0; i < kReceivers; ++i) chans.emplace_back(0);
    std::vector<tendril::Fiber> fibers;
    for (int i = 0; i < kReceivers; ++i)
      fibers.push_back(tendril::spawn([&, i] {
        for (int r = 0; r < kRounds; ++r) {
          std::uint64_t got = 0;
          const std::uint64_t seed = std::uint64_t(i) * 1000 + std::uint64_t(r);
          bad += fill_park_check(seed, [&] { got = *chans[std::size_t(i)].recv(); });
          if (got != seed + 1) bad += 1;
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
            chans[std::size_t(i)].send(std::uint64_t(i) * 1000 + std::uint64_t(r) + 1);
          }
      }));
    for (auto& f : senders) f.join();
    for (auto& f : fibers) f.join();
    after = tendril::stats();
  });
  EXPECT_EQ(done.load(), kReceivers);
  EXPECT_EQ(bad.load(), 0u);
  if (after.stack_mode == "uffd") {
    EXPECT_EQ(after.fibers_compacted, 0u);
    EXPECT_EQ(after.compact_bytes, 0u);
  } else {
    EXPECT_EQ(after.compactions, 0u);
  }
}

// A fiber parked inside a catch block keeps its exception state, and
// stack_high_water reads the same after its stack was compacted and restored.
TEST(StackCompact, ExceptionStateAndHighWaterAfterRestore) {
  std::size_t hw_before = 0, hw_after = 0;
  std::string what;
  bool had_exception = false;
  std::size_t bad = 0;
  std::uint64_t compactions = 0;
  tendril::run(compacting(), [&] {
    tendril::Channel<int> ch(0);
    tendril::Fiber f = tendril::spawn([&] {
      try {
        throw std::runtime_error("kept across compaction");
      } catch (...) {
        bad = fill_park_check(7, [&] {
          hw_before = tendril::this_fiber::stack_high_water();
          ch.recv();
          hw_after = tendril::this_fiber::stack_high_water();
        });
        had_exception = std::current_exception() != nullptr;
        try {
          throw;
        } catch (const std::runtime_error& e) {
          what = e.what();
        }
      }
    });
    if (uffd_mode()) {
      EXPECT_TRUE(eventually([] { return tendril::stats().fibers_compacted >= 1; }));
    }
    compactions = tendril::stats().compactions;
    ch.send(1);
    f.join();
  });
  EXPECT_EQ(bad, 0u);
  EXPECT_TRUE(had_exception);
  EXPECT_EQ(what, "kept across compaction");
  EXPECT_EQ(hw_after, hw_before);
  if (tendril::stats().stack_mode == "uffd") {
    EXPECT_GE(compactions, 1u);
  }
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
          if (uffd_mode() && !eventually([] { return tendril::stats().fibers_compacted >= 1; })) std::abort();
          ch.send(1);
          f.join();
        });
      },
      "fiber [0-9]+ \"compacted-deep\" exceeded its stack limit of 65536 bytes");
}

TEST(StackCompact, OffInKernelMode) {
  tendril::Options o = compacting();
  o.stack_mode = "kernel";
  std::atomic<std::size_t> bad{0};
  tendril::Stats after;
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
  EXPECT_EQ(after.stack_mode, "kernel");
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(after.compactions, 0u);
  EXPECT_EQ(after.restores, 0u);
  EXPECT_EQ(after.fibers_compacted, 0u);
  EXPECT_EQ(after.compact_bytes, 0u);
}

TEST(StackCompact, OptionIsValidated) {
  // The variable would override the values under test.
  const char* env = std::getenv("TENDRIL_COMPACT_MS");
  const std::string saved = env ? env : "";
  unsetenv("TENDRIL_COMPACT_MS");
  tendril::Options o;
  o.compact_after = std::chrono::milliseconds(-1);
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  o.compact_after = std::chrono::hours(2);
  EXPECT_THROW(tendril::run(o, [] {}), std::invalid_argument);
  if (env) setenv("TENDRIL_COMPACT_MS", saved.c_str(), 1);
}
