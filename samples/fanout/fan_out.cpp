#include "samples/fanout/fan_out.hpp"

#include <exception>
#include <memory>
#include <system_error>

namespace sample_fanout {
namespace {

// What one request's calls share with it. The calls own it together with the
// connection task, so one that ends after the answer went out still finds it.
struct Request {
  static constexpr std::uint32_t kAnswered = 1u << 31;

  Clock::time_point deadline;
  std::atomic<std::uint32_t> tally{0};  // calls answered in time; kAnswered once the answer is taken

  // Counts a call that came back; false if the answer already went out.
  bool count_in_time() {
    std::uint32_t v = tally.load();
    while (!(v & kAnswered)) {
      if (tally.compare_exchange_weak(v, v + 1)) return true;
    }
    return false;
  }
  // Takes the answer: the calls counted so far; later ones are late.
  std::uint32_t take_answer() { return tally.fetch_or(kAnswered) & ~kAnswered; }
};

bool timed_out(const std::system_error& e) { return e.code() == std::errc::timed_out; }

enum class Outcome { answered, late, failed };

Outcome call_backend(Server& srv, Request& req, std::size_t b) {
  // Started too late to be in the answer (an overloaded server): spare the
  // backend.
  if (Clock::now() >= req.deadline) return Outcome::late;
  const std::string line = "call " + std::to_string(srv.call_seq.fetch_add(1)) + "\n";
  // A reused connection may have died while idle (backend restarted): one
  // more try on a new one (the other idle ones may be dead too), within the
  // same deadline.
  for (int attempt = 0;; ++attempt) {
    BackendPool::Lease lease;
    enum { ok, timeout, io_error, other } result = ok;
    try {
      lease = srv.pool.acquire(b, left_until(req.deadline), attempt > 0);
      round_trip(*lease.conn, line, req.deadline);
    } catch (const std::system_error& e) {
      result = timed_out(e) ? timeout : io_error;
    } catch (const std::exception&) {
      result = other;  // a wrong reply
    }
    switch (result) {
      case ok:
        srv.pool.release(lease);
        // By the deadline: on tendril the answer is taken only once every
        // call ended, so the clock, not the answer, says what was in time.
        return Clock::now() <= req.deadline && req.count_in_time() ? Outcome::answered : Outcome::late;
      case timeout:
        srv.pool.release(lease);  // closed if it broke or owes too much
        return Outcome::late;
      case io_error:
        srv.pool.discard(lease);
        if (lease.reused && attempt == 0) continue;
        return Outcome::failed;
      case other:
        srv.pool.discard(lease);
        return Outcome::failed;
    }
  }
}

void run_call(Server& srv, const std::shared_ptr<Request>& req, std::size_t backend) {
  Outcome o = Outcome::failed;
  try {
    o = call_backend(srv, *req, backend);
  } catch (const std::exception&) {
  }
  switch (o) {
    case Outcome::answered: srv.counters.calls_answered.fetch_add(1); break;
    case Outcome::late: srv.counters.calls_late.fetch_add(1); break;
    case Outcome::failed: srv.counters.calls_failed.fetch_add(1); break;
  }
}

// Starts one call of req in `calls`; one that cannot start (the twin out of
// threads) is counted as refused and failed.
void start_call(Server& srv, sample::CallScope& calls, const std::shared_ptr<Request>& req) {
  Counters& c = srv.counters;
  const std::size_t backend = srv.pool.pick();  // in request order, whatever runs first
  c.call_started();
  srv.live.add(1);
  bool started = true;
  try {
    calls.go([&srv, req, backend] {
      run_call(srv, req, backend);
      srv.counters.call_ended();
      srv.slots.release(1);
      srv.live.done();
    });
  } catch (const std::exception&) {  // the twin could not start a thread
    started = false;
  }
  if (!started) {
    c.call_ended();
    c.calls_refused.fetch_add(1);
    c.calls_failed.fetch_add(1);
    srv.slots.release(1);
    srv.live.done();
  }
}

}  // namespace

std::string fan_out(Server& srv, std::string_view id, int k) {
  srv.slots.acquire(k);
  auto req = std::make_shared<Request>();
  req->deadline = Clock::now() + sample::Millis(srv.cfg.call_deadline_ms);
  srv.counters.calls_made.fetch_add(static_cast<std::uint64_t>(k));
  std::uint32_t answered = 0;
  {
    sample::CallScope calls(req->deadline);  // on tendril, late calls end at the deadline
    for (int i = 0; i < k; ++i) start_call(srv, calls, req);
    calls.wait();
    answered = req->take_answer();
  }
  srv.counters.requests_served.fetch_add(1);
  std::string out = "ok ";
  out.append(id);
  out += ' ' + std::to_string(answered) + ' ' + std::to_string(k) + '\n';
  return out;
}

}  // namespace sample_fanout
