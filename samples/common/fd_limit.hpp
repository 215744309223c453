// sample::raise_fd_limit(): servers and load generators hold a descriptor per
// connection. Header-only so the bench programs can use it without the
// samples' runtime shim.
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace sample {

// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft
// limit (children inherit it).
inline std::uint64_t raise_fd_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

}  // namespace sample
