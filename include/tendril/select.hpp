// tendril::select: wait on several channel operations and a timeout at once,
// and carry out exactly one of them (Go's select).
//
//   tendril::Channel<Job> jobs;
//   tendril::Channel<Result> results;
//   std::size_t which = tendril::select(
//       tendril::case_recv(jobs, [&](std::optional<Job> j) {
//         if (j) start(std::move(*j)); else jobs_closed = true;
//       }),
//       tendril::case_send(results, std::move(r), [&](bool sent) { if (!sent) give_up(); }),
//       tendril::case_after(std::chrono::milliseconds(100), [&] { tick(); }));
//
//   if (!tendril::try_select(tendril::case_recv(jobs, handle))) idle();  // Go's default:
//
// select(cases...) parks until one case can proceed, carries it out, runs its
// handler and returns its index in the argument list. try_select(cases...)
// never parks: it returns the index of the case it carried out, or
// std::nullopt if none could proceed right now.
//
// Cases:
// - case_recv(ch, f): receives a value; f(std::optional<T>) gets it, or
//   std::nullopt once ch is closed and drained (a closed channel is always
//   ready).
// - case_send(ch, value, f): sends value; f(bool sent) gets true once it was
//   handed over, false if ch is closed. If another case is chosen the value is
//   not sent (it is destroyed with the case).
// - case_after(duration, f): ready once the duration (counted from when the
//   case is made) has passed; f() takes no argument.
//
// Exactly one case takes effect: a value is never taken from a channel whose
// case was not chosen, nor sent into one. When several cases are ready at
// once, each is equally likely to be chosen (the cases are tried in a random
// order). A case's handler runs after the select is decided; an exception it
// throws propagates out of select.
//
// select is a cancellation point (tendril/scope.hpp): in a fiber whose scope
// is cancelled or past its deadline it throws std::system_error
// (operation_canceled / timed_out) and no case took effect. It works from
// fibers and from plain OS threads.
//
// How it works: select first tries every case without waiting. If none is
// ready it registers each channel case in the channel cell of a fresh ticket,
// as a parked sender or receiver would (see channel.hpp), all pointing at one
// shared waiter whose state word decides the select: whoever completes a
// meeting with a registration first CASes that word from "waiting" to "case
// i"; a party that loses finds the registration dead and treats the cell as
// one its other party withdrew from (it draws a new ticket). While the select
// is still registering, nobody but the select may decide it: a party that
// meets one of its registrations marks that case for registering again and
// moves on, so a value the select meets in a later cell (a buffered one) can
// always be taken. Once decided, the select withdraws its other
// registrations. No lock is taken; the timeout is the runtime's timer (a
// futex timeout on a thread).
//
// Limits: at most 31 cases. A select that finds a cell still busy with an
// earlier lap (more operations in flight on that channel than its ring has
// cells) waits there for the lap while registering, not interruptibly.
// A select never meets itself: a send and a receive case on the same channel
// do not match each other.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "tendril/channel.hpp"
#include "tendril/detail/channel_state.hpp"
#include "tendril/detail/park.hpp"

namespace tendril {

namespace detail::channel {

struct Access {
  template <class T>
  static State<T>* state(Channel<T>& ch) noexcept {
    return ch.s_.get();
  }
};

// A small per-thread generator for the order cases are tried in.
inline std::uint32_t select_random() noexcept {
  thread_local std::uint64_t x = reinterpret_cast<std::uintptr_t>(&x) ^
                                 static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return static_cast<std::uint32_t>(x >> 16);
}

template <std::size_t N>
std::array<std::uint8_t, N> select_order() noexcept {
  std::array<std::uint8_t, N> order;
  for (std::size_t i = 0; i < N; ++i) order[i] = static_cast<std::uint8_t>(i);
  for (std::size_t i = N; i > 1; --i) std::swap(order[i - 1], order[select_random() % i]);
  return order;
}

// How often a select looks again at a case whose channel is congested.
inline constexpr std::chrono::microseconds kSelectPollInterval{500};

// The select's Interrupt: ends the wait the way its timer does.
struct SelectInterrupt : Interrupt {
  explicit SelectInterrupt(Waiter& w) noexcept : Interrupt{end_wait}, sel(&w) {}
  static void end_wait(Interrupt* self, FiberCtl*) noexcept {
    Waiter* w = static_cast<SelectInterrupt*>(self)->sel;
    std::uint32_t expected = kSelWaiting;
    if (w->state.compare_exchange_strong(expected, kSelTimedOut, std::memory_order_acq_rel)) wake(*w);
  }
  Waiter* sel;
};

// The commit step of a select's park: registering -> waiting, unless a
// party marked cases for registering again.
inline bool select_commit(void* arg) noexcept {
  std::uint32_t expected = kSelRegistering;
  return static_cast<Waiter*>(arg)->state.compare_exchange_strong(expected, kSelWaiting, std::memory_order_seq_cst,
                                                                 std::memory_order_relaxed);
}

// Every case offers: try_now() (carry it out if it can proceed now),
// enroll() (register it, or carry it out), withdraw(), decided_by_party()
// and run().
template <class T, class F>
class RecvCase {
 public:
  static constexpr bool kChannel = true;
  RecvCase(Channel<T>& ch, F f) : st_(Access::state(ch)), f_(std::move(f)) {}

