#include "runtime/sched/timer_heap.hpp"

#include "runtime/sched/fiber_ctl.hpp"

namespace tendril::detail {

void TimerHeap::place(std::size_t i, FiberCtl* f) noexcept {
  heap[i] = f;
  f->timer_index = i;
}

void TimerHeap::sift_up(std::size_t i) noexcept {
  FiberCtl* f = heap[i];
  while (i > 0) {
    const std::size_t parent = (i - 1) / 2;
    if (heap[parent]->timer_deadline <= f->timer_deadline) break;
    place(i, heap[parent]);
    i = parent;
  }
  place(i, f);
}

void TimerHeap::sift_down(std::size_t i) noexcept {
  FiberCtl* f = heap[i];
  const std::size_t n = heap.size();
  for (;;) {
    std::size_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && heap[child + 1]->timer_deadline < heap[child]->timer_deadline) ++child;
    if (f->timer_deadline <= heap[child]->timer_deadline) break;
    place(i, heap[child]);
    i = child;
  }
  place(i, f);
}

void TimerHeap::publish_earliest() noexcept {
  earliest.store(heap.empty() ? INT64_MAX : heap.front()->timer_deadline,
                 std::memory_order_release);
}

void TimerHeap::insert(FiberCtl* f) noexcept {
  f->timer_heap = this;
  heap.push_back(f);
  sift_up(heap.size() - 1);
  publish_earliest();
}

void TimerHeap::erase(FiberCtl* f) noexcept {
  const std::size_t i = f->timer_index;
  FiberCtl* last = heap.back();
  heap.pop_back();
  f->timer_heap = nullptr;
  if (last != f) {
    place(i, last);
    sift_down(i);
    sift_up(last->timer_index);
  }
  publish_earliest();
}

FiberCtl* TimerHeap::pop_expired(std::int64_t now) noexcept {
  if (heap.empty() || heap.front()->timer_deadline > now) return nullptr;
  FiberCtl* f = heap.front();
  erase(f);
  return f;
}

}  // namespace tendril::detail
