// Unwinding copied stacks and symbolizing with elfutils' libdwfl (see unwind.hpp).
#include "runtime/debug/unwind.hpp"

#include <cxxabi.h>
#include <elfutils/libdwfl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace tendril::detail {

TENDRIL_RACY_READER void copy_stack_words(std::uint64_t* dst, const void* src, std::size_t n) noexcept {
  const volatile std::uint64_t* s = static_cast<const volatile std::uint64_t*>(src);
  for (std::size_t i = 0; i < n / 8; ++i) dst[i] = s[i];
}

namespace {

// Word at `addr` of the image, if the image holds it.
bool read_image(const StackImage& img, std::uintptr_t addr, std::uint64_t* out) noexcept {
  if (addr < img.lo || addr + 8 > img.lo + img.size() || (addr & 7) != 0) return false;
  *out = img.words[(addr - img.lo) / 8];
  return true;
}

// Boost.Context's jump_fcontext on x86-64 (System V) saves, from the saved
// sp upward: mxcsr/x87 control word, r12, r13, r14, r15, rbx, rbp, and the
// return address; the caller's sp is 0x40 above the saved sp.
constexpr std::uintptr_t kFctxR12 = 0x08, kFctxR13 = 0x10, kFctxR14 = 0x18, kFctxR15 = 0x20,
                         kFctxRbx = 0x28, kFctxRbp = 0x30, kFctxRip = 0x38, kFctxSize = 0x40;

std::string demangle(const char* name) {
  if (name == nullptr) return {};
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || d == nullptr) return name;
  std::string s(d);
  std::free(d);
  return s;
}

}  // namespace

bool regs_from_saved_context(const StackImage& img, std::uintptr_t fctx, MachineRegs* r) noexcept {
  return read_image(img, fctx + kFctxR12, &r->r12) && read_image(img, fctx + kFctxR13, &r->r13) &&
         read_image(img, fctx + kFctxR14, &r->r14) && read_image(img, fctx + kFctxR15, &r->r15) &&
         read_image(img, fctx + kFctxRbx, &r->rbx) && read_image(img, fctx + kFctxRbp, &r->rbp) &&
         read_image(img, fctx + kFctxRip, &r->rip) && ((r->rsp = fctx + kFctxSize), (r->pc_is_exact = false), true);
}

struct UnwinderAccess {
  static Unwinder* self(void* arg) { return static_cast<Unwinder*>(arg); }

  // One pseudo-thread: the stack image being unwound. Its id is our pid so
  // that libdwfl never confuses it with a real thread it could ptrace.
  static pid_t next_thread(Dwfl*, void*, void** thread_argp) {
    if (*thread_argp != nullptr) return 0;
    *thread_argp = reinterpret_cast<void*>(1);
    return getpid();
  }
  static bool get_thread(Dwfl*, pid_t, void*, void** thread_argp) {
    *thread_argp = reinterpret_cast<void*>(1);
    return true;
  }
  static bool memory_read(Dwfl*, Dwarf_Addr addr, Dwarf_Word* result, void* arg) {
    std::uint64_t v;
    if (!read_image(*self(arg)->img_, addr, &v)) return false;
    *result = v;
    return true;
  }
  static bool set_initial_registers(Dwfl_Thread* thread, void*) {
    Unwinder* u = g_current;
    if (u == nullptr || u->regs_ == nullptr) return false;
    const MachineRegs& r = *u->regs_;
    // DWARF numbering on x86-64: 3 rbx, 6 rbp, 7 rsp, 12-15 r12-r15, 16 rip.
    const Dwarf_Word rbx = r.rbx, bp_sp[2] = {r.rbp, r.rsp}, r12_15[4] = {r.r12, r.r13, r.r14, r.r15};
    return dwfl_thread_state_registers(thread, 3, 1, &rbx) && dwfl_thread_state_registers(thread, 6, 2, bp_sp) &&
           dwfl_thread_state_registers(thread, 12, 4, r12_15) &&
           (dwfl_thread_state_register_pc(thread, r.rip), true);
  }
  static thread_local Unwinder* g_current;
};

thread_local Unwinder* UnwinderAccess::g_current = nullptr;

