#include "samples/fanout/backend.hpp"

#include <algorithm>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>

namespace sample_fanout {
namespace {

[[noreturn]] void throw_errc(std::errc e, const char* what) { throw std::system_error(std::make_error_code(e), what); }

}  // namespace

std::unique_ptr<BackendConn> BackendPool::take_idle_or_room(std::size_t b, bool fresh,
                                                            std::unique_ptr<BackendConn>* evicted) {
  std::lock_guard<sample::Mutex> g(m_);
  if (!fresh && !idle_[b].empty()) {  // those owing nothing are at the back
    std::unique_ptr<BackendConn> c = std::move(idle_[b].back());
    idle_[b].pop_back();
    return c;
  }
  // Full: make room by closing an idle connection to another backend.
  if (open_ >= max_open_) {
    for (auto& list : idle_) {
      if (!list.empty()) {
        *evicted = std::move(list.front());
        list.pop_front();
        --open_;
        break;
      }
    }
  }
  ++open_;
  return nullptr;
}

// No parking in catch blocks (see fan_out.hpp): the failure is kept, the
// count fixed after the handler.
std::unique_ptr<BackendConn> BackendPool::connect(std::size_t b, sample::Millis timeout) {
  connects_.fetch_add(1);
  std::unique_ptr<BackendConn> c;
  std::exception_ptr failure;
  try {
    const sample::HostPort& be = backends_[b];
    c = std::make_unique<BackendConn>(sample::Stream::connect(be.host, be.port, timeout));
    c->stream.set_nodelay();
  } catch (...) {
    failure = std::current_exception();
  }
  if (failure) {
    {
      std::lock_guard<sample::Mutex> g(m_);
      --open_;
    }
    std::rethrow_exception(failure);
  }
  return c;
}

BackendPool::Lease BackendPool::acquire(std::size_t b, sample::Millis timeout, bool fresh) {
  Lease lease;
  lease.backend = b;
  std::unique_ptr<BackendConn> evicted;
  lease.conn = take_idle_or_room(b, fresh, &evicted);
  if (lease.conn) {
    lease.reused = true;
    return lease;
  }
  evicted.reset();
  lease.conn = connect(b, timeout);
  return lease;
}

void BackendPool::release(Lease& lease) {
  if (!lease.conn) return;
  if (lease.conn->owed > kMaxOwed) {
    lease.conn.reset();
    std::lock_guard<sample::Mutex> g(m_);
    --open_;
    return;
  }
  std::lock_guard<sample::Mutex> g(m_);
  auto& list = idle_[lease.backend];
  if (lease.conn->owed == 0) list.push_back(std::move(lease.conn));
  else list.push_front(std::move(lease.conn));
}

std::size_t BackendPool::open() {
  std::lock_guard<sample::Mutex> g(m_);
  return open_;
}

void BackendPool::close_idle() {
  std::vector<std::deque<std::unique_ptr<BackendConn>>> idle(backends_.size());
  {
    std::lock_guard<sample::Mutex> g(m_);
    for (auto& list : idle_) open_ -= list.size();
    idle.swap(idle_);
  }
}

void round_trip(BackendConn& c, const std::string& line, Clock::time_point deadline) {
  sample::Stream& s = c.stream;
  s.set_timeout(left_until(deadline));
  const std::size_t drop = c.owed;  // bytes before our reply
  c.owed = kBroken;                 // until the whole line is written
  s.write_all(line.data(), line.size());
  c.owed = drop + line.size();
  std::size_t pos = 0;  // bytes read of drop + line
  char buf[4096];
  while (c.owed > 0) {
    s.set_timeout(left_until(deadline));  // a timed-out read transfers nothing
    const std::size_t n = s.read(buf, std::min(sizeof buf, c.owed));
    if (n == 0) throw_errc(std::errc::connection_reset, "backend closed the connection");
    for (std::size_t i = 0; i < n; ++i) {
      if (pos + i >= drop && buf[i] != line[pos + i - drop]) {
        c.owed = kBroken;
        throw std::runtime_error("backend answered another line");
      }
    }
    pos += n;
    c.owed -= n;
  }
}

}  // namespace sample_fanout
