// this_fiber::NoMigrate: a depth count and the home worker in the FiberCtl.
// The scheduler keeps a pinned fiber at home (Scheduler::ready and
// Worker::pick_next; see scheduler.hpp).
#include <cstdio>
#include <exception>

#include "runtime/sched/scheduler.hpp"

namespace tendril::this_fiber {

NoMigrate::NoMigrate() noexcept : fiber_(detail::current_fiber()) {
  if (fiber_ == nullptr) return;
  if (fiber_->pin_depth++ != 0) return;
  detail::Worker* home = detail::current_worker();
  // Counted first: whoever later finds this fiber in a queue must see a
  // non-zero count (the queue's release/acquire orders the two).
  home->scheduler().pinned_fibers.fetch_add(1, std::memory_order_relaxed);
  fiber_->pin_home.store(home, std::memory_order_relaxed);
}

NoMigrate::~NoMigrate() {
  if (fiber_ == nullptr) return;
  detail::Worker* w = detail::current_worker();
  if (w == nullptr || w->current() != fiber_) {
    std::fprintf(stderr,
                 "tendril: this_fiber::NoMigrate of fiber %llu '%s' destroyed on another fiber or "
                 "thread; destroy it on the fiber that made it\n",
                 static_cast<unsigned long long>(fiber_->id), fiber_->name);
    std::fflush(stderr);
    std::terminate();
  }
  if (--fiber_->pin_depth != 0) return;
  fiber_->pin_home.store(nullptr, std::memory_order_relaxed);
  w->scheduler().pinned_fibers.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace tendril::this_fiber
