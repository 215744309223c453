// The shared state behind tendril::Channel<T> (include/tendril/channel.hpp,
// whose comment describes the algorithm this implements): the cell state
// machine, the ticket counters and the ring.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "tendril/detail/assert.hpp"
#include "tendril/detail/park.hpp"
#include "tendril/detail/turn_waiters.hpp"

namespace tendril::detail::channel {

using u64 = std::uint64_t;

// Cell word: [ lap : 56 | closed : 1 | unused : 3 | state : 4 ].
enum : u64 {
  kEmpty = 0,
  kInBuffer = 1,
  kBuffered = 2,
  kSendWait = 3,
  kRecvWait = 4,
  kResuming = 5,
  kRecvBroke = 6,
  kSendCancel = 7,
  kRecvCancel = 8,
};
inline constexpr u64 kStateMask = 0xf;
inline constexpr u64 kCellClosed = 0x80;
inline constexpr unsigned kLapShift = 8;
inline constexpr u64 kOneLap = u64{1} << kLapShift;
inline constexpr u64 kSendersClosed = u64{1} << 63;  // in State::senders
// How long a receiver spins for a sender that has its ticket but has not
// reached the cell yet, before it parks (or, for try_recv, gives up).
inline constexpr unsigned kSpinForSender = 128;

inline u64 state_of(u64 word) noexcept { return word & kStateMask; }
inline u64 lap_bits(u64 word) noexcept { return word & ~(kOneLap - 1); }
inline u64 sent_count(u64 senders) noexcept { return senders & ~kSendersClosed; }

template <class T>
struct Cell {
  std::atomic<u64> word{0};
  // Published by a send-wait / recv-wait word: written (relaxed) before the
  // CAS that installs that state, read (relaxed) after the CAS or acquire
  // load that saw it. One field per side, because the other side may be
  // writing its own while it loses the race to park; atomic because a
  // party that loses the race to park rewrites its field while it is not
  // published, which must not count as a data race.
  std::atomic<detail::Waiter*> sender{nullptr};
  std::atomic<detail::Waiter*> receiver{nullptr};
  detail::TurnWaiters turn;          // operations whose lap has not come yet
  alignas(T) unsigned char value[sizeof(T)];

  T* stored() noexcept { return std::launder(reinterpret_cast<T*>(value)); }
};

enum class Outcome { kDone, kFailed, kRetry };

template <class T>
struct State : std::enable_shared_from_this<State<T>> {
  using Cell = channel::Cell<T>;

  explicit State(std::size_t capacity) : cap(capacity) {
    if (capacity > (std::size_t{1} << 32)) throw std::invalid_argument("tendril::Channel: capacity over 2^32");
    // Room for the whole buffer plus a few parked operations before anyone
    // has to wait for a lap; more in flight still works, just slower. Small
    // rings live inside the State: channels are often made per request.
    const std::size_t n = std::bit_ceil(capacity + 8 > kInlineCells ? capacity + 8 : kInlineCells);
    shift = static_cast<unsigned>(std::countr_zero(n));
    mask = n - 1;
    if (n > kInlineCells) {
      heap_cells.reset(new Cell[n]);
      cells = heap_cells.get();
    }
    buffer_end.store(capacity, std::memory_order_relaxed);
  }
  ~State() {
    for (std::size_t i = 0; i <= mask; ++i) {
      if (state_of(cells[i].word.load(std::memory_order_acquire)) == kBuffered) cells[i].stored()->~T();
    }
  }

  Cell& cell(u64 ticket) noexcept { return cells[ticket & mask]; }
  u64 lap_of(u64 ticket) const noexcept { return (ticket >> shift) << kLapShift; }
  std::size_t index_of(const Cell& c) const noexcept { return static_cast<std::size_t>(&c - cells); }

