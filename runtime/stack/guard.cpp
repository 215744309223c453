// Guard zones and the overflow diagnostic (see the design comment in arena.cpp).
//
// uffd mode: guard zones are simply never-resolved parts of the registered
// arena; the fault handler calls report_overflow_and_abort().
// kernel mode: guard zones are MADV_GUARD_INSTALL markers (no VMA split) or,
// before Linux 6.13, PROT_NONE via mprotect; the SIGSEGV handler below runs on
// a per-thread alternate stack (the faulting stack is exactly the one that is
// full) and calls report_overflow_and_abort().
//
// Everything here is async-signal-safe: no malloc, no stdio, no locks.
#include "stack_internal.hpp"
#include "runtime/sched/fork.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

namespace tendril::detail::stack_impl {

namespace {

constexpr int kMadvGuardInstall = 102;  // Linux 6.13+
constexpr int kMadvGuardRemove = 103;
constexpr std::size_t kAltStackBytes = 64 * 1024;

struct sigaction g_previous_segv {};
bool g_handler_installed = false;

// A fixed buffer that formats without allocating.
class Msg {
 public:
  Msg& str(const char* s) {
    while (*s && len_ < sizeof buf_ - 1) buf_[len_++] = *s++;
    return *this;
  }
  Msg& strn(const char* s, std::size_t n) {
    for (std::size_t i = 0; i < n && s[i]; ++i)
      if (len_ < sizeof buf_ - 1) buf_[len_++] = s[i];
    return *this;
  }
  Msg& dec(std::uint64_t v) {
    char tmp[24];
    int n = 0;
    do tmp[n++] = char('0' + v % 10); while (v /= 10);
    while (n && len_ < sizeof buf_ - 1) buf_[len_++] = tmp[--n];
    return *this;
  }
  Msg& hex(std::uintptr_t v) {
    str("0x");
    char tmp[20];
    int n = 0;
    do tmp[n++] = "0123456789abcdef"[v & 15]; while (v >>= 4);
    while (n && len_ < sizeof buf_ - 1) buf_[len_++] = tmp[--n];
    return *this;
  }
  void write_stderr() {
    std::size_t off = 0;
    while (off < len_) {
      ssize_t n = ::write(2, buf_ + off, len_ - off);
      if (n <= 0 && errno != EINTR) return;
      if (n > 0) off += std::size_t(n);
    }
  }

 private:
  char buf_[512];
  std::size_t len_ = 0;
};

// Not a guard-zone fault: behave as if we had never been installed.
void chain_to_previous(int sig, siginfo_t* info, void* uctx) {
  const struct sigaction& prev = g_previous_segv;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, uctx);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  // Default action: restore it and return; the faulting instruction re-runs
  // and the kernel kills the process with SIGSEGV as usual.
  signal(sig, SIG_DFL);
}

void on_segv(int sig, siginfo_t* info, void* uctx) {
  auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  Located loc = locate_any(addr);
  if (loc.found() && addr < reinterpret_cast<std::uintptr_t>(loc.lo)) report_overflow_and_abort(loc, addr);
  // A fork() child has no mapping of the parent's rings (MADV_DONTFORK).
  if (forked_from_running_runtime()) die_used_after_fork("a memory access faulted (the parent's I/O rings?)");
  chain_to_previous(sig, info, uctx);
}

struct AltStack {
  void* mem = nullptr;
  ~AltStack() {
    if (!mem) return;
    stack_t off{};
    off.ss_flags = SS_DISABLE;
    sigaltstack(&off, nullptr);
    munmap(mem, kAltStackBytes);
  }
};
thread_local AltStack t_altstack;

}  // namespace

void log_line(const char* text) noexcept { Msg().str("tendril: ").str(text).str("\n").write_stderr(); }

[[noreturn]] void report_overflow_and_abort(const Located& loc, std::uintptr_t addr) noexcept {
  const SlotMeta& m = loc.arena->meta[loc.slot];
  char name[kSlotNameBytes] = {};
  // May race with stack_set_owner; a torn name is fine here.
  if (m.named.load(std::memory_order_acquire) != 0) std::memcpy(name, loc.arena->names[loc.slot].text, sizeof name);
  Msg msg;
  msg.str("tendril: fiber stack overflow: fiber ")
      .dec(m.fiber_id.load(std::memory_order_relaxed))
      .str(" \"")
      .strn(name, sizeof name)
      .str("\" exceeded its stack limit of ")
      .dec(std::uint64_t(loc.hi - loc.lo))
      .str(" bytes: fault at ")
      .hex(addr)
      .str(", ")
      .dec(std::uint64_t(reinterpret_cast<std::uintptr_t>(loc.lo) - addr))
      .str(" bytes below the stack's lowest usable address (stack ")
      .hex(reinterpret_cast<std::uintptr_t>(loc.lo))
      .str("-")
      .hex(reinterpret_cast<std::uintptr_t>(loc.hi))
      .str(")\n");
  msg.write_stderr();
  abort();
}

bool guard_probe_madvise() noexcept {
  void* p = mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  bool ok = madvise(p, kPage, kMadvGuardInstall) == 0;
  munmap(p, 2 * kPage);
  return ok;
}

// Moves a slot's guard from [base, base+old_guard) to [base, base+new_guard).
// Only the difference is touched, so reusing a slot with the same limit is free.
bool guard_set(char* base, std::size_t old_guard, std::size_t new_guard) noexcept {
  if (old_guard == new_guard) return true;
  char* from = base + (old_guard < new_guard ? old_guard : new_guard);
  std::size_t len = old_guard < new_guard ? new_guard - old_guard : old_guard - new_guard;
  bool grow_guard = new_guard > old_guard;
  if (g_stacks.guard_madvise) return madvise(from, len, grow_guard ? kMadvGuardInstall : kMadvGuardRemove) == 0;
  return mprotect(from, len, grow_guard ? PROT_NONE : PROT_READ | PROT_WRITE) == 0;
}

void guard_install_signal_handler() noexcept {
  if (g_handler_installed) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_previous_segv);
  g_handler_installed = true;
}

void guard_remove_signal_handler() noexcept {
  if (!g_handler_installed) return;
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  g_handler_installed = false;
}

void guard_thread_altstack() noexcept {
  if (t_altstack.mem) return;
  stack_t cur{};
  if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;  // someone set one already
  void* mem = mmap(nullptr, kAltStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return;
  stack_t ss{};
  ss.ss_sp = mem;
  ss.ss_size = kAltStackBytes;
  if (sigaltstack(&ss, nullptr) != 0) {
    munmap(mem, kAltStackBytes);
    return;
  }
  t_altstack.mem = mem;
}

}  // namespace tendril::detail::stack_impl
