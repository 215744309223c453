// tendril::WaitGroup: wait for a group of fibers to finish, as Go's
// sync.WaitGroup.
//
//   tendril::WaitGroup wg;
//   for (int i = 0; i < 100; ++i) {
//     wg.add(1);
//     tendril::spawn([wg, i]() mutable { work(i); wg.done(); }).detach();
//   }
//   wg.wait();
//
// A WaitGroup is a cheap copyable handle: copies share one counter, so it can
// be captured by value. add(n) must happen before the matching done() calls;
// wait() parks until the counter is zero (returns at once if it is). A counter
// that would go negative, or past INT64_MAX, throws std::logic_error from
// add() or done() and is left as it was.
//
// done() is one atomic operation unless it brings the counter to zero. That
// zero releases every fiber and thread waiting at that moment, and only
// those: a group may be reused at once, and whoever waits after a new add()
// waits for the next zero. A waiter may destroy a group it owns as soon as
// its wait() returns, even while done() is still releasing the others.
#pragma once

#include <cstdint>
#include <memory>

namespace tendril {

class WaitGroup {
 public:
  WaitGroup();
  void add(std::int64_t n = 1);
  void done();
  void wait() const;
  std::int64_t count() const noexcept;  // a snapshot

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace tendril
