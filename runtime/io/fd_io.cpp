// tendril::io: read/write/poll on any descriptor (see include/tendril/io.hpp).
#include "tendril/io.hpp"

#include <algorithm>
#include <string>
#include <system_error>

#include "runtime/io/io_internal.hpp"

namespace tendril::io {

namespace {

namespace rt = ::tendril::detail;

constexpr std::size_t kMaxChunk = 0x7ffff000;  // the most one read(2) transfers

long run(rt::IoRequest& r, const std::chrono::nanoseconds* timeout, const char* what) {
  rt::Deadline d;
  if (timeout != nullptr) d = std::chrono::steady_clock::now() + *timeout;
  const long res = rt::io_perform(r, timeout != nullptr ? &d : nullptr);
  if (res < 0) {
    throw std::system_error(static_cast<int>(-res), std::generic_category(),
                            std::string("tendril::io::") + what + " on fd " + std::to_string(r.fd));
  }
  return res;
}

std::size_t do_read(int fd, void* buf, std::size_t n, const std::chrono::nanoseconds* timeout) {
  rt::IoRequest r;
  r.kind = rt::OpKind::read;
  r.fd = fd;
  r.buf = buf;
  r.len = std::min(n, kMaxChunk);
  return static_cast<std::size_t>(run(r, timeout, "read"));
}

std::size_t do_write(int fd, const void* buf, std::size_t n, const std::chrono::nanoseconds* timeout) {
  rt::IoRequest r;
  r.kind = rt::OpKind::write;
  r.fd = fd;
  r.buf = const_cast<void*>(buf);
  r.len = std::min(n, kMaxChunk);
  return static_cast<std::size_t>(run(r, timeout, "write"));
}

short do_poll(int fd, short events, const std::chrono::nanoseconds* timeout) {
  rt::IoRequest r;
  r.kind = rt::OpKind::poll;
  r.fd = fd;
  r.events = events;
  return static_cast<short>(run(r, timeout, "poll"));
}

}  // namespace

std::size_t read(int fd, void* buf, std::size_t n) { return do_read(fd, buf, n, nullptr); }
std::size_t read(int fd, void* buf, std::size_t n, std::chrono::nanoseconds timeout) {
  return do_read(fd, buf, n, &timeout);
}
std::size_t write(int fd, const void* buf, std::size_t n) { return do_write(fd, buf, n, nullptr); }
std::size_t write(int fd, const void* buf, std::size_t n, std::chrono::nanoseconds timeout) {
  return do_write(fd, buf, n, &timeout);
}
short poll(int fd, short events) { return do_poll(fd, events, nullptr); }
short poll(int fd, short events, std::chrono::nanoseconds timeout) {
  return do_poll(fd, events, &timeout);
}

}  // namespace tendril::io
