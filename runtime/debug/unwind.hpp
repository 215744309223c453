// Backtraces of stacks that are not running: a parked fiber's, read from its
// saved registers, or a running fiber's, sampled by a signal (the stall
// watchdog). Both are first copied (StackImage), then unwound from the copy
// with the program's call-frame information and symbolized from its symbol
// tables and debug info (elfutils' libdwfl: .symtab of the executable, so a
// program without -rdynamic still shows its own functions; file:line where
// there is DWARF). Nothing here runs on a hot path or in a signal handler
// except copy_stack_words and the register capture.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tendril/debug.hpp"

// For functions that read another fiber's stack or control block on purpose,
// without synchronisation, and validate what they read afterwards: no
// sanitizer checks (the stack may be partly poisoned by ASan, and the reads
// race with the fiber by design).
#if defined(__clang__)
#define TENDRIL_RACY_READER __attribute__((no_sanitize("address", "thread")))
#else
#define TENDRIL_RACY_READER __attribute__((no_sanitize_address, no_sanitize_thread))
#endif

namespace tendril::detail {

// The callee-saved registers a switch preserves, plus pc and sp: what
// unwinding needs for the first frame.
struct MachineRegs {
  std::uint64_t rip = 0, rsp = 0, rbp = 0, rbx = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
  bool pc_is_exact = false;  // true: rip is where the thread stopped (a signal), not a return address
};

// A copy of [lo, lo + bytes.size()) of some stack.
struct StackImage {
  std::uintptr_t lo = 0;
  std::vector<std::uint64_t> words;
  std::size_t size() const noexcept { return words.size() * 8; }
};

// Copies `n` bytes (a multiple of 8) at `src` into `dst` one word at a time,
// without sanitizer checks: the stack belongs to another fiber and may be
// partly poisoned by ASan or written meanwhile (the caller validates).
void copy_stack_words(std::uint64_t* dst, const void* src, std::size_t n) noexcept;

// Registers a parked fiber's context saved (Boost.Context's fcontext on
// x86-64: r12..r15, rbx, rbp and the return address above the saved sp).
// `fctx` points into `img`.
bool regs_from_saved_context(const StackImage& img, std::uintptr_t fctx, MachineRegs* out) noexcept;

class Unwinder {
 public:
  Unwinder();
  ~Unwinder();
  Unwinder(const Unwinder&) = delete;
  Unwinder& operator=(const Unwinder&) = delete;

  bool ok() const noexcept { return dwfl_ != nullptr; }
  // Frames of the stack in `img` starting from `regs`, innermost first.
  std::vector<FiberFrame> backtrace(const MachineRegs& regs, const StackImage& img, int max_frames = 64);
  // Frames for program counters already collected (innermost first; all but
  // the first are return addresses).
  std::vector<FiberFrame> symbolize(const std::uintptr_t* pcs, int n);
  // The symbol covering `addr` (a function or a data object), demangled; "".
  std::string symbol_name(std::uintptr_t addr);

 private:
  FiberFrame frame_for(std::uintptr_t pc, bool is_return_address);

  void* dwfl_ = nullptr;  // Dwfl*
  const MachineRegs* regs_ = nullptr;  // of the unwind in progress
  const StackImage* img_ = nullptr;
  std::unordered_map<std::uintptr_t, FiberFrame> cache_;
  friend struct UnwinderAccess;
};

}  // namespace tendril::detail
