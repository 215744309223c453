#include <gtest/gtest.h>
#include <tendril/tendril.hpp>

#include <cstdlib>
#include <string>

TEST(Smoke, RunsMainAndJoinsAChild) {
  int value = 0;
  tendril::run([&] {
    auto f = tendril::spawn([&value](int v) { value = v; }, 42);
    f.join();
  });
  EXPECT_EQ(value, 42);
}

TEST(Smoke, ReportsTheStackModeInUse) {
  std::string mode;
  tendril::run([&] { mode = tendril::stats().stack_mode; });
  const char* forced = std::getenv("TENDRIL_STACK_MODE");
  if (forced != nullptr && *forced != '\0') {
    EXPECT_EQ(mode, forced);
  } else {
    EXPECT_TRUE(mode == "uffd" || mode == "kernel") << mode;
  }
}
