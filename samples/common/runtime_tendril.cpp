// samples/common/runtime.hpp on tendril: fibers, tendril::net, tendril sync.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "samples/common/runtime.hpp"

namespace sample {

const char* runtime_name() noexcept { return "tendril"; }

std::string fiber_dump() {
  std::string out;
  for (const tendril::FiberInfo& f : tendril::fibers()) out += tendril::format_fiber(f);
  return out;
}

Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&&) noexcept = default;
Stream::~Stream() = default;

Stream Stream::connect(const std::string& host, std::uint16_t port, Millis timeout) {
  return Stream(tendril::net::TcpStream::connect(host, port, timeout));
}
std::size_t Stream::read(void* buf, std::size_t n) { return s_.read(buf, n); }
std::size_t Stream::read(void* buf, std::size_t n, std::error_code& ec) noexcept { return s_.read(buf, n, ec); }
void Stream::wait_readable(std::error_code& ec) noexcept { s_.wait_readable(ec); }
void Stream::write_all(const void* buf, std::size_t n) { s_.write_all(buf, n); }
void Stream::set_timeout(Millis timeout) { s_.set_timeout(timeout); }
void Stream::set_nodelay() { s_.set_nodelay(true); }
void Stream::close() noexcept { s_.close(); }
void Stream::shutdown() noexcept {
  if (s_.is_open()) ::shutdown(s_.native_handle(), SHUT_RDWR);
}
bool Stream::is_open() const noexcept { return s_.is_open(); }

Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Listener Listener::bind(const std::string& host, std::uint16_t port, int backlog) {
  Listener l;
  l.l_ = tendril::net::TcpListener::bind(host, port, backlog);
  l.closed_ = std::make_shared<std::atomic<bool>>(false);
  return l;
}

std::optional<Stream> Listener::accept() {
  static ThrottledReport report;
  for (;;) {
    if (closed_->load()) return std::nullopt;
    try {
      return Stream(l_.accept());
    } catch (const std::system_error& e) {
      if (closed_->load()) return std::nullopt;
      if (e.code() == std::errc::connection_aborted || e.code() == std::errc::interrupted) continue;
      report(std::string(e.what()) + " (retrying)");
      sleep_for(Millis(10));
    }
  }
}

std::uint16_t Listener::port() const { return l_.local_port(); }

void Listener::close() noexcept {
  if (!closed_ || closed_->exchange(true)) return;
  l_.close();  // wakes the fiber in accept() and waits for it to leave
}

void go(std::function<void()> fn) { tendril::spawn(std::move(fn)).detach(); }

void sleep_for(Millis d) { tendril::this_fiber::sleep_for(d); }

CallScope::CallScope(std::chrono::steady_clock::time_point deadline) : scope_(deadline) {}
CallScope::~CallScope() = default;

void CallScope::go(std::function<void()> fn) {
  scope_.spawn([fn = std::move(fn)] {
    try {
      fn();
    } catch (...) {
      // Dropped: a call reports its outcome itself, and a scope would cancel
      // the other calls for an exception that escaped.
    }
  });
}

void CallScope::wait() { scope_.join(); }

void on_worker_stack_impl(void (*fn)(void*), void* arg) { tendril::this_fiber::on_worker_stack_impl(fn, arg); }

void serve(unsigned workers, const std::function<void(StopToken&)>& main) {
  tendril::Options o;
  o.workers = workers;
  StopToken stop;
  tendril::run(o.with_environment(), [&] {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    // The workers inherited the blocked mask (block_stop_signals), so the
    // signals wait in this descriptor for the watcher fiber.
    const int sfd = ::signalfd(-1, &s, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) throw std::system_error(errno, std::generic_category(), "signalfd");
    tendril::spawn([&stop, sfd] {
      signalfd_siginfo si{};
      while (tendril::io::poll(sfd, POLLIN) >= 0 && ::read(sfd, &si, sizeof si) != sizeof si) {
      }
      stop.request_stop();
    }).detach();
    main(stop);
  });
}

}  // namespace sample
