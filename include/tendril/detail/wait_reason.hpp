// Internal: what a parked fiber waits for, packed into the one word that every
// park stores (see ParkRecord in runtime/sched/fiber_ctl.hpp). The enum itself
// is public: <tendril/debug.hpp> reports it in FiberInfo.
#pragma once

#include <cstdint>

namespace tendril {

// Why a fiber is parked. `none`: it is running or runnable.
enum class WaitReason : std::uint8_t {
  none = 0,
  mutex,
  condvar,
  semaphore,
  wait_group,
  channel_send,
  channel_recv,
  join,
  sleep,
  io_read,
  io_write,
  io_poll,
  net_accept,
  net_read,
  net_write,
  net_connect,
  blocking_call,
  select,
};

// The words the fiber dump prints: "mutex", "channel recv", "net read", ...
const char* to_string(WaitReason r) noexcept;

// True for the reasons that name a descriptor (io_*, net_*).
constexpr bool names_fd(WaitReason r) noexcept {
  return r >= WaitReason::io_read && r <= WaitReason::net_connect;
}

namespace detail {

// A wait as the park path records it: the reason in bits 0-7, the descriptor
// (as 32 unsigned bits; -1 when there is none) in bits 8-39. The park record
// adds the worker the fiber parked on in bits 40-47 and a park sequence number
// in bits 48-63 of the same word, so that a reader on another thread can tell
// that a fiber it inspected never ran in between (see ParkRecord).
struct WaitFor {
  std::uint64_t bits;

  constexpr WaitFor(WaitReason r, int fd = -1) noexcept
      : bits(std::uint64_t(r) | (std::uint64_t(std::uint32_t(fd)) << 8)) {}
  constexpr explicit WaitFor(std::uint64_t word, int) noexcept : bits(word & kWhatMask) {}

  static constexpr std::uint64_t kWhatMask = (std::uint64_t{1} << 40) - 1;
  static constexpr std::uint64_t kReasonMask = 0xff;
  static constexpr unsigned kWorkerShift = 40;
  static constexpr unsigned kSeqShift = 48;

  constexpr WaitReason reason() const noexcept { return WaitReason(bits & kReasonMask); }
  constexpr int fd() const noexcept { return int(std::uint32_t(bits >> 8)); }
};

}  // namespace detail
}  // namespace tendril
