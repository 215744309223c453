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

struct Access;  // how select reaches a Channel's State (tendril/select.hpp)

using u64 = std::uint64_t;

// Cell word: [ lap : 56 | closed : 1 | unused : 2 | abandoned : 1 | state : 4 ].
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
  kSelSendWait = 9,   // a select's send case is registered; c.sender is its SelectReg
  kSelRecvWait = 10,  // a select's receive case is registered; c.receiver is its SelectReg
};
inline constexpr u64 kStateMask = 0xf;
inline constexpr u64 kCellClosed = 0x80;
// Set while State::abandoned holds records for this cell: tickets given up by
// operations interrupted before their lap began. A party that finds the cell
// empty with this bit set settles those records before it uses the lap.
inline constexpr u64 kAbandoned = 0x10;
inline constexpr unsigned kLapShift = 8;
inline constexpr u64 kOneLap = u64{1} << kLapShift;
inline constexpr u64 kSendersClosed = u64{1} << 63;  // in State::senders
// How long a receiver spins for a sender that has its ticket but has not
// reached the cell yet, before it parks (or, for try_recv, gives up).
inline constexpr unsigned kSpinForSender = 128;

inline u64 state_of(u64 word) noexcept { return word & kStateMask; }
inline u64 lap_bits(u64 word) noexcept { return word & ~(kOneLap - 1); }
inline u64 sent_count(u64 senders) noexcept { return senders & ~kSendersClosed; }

// ---- select (tendril/select.hpp): one shared waiter per select() call
//
// The select's state is its Waiter's state word, so the timer and the
// futex timeout of park_committed end it the way they end any timed wait:
//   registering | mask  the select is still putting its cases into cells; only
//                       it may decide itself. A party that meets one of its
//                       registrations sets the case's bit in `mask` (the
//                       select registers that case again) and treats the
//                       cell as withdrawn.
//   waiting (0)         parked; the first party to CAS it to decided wins
//   decided + i         case i took effect (by a party, or by the select itself
//                       while registering)
//   timed out (2)       its case_after deadline or its scope ended the wait
enum : std::uint32_t {
  kSelWaiting = detail::Waiter::kWaiting,
  kSelTimedOut = detail::Waiter::kTimedOut,
  kSelDecided = 4,
  kSelRegistering = std::uint32_t{1} << 31,
};
inline constexpr std::size_t kMaxSelectCases = 31;

// Whether a value handed to a parked receiver is built in its Waiter
// (Waiter::handoff) rather than on its stack.
template <class T>
inline constexpr bool handoff_fits =
    sizeof(T) <= detail::Waiter::kHandoffBytes && alignof(T) <= detail::Waiter::kHandoffAlign;
// A parked sender moves its value into its Waiter, and back if no receiver
// took it, so only where neither move can throw.
template <class T>
inline constexpr bool handoff_fits_send =
    handoff_fits<T> && std::is_nothrow_move_constructible_v<T> && std::is_nothrow_move_assignable_v<T>;

// One case's registration in a cell, on the select's stack. A party that
// claimed the cell (kResuming) and won claim_select() fills `slot` (receive:
// a std::optional<T> to emplace; send: the T to move from) and `ok`, ends
// the lap or settles the cell, and then wakes `sel`.
struct SelectReg {
  detail::Waiter* sel;
  std::uint32_t index;
  void* slot;
  bool ok = false;  // receive: a value arrived (false: closed); send: it was sent
};

// By a party holding a cell (kResuming) that has `reg` in it. kWon: the
// party decided the select for reg's case and must complete it. Otherwise
// the registration is dead (kDead: the select decided otherwise or timed
// out; kRegistering: it is still registering and is told to register the
// case again) and the party treats the cell as withdrawn by the select. `self` is the select the
// caller runs, if any: a select never meets itself.
enum class Claim { kWon, kDead, kRegistering };
inline Claim claim_select(SelectReg& reg, const detail::Waiter* self) noexcept {
  if (reg.sel == self) return Claim::kDead;
  std::atomic<std::uint32_t>& st = reg.sel->state;
  std::uint32_t s = st.load(std::memory_order_acquire);
  for (;;) {
    if (s == kSelWaiting) {
      if (st.compare_exchange_weak(s, kSelDecided + reg.index, std::memory_order_acq_rel, std::memory_order_acquire))
        return Claim::kWon;
    } else if ((s & kSelRegistering) != 0) {
      if (st.compare_exchange_weak(s, s | (std::uint32_t{1} << reg.index), std::memory_order_acq_rel,
                                   std::memory_order_acquire))
        return Claim::kRegistering;
    } else {
      return Claim::kDead;
    }
  }
}

template <class T>
struct Cell {
  std::atomic<u64> word{0};
  // Published by a wait state: send-wait / recv-wait (a detail::Waiter) or
  // select send-wait / recv-wait (a SelectReg). Written (relaxed) by the
  // party that claimed the empty cell (kResuming), before the store that
  // publishes the wait state; read (relaxed) after the CAS or acquire load
  // that saw that state. Atomic because a party of an earlier lap may still
  // read its own registration there while it finishes with the cell.
  std::atomic<void*> sender{nullptr};
  std::atomic<void*> receiver{nullptr};
  detail::TurnWaiters turn;          // operations whose lap has not come yet
  alignas(T) unsigned char value[sizeof(T)];

