// Consumer check: uses only the installed headers and library. A producer
// fiber sends 1..100 over a Channel to the main fiber, a second fiber takes an
// argument; exits non-zero if any result is wrong.
#include <tendril/tendril.hpp>

#include <cstdio>
#include <exception>
#include <optional>

int main() {
  constexpr int kCount = 100;
  constexpr long kExpectedSum = kCount * (kCount + 1) / 2;  // 5050
  long sum = 0;
  int received = 0;
  int doubled = 0;
  try {
    tendril::run([&] {
      tendril::Channel<int> ch(4);
      tendril::Fiber producer = tendril::spawn([ch]() mutable {
        for (int i = 1; i <= kCount; ++i) ch.send(i);
        ch.close();
      });
      tendril::Fiber helper = tendril::spawn([&doubled](int v) { doubled = 2 * v; }, 21);
      while (std::optional<int> v = ch.recv()) {
        sum += *v;
        ++received;
      }
      producer.join();
      helper.join();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: tendril::run threw: %s\n", e.what());
    return 2;
  }
  if (sum != kExpectedSum || received != kCount || doubled != 42) {
    std::fprintf(stderr, "consumer: wrong result: sum=%ld (want %ld), received=%d (want %d), doubled=%d (want 42)\n",
                 sum, kExpectedSum, received, kCount, doubled);
    return 1;
  }
  std::printf("consumer: ok (sum=%ld)\n", sum);
  return 0;
}