  // Ends the lap of a cell in state `from` (which nobody else may change):
  // state empty, lap + 1, closed bit kept. Then wakes operations waiting for
  // the new lap.
  static void end_lap(Cell& c, u64 from) noexcept {
    const u64 before = c.word.fetch_add(kOneLap - from, std::memory_order_seq_cst);
    TENDRIL_ASSERT(state_of(before) == from, "a channel cell's lap is ended only by the party that owns its state");
    c.turn.wake_all();
  }
  // Moves a cell between two states without touching the lap or closed bit;
  // for a party that owns the cell's state (it set kResuming).
  static void set_owned_state(Cell& c, u64 from, u64 to) noexcept {
    const u64 before = c.word.fetch_add(to - from, std::memory_order_acq_rel);
    TENDRIL_ASSERT(state_of(before) == from, "only the party that claimed a channel cell changes its state");
  }
  static bool cas_state(Cell& c, u64& seen, u64 to) noexcept {
    return c.word.compare_exchange_strong(seen, seen - state_of(seen) + to, std::memory_order_seq_cst,
                                          std::memory_order_acquire);
  }

  // ---- waiting for a cell's lap (rare: more than N operations in flight)

  struct TurnWait {
    State* st;
    Cell* c;
    u64 lap;
    detail::Waiter* me;
  };
  static bool publish_turn_waiter(void* arg) noexcept {
    auto* a = static_cast<TurnWait*>(arg);
    // Once pushed we may be woken and our caller may drop the last handle
    // before this returns: keep the channel (and our cell) alive.
    std::shared_ptr<State> keep = a->st->shared_from_this();
    Cell& c = *a->c;
    const u64 lap = a->lap;
    c.turn.push(*a->me);
    const u64 w = c.word.load(std::memory_order_seq_cst);
    if (lap_bits(w) >= lap || (w & kCellClosed) != 0) c.turn.wake_all();  // raced with the waker
    return true;
  }
  // Returns once cell `c` serves `ticket`: true; false if the channel closed
  // first (the ticket must then be given up).
  bool await_turn(Cell& c, u64 ticket, WaitReason why) {
    const u64 lap = lap_of(ticket);
    for (;;) {
      const u64 w = c.word.load(std::memory_order_seq_cst);
      if (lap_bits(w) == lap) return true;
      if ((w & kCellClosed) != 0 || lap_bits(w) > lap) return false;
      detail::Waiter me;
      TurnWait a{this, &c, lap, &me};
      detail::park_committed(me, why, publish_turn_waiter, &a);
    }
  }

  // ---- parking in a cell (one CAS publishes the waiter)

  struct CellWait {
    Cell* c;
    u64 seen;  // the word we decided to park on (closed bit clear)
    u64 to;    // kSendWait or kRecvWait
    detail::Waiter* me;
    bool parked = false;
  };
  static bool publish_cell_waiter(void* arg) noexcept {
    auto* a = static_cast<CellWait*>(arg);
    u64 seen = a->seen;
    const u64 to = seen - state_of(seen) + a->to;
    a->parked = true;  // before the CAS: afterwards `a` may be gone
    if (a->c->word.compare_exchange_strong(seen, to, std::memory_order_seq_cst, std::memory_order_relaxed))
      return true;
    a->parked = false;
    return false;
  }
  // Parks in `c` if its word is still `seen`; false if it changed first.
  static bool park_in_cell(Cell& c, u64 seen, u64 to, detail::Waiter& me) {
    // Only this operation writes its side's field during this lap, and the
    // CAS in publish_cell_waiter publishes it.
    (to == kSendWait ? c.sender : c.receiver).store(&me, std::memory_order_relaxed);
    CellWait a{&c, seen, to, &me};
    detail::park_committed(me, to == kSendWait ? WaitReason::channel_send : WaitReason::channel_recv,
                           publish_cell_waiter, &a);
    return a.parked;
  }

  // ---- sending