  bool try_now() { return st_->try_recv_now(got_) != Outcome::kNotNow; }
  Outcome enroll(Waiter& sel, std::uint32_t index) {
    reg_ = SelectReg{&sel, index, &got_};
    at_ = nullptr;
    return st_->select_recv(reg_, got_, at_, parked_);
  }
  void withdraw() noexcept {
    if (at_ != nullptr) State<T>::select_withdraw(*at_, parked_);
    at_ = nullptr;
  }
  void decided_by_party() noexcept {}  // the party filled got_ (or left it empty: closed)
  const Deadline* deadline() const noexcept { return nullptr; }
  void run() { f_(std::move(got_)); }

 private:
  State<T>* st_;
  F f_;
  std::optional<T> got_;
  SelectReg reg_{nullptr, 0, nullptr};
  Cell<T>* at_ = nullptr;
  u64 parked_ = 0;
};

template <class T, class F>
class SendCase {
 public:
  static constexpr bool kChannel = true;
  template <class V>
  SendCase(Channel<T>& ch, V&& value, F f) : st_(Access::state(ch)), value_(std::forward<V>(value)), f_(std::move(f)) {}

  bool try_now() {
    const Outcome o = st_->try_send_now(value_);
    sent_ = o == Outcome::kDone;
    return o != Outcome::kNotNow;
  }
  Outcome enroll(Waiter& sel, std::uint32_t index) {
    reg_ = SelectReg{&sel, index, &value_};
    at_ = nullptr;
    const Outcome o = st_->select_send(reg_, value_, at_, parked_);
    sent_ = o == Outcome::kDone;
    return o;
  }
  void withdraw() noexcept {
    if (at_ != nullptr) State<T>::select_withdraw(*at_, parked_);
    at_ = nullptr;
  }
  void decided_by_party() noexcept { sent_ = reg_.ok; }
  const Deadline* deadline() const noexcept { return nullptr; }
  void run() { f_(sent_); }

 private:
  State<T>* st_;
  T value_;
  F f_;
  bool sent_ = false;
  SelectReg reg_{nullptr, 0, nullptr};
  Cell<T>* at_ = nullptr;
  u64 parked_ = 0;
};

template <class F>
class AfterCase {
 public:
  static constexpr bool kChannel = false;
  AfterCase(Deadline when, F f) : when_(when), f_(std::move(f)) {}

  bool try_now() { return when_ <= std::chrono::steady_clock::now(); }
  Outcome enroll(Waiter&, std::uint32_t) { return Outcome::kNotNow; }
  void withdraw() noexcept {}
  void decided_by_party() noexcept {}
  const Deadline* deadline() const noexcept { return &when_; }
  void run() { f_(); }

