// Shared by the suites that check what tendril writes to stderr: redirects
// fd 2 into an unlinked temporary file for the lifetime of the object.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace tendril_test {

class CaptureStderr {
 public:
  CaptureStderr() {
    std::fflush(stderr);
    char path[] = "/tmp/tendril-test-stderr-XXXXXX";
    fd_ = mkstemp(path);
    unlink(path);
    saved_ = dup(2);
    dup2(fd_, 2);
  }
  ~CaptureStderr() {
    restore();
    close(fd_);
  }
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  std::string text() const {
    std::string s;
    char buf[4096];
    for (off_t off = 0;;) {
      const ssize_t n = pread(fd_, buf, sizeof buf, off);
      if (n <= 0) break;
      s.append(buf, std::size_t(n));
      off += n;
    }
    return s;
  }

 private:
  int fd_ = -1, saved_ = -1;
};

}  // namespace tendril_test