  // Leaves `value` in an empty cell; on a lost race moves it back.
  static bool leave_value(Cell& c, u64& seen, T& value) noexcept {
    T* p = ::new (static_cast<void*>(c.value)) T(std::move(value));
    if (cas_state(c, seen, kBuffered)) return true;
    value.~T();
    ::new (static_cast<void*>(&value)) T(std::move(*p));
    p->~T();
    return false;
  }

  Outcome send_in_cell(Cell& c, u64 s, T& value, bool may_park) {
    detail::Backoff backoff;
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      switch (state_of(w)) {
        case kRecvWait: {
          // No CAS to claim it: nobody else may take this receiver. close()
          // only cancels receivers whose ticket no sender holds, and the
          // expander only acts on senders; the receiver never withdraws.
          detail::Waiter* r = c.receiver.load(std::memory_order_relaxed);
          ::new (r->slot) T(std::move(value));
          r->ok = true;
          end_lap(c, kRecvWait);
          detail::wake(*r);
          return Outcome::kDone;
        }
        case kRecvBroke:
          end_lap(c, kRecvBroke);
          return Outcome::kRetry;
        case kEmpty:
        case kInBuffer: {
          if ((w & kCellClosed) != 0) {
            if (cas_state(c, w, kSendCancel)) return Outcome::kFailed;
            continue;
          }
          if (state_of(w) == kInBuffer || s < receivers.load(std::memory_order_seq_cst) ||
              s < buffer_end.load(std::memory_order_seq_cst)) {
            if (leave_value(c, w, value)) return Outcome::kDone;
            continue;
          }
          if (!may_park) {
            if (cas_state(c, w, kSendCancel)) return Outcome::kFailed;
            continue;
          }
          detail::Waiter me;
          me.slot = &value;
          if (!park_in_cell(c, w, kSendWait, me)) continue;
          return me.ok ? Outcome::kDone : Outcome::kFailed;
        }
        default:  // kResuming: someone is finishing with this cell
          backoff.pause();
          continue;
      }
    }
  }

  bool send(T& value) {
    for (;;) {
      u64 s = senders.load(std::memory_order_relaxed);
      do {
        if ((s & kSendersClosed) != 0) return false;
      } while (!senders.compare_exchange_weak(s, s + 1, std::memory_order_seq_cst, std::memory_order_relaxed));
      Cell& c = cell(s);
      if (!await_turn(c, s, WaitReason::channel_send)) return false;
      switch (send_in_cell(c, s, value, /*may_park=*/true)) {
        case Outcome::kDone: return true;
        case Outcome::kFailed: return false;
        case Outcome::kRetry: break;
      }
    }
  }

  // Whether sender ticket `s` could complete right now without parking.
  bool could_send_now(u64 s) noexcept {
    const u64 w = cell(s).word.load(std::memory_order_acquire);
    if (lap_bits(w) != lap_of(s) || (w & kCellClosed) != 0) return false;
    switch (state_of(w)) {
      case kRecvWait:
      case kInBuffer:
      case kRecvBroke:
        return true;
      case kEmpty:
        return s < receivers.load(std::memory_order_seq_cst) || s < buffer_end.load(std::memory_order_seq_cst);
      default:
        return false;
    }
  }