  T* stored() noexcept { return std::launder(reinterpret_cast<T*>(value)); }
};

// kFailed: the channel is closed (for this operation). kNotNow: a try_
// operation could not complete without waiting. kInterrupted: a parked
// operation was withdrawn by its scope (cancel or deadline).
enum class Outcome { kDone, kFailed, kRetry, kNotNow, kInterrupted, kRegistered };
// How an operation behaves where a blocking one would park.
enum class Mode { kBlock, kTry, kSelect };

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
    while (Abandoned* a = abandoned) {
      abandoned = a->next;
      delete a;
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
  // Writing into a cell (its value, or the sender / receiver field a wait
  // state publishes) takes the cell first: the CAS from the empty state seen
  // (kEmpty or kInBuffer) to kResuming, then the write, then a store of the
  // state that publishes it. Writing first and letting the publishing CAS
  // check the lap is not enough: an operation that looked at the cell may be
  // preempted while its other party leaves and ends the lap, and the next
  // lap's party fills the cell; the late write would then land in that
  // party's value or field, and only the CAS after it would fail.
  static bool claim_empty_cell(Cell& c, u64& seen) noexcept { return cas_state(c, seen, kResuming); }
  // The owner of a cell it claimed from the word `seen` publishes state `to`.
  // A plain store: nobody else changes a claimed cell's word, not even its
  // flags (see set_cell_flags).
  static void publish_claimed(Cell& c, u64 seen, u64 to) noexcept {
    c.word.store(seen - state_of(seen) + to, std::memory_order_release);
  }
  // Sets and clears flag bits (closed, abandoned) of a cell's word; returns
  // the word before. Waits while the cell is claimed (kResuming: one move of
  // a T or a few stores), so that its owner may publish with a plain store.
  static u64 set_cell_flags(Cell& c, u64 set, u64 clear) noexcept {
    detail::Backoff backoff;
    u64 w = c.word.load(std::memory_order_acquire);
    for (;;) {
      if (state_of(w) == kResuming) {
        backoff.pause();
        w = c.word.load(std::memory_order_acquire);
        continue;
      }
      if (c.word.compare_exchange_weak(w, (w | set) & ~clear, std::memory_order_seq_cst, std::memory_order_acquire))
        return w;
    }
  }
  // A party that gives its ticket up in a cell the other party has not
  // reached: an empty open cell skips the lap (the other party finds it
  // passed and draws a new ticket), so no cell waits for a party that may
  // never come; otherwise (in-buffer, or closing) it leaves `broken`, which
  // the other party steps over.
  static bool give_up_cell(Cell& c, u64& seen, u64 broken) noexcept {
    if ((seen & ~kAbandoned) == lap_bits(seen)) {  // empty, not closed
      if (!c.word.compare_exchange_strong(seen, seen + kOneLap, std::memory_order_seq_cst, std::memory_order_acquire))
        return false;
      c.turn.wake_all();
      return true;
    }
    return cas_state(c, seen, broken);
  }

  // ---- waiting for a cell's lap (rare: more than N operations in flight)

  struct TurnWait {
    State* st;
    Cell* c;
    u64 seen;  // the cell's word the waiter decided to park on
    detail::Waiter* me;
  };
  static bool publish_turn_waiter(void* arg) noexcept {
    auto* a = static_cast<TurnWait*>(arg);
    // Once pushed we may be woken and our caller may drop the last handle
    // before this returns: keep the channel (and our cell) alive.
    std::shared_ptr<State> keep = a->st->shared_from_this();
    Cell& c = *a->c;
    const u64 seen_lap = lap_bits(a->seen);
    c.turn.push(*a->me);
    // Raced with a waker: any lap that began since we looked (ours, or an
    // earlier one that abandoned tickets may leave for us to settle: its
    // parties may all be gone, and the one who began it woke the list
    // before we were on it), or the close.
    const u64 w = c.word.load(std::memory_order_seq_cst);
    if (lap_bits(w) != seen_lap || (w & kCellClosed) != 0) c.turn.wake_all();
    return true;
  }
  // The Interrupt of a turn wait wakes every turn waiter of the cell (ours
  // among them, through the list's own claim, so our Waiter leaves the list
  // the way it always does); the others find their lap still ahead and park
  // again. The interrupted operation then abandons its ticket (below).
  struct TurnInterrupt : detail::Interrupt {
    explicit TurnInterrupt(Cell& cell) noexcept : Interrupt{wake_turn_waiters}, c(&cell) {}
    static void wake_turn_waiters(detail::Interrupt* self, detail::FiberCtl*) noexcept {
      static_cast<TurnInterrupt*>(self)->c->turn.wake_all();
    }
    Cell* c;
  };
  // Returns once cell `c` serves `ticket` (kDone); kFailed if the channel
  // closed first (the ticket must then be given up); kRetry if the lap was
  // skipped (the other party withdrew: draw a new ticket); kInterrupted if
  // the caller's scope ended the wait and the ticket was abandoned.
  Outcome await_turn(Cell& c, u64 ticket, WaitReason why, bool send) {
    const u64 lap = lap_of(ticket);
    for (;;) {
      const u64 w = c.word.load(std::memory_order_seq_cst);
      if (lap_bits(w) == lap) return Outcome::kDone;
      if ((w & kCellClosed) != 0) return Outcome::kFailed;
      if (lap_bits(w) > lap) return Outcome::kRetry;
      if (must_settle(w) && settle_abandoned(c)) continue;
      const bool cancellable = detail::interruptible();
      if (cancellable && detail::interrupt_error(nullptr) != 0) {
        const Outcome o = abandon_turn(c, lap, send);
        if (o != Outcome::kRetry) return o;
        // No memory for the record: wait for the lap as before.
      }
      // The fiber's own Waiter (see park_in_cell): the walk that wakes it
      // took the whole list off the cell and read our link before its claim.
      detail::OwnWaiter own;
      detail::Waiter& me = *own;
      TurnWait a{this, &c, w, &me};
      TurnInterrupt interrupt(c);
      detail::park_committed(me, why, publish_turn_waiter, &a,
                             cancellable && detail::interrupt_error(nullptr) == 0 ? &interrupt : nullptr);
    }
  }

  // ---- tickets abandoned before their lap began
  //
  // An operation interrupted while it waits for its turn cannot give its
  // ticket up in the cell: the cell is still serving an earlier lap, and the
  // other party of its own lap may already count on it. So it leaves a
  // record (cell, lap, side) and marks the cell (kAbandoned) before it goes.
  // Whoever next finds that cell empty with the mark set (the other party of
  // the lap, a turn waiter of a later lap, the buffer expander, a try_
  // operation or a select looking at the cell) settles the records of the
  // cell's current lap first, under abandon_lock, exactly as the absent party
  // would have given its ticket up there: an open cell skips the lap (the
  // other party finds it passed and draws a new ticket), a closed one is left
  // send-cancel or recv-broke for the other party to step over; a lap whose
  // two parties both left is skipped. Since every lap begins empty and
  // nobody acts on an empty cell with the mark set without settling first, no
  // party can meet a partner that has gone. The mark is set (with the record
  // already listed) by an RMW that also tells the abandoning operation
  // whether its lap has begun meanwhile; if it has, it takes its record back
  // (unless a settler consumed it) and goes on as a live party, whose
  // interruptible park in the cell then withdraws it the usual way.
  // This is the slow path of a rare path: the records are heap nodes under a
  // spin lock, and live only until the lap they name begins.

  struct Abandoned {
    Cell* c;
    u64 lap;  // lap bits of the abandoned ticket
    bool send;
    Abandoned* next;
  };
  static bool must_settle(u64 w) noexcept { return (w & kAbandoned) != 0 && state_of(w) == kEmpty; }

  // kInterrupted: the ticket is abandoned (or its lap passed, or the channel
  // closed); kDone: its lap began meanwhile and the caller goes on with it;
  // kRetry: no memory for the record.
  Outcome abandon_turn(Cell& c, u64 lap, bool send) noexcept {
    auto* rec = new (std::nothrow) Abandoned{&c, lap, send, nullptr};
    if (rec == nullptr) return Outcome::kRetry;
    abandon_lock.lock();
    rec->next = abandoned;
    abandoned = rec;
    const u64 w = set_cell_flags(c, kAbandoned, 0);
    abandon_lock.unlock();
    if (lap_bits(w) < lap) return Outcome::kInterrupted;  // whoever begins our lap settles it
    abandon_lock.lock();
    const bool ours = unlink_abandoned(rec);
    abandon_lock.unlock();
    if (!ours) return Outcome::kInterrupted;  // a settler gave the ticket up for us
    delete rec;
    return lap_bits(w) == lap ? Outcome::kDone : Outcome::kInterrupted;
  }

  // Settles the records naming the lap cell `c` is on, if it is empty and
  // marked; true if the cell's word changed (look at it again).
  bool settle_abandoned(Cell& c) noexcept {
    bool changed = false;
    bool skipped = false;
    abandon_lock.lock();
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      if (!must_settle(w)) break;
      unsigned sides = 0;  // 1: the sender left, 2: the receiver left
      for (const Abandoned* a = abandoned; a != nullptr; a = a->next) {
        if (a->c == &c && a->lap == lap_bits(w)) sides |= a->send ? 1u : 2u;
      }
      if (sides == 0) break;
      const bool skip = sides == 3 || (w & kCellClosed) == 0;
      const u64 to = skip ? w + kOneLap : w + (sides == 1 ? kSendCancel : kRecvBroke);
      if (!c.word.compare_exchange_strong(w, to, std::memory_order_seq_cst, std::memory_order_acquire)) continue;
      drop_abandoned(c, lap_bits(w));
      changed = true;
      skipped = skipped || skip;
      if (!skip) break;  // a skipped lap's successor may be abandoned too
    }
    abandon_lock.unlock();
    if (skipped) c.turn.wake_all();
    return changed;
  }
  // The cell's word, after settling what it shows abandoned.
  u64 load_settled(Cell& c) noexcept {
    u64 w = c.word.load(std::memory_order_acquire);
    while (must_settle(w) && settle_abandoned(c)) w = c.word.load(std::memory_order_acquire);
    return w;
  }
  // Under abandon_lock. The mark goes once no record names the cell.
  void clear_mark_if_unused(Cell& c) noexcept {
    for (const Abandoned* a = abandoned; a != nullptr; a = a->next) {
      if (a->c == &c) return;
    }
    set_cell_flags(c, 0, kAbandoned);
  }
  bool unlink_abandoned(Abandoned* rec) noexcept {
    for (Abandoned** p = &abandoned; *p != nullptr; p = &(*p)->next) {
      if (*p != rec) continue;
      *p = rec->next;
      clear_mark_if_unused(*rec->c);
      return true;
    }
    return false;
  }
  void drop_abandoned(Cell& c, u64 lap) noexcept {
    for (Abandoned** p = &abandoned; *p != nullptr;) {
      Abandoned* a = *p;
      if (a->c == &c && a->lap == lap) {
        *p = a->next;
        delete a;
      } else {
        p = &a->next;
      }
    }
    clear_mark_if_unused(c);
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
    Cell& c = *a->c;
    u64 seen = a->seen;
    if (!claim_empty_cell(c, seen)) return false;
    (a->to == kSendWait ? c.sender : c.receiver).store(a->me, std::memory_order_relaxed);
    const u64 to = a->to;
    a->parked = true;  // before the publish: afterwards `a` may be gone
    publish_claimed(c, seen, to);
    return true;
  }
  // Withdraws a waiter (or select registration) published as `parked`
  // (its lap | its wait state) with one CAS that also ends the lap: the other
  // party of that lap finds it passed and draws a new ticket, so a withdrawal
  // leaves no cell waiting for a party that may never come. A party
  // completing the meeting CASes the same word away from the wait state, so
  // exactly one of them wins. False: the waiter was no longer there.
  static bool withdraw_waiter(Cell& c, u64 parked) noexcept {
    u64 w = c.word.load(std::memory_order_acquire);
    while ((w & ~(kCellClosed | kAbandoned)) == parked) {
      if (c.word.compare_exchange_weak(w, w - state_of(w) + kOneLap, std::memory_order_seq_cst,
                                       std::memory_order_acquire)) {
        c.turn.wake_all();
        return true;
      }
    }
    return false;
  }
  // The Interrupt of a park in a cell.
  struct CellInterrupt : detail::Interrupt {
    CellInterrupt(Cell& cell, u64 parked_word, detail::Waiter& waiter) noexcept
        : Interrupt{withdraw}, c(&cell), parked(parked_word), me(&waiter) {}
    static void withdraw(detail::Interrupt* self, detail::FiberCtl*) noexcept {
      auto* i = static_cast<CellInterrupt*>(self);
      if (!withdraw_waiter(*i->c, i->parked)) return;
      i->won = true;  // read by the waiter once wake() resumed it
      detail::wake(*i->me);
    }
    Cell* c;
    u64 parked;  // lap | wait state
    detail::Waiter* me;
    bool won = false;
  };
  // Parks in `c` if its word is still `seen`. kRetry: it changed first;
  // kDone: a party (or close) resumed us; kInterrupted: our scope did.
  //
  // `me` is the fiber's own Waiter (OwnWaiter), so a party that meets a
  // parked operation touches its control block, not its stack page (only
  // the value or storage `slot` points at). That is safe because nobody
  // touches `me` after the wake() that resumes us, and nothing else of ours
  // holds it meanwhile: every party that reaches it (the other side of the
  // lap, the buffer expander, close(), our CellInterrupt) first takes the
  // cell's wait state with one CAS, so exactly one does, and its wake() is
  // its last touch; the Interrupt ends before we get past unpublish. The
  // cell's sender / receiver field keeps the stale pointer, but it is
  // dereferenced only by the party whose CAS took this lap's wait state. A turn wait
  // (await_turn) uses the same Waiter only before this one: it is resumed
  // by the wake-all walk that unlinked it, never by a timer or claim
  // elsewhere (its Interrupt runs that walk), so it is off every list when
  // we park here.
  static Outcome park_in_cell(Cell& c, u64 seen, u64 to, detail::Waiter& me) {
    CellWait a{&c, seen, to, &me};
    CellInterrupt interrupt(c, lap_bits(seen) | to, me);
    detail::park_committed(me, to == kSendWait ? WaitReason::channel_send : WaitReason::channel_recv,
                           publish_cell_waiter, &a, &interrupt);
    if (!a.parked) return Outcome::kRetry;
    return interrupt.won ? Outcome::kInterrupted : Outcome::kDone;
  }

  // ---- meeting a select's registration

  // A sender in a cell holding a select's receive registration (the word
  // `w`, state kSelRecvWait): claims the cell, then the select. kDone: the
  // value went to the select; kDead: the registration was dead and the lap
  // is over (draw a new ticket); kChanged: the cell changed first (look again).
  enum class Meet { kDone, kDead, kChanged, kRegistering };
  static Meet send_to_select(Cell& c, u64 w, T& value, const detail::Waiter* self) noexcept {
    if (!cas_state(c, w, kResuming)) return Meet::kChanged;
    auto* g = static_cast<SelectReg*>(c.receiver.load(std::memory_order_relaxed));
    if (const Claim k = claim_select(*g, self); k != Claim::kWon) {
      end_lap(c, kResuming);
      return k == Claim::kDead ? Meet::kDead : Meet::kRegistering;
    }
    static_cast<std::optional<T>*>(g->slot)->emplace(std::move(value));
    g->ok = true;
    detail::Waiter* sel = g->sel;
    end_lap(c, kResuming);
    detail::wake(*sel);
    return Meet::kDone;
  }
  static Meet recv_from_select(Cell& c, u64 w, std::optional<T>& out, const detail::Waiter* self) noexcept {
    if (!cas_state(c, w, kResuming)) return Meet::kChanged;
    auto* g = static_cast<SelectReg*>(c.sender.load(std::memory_order_relaxed));
    if (const Claim k = claim_select(*g, self); k != Claim::kWon) {
      end_lap(c, kResuming);
      return k == Claim::kDead ? Meet::kDead : Meet::kRegistering;
    }
    out.emplace(std::move(*static_cast<T*>(g->slot)));
    g->ok = true;
    detail::Waiter* sel = g->sel;
    end_lap(c, kResuming);
    detail::wake(*sel);
    return Meet::kDone;
  }

  // ---- sending

  // Leaves `value` in an empty cell (claimed first: see claim_empty_cell).
  // False if the cell changed since `seen`; `value` is then untouched.
  static bool leave_value(Cell& c, u64& seen, T& value) noexcept {
    if (!claim_empty_cell(c, seen)) return false;
    ::new (static_cast<void*>(c.value)) T(std::move(value));
    publish_claimed(c, seen, kBuffered);
    return true;
  }

  // `reg`: the select registration to publish where a blocking send would
  // park (Mode::kSelect only).
  Outcome send_in_cell(Cell& c, u64 s, T& value, Mode mode, SelectReg* reg = nullptr) {
    const detail::Waiter* self = reg != nullptr ? reg->sel : nullptr;
    const u64 lap = lap_of(s);
    detail::Backoff backoff;
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      if (lap_bits(w) != lap) return Outcome::kRetry;  // our receiver withdrew and ended the lap
      switch (state_of(w)) {
        case kRecvWait: {
          // One CAS claims the receiver (which may be withdrawing: its
          // Interrupt CASes the same word) and ends the lap. The receiver
          // stays parked until our wake, so its storage is ours to fill.
          auto* r = static_cast<detail::Waiter*>(c.receiver.load(std::memory_order_relaxed));
          if (!c.word.compare_exchange_strong(w, w - kRecvWait + kOneLap, std::memory_order_seq_cst,
                                              std::memory_order_acquire))
            continue;
          ::new (r->slot) T(std::move(value));
          r->ok = true;
          c.turn.wake_all();
          detail::wake(*r);
          return Outcome::kDone;
        }
        case kSelRecvWait:
          switch (send_to_select(c, w, value, self)) {
            case Meet::kDone: return Outcome::kDone;
            case Meet::kDead: return Outcome::kRetry;
            // A try_ operation gives way to a select still registering: it
            // would otherwise chase the select's next registration forever.
            case Meet::kRegistering: return mode == Mode::kTry ? Outcome::kNotNow : Outcome::kRetry;
            case Meet::kChanged: continue;
          }
          continue;
        case kRecvBroke:
          end_lap(c, kRecvBroke);
          return Outcome::kRetry;
        case kEmpty:
        case kInBuffer: {
          if (must_settle(w) && settle_abandoned(c)) continue;
          if ((w & kCellClosed) != 0) {
            if (cas_state(c, w, kSendCancel)) return Outcome::kFailed;
            continue;
          }
          if (state_of(w) == kInBuffer || s < receivers.load(std::memory_order_seq_cst) ||
              s < buffer_end.load(std::memory_order_seq_cst)) {
            if (leave_value(c, w, value)) return Outcome::kDone;
            continue;
          }
          if (mode == Mode::kTry) {
            if (give_up_cell(c, w, kSendCancel)) return Outcome::kNotNow;
            continue;
          }
          if (mode == Mode::kSelect) {
            if (!claim_empty_cell(c, w)) continue;
            c.sender.store(reg, std::memory_order_relaxed);
            publish_claimed(c, w, kSelSendWait);
            return Outcome::kRegistered;
          }
          detail::OwnWaiter own;  // see park_in_cell
          detail::Waiter& me = *own;
          Outcome parked;
          if constexpr (handoff_fits_send<T>) {
            // The receiver moves the value out of our waiter, not out of our
            // stack; one not taken comes back to `value`.
            T* held = ::new (static_cast<void*>(me.handoff)) T(std::move(value));
            me.slot = held;
            parked = park_in_cell(c, w, kSendWait, me);
            if (parked != Outcome::kDone || !me.ok) value = std::move(*held);
            held->~T();
          } else {
            me.slot = &value;
            parked = park_in_cell(c, w, kSendWait, me);
          }
          switch (parked) {
            case Outcome::kRetry: continue;
            case Outcome::kInterrupted: return Outcome::kInterrupted;
            default: return me.ok ? Outcome::kDone : Outcome::kFailed;
          }
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
      const Outcome turn = await_turn(c, s, WaitReason::channel_send, /*send=*/true);
      if (turn == Outcome::kFailed) return false;
      if (turn == Outcome::kRetry) continue;
      if (turn == Outcome::kInterrupted) {
        detail::throw_if_interrupted(nullptr, "tendril::Channel::send");
        continue;  // not ours to report (cannot happen): send again
      }
      switch (send_in_cell(c, s, value, Mode::kBlock)) {
        case Outcome::kDone: return true;
        case Outcome::kFailed: return false;
        case Outcome::kInterrupted:
          detail::throw_if_interrupted(nullptr, "tendril::Channel::send");
          break;  // not ours to report (cannot happen): send again
        default: break;
      }
    }
  }

  // Whether sender ticket `s` could complete right now without parking.
  bool could_send_now(u64 s) noexcept {
    const u64 w = load_settled(cell(s));
    if ((w & kCellClosed) != 0) return false;
    // Its receiver withdrew (or gave the ticket up) and ended the lap: the
    // ticket is there to be stepped over, or no try_send gets past it.
    if (lap_bits(w) > lap_of(s)) return true;
    if (lap_bits(w) != lap_of(s)) return false;
    switch (state_of(w)) {
      case kRecvWait:
      case kSelRecvWait:
      case kInBuffer:
      case kRecvBroke:
        return true;
      case kEmpty:
        return s < receivers.load(std::memory_order_seq_cst) || s < buffer_end.load(std::memory_order_seq_cst);
      default:
        return false;
    }
  }

  // kDone, kFailed (closed) or kNotNow; `value` is untouched unless kDone.
  Outcome try_send_now(T& value) {
    for (;;) {
      u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) != 0) return Outcome::kFailed;
      if (!could_send_now(s)) return Outcome::kNotNow;
      // Drawing the ticket only if it is still the one we inspected means
      // its lap cannot have moved on: no waiting for a turn here.
      if (!senders.compare_exchange_weak(s, s + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) continue;
      const Outcome o = send_in_cell(cell(s), s, value, Mode::kTry);
      if (o != Outcome::kRetry) return o;
    }
  }
  bool try_send(T& value) { return try_send_now(value) == Outcome::kDone; }

  // ---- receiving

  // One step of "expand buffer": see the header comment. `self`: the select
  // running it, if any.
  // B moves exactly once per receiver ticket, so B - R stays C: a cell in
  // [R, B) whose sender withdrew holds no value and lowers the capacity
  // until its receiver passes it (and moves B on). Skipping such cells, as
  // the expander once did, overcounts when the receiver that meets the
  // withdrawn cell draws again; selects withdraw all the time.
  void expand_buffer(const detail::Waiter* self = nullptr) noexcept {
    const u64 b = buffer_end.fetch_add(1, std::memory_order_seq_cst);
    if (b >= sent_count(senders.load(std::memory_order_seq_cst))) return;  // that sender will see b < B
    admit_into_buffer(cell(b), b, self);
  }
  void admit_into_buffer(Cell& c, u64 b, const detail::Waiter* self) noexcept {
    detail::Backoff backoff;
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      // Another lap: sender b has not reached the cell (it reads B when it
      // does) or the meeting is already over.
      if (lap_bits(w) != lap_of(b) || (w & kCellClosed) != 0) return;
      switch (state_of(w)) {
        case kEmpty:
          if (must_settle(w) && settle_abandoned(c)) continue;
          if (cas_state(c, w, kInBuffer)) return;
          continue;
        case kSendWait: {
          if (!cas_state(c, w, kResuming)) continue;
          auto* s = static_cast<detail::Waiter*>(c.sender.load(std::memory_order_relaxed));
          ::new (static_cast<void*>(c.value)) T(std::move(*static_cast<T*>(s->slot)));
          s->ok = true;
          set_owned_state(c, kResuming, kBuffered);
          detail::wake(*s);
          return;
        }
        case kSelSendWait: {
          // Moving a select's value into the buffer decides that select.
          if (!cas_state(c, w, kResuming)) continue;
          auto* g = static_cast<SelectReg*>(c.sender.load(std::memory_order_relaxed));
          if (claim_select(*g, self) != Claim::kWon) {
            end_lap(c, kResuming);  // as if the select had withdrawn
            return;
          }
          ::new (static_cast<void*>(c.value)) T(std::move(*static_cast<T*>(g->slot)));
          g->ok = true;
          detail::Waiter* sel = g->sel;
          set_owned_state(c, kResuming, kBuffered);
          detail::wake(*sel);
          return;
        }
        case kResuming:
          backoff.pause();
          continue;
        case kSendCancel:
          return;
        default:
          return;
      }
    }
  }

  Outcome recv_in_cell(Cell& c, u64 r, std::optional<T>& out, Mode mode, SelectReg* reg = nullptr) {
    const detail::Waiter* self = reg != nullptr ? reg->sel : nullptr;
    const u64 lap = lap_of(r);
    detail::Backoff backoff;
    for (unsigned spins = 0;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      if (lap_bits(w) != lap) return Outcome::kRetry;  // our sender withdrew and ended the lap
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
          auto* s = static_cast<detail::Waiter*>(c.sender.load(std::memory_order_relaxed));
          out.emplace(std::move(*static_cast<T*>(s->slot)));
          s->ok = true;
          end_lap(c, kResuming);
          detail::wake(*s);
          return Outcome::kDone;
        }
        case kSelSendWait:
          switch (recv_from_select(c, w, out, self)) {
            case Meet::kDone: return Outcome::kDone;
            case Meet::kDead: return Outcome::kRetry;
            case Meet::kRegistering: return mode == Mode::kTry ? Outcome::kNotNow : Outcome::kRetry;
            case Meet::kChanged: continue;
          }
          continue;
        case kSendCancel:
          end_lap(c, kSendCancel);
          return Outcome::kRetry;
        case kEmpty:
        case kInBuffer: {
          if (must_settle(w) && settle_abandoned(c)) continue;
          const u64 s = senders.load(std::memory_order_seq_cst);
          if (r < sent_count(s)) {  // its sender is on the way
            if (++spins < kSpinForSender) {
              detail::cpu_relax();
              continue;
            }
            // A blocking receiver parks and lets the sender complete the
            // meeting; one that must not park (or finds the channel
            // closing, where the sender will withdraw) gives the cell up.
            if (mode == Mode::kTry || (w & kCellClosed) != 0) {
              if (give_up_cell(c, w, kRecvBroke)) return Outcome::kRetry;
              continue;
            }
          } else {
            if ((s & kSendersClosed) != 0) return Outcome::kFailed;  // no sender will come
            if (mode == Mode::kTry) {
              if (give_up_cell(c, w, kRecvBroke)) return Outcome::kNotNow;
              continue;
            }
          }
          if (mode == Mode::kSelect) {
            if (!claim_empty_cell(c, w)) continue;
            c.receiver.store(reg, std::memory_order_relaxed);
            publish_claimed(c, w, kSelRecvWait);
            return Outcome::kRegistered;
          }
          // The sender constructs the value in our waiter if it fits there,
          // else on our stack.
          alignas(T) unsigned char spill[handoff_fits<T> ? 1 : sizeof(T)];
          detail::OwnWaiter own;  // see park_in_cell
          detail::Waiter& me = *own;
          me.slot = handoff_fits<T> ? static_cast<void*>(me.handoff) : static_cast<void*>(spill);
          switch (park_in_cell(c, w, kRecvWait, me)) {
            case Outcome::kRetry: continue;
            case Outcome::kInterrupted: return Outcome::kInterrupted;
            default: break;
          }
          if (!me.ok) return Outcome::kFailed;
          T* p = std::launder(static_cast<T*>(me.slot));
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
      const Outcome turn = await_turn(c, r, WaitReason::channel_recv, /*send=*/false);
      if (turn == Outcome::kInterrupted) detail::throw_if_interrupted(nullptr, "tendril::Channel::recv");
      if (turn != Outcome::kDone) continue;  // closed or skipped: a new ticket
      switch (recv_in_cell(c, r, out, Mode::kBlock)) {
        case Outcome::kDone: return out;
        case Outcome::kFailed: return std::nullopt;
        case Outcome::kInterrupted:
          detail::throw_if_interrupted(nullptr, "tendril::Channel::recv");
          break;  // not ours to report (cannot happen): receive again
        default: break;
      }
    }
  }

  // Whether receiver ticket `r` would find a value (or a withdrawn sender to
  // step over) right now.
  bool could_receive_now(u64 r) noexcept {
    if (r >= sent_count(senders.load(std::memory_order_seq_cst))) return false;
    const u64 w = load_settled(cell(r));
    // Its sender withdrew and ended the lap: stepping over the ticket moves
    // the buffer's end on, which is how the capacity a withdrawn send held
    // comes back (see expand_buffer).
    if (lap_bits(w) > lap_of(r)) return true;
    if (lap_bits(w) != lap_of(r)) return false;
    const u64 st = state_of(w);
    return st == kBuffered || st == kSendWait || st == kSelSendWait || st == kSendCancel || st == kResuming;
  }

  // kDone (a value in `out`), kFailed (closed and drained) or kNotNow.
  Outcome try_recv_now(std::optional<T>& out) {
    for (;;) {
      u64 r = receivers.load(std::memory_order_seq_cst);
      if (could_receive_now(r)) {
        if (!receivers.compare_exchange_weak(r, r + 1, std::memory_order_seq_cst, std::memory_order_relaxed))
          continue;
        if (cap > 0) expand_buffer();
        const Outcome o = recv_in_cell(cell(r), r, out, Mode::kTry);
        if (o != Outcome::kRetry) return o;
        continue;
      }
      const u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) == 0) return Outcome::kNotNow;
      if (r >= sent_count(s)) return Outcome::kFailed;
      // Closed, with sender tickets issued past r whose cells show no value
      // now: those senders withdraw (or gave their tickets up), so step over
      // the tickets as a blocking receive would, instead of reporting "not
      // now" forever (select must see the channel closed and drained).
      if (!receivers.compare_exchange_weak(r, r + 1, std::memory_order_seq_cst, std::memory_order_relaxed))
        continue;
      if (cap > 0) expand_buffer();
      Cell& c = cell(r);
      // Not its lap yet: give the ticket up as a turn waiter does, once the
      // cell shows the close (close() is marking the cells right now), so
      // that its sender withdraws instead of leaving a value.
      detail::Backoff backoff;
      u64 w = c.word.load(std::memory_order_acquire);
      while (lap_bits(w) < lap_of(r) && (w & kCellClosed) == 0) {
        backoff.pause();
        w = c.word.load(std::memory_order_acquire);
      }
      if (lap_bits(w) != lap_of(r)) continue;
      const Outcome o = recv_in_cell(c, r, out, Mode::kTry);
      if (o != Outcome::kRetry && o != Outcome::kNotNow) return o;
    }
  }
  std::optional<T> try_recv() {
    std::optional<T> out;
    try_recv_now(out);
    return out;
  }

  // ---- select (tendril/select.hpp)

  // Puts a select's receive case into the cell of a new receiver ticket, or
  // completes it at once. kRegistered (`at`: the cell, `parked`: its lap and
  // wait state), kDone (a value in `out`), kFailed (closed and drained) or
  // kNotNow: the next ticket's cell is still busy with an earlier lap (an
  // operation parked there pins it). A select never waits for a lap: that
  // would hold its other cases hostage; it draws a ticket only when its cell
  // is on the ticket's lap. Only while the select is registering.
  Outcome select_recv(SelectReg& reg, std::optional<T>& out, Cell*& at, u64& parked) {
    for (;;) {
      u64 r = receivers.load(std::memory_order_seq_cst);
      const u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) != 0 && r >= sent_count(s)) return Outcome::kFailed;
      Cell& c = cell(r);
      const u64 w = load_settled(c);
      if (lap_bits(w) < lap_of(r) && (w & kCellClosed) == 0) return Outcome::kNotNow;
      if (!receivers.compare_exchange_weak(r, r + 1, std::memory_order_seq_cst, std::memory_order_relaxed))
        continue;
      if (cap > 0) expand_buffer(reg.sel);
      if (lap_bits(c.word.load(std::memory_order_acquire)) < lap_of(r)) continue;  // closing: give it up
      const Outcome o = recv_in_cell(c, r, out, Mode::kSelect, &reg);
      if (o == Outcome::kRegistered) {
        at = &c;
        parked = lap_of(r) | kSelRecvWait;
      }
      if (o != Outcome::kRetry) return o;
    }
  }
  // The same for a send case: kRegistered, kDone (sent), kFailed (closed) or
  // kNotNow.
  Outcome select_send(SelectReg& reg, T& value, Cell*& at, u64& parked) {
    for (;;) {
      u64 s = senders.load(std::memory_order_seq_cst);
      if ((s & kSendersClosed) != 0) return Outcome::kFailed;
      Cell& c = cell(s);
      const u64 w = load_settled(c);
      if (lap_bits(w) < lap_of(s)) return (w & kCellClosed) != 0 ? Outcome::kFailed : Outcome::kNotNow;
      if (!senders.compare_exchange_weak(s, s + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) continue;
      const Outcome o = send_in_cell(c, s, value, Mode::kSelect, &reg);
      if (o == Outcome::kRegistered) {
        at = &c;
        parked = lap_of(s) | kSelSendWait;
      }
      if (o != Outcome::kRetry) return o;
    }
  }
  // Takes a select's registration out of its cell once the select is over:
  // a live one is withdrawn (the lap ends; see withdraw_waiter); a party
  // holding it (resuming) is waited for, since it may still read the
  // registration; otherwise it is gone already.
  static void select_withdraw(Cell& c, u64 parked) noexcept {
    detail::Backoff backoff;
    for (;;) {
      if (withdraw_waiter(c, parked)) return;
      const u64 w = c.word.load(std::memory_order_acquire);
      if ((w & ~(kCellClosed | kAbandoned)) == parked) continue;
      if (lap_bits(w) != lap_bits(parked) || state_of(w) != kResuming) return;
      backoff.pause();
    }
  }

  // ---- closing

  // Cancels a waiter parked (or a select registered) in `c` if close() must
  // wake it.
  void settle_on_close(Cell& c, u64 closed_at) noexcept {
    for (;;) {
      u64 w = c.word.load(std::memory_order_acquire);
      const u64 st = state_of(w);
      const u64 ticket = ((w >> kLapShift) << shift) | index_of(c);
      u64 cancelled;
      if (st == kSendWait || st == kSelSendWait) {
        cancelled = kSendCancel;  // a receiver still comes by and ends the lap
      } else if ((st == kRecvWait || st == kSelRecvWait) && ticket >= closed_at) {
        cancelled = kRecvCancel;  // no sender has this ticket; the cell stays put
      } else {
        return;
      }
      if (!cas_state(c, w, kResuming)) continue;
      if (st == kSelSendWait || st == kSelRecvWait) {
        auto* g = static_cast<SelectReg*>((st == kSelSendWait ? c.sender : c.receiver).load(std::memory_order_relaxed));
        // Only a party that won may read the registration after the claim:
        // one that lost it to a select still registering has told that
        // select to register the case again, which rewrites it.
        if (claim_select(*g, nullptr) != Claim::kWon) {
          set_owned_state(c, kResuming, cancelled);
          return;
        }
        detail::Waiter* sel = g->sel;
        g->ok = false;
        set_owned_state(c, kResuming, cancelled);
        detail::wake(*sel);
        return;
      }
      auto* x = static_cast<detail::Waiter*>((st == kSendWait ? c.sender : c.receiver).load(std::memory_order_relaxed));
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
      set_cell_flags(c, kCellClosed, 0);
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
  detail::SpinLock abandon_lock;    // guards `abandoned` and setting / clearing kAbandoned
  Abandoned* abandoned = nullptr;   // tickets abandoned before their lap began
};

}  // namespace tendril::detail::channel
