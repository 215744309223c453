// tendril::Scope (include/tendril/scope.hpp): the tree of scopes, their
// children, and delivering cancel() to each parked child.
//
// A scope keeps, under its lock, the children that have started (linked
// through their FiberCtl) and the scopes opened by fibers of this scope. A
// child links itself when its body starts and unlinks when it ends, so a
// canceller walking the list only ever sees fibers that are running or
// parked, never a finished one. cancel() sets the flag first, then walks:
// a child that parks after the flag is set sees it when it publishes its
// Interrupt (see runtime/sched/interrupt.hpp), so no child is missed.
//
// `live` counts children from spawn (before their first run) to the end of
// their body: join() waits for it to reach 0, and the last child to leave
// wakes the joiner after its last touch of the scope.
#include <system_error>

#include "runtime/sched/interrupt.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/scope.hpp"

namespace tendril::detail {

namespace {

void link_nested(ScopeState& parent, ScopeState& s) noexcept {
  s.sibling_prev = nullptr;
  s.sibling_next = parent.nested;
  if (parent.nested != nullptr) parent.nested->sibling_prev = &s;
  parent.nested = &s;
}

void unlink_nested(ScopeState& parent, ScopeState& s) noexcept {
  if (s.sibling_prev != nullptr) s.sibling_prev->sibling_next = s.sibling_next;
  else parent.nested = s.sibling_next;
  if (s.sibling_next != nullptr) s.sibling_next->sibling_prev = s.sibling_prev;
  s.sibling_next = s.sibling_prev = nullptr;
}

void link_child(ScopeState& s, FiberCtl* f) noexcept {
  f->scope_prev = nullptr;
  f->scope_next = s.children;
  if (s.children != nullptr) s.children->scope_prev = f;
  s.children = f;
}

void unlink_child(ScopeState& s, FiberCtl* f) noexcept {
  if (f->scope_prev != nullptr) f->scope_prev->scope_next = f->scope_next;
  else s.children = f->scope_next;
  if (f->scope_next != nullptr) f->scope_next->scope_prev = f->scope_prev;
  f->scope_next = f->scope_prev = nullptr;
}

// Waits (uninterruptibly) until every child has finished.
void join_all_children(ScopeState& s) noexcept {
  s.lock.lock();
  while (s.live != 0) {
    OwnWaiter own;  // cleared from s.joiner under the lock before its wake
    Waiter& w = *own;
    s.joiner = &w;
    park(w, s.lock, WaitReason::join, nullptr, Cancellable::no);
    s.lock.lock();
  }
  s.lock.unlock();
}

}  // namespace

void scope_open(ScopeState& s, const std::int64_t* deadline) {
  FiberCtl* self = current_fiber();
  ScopeState* parent = self != nullptr ? self->scope : nullptr;
  if (deadline != nullptr) s.deadline = *deadline;
  if (parent == nullptr) return;
  s.parent = parent;
  if (parent->deadline < s.deadline) s.deadline = parent->deadline;
  parent->lock.lock();
  link_nested(*parent, s);
  if (parent->cancelled.load(std::memory_order_relaxed)) s.cancelled.store(true, std::memory_order_relaxed);
  parent->lock.unlock();
}

void scope_close(ScopeState& s) noexcept {
  s.lock.lock();
  const bool running = s.live != 0;
  s.lock.unlock();
  if (running) {
    scope_cancel(s);
    join_all_children(s);
  }
  if (ScopeState* parent = s.parent) {
    parent->lock.lock();
    unlink_nested(*parent, s);
    parent->lock.unlock();
  }
}

void scope_cancel(ScopeState& s) noexcept {
  if (s.cancelled.exchange(true, std::memory_order_seq_cst)) return;  // already delivered
  s.lock.lock();
  for (FiberCtl* f = s.children; f != nullptr; f = f->scope_next) interrupt_fiber(f);
  for (ScopeState* n = s.nested; n != nullptr; n = n->sibling_next) scope_cancel(*n);
  s.lock.unlock();
}

void scope_join(ScopeState& s) {
  s.lock.lock();
  while (s.live != 0) {
    // Cleared from s.joiner under the lock: by the child that claims it
    // before its wake, or below if the park was interrupted.
    OwnWaiter own;
    Waiter& w = *own;
    s.joiner = &w;
    if (!park(w, s.lock, WaitReason::join)) {
      s.lock.lock();
      if (s.joiner == &w) s.joiner = nullptr;
      s.lock.unlock();
      throw_if_interrupted(nullptr, "tendril::Scope::join");
      s.lock.lock();  // interrupted by nothing we report: wait on
      continue;
    }
    s.lock.lock();
  }
  std::exception_ptr error = std::move(s.error);
  s.error = nullptr;
  s.lock.unlock();
  if (error) std::rethrow_exception(error);
}

void scope_child_spawning(ScopeState& s) noexcept {
  s.lock.lock();
  ++s.live;
  s.lock.unlock();
}

void scope_child_not_spawned(ScopeState& s) noexcept {
  s.lock.lock();
  --s.live;
  Waiter* j = s.live == 0 && s.joiner != nullptr && claim(*s.joiner) ? s.joiner : nullptr;
  if (j != nullptr) s.joiner = nullptr;
  s.lock.unlock();
  if (j != nullptr) wake(*j);
}

ScopeChild::ScopeChild(ScopeState& s) noexcept : s_(s) {
  FiberCtl* self = current_fiber();
  self->scope = &s;
  s.lock.lock();
  link_child(s, self);
  s.lock.unlock();
}

void ScopeChild::failed(std::exception_ptr e) noexcept {
  s_.lock.lock();
  const bool first = !s_.error;
  if (first) s_.error = std::move(e);
  s_.lock.unlock();
  if (first) scope_cancel(s_);
}

ScopeChild::~ScopeChild() {
  FiberCtl* self = current_fiber();
  ScopeState& s = s_;
  s.lock.lock();
  unlink_child(s, self);
  self->scope = nullptr;
  --s.live;
  Waiter* j = s.live == 0 && s.joiner != nullptr && claim(*s.joiner) ? s.joiner : nullptr;
  if (j != nullptr) s.joiner = nullptr;
  s.lock.unlock();  // the last touch of the scope: its owner may now destroy it
  if (j != nullptr) wake(*j);
}

}  // namespace tendril::detail

namespace tendril::this_fiber {

bool cancelled() noexcept {
  const detail::FiberCtl* f = detail::current_fiber();
  if (f == nullptr || f->scope == nullptr) return false;
  if (f->scope->cancelled.load(std::memory_order_acquire)) return true;
  return f->scope->deadline != INT64_MAX && detail::steady_ticks() >= f->scope->deadline;
}

std::optional<std::chrono::steady_clock::time_point> deadline() noexcept {
  const detail::FiberCtl* f = detail::current_fiber();
  if (f == nullptr || f->scope == nullptr || f->scope->deadline == INT64_MAX) return std::nullopt;
  return std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(f->scope->deadline));
}

NoCancel::NoCancel() noexcept {
  if (detail::FiberCtl* f = detail::current_fiber()) ++f->no_cancel;
}

NoCancel::~NoCancel() {
  if (detail::FiberCtl* f = detail::current_fiber()) --f->no_cancel;
}

}  // namespace tendril::this_fiber
