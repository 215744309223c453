// tendril::Channel<T>: Go-style channels between fibers (and threads).
//
//   tendril::Channel<int> ch(16);          // capacity 0: unbuffered rendezvous
//   tendril::spawn([ch]() mutable {
//     for (int i = 0; i < 100; ++i) ch.send(i);
//     ch.close();
//   }).detach();
//   while (std::optional<int> v = ch.recv()) use(*v);
//
// A Channel is a cheap copyable handle; copies refer to the same channel, which
// lives as long as any handle does. Any number of fibers and plain OS threads
// may send and receive concurrently (MPMC). Values are delivered exactly once,
// in FIFO order per sender. A receiver that is parked when a value is sent gets
// it directly (no trip through the buffer) and runs next on the sender's worker.
//
// - send(v) parks while the buffer is full (for capacity 0: until a receiver
//   takes v) and returns true once the value is handed over; false if the
//   channel is closed (before or while waiting), in which case v is dropped.
// - recv() parks while the channel is empty and open; it returns std::nullopt
//   once the channel is closed and drained.
// - try_send / try_recv never park: try_send returns false (leaving v
//   untouched) if the value cannot be handed over now or the channel is closed.
// - close() wakes every parked sender (send returns false) and receiver; values
//   already buffered can still be received. Closing twice is harmless.
// - size() is the number of buffered values (exact when nobody is mid-send or
//   mid-receive; a snapshot otherwise).
// - send and recv are cancellation points (tendril/scope.hpp): a fiber parked
//   in one whose scope is cancelled, or passes its deadline, gets
//   std::system_error (operation_canceled / timed_out). A cancelled send did
//   not send its value (it is destroyed with the exception); a cancelled recv
//   took nothing. One that can complete without parking completes. (A wait
//   for a ring cell's lap, below, is not interrupted.)
// - tendril::select (tendril/select.hpp) waits on several channels at once.
//
// No operation takes a lock; see "How it works" below.
//
// T must be nothrow-move-constructible (a value may be moved into a cell that a
// receiver reads as soon as it is published, and moved back if publishing
// loses a race; neither step may fail half-way).
//
// ---------------------------------------------------------------------------
// How it works (after Koval, Alistarh, Elizarov, "Fast and Scalable Channels
// in Kotlin Coroutines", PPoPP 2023, on a ring instead of a list of segments)
//
// Two counters hand out tickets: every send attempt takes the next sender
// ticket s, every receive attempt the next receiver ticket r. Sender ticket t
// and receiver ticket t meet in cell t mod N of a ring of N cells. A cell is a
// small state machine in one 64-bit word: the lap (which ticket the cell
// serves now: t / N), a "closed" bit, and the state of that meeting:
//
//   empty       nobody has arrived
//   in-buffer   only a receiver moving the buffer end marked it: its sender
//               will leave the value and not park
//   buffered    the sender left its value in the cell and went on
//   send-wait   the sender parked; its Waiter points at the value
//   recv-wait   the receiver parked; its Waiter points at its storage
//   select send-wait / select recv-wait
//               a select registered a case here (its SelectReg, which points
//               at the select's shared waiter)
//   resuming    someone claimed a parked waiter and is finishing the hand-off,
//               or claimed the empty cell to write into it (below)
//   recv-broke  the receiver gave up on this cell (its sender was too slow,
//               in an in-buffer or closing cell)
//   send-cancel the sender withdrew (try_send in an in-buffer cell, or the
//               channel closed)
//   recv-cancel close() woke the parked receiver empty (no sender holds its
//               ticket); the cell keeps its lap
//
// The only wait on another party is for a cell in "resuming", which lasts
// one move of a T: pause briefly, then yield the CPU (the party may have been
// preempted). Apart from that, and a receiver's brief spin for a sender that
// already holds its ticket (after which it parks), nothing waits unparked.
//
// Whoever arrives second completes the meeting: a receiver takes a buffered
// value or claims a parked sender; a sender claims a parked receiver and moves
// the value straight into its storage. Claiming is one CAS on the cell word,
// so a waiter is resumed by exactly one party. The party that completes the
// meeting ends the lap (the word moves to lap+1, state empty), which opens
// the cell to tickets t+N. A sender claims a parked receiver and ends the lap
// in one CAS (recv-wait -> lap+1 empty), then fills the receiver's storage
// (the receiver stays parked until woken); the other claims go through
// resuming.
//
// Nobody writes into a cell (the value, or the Waiter / registration a
// wait state publishes) without owning it: a sender leaving its value, and
// any party about to park or register, first CASes the empty cell to
// resuming, writes, and then publishes the new state. Letting the publishing
// CAS check the lap after the write is not enough: a party preempted between
// looking at the cell and writing to it may find, when it runs again, that
// its other party withdrew, the lap ended, and the next lap's party filled
// the cell; the late write would land in that party's value (delivering one
// value twice and losing the other). The claim is the one read-modify-write
// of the step: the new state is published with a plain store, since nobody
// else changes a claimed cell's word (close() and the abandoned-ticket mark
// wait the few instructions until it is published before they set a flag).
//
// Who may CAS what:
//   empty/in-buffer  the cell's sender (resuming to write, send-cancel, or
//                    lap+1), its receiver (resuming to write, recv-broke,
//                    or lap+1), the expander (in-buffer), close (the closed
//                    bit)
//   send-wait        the receiver or the expander (-> resuming), close
//                    (-> resuming), the parked sender's Interrupt (-> lap+1)
//   recv-wait        the sender (-> lap+1), close (-> resuming), the parked
//                    receiver's Interrupt (-> lap+1)
//   select *-wait    the other party, the expander or close (-> resuming;
//                    then the select's state word decides), the select
//                    withdrawing (-> lap+1)
//   resuming         only the party that set it
//   buffered         the receiver (-> lap+1)
//
// Withdrawing: a party that gives its ticket up in a cell the other party
// has not reached (a parked waiter its scope interrupts, a select's case that
// was not chosen, a try_ operation in an empty cell) ends the lap itself with
// one CAS; the other party then finds its lap passed (in the cell, or while
// waiting for its turn) and draws a new ticket. So a withdrawal never leaves
// a cell waiting for a party that may not come. Interrupt and completion race
// on the same word: exactly one CAS wins; the Interrupt readies the fiber only
// if it won, the completing party only if it won.
//
// Select (tendril/select.hpp): a select registers each case in the cell of a
// fresh ticket (select send-wait / recv-wait), all pointing at one waiter
// whose state word is: registering | marks, waiting, decided + case, or timed
// out. A party that claimed such a cell (resuming) CASes the select from
// waiting to decided + its case; if it wins it completes the meeting and
// wakes the select; otherwise the registration is dead and it treats the cell
// as withdrawn (ends the lap, draws a new ticket). While the select is still
// registering only the select decides (so a value it meets in a later cell
// can always be taken); a party meeting it then marks that case for
// registering again. The park's commit moves registering -> waiting (it fails
// if marks were set). The timer (case_after, scope deadline) and Interrupt
// CAS waiting -> timed out. Once decided, the select withdraws the rest of its
// registrations, waiting for any party that holds one (resuming). A select
// draws a ticket only if its cell is on that ticket's lap: it never waits for
// a lap (that would ignore its other cases); a congested case is looked at
// again every 500 us. Operations whose cell is still on an
// earlier lap (more than N operations in flight) park on the cell's
// TurnWaiters until the lap ends; that is the only place a ring bounds
// anything, so the ring can be small. This wait is interruptible too, but
// the ticket's lap has not begun, so it cannot be given up in the cell: the
// operation leaves a record (cell, lap, side), marks the cell (abandoned bit)
// and goes. Whoever next finds the cell empty with the mark set (the other
// party of that lap, a turn waiter of a later lap, the buffer expander, a
// try_ operation or a select) settles the record first, as the absent party
// would have: an open cell skips the lap, a closed one is left send-cancel or
// recv-broke; a lap both of whose parties left is skipped. Every lap begins
// empty and nobody acts on an empty marked cell without settling it, so no
// party is left waiting for one that has gone. A try_ operation or select
// that finds its ticket's lap already ended steps over the ticket (for a
// receiver this also moves the buffer's end on, giving back the capacity a
// withdrawn send held).
//
// Why values are neither lost nor duplicated: each value travels only through
// the one cell of its sender's ticket, and each cell's lap is visited by
// exactly one sender and one receiver; every transition out of a state that
// holds a value (buffered, send-wait) is a CAS by the one party allowed to
// take it. A sender that cannot complete (recv-broke) retries with a new,
// larger ticket, so per-sender FIFO holds: its later values get later tickets.
//
// A receiver that finds its cell empty parks there (recv-wait): its sender
// (ticket r, now or later) must come by this cell and will complete the
// meeting. If r < S the sender is between taking its ticket and reaching the
// cell, so the receiver first spins briefly; try_recv, which must not park,
// instead marks the cell recv-broke and draws a new ticket, and so does a
// receiver that finds the channel closing (its sender will withdraw). A sender
// may leave its value in an empty cell without waiting when receiver ticket
// s has been handed out (s < R: its receiver is on the way) or when s is
// within the buffer (s < B, below); otherwise it parks in the cell.
//
// Buffer (capacity C > 0): a third counter B, starting at C, marks the end of
// the buffer: sender tickets below B may complete without a receiver. Every
// receive attempt moves B on by exactly one ("expand buffer"): if the cell at
// the old B holds a parked sender, its value moves into the cell (buffered)
// and the sender is released; if that sender is still on its way, the cell
// is marked in-buffer so it will not park. So B - R = C: at most C values
// wait in the channel. A cell in [R, B) whose sender withdrew holds no value
// and lowers the capacity until its receiver passes it. (Skipping such cells
// instead overcounts: the receiver that later meets the withdrawn cell draws
// again and moves B once more; with selects withdrawing all the time the
// buffer would grow without bound.)
//
// Close: close() sets the closed bit of S (new send attempts fail; sc = the
// number of sender tickets issued), then sets the closed bit of every cell
// word and settles whatever it finds: a parked sender is cancelled (send
// returns false), a parked receiver whose ticket is >= sc is woken empty (no
// sender will come), and turn waiters are woken. A waiter publishes itself
// with one CAS that expects the closed bit clear, so it is either settled by
// close() or sees the bit and does not park. Receiver tickets < sc still meet
// their senders, so buffered values stay receivable. After close a sender
// that finds an empty cell withdraws instead of leaving its value, and a turn
// waiter whose lap has not come gives its ticket up (a sender fails, a
// receiver draws a new ticket); the closed bit survives lap changes, so the
// two cannot both act on one cell and leave a value nobody will collect.
// ---------------------------------------------------------------------------
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "tendril/detail/channel_state.hpp"

namespace tendril {

template <class T>
class Channel {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "tendril::Channel<T> needs a nothrow-move-constructible T");

 public:
  // Throws std::invalid_argument for a capacity over 2^32.
  explicit Channel(std::size_t capacity = 0) : s_(std::make_shared<State>(capacity)) {}

  bool send(T value) { return s_->send(value); }
  std::optional<T> recv() { return s_->recv(); }
  bool try_send(T& value) { return s_->try_send(value); }
  bool try_send(T&& value) { return s_->try_send(value); }
  bool try_send(const T& value) {
    T copy(value);
    return s_->try_send(copy);
  }
  std::optional<T> try_recv() { return s_->try_recv(); }
  void close() noexcept { s_->close(); }

  bool closed() const noexcept { return s_->is_closed(); }
  std::size_t capacity() const noexcept { return s_->cap; }
  std::size_t size() const noexcept { return s_->buffered(); }

 private:
  friend struct detail::channel::Access;  // select (tendril/select.hpp)
  using State = detail::channel::State<T>;

  std::shared_ptr<State> s_;
};

}  // namespace tendril