 private:
  Deadline when_;
  F f_;
};

template <class Tuple, class Fn, std::size_t... I>
void on_case(Tuple& cases, std::size_t k, Fn&& fn, std::index_sequence<I...>) {
  ((k == I ? fn(std::get<I>(cases)) : void()), ...);
}
template <class Tuple, class Fn>
void on_case(Tuple& cases, std::size_t k, Fn&& fn) {
  on_case(cases, k, std::forward<Fn>(fn), std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

template <class Tuple, class Order>
std::optional<std::size_t> try_cases(Tuple& cases, const Order& order) {
  for (const std::uint8_t k : order) {
    bool done = false;
    on_case(cases, k, [&](auto& c) { done = c.try_now(); });
    if (done) return k;
  }
  return std::nullopt;
}

// The earliest case_after deadline and its case.
template <class Tuple, std::size_t... I>
std::optional<std::size_t> earliest_after(Tuple& cases, std::index_sequence<I...>) {
  std::optional<std::size_t> best;
  const Deadline* when = nullptr;
  (
      [&] {
        const Deadline* d = std::get<I>(cases).deadline();
        if (d != nullptr && (when == nullptr || *d < *when)) {
          when = d;
          best = I;
        }
      }(),
      ...);
  return best;
}

template <class Tuple>
std::size_t select_cases(Tuple& cases) {
  constexpr std::size_t n = std::tuple_size_v<Tuple>;
  const auto order = select_order<n>();
  if (std::optional<std::size_t> k = try_cases(cases, order)) {
    on_case(cases, *k, [](auto& c) { c.run(); });
    return *k;
  }
  const std::optional<std::size_t> after = earliest_after(cases, std::make_index_sequence<n>{});
  const Deadline* after_deadline = nullptr;
  if (after) on_case(cases, *after, [&](auto& c) { after_deadline = c.deadline(); });

  Waiter sel;
  SelectInterrupt interrupt(sel);
  std::optional<std::size_t> chosen;
  bool congested = false;  // since the last (re)start
  for (std::uint32_t todo = 0; !chosen;) {
    if (todo == 0) {  // (re)start: register every case
      sel.state.store(kSelRegistering, std::memory_order_relaxed);
      todo = (std::uint32_t{1} << n) - 1;
      congested = false;
    }
    for (const std::uint8_t k : order) {
      if ((todo & (std::uint32_t{1} << k)) == 0) continue;
      on_case(cases, k, [&](auto& c) {
        const Outcome o = c.enroll(sel, k);
        if (o == Outcome::kDone || o == Outcome::kFailed) chosen = k;
        if (o == Outcome::kNotNow && c.kChannel) congested = true;
      });
      if (chosen) {
        // Only we decide while registering; parties may still be adding
        // marks, which no longer matter.
        sel.state.exchange(kSelDecided + static_cast<std::uint32_t>(*chosen), std::memory_order_acq_rel);
        break;
      }
    }
    if (chosen) break;
    // A case whose channel is congested (its next cell still busy with an
    // earlier lap) is looked at again shortly: the select polls for it
    // rather than wait for the lap and ignore its other cases.
    const Deadline* deadline = after_deadline;
    Deadline poll;
    if (congested) {
      poll = std::chrono::steady_clock::now() + kSelectPollInterval;
      if (deadline == nullptr || poll < *deadline) deadline = &poll;
    }
    park_committed(sel, WaitReason::select, select_commit, &sel, &interrupt, deadline);
    const std::uint32_t s = sel.state.load(std::memory_order_acquire);
    if ((s & kSelRegistering) != 0) {  // parties killed some registrations: register those again
      todo = sel.state.exchange(kSelRegistering, std::memory_order_acq_rel) & ~kSelRegistering;
      if (todo == 0) todo = (std::uint32_t{1} << n) - 1;  // cannot happen: the commit failed for a reason
      continue;
    }
    if (s >= kSelDecided) {
      chosen = s - kSelDecided;
      on_case(cases, *chosen, [](auto& c) { c.decided_by_party(); });
      break;
    }
    // Timed out: our case_after, the scope (cancel or deadline), or a poll.
    for (std::size_t k = 0; k < n; ++k) on_case(cases, k, [](auto& c) { c.withdraw(); });
    throw_if_interrupted(after_deadline, "tendril::select");
    if (after && *after_deadline <= std::chrono::steady_clock::now()) {
      chosen = after;
      break;
    }
    todo = 0;  // a poll: register everything again
  }
  for (std::size_t k = 0; k < n; ++k) {
    if (k != *chosen) on_case(cases, k, [](auto& c) { c.withdraw(); });
  }
  on_case(cases, *chosen, [](auto& c) { c.run(); });
  return *chosen;
}

}  // namespace detail::channel

template <class T, class F>
auto case_recv(Channel<T>& ch, F&& f) {
  static_assert(std::is_invocable_v<std::decay_t<F>&, std::optional<T>>,
                "tendril::case_recv: the handler must take std::optional<T>");
  return detail::channel::RecvCase<T, std::decay_t<F>>(ch, std::forward<F>(f));
}

template <class T, class V, class F>
auto case_send(Channel<T>& ch, V&& value, F&& f) {
  static_assert(std::is_invocable_v<std::decay_t<F>&, bool>, "tendril::case_send: the handler must take a bool");
  return detail::channel::SendCase<T, std::decay_t<F>>(ch, std::forward<V>(value), std::forward<F>(f));
}

template <class Rep, class Period, class F>
auto case_after(std::chrono::duration<Rep, Period> timeout, F&& f) {
  static_assert(std::is_invocable_v<std::decay_t<F>&>, "tendril::case_after: the handler takes no argument");
  return detail::channel::AfterCase<std::decay_t<F>>(
      std::chrono::steady_clock::now() + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout),
      std::forward<F>(f));
}

template <class... Cases>
std::size_t select(Cases&&... cases) {
  static_assert(sizeof...(Cases) >= 1, "tendril::select needs at least one case");
  static_assert(sizeof...(Cases) <= detail::channel::kMaxSelectCases, "tendril::select takes at most 31 cases");
  auto all = std::tie(cases...);
  return detail::channel::select_cases(all);
}

template <class... Cases>
std::optional<std::size_t> try_select(Cases&&... cases) {
  static_assert(sizeof...(Cases) >= 1, "tendril::try_select needs at least one case");
  static_assert(sizeof...(Cases) <= detail::channel::kMaxSelectCases, "tendril::try_select takes at most 31 cases");
  auto all = std::tie(cases...);
  const auto order = detail::channel::select_order<sizeof...(Cases)>();
  std::optional<std::size_t> k = detail::channel::try_cases(all, order);
  if (k) detail::channel::on_case(all, *k, [](auto& c) { c.run(); });
  return k;
}

}  // namespace tendril