  bool try_send(T& value) {
    for (;;) {
      u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) != 0 || !could_send_now(s)) return false;
      // Drawing the ticket only if it is still the one we inspected means
      // its lap cannot have moved on: no waiting for a turn here.
      if (!senders.compare_exchange_weak(s, s + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) continue;
      switch (send_in_cell(cell(s), s, value, /*may_park=*/false)) {
        case Outcome::kDone: return true;
        case Outcome::kFailed: return false;
        case Outcome::kRetry: break;
      }
    }
  }

  // ---- receiving

  // One step of "expand buffer": see the header comment.
  void expand_buffer() noexcept {
    for (;;) {
      const u64 b = buffer_end.fetch_add(1, std::memory_order_seq_cst);
      if (b >= sent_count(senders.load(std::memory_order_seq_cst))) return;  // that sender will see b < B
      if (admit_into_buffer(cell(b), b)) return;
    }
  }
  // False if cell b will never hold a value (its sender withdrew).
  bool admit_into_buffer(Cell& c, u64 b) noexcept {
    detail::Backoff backoff;
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      // Another lap: sender b has not reached the cell (it reads B when it
      // does) or the meeting is already over.
      if (lap_bits(w) != lap_of(b) || (w & kCellClosed) != 0) return true;
      switch (state_of(w)) {
        case kEmpty:
          if (cas_state(c, w, kInBuffer)) return true;
          continue;
        case kSendWait: {
          if (!cas_state(c, w, kResuming)) continue;
          detail::Waiter* s = c.sender.load(std::memory_order_relaxed);
          ::new (static_cast<void*>(c.value)) T(std::move(*static_cast<T*>(s->slot)));
          s->ok = true;
          set_owned_state(c, kResuming, kBuffered);
          detail::wake(*s);
          return true;
        }
        case kResuming:
          backoff.pause();
          continue;
        case kSendCancel:
          return false;
        default:
          return true;
      }
    }
  }

  Outcome recv_in_cell(Cell& c, u64 r, std::optional<T>& out, bool may_park) {
    detail::Backoff backoff;
    for (unsigned spins = 0;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      switch (state_of(w)) {
        case kBuffered: {
          T* p = c.stored();
          out.emplace(std::move(*p));
          p->~T();
          end_lap(c, kBuffered);
          return Outcome::kDone;
        }
        case kSendWait: {
          if (!cas_state(c, w, kResuming)) continue;
          detail::Waiter* s = c.sender.load(std::memory_order_relaxed);
          out.emplace(std::move(*static_cast<T*>(s->slot)));
          s->ok = true;
          end_lap(c, kResuming);
          detail::wake(*s);
          return Outcome::kDone;
        }
        case kSendCancel:
          end_lap(c, kSendCancel);
          return Outcome::kRetry;
        case kEmpty:
        case kInBuffer: {
          const u64 s = senders.load(std::memory_order_seq_cst);
          if (r < sent_count(s)) {  // its sender is on the way
            if (++spins < kSpinForSender) {
              detail::cpu_relax();
              continue;
            }
            // A blocking receiver parks and lets the sender complete the
            // meeting; one that must not park (or finds the channel
            // closing, where the sender will withdraw) gives the cell up.
            if (!may_park || (w & kCellClosed) != 0) {
              if (cas_state(c, w, kRecvBroke)) return Outcome::kRetry;
              continue;
            }
          } else {
            if ((s & kSendersClosed) != 0) return Outcome::kFailed;  // no sender will come
            if (!may_park) {
              if (cas_state(c, w, kRecvBroke)) return Outcome::kFailed;
              continue;
            }
          }
          alignas(T) unsigned char storage[sizeof(T)];
          detail::Waiter me;
          me.slot = storage;
          if (!park_in_cell(c, w, kRecvWait, me)) continue;
          if (!me.ok) return Outcome::kFailed;
          T* p = std::launder(reinterpret_cast<T*>(storage));
          out.emplace(std::move(*p));
          p->~T();
          return Outcome::kDone;
        }
        default:  // kResuming
          backoff.pause();
          continue;
      }
    }
  }

  std::optional<T> recv() {
    std::optional<T> out;
    for (;;) {
      const u64 r = receivers.fetch_add(1, std::memory_order_seq_cst);
      if (cap > 0) expand_buffer();
      const u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) != 0 && r >= sent_count(s)) return std::nullopt;
      Cell& c = cell(r);
      if (!await_turn(c, r, WaitReason::channel_recv)) continue;  // closed while an earlier lap held the cell
      switch (recv_in_cell(c, r, out, /*may_park=*/true)) {
        case Outcome::kDone: return out;
        case Outcome::kFailed: return std::nullopt;
        case Outcome::kRetry: break;
      }
    }
  }

  // Whether receiver ticket `r` would find a value (or a withdrawn sender to
  // step over) right now.
  bool could_receive_now(u64 r) noexcept {
    if (r >= sent_count(senders.load(std::memory_order_seq_cst))) return false;
    const u64 w = cell(r).word.load(std::memory_order_acquire);
    if (lap_bits(w) != lap_of(r)) return false;
    const u64 st = state_of(w);
    return st == kBuffered || st == kSendWait || st == kSendCancel || st == kResuming;
  }

  std::optional<T> try_recv() {
    std::optional<T> out;
    for (;;) {
      u64 r = receivers.load(std::memory_order_seq_cst);
      if (!could_receive_now(r)) return std::nullopt;
      if (!receivers.compare_exchange_weak(r, r + 1, std::memory_order_seq_cst, std::memory_order_relaxed))
        continue;
      if (cap > 0) expand_buffer();
      switch (recv_in_cell(cell(r), r, out, /*may_park=*/false)) {
        case Outcome::kDone: return out;
        case Outcome::kFailed: return std::nullopt;
        case Outcome::kRetry: break;
      }
    }
  }

  // ---- closing

  // Cancels a waiter parked in `c` if close() must wake it.
  void settle_on_close(Cell& c, u64 closed_at) noexcept {
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      const u64 st = state_of(w);
      const u64 ticket = ((w >> kLapShift) << shift) | index_of(c);
      u64 cancelled;
      if (st == kSendWait) {
        cancelled = kSendCancel;  // a receiver still comes by and ends the lap
      } else if (st == kRecvWait && ticket >= closed_at) {
        cancelled = kRecvCancel;  // no sender has this ticket; the cell stays put
      } else {
        return;
      }
      if (!cas_state(c, w, kResuming)) continue;
      detail::Waiter* x = (st == kSendWait ? c.sender : c.receiver).load(std::memory_order_relaxed);
      x->ok = false;
      set_owned_state(c, kResuming, cancelled);
      detail::wake(*x);
      return;
    }
  }

  void close() noexcept {
    u64 s = senders.load(std::memory_order_relaxed);
    do {
      if ((s & kSendersClosed) != 0) return;
    } while (!senders.compare_exchange_weak(s, s | kSendersClosed, std::memory_order_seq_cst,
                                            std::memory_order_relaxed));
    for (std::size_t i = 0; i <= mask; ++i) {
      Cell& c = cells[i];
      c.word.fetch_or(kCellClosed, std::memory_order_seq_cst);
      settle_on_close(c, s);
      c.turn.wake_all();
    }
  }

  bool is_closed() const noexcept { return (senders.load(std::memory_order_acquire) & kSendersClosed) != 0; }
  std::size_t buffered() const noexcept {
    const u64 r = receivers.load(std::memory_order_acquire);
    const u64 s = sent_count(senders.load(std::memory_order_acquire));
    if (s <= r) return 0;
    return static_cast<std::size_t>(s - r < cap ? s - r : cap);
  }

  const std::size_t cap;
  unsigned shift = 0;
  u64 mask = 0;
  // The counters share a cache line with each other and the first cells on
  // purpose: a hand-off touches all of them, and a channel is usually
  // shared by a few fibers, where fewer lines to move between CPUs beats
  // avoiding false sharing between senders and receivers.
  std::atomic<u64> senders{0};     // sender tickets issued | kSendersClosed
  std::atomic<u64> receivers{0};   // receiver tickets issued
  std::atomic<u64> buffer_end{0};  // B: sender tickets below it need no receiver (receivers move it)
  static constexpr std::size_t kInlineCells = 16;
  Cell inline_cells[kInlineCells];
  std::unique_ptr<Cell[]> heap_cells;
  Cell* cells = inline_cells;
};

}  // namespace tendril::detail::channel
