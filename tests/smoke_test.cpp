#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

TEST(Smoke, RunsMainAndJoinsAChild) {
  int value = 0;
  tendril::run([&] {
    auto f = tendril::spawn([&value](int v) { value = v; }, 42);
    f.join();
  });
  EXPECT_EQ(value, 42);
}
