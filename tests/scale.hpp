// How large the stress tests are. Sanitizer builds run the same tests with
// smaller counts: ThreadSanitizer makes every fiber switch and atomic tens of
// times slower, and the suites must stay bounded in time.
#pragma once

#if defined(__SANITIZE_THREAD__)
inline constexpr long kStressScale = 50;  // counts are divided by this
#elif defined(__SANITIZE_ADDRESS__)
inline constexpr long kStressScale = 5;
#else
inline constexpr long kStressScale = 1;
#endif

#include <tendril/options.hpp>

namespace tendril_test {
// Options with `n` workers: the suites' usual runtime.
inline tendril::Options workers(unsigned n) {
  tendril::Options o;
  o.workers = n;
  return o;
}
}  // namespace tendril_test

// `n` in a normal build, n / kStressScale (at least `floor`) under a sanitizer.
constexpr long stress_count(long n, long floor = 1000) {
  return n / kStressScale > floor ? n / kStressScale : (floor < n ? floor : n);
}

// Skips every test of the executable under ThreadSanitizer, saying why: for
// suites that would test TSan rather than tendril there. Use once, at
// namespace scope in the suite's file.
#if defined(__SANITIZE_THREAD__)
#include <gtest/gtest.h>
class SkipSuiteUnderTsan : public ::testing::Environment {
 public:
  explicit SkipSuiteUnderTsan(const char* why) : why_(why) {}
  void SetUp() override { GTEST_SKIP() << "under ThreadSanitizer: " << why_; }

 private:
  const char* why_;
};
#define TENDRIL_TEST_SKIP_SUITE_UNDER_TSAN(why) \
  const ::testing::Environment* const tendril_skip_under_tsan = ::testing::AddGlobalTestEnvironment(new SkipSuiteUnderTsan(why))
#else
#define TENDRIL_TEST_SKIP_SUITE_UNDER_TSAN(why) static_assert(true, "")
#endif
