// TENDRIL_ASSERT: in a build with checks on (Debug, the sanitizer builds of
// scripts/test.sh, -DTENDRIL_CHECKS=ON) a broken invariant aborts naming the
// rule and the fiber; in Release the checks are compiled out and these tests
// say so and skip.
#include <gtest/gtest.h>

#include "runtime/stack/stack.hpp"
#include "tendril/detail/assert.hpp"
#include "tendril/fiber.hpp"
#include "tendril/runtime.hpp"

namespace {

using namespace tendril::detail;

#define SKIP_WITHOUT_CHECKS()                                                                             \
  if (!kChecks) GTEST_SKIP() << "TENDRIL_ASSERT is compiled out in this build (Release); configure with " \
                                "-DTENDRIL_CHECKS=ON, a Debug build or a sanitizer build to run it"

TEST(InvariantDeathTest, BrokenRuleAbortsNamingTheRuleAndTheFiber) {
  SKIP_WITHOUT_CHECKS();
  EXPECT_DEATH(tendril::run([] {
                 tendril::spawn({.name = "checker"}, [] {
                   TENDRIL_ASSERT(1 + 1 == 3, "arithmetic holds");
                 }).join();
               }),
               "broken invariant: arithmetic holds\n  \\(1 \\+ 1 == 3\\) at .*invariant_test.cpp:[0-9]+ on fiber "
               "[0-9]+ \"checker\"");
}

TEST(InvariantDeathTest, AssertOutsideAFiberNamesTheThread) {
  SKIP_WITHOUT_CHECKS();
  EXPECT_DEATH(TENDRIL_ASSERT(false, "never"), "broken invariant: never.* on thread [0-9]+ \\(no fiber\\)");
}

// A real rule of the stack subsystem: a slot is released once.
TEST(InvariantDeathTest, ReleasingAStackSlotTwiceAborts) {
  SKIP_WITHOUT_CHECKS();
  EXPECT_DEATH(
      {
        StackConfig c = stack_config(tendril::Options{}.with_environment(), 1);
        c.mode = "kernel";
        stack_init(c);
        stack_thread_init(0);
        const StackSlot s = stack_allocate(0, 64 * 1024);
        stack_release(0, s);
        stack_release(0, s);
      },
      "broken invariant: only a live stack slot is released");
}

TEST(Invariant, ConditionIsNotEvaluatedWithoutChecks) {
  int evaluated = 0;
  TENDRIL_ASSERT(++evaluated > 0, "evaluates its condition only with checks on");
  EXPECT_EQ(evaluated, kChecks ? 1 : 0);
}

}  // namespace
