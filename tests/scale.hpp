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

// `n` in a normal build, n / kStressScale (at least `floor`) under a sanitizer.
constexpr long stress_count(long n, long floor = 1000) {
  return n / kStressScale > floor ? n / kStressScale : (floor < n ? floor : n);
}