namespace {

// Debug info is taken from the files themselves (a program built with -g
// carries it). No separate debuginfo search: libdw's standard one loads
// libdebuginfod (and curl with it) into the process, may reach for the
// network, and maps dozens of libraries in the middle of a dump.
int no_separate_debuginfo(Dwfl_Module*, void**, const char*, Dwarf_Addr, const char*, const char*, GElf_Word,
                          char**) {
  return -1;
}

const Dwfl_Callbacks kProcCallbacks = {dwfl_linux_proc_find_elf, no_separate_debuginfo, nullptr, nullptr};

const Dwfl_Thread_Callbacks kThreadCallbacks = {
    UnwinderAccess::next_thread, UnwinderAccess::get_thread, UnwinderAccess::memory_read,
    UnwinderAccess::set_initial_registers, nullptr, nullptr};

Dwfl* as_dwfl(void* p) { return static_cast<Dwfl*>(p); }

}  // namespace

Unwinder::Unwinder() {
  Dwfl* d = dwfl_begin(&kProcCallbacks);
  if (d == nullptr) return;
  dwfl_report_begin(d);
  if (dwfl_linux_proc_report(d, getpid()) != 0 || dwfl_report_end(d, nullptr, nullptr) != 0 ||
      !dwfl_attach_state(d, nullptr, getpid(), &kThreadCallbacks, this)) {
    dwfl_end(d);
    return;
  }
  dwfl_ = d;
}

Unwinder::~Unwinder() {
  if (dwfl_ != nullptr) dwfl_end(as_dwfl(dwfl_));
}

namespace {
struct FrameCollector {
  std::vector<std::uintptr_t> pcs;
  std::vector<bool> exact;
  int max;
};
int collect_frame(Dwfl_Frame* frame, void* arg) {
  auto* c = static_cast<FrameCollector*>(arg);
  Dwarf_Addr pc = 0;
  bool activation = false;
  if (!dwfl_frame_pc(frame, &pc, &activation) || pc == 0) return DWARF_CB_ABORT;
  c->pcs.push_back(pc);
  c->exact.push_back(activation);
  return int(c->pcs.size()) >= c->max ? DWARF_CB_ABORT : DWARF_CB_OK;
}
}  // namespace

std::vector<FiberFrame> Unwinder::backtrace(const MachineRegs& regs, const StackImage& img, int max_frames) {
  std::vector<FiberFrame> out;
  if (dwfl_ == nullptr) return out;
  FrameCollector c{{}, {}, max_frames};
  regs_ = &regs;
  img_ = &img;
  UnwinderAccess::g_current = this;
  dwfl_getthread_frames(as_dwfl(dwfl_), getpid(), collect_frame, &c);
  UnwinderAccess::g_current = nullptr;
  regs_ = nullptr;
  img_ = nullptr;
  // The first frame's pc is a return address unless the stack was sampled
  // where it stopped (libdwfl calls the first frame an activation either way).
  for (std::size_t i = 0; i < c.pcs.size(); ++i) {
    const bool exact = i == 0 ? regs.pc_is_exact : bool(c.exact[i]);
    out.push_back(frame_for(c.pcs[i], !exact));
  }
  return out;
}

std::vector<FiberFrame> Unwinder::symbolize(const std::uintptr_t* pcs, int n) {
  std::vector<FiberFrame> out;
  for (int i = 0; i < n; ++i) out.push_back(frame_for(pcs[i], i != 0));
  return out;
}

FiberFrame Unwinder::frame_for(std::uintptr_t pc, bool is_return_address) {
  // A return address may be the first byte after the call's function (a
  // noreturn call at its end): look up the call instruction instead.
  const std::uintptr_t at = is_return_address ? pc - 1 : pc;
  if (auto it = cache_.find(at); it != cache_.end()) {
    FiberFrame f = it->second;
    f.pc = pc;
    return f;
  }
  FiberFrame f;
  f.pc = pc;
  if (dwfl_ != nullptr) {
    if (Dwfl_Module* m = dwfl_addrmodule(as_dwfl(dwfl_), at)) {
      f.function = demangle(dwfl_module_addrname(m, at));
      if (Dwfl_Line* line = dwfl_module_getsrc(m, at)) {
        int lineno = 0;
        if (const char* file = dwfl_lineinfo(line, nullptr, &lineno, nullptr, nullptr, nullptr)) {
          f.file = file;
          f.line = lineno;
        }
      }
    }
  }
  cache_.emplace(at, f);
  return f;
}

std::string Unwinder::symbol_name(std::uintptr_t addr) {
  if (dwfl_ == nullptr) return {};
  Dwfl_Module* m = dwfl_addrmodule(as_dwfl(dwfl_), addr);
  return m != nullptr ? demangle(dwfl_module_addrname(m, addr)) : std::string();
}

}  // namespace tendril::detail
