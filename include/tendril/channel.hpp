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
//
// T must be nothrow-move-constructible (values move while a lock is held).
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "tendril/detail/park.hpp"

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
  struct State {
    explicit State(std::size_t capacity) : cap(capacity) {
      if (capacity > (std::size_t{1} << 32)) throw std::invalid_argument("tendril::Channel: capacity over 2^32");
      if (cap > 0) ring = std::allocator<T>().allocate(cap);
    }
    ~State() {
      while (count > 0) pop_ring();
      if (ring != nullptr) std::allocator<T>().deallocate(ring, cap);
    }

    // Requires lock. Moves `value` to a parked receiver or the buffer.
    bool hand_over_locked(T& value) {
      if (detail::Waiter* r = recvq.claim_front()) {
        lock.unlock();
        ::new (r->slot) T(std::move(value));
        r->ok = true;
        detail::wake(*r);
        return true;
      }
      if (count < cap) {
        ::new (ring + (head + count) % cap) T(std::move(value));
        ++count;
        lock.unlock();
        return true;
      }
      return false;
    }

    bool send(T& value) {
      lock.lock();
      if (closed) {
        lock.unlock();
        return false;
      }
      if (hand_over_locked(value)) return true;
      detail::Waiter w;
      w.slot = &value;
      sendq.push_back(w);
      detail::park(w, lock);
      return w.ok;
    }

    bool try_send(T& value) {
      lock.lock();
      if (closed) {
        lock.unlock();
        return false;
      }
      if (hand_over_locked(value)) return true;
      lock.unlock();
      return false;
    }

    // Requires lock; releases it when it returns a value.
    std::optional<T> take_locked() {
      if (count > 0) {
        std::optional<T> v(pop_ring());
        if (detail::Waiter* s = sendq.claim_front()) {
          ::new (ring + (head + count) % cap) T(std::move(*static_cast<T*>(s->slot)));
          ++count;
          s->ok = true;
          lock.unlock();
          detail::wake(*s);
        } else {
          lock.unlock();
        }
        return v;
      }
      if (detail::Waiter* s = sendq.claim_front()) {
        lock.unlock();
        std::optional<T> v(std::move(*static_cast<T*>(s->slot)));
        s->ok = true;
        detail::wake(*s);
        return v;
      }
      return std::nullopt;
    }

    std::optional<T> recv() {
      lock.lock();
      if (std::optional<T> v = take_locked()) return v;
      if (closed) {
        lock.unlock();
        return std::nullopt;
      }
      alignas(T) unsigned char storage[sizeof(T)];
      detail::Waiter w;
      w.slot = storage;
      recvq.push_back(w);
      detail::park(w, lock);
      if (!w.ok) return std::nullopt;
      T* p = std::launder(reinterpret_cast<T*>(storage));
      std::optional<T> v(std::move(*p));
      p->~T();
      return v;
    }

    std::optional<T> try_recv() {
      lock.lock();
      if (std::optional<T> v = take_locked()) return v;
      lock.unlock();
      return std::nullopt;
    }

    void close() noexcept {
      lock.lock();
      closed = true;
      detail::WaitQueue woken;
      while (detail::Waiter* w = recvq.claim_front()) woken.push_back(*w);
      while (detail::Waiter* w = sendq.claim_front()) woken.push_back(*w);
      lock.unlock();
      while (detail::Waiter* w = woken.pop_front()) {
        w->ok = false;
        detail::wake(*w);
      }
    }

    bool is_closed() const noexcept {
      lock.lock();
      bool c = closed;
      lock.unlock();
      return c;
    }
    std::size_t buffered() const noexcept {
      lock.lock();
      std::size_t n = count;
      lock.unlock();
      return n;
    }

    T pop_ring() noexcept {
      T* p = ring + head;
      T v(std::move(*p));
      p->~T();
      head = (head + 1) % cap;
      --count;
      return v;
    }

    const std::size_t cap;
    T* ring = nullptr;
    std::size_t head = 0;
    std::size_t count = 0;
    bool closed = false;
    mutable detail::SpinLock lock;
    detail::WaitQueue recvq;
    detail::WaitQueue sendq;
  };

  std::shared_ptr<State> s_;
};

}  // namespace tendril
