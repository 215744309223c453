// tendril::fibers() and tendril::dump_fibers() (see include/tendril/debug.hpp).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/debug/inspect.hpp"
#include "runtime/stack/stack.hpp"
#include "tendril/blocking.hpp"
#include "tendril/scope.hpp"

namespace tendril {

const char* to_string(WaitReason r) noexcept {
  switch (r) {
    case WaitReason::none: return "none";
    case WaitReason::mutex: return "mutex";
    case WaitReason::condvar: return "condvar";
    case WaitReason::semaphore: return "semaphore";
    case WaitReason::wait_group: return "wait group";
    case WaitReason::channel_send: return "channel send";
    case WaitReason::channel_recv: return "channel recv";
    case WaitReason::join: return "join";
    case WaitReason::sleep: return "sleep";
    case WaitReason::io_read: return "io read";
    case WaitReason::io_write: return "io write";
    case WaitReason::io_poll: return "io poll";
    case WaitReason::net_accept: return "net accept";
    case WaitReason::net_read: return "net read";
    case WaitReason::net_write: return "net write";
    case WaitReason::net_connect: return "net connect";
    case WaitReason::blocking_call: return "blocking call";
    case WaitReason::select: return "select";
  }
  return "unknown";
}

const char* to_string(FiberState s) noexcept {
  switch (s) {
    case FiberState::running: return "running";
    case FiberState::runnable: return "runnable";
    case FiberState::parked: return "parked";
  }
  return "unknown";
}

}  // namespace tendril

namespace tendril::detail {

namespace {

std::mutex g_dump_mu;

// Deepest part of a parked stack worth copying: frames beyond it are cut.
constexpr std::size_t kMaxCopyBytes = 256 * 1024;

struct Snapshot {
  std::uint64_t wait = 0;
  std::uintptr_t fctx = 0;
  std::int64_t since = 0;
  FiberId id = 0;
  char name[sizeof(FiberCtl::name)] = {};
  const void* ops = nullptr;
};

// Plain reads of fields other threads write: the caller validates them.
TENDRIL_RACY_READER Snapshot read_ctl(const FiberCtl* f) noexcept {
  Snapshot s;
  s.wait = f->park.wait.load(std::memory_order_acquire);
  s.fctx = reinterpret_cast<std::uintptr_t>(*static_cast<void* const volatile*>(
      static_cast<const void*>(&f->ctx.fctx)));
  s.since = *static_cast<const volatile std::int64_t*>(&f->park.since);
  read_identity(f, &s.id, s.name);
  s.ops = *static_cast<const void* const volatile*>(static_cast<const void*>(&f->ops));
  return s;
}

// The reader side of the park record's seqlock (see ParkRecord): after the
// copy, the same parked `wait` word and the same saved context mean the fiber
// did not run while it was copied.
TENDRIL_RACY_READER bool unchanged(const FiberCtl* f, const Snapshot& before) noexcept {
  std::atomic_thread_fence(std::memory_order_acquire);
  const std::uint64_t w = f->park.wait.load(std::memory_order_relaxed);
  const auto fctx = reinterpret_cast<std::uintptr_t>(*static_cast<void* const volatile*>(
      static_cast<const void*>(&f->ctx.fctx)));
  return w == before.wait && fctx == before.fctx;
}

// Copies a parked fiber's stack from its saved sp up to the top of the slot
// and unwinds the copy. False if the fiber ran meanwhile.
bool frames_of_parked(Unwinder& u, const FiberCtl* f, const StackSlot& slot, const Snapshot& snap,
                      std::vector<FiberFrame>* out) {
  const auto lo = reinterpret_cast<std::uintptr_t>(slot.lo), hi = reinterpret_cast<std::uintptr_t>(slot.hi);
  if (snap.fctx < lo || snap.fctx >= hi) return false;  // being switched (fctx null) or not ours
  StackImage img;
  img.lo = snap.fctx & ~std::uintptr_t{7};
  const std::size_t n = std::min<std::size_t>((hi - img.lo) & ~std::size_t{7}, kMaxCopyBytes);
  img.words.resize(n / 8);
  copy_stack_words(img.words.data(), reinterpret_cast<const void*>(img.lo), n);
  if (!unchanged(f, snap)) return false;
  MachineRegs regs;
  if (!regs_from_saved_context(img, snap.fctx, &regs)) return false;
  *out = u.backtrace(regs, img);
  trim_runtime_frames(out, /*park_frames=*/true);
  return true;
}

int running_worker(Scheduler& s, const FiberCtl* f) noexcept {
  for (unsigned i = 0; i < s.worker_count(); ++i)
    if (s.worker(i).current() == f) return int(i);
  return -1;
}

}  // namespace

void trim_runtime_frames(std::vector<FiberFrame>* frames, bool park_frames) {
  auto& v = *frames;
  std::size_t first = 0;
  while (park_frames && first + 1 < v.size() && v[first].function.rfind("tendril::detail::", 0) == 0) ++first;
  std::size_t end = v.size();
  for (std::size_t i = first; i < v.size(); ++i)
    if (v[i].function.find("fiber_entry(") != std::string::npos) {
      end = i;
      break;
    }
  v = std::vector<FiberFrame>(v.begin() + long(first), v.begin() + long(end));
}

std::string format_frames(const std::vector<FiberFrame>& frames) {
  std::string s;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const FiberFrame& fr = frames[i];
    char pc[32];
    std::snprintf(pc, sizeof pc, "0x%llx", static_cast<unsigned long long>(fr.pc));
    s += "  #" + std::to_string(i) + " " + pc + " " + (fr.function.empty() ? "??" : fr.function);
    if (!fr.file.empty()) s += " at " + fr.file + ":" + std::to_string(fr.line);
    s += "\n";
  }
  return s;
}

TENDRIL_RACY_READER void read_identity(const FiberCtl* f, FiberId* id,
                                       char (&name)[sizeof(FiberCtl::name)]) noexcept {
  *id = *static_cast<const volatile FiberId*>(&f->id);
  for (std::size_t i = 0; i < sizeof name; ++i) name[i] = static_cast<const volatile char*>(f->name)[i];
  name[sizeof name - 1] = '\0';
}

std::string spawn_site_of(Unwinder& u, const void* ops) {
  std::string sym = u.symbol_name(reinterpret_cast<std::uintptr_t>(ops));
  // "tendril::detail::closure_ops<T>": the callable's type is the useful part.
  // "tendril::detail::closure_ops<tendril::spawn<T>(...)::{lambda()#1}>": the
  // callable's type T is the useful part.
  for (const char* prefix : {"tendril::detail::closure_ops<", "tendril::spawn<"}) {
    const std::size_t n = std::strlen(prefix);
    if (sym.compare(0, n, prefix) != 0) continue;
    int depth = 1;
    std::size_t i = n;
    for (; i < sym.size() && depth > 0; ++i) depth += sym[i] == '<' ? 1 : sym[i] == '>' ? -1 : 0;
    if (depth == 0) sym = sym.substr(n, i - 1 - n);
  }
  return sym.empty() ? "?" : sym;
}

// A fiber spawned with a deferred stack that has not run yet: no stack, so
// the walk of live stacks does not see it (see FiberCtl::start_closure).
// A freed record keeps its last tenant's stack (or, for one that never
// ran, had it cleared), so only a live unstarted fiber matches; one that
// binds its stack while we look may be listed twice, which the caller undoes.
TENDRIL_RACY_READER bool looks_unstarted(const FiberCtl* f) noexcept {
  return *static_cast<void* const volatile*>(static_cast<const void*>(&f->ctx.fctx)) == nullptr &&
         *static_cast<char* const volatile*>(&f->stack.lo) == nullptr &&
         *static_cast<const volatile std::size_t*>(&f->stack.limit) != 0 &&
         *static_cast<const volatile FiberId*>(&f->id) != 0;
}

struct Unstarted {
  const FiberCtl* f;
  FiberId id;
};

std::vector<Unstarted> collect_unstarted(Scheduler& s) {
  std::vector<Unstarted> out;
  for (unsigned home = 0; home <= s.external_stack_index(); ++home) {
    s.ctl_cache(home).for_each_carved(
        [](const FiberCtl* f, void* v) {
          if (!looks_unstarted(f)) return;
          static_cast<std::vector<Unstarted>*>(v)->push_back({f, *static_cast<const volatile FiberId*>(&f->id)});
        },
        &out);
  }
  return out;
}

// What the dump says of the fiber whose stack `ls` is; false if there is
// nothing to say (being spawned, finished, or not the fiber `ls` names).
bool describe_fiber(Scheduler& s, Unwinder& u, const LiveStack& ls, FiberInfo* out) {
  FiberCtl* f = fiber_ctl_of(ls);
  if (ls.fiber_id == 0 || f == nullptr) return false;  // being spawned
  Snapshot snap = read_ctl(f);
  if (snap.id != ls.fiber_id) return false;  // spawned or finished meanwhile
  // Finished, its stack kept only for a Fiber handle not joined yet.
  if (f->join_state.load(std::memory_order_acquire) == FiberCtl::kDone) return false;
  FiberInfo& info = *out;
  info.id = snap.id;
  info.name = snap.name;
  info.stack_mapped = std::size_t(ls.mapped_pages) * 4096;
  info.stack_high_water = ls.high_water;
  info.spawn_site = spawn_site_of(u, snap.ops);
  for (int attempt = 0; attempt < 3; ++attempt) {
    const WaitFor what(snap.wait, 0);
    info.worker = running_worker(s, f);
    if (what.reason() != WaitReason::none) {
      info.state = FiberState::parked;
      info.reason = what.reason();
      info.fd = names_fd(what.reason()) ? what.fd() : -1;
      info.worker = int((snap.wait >> WaitFor::kWorkerShift) & 0xff);
      info.parked_for = std::chrono::nanoseconds(std::max<std::int64_t>(0, park_clock_ns() - snap.since));
      if (!frames_of_parked(u, f, ls.slot, snap, &info.frames)) {
        info.frames.clear();
        snap = read_ctl(f);
        if (snap.id != ls.fiber_id) break;
        continue;  // it ran meanwhile: look again
      }
    } else {
      info.state = info.worker >= 0 ? FiberState::running : FiberState::runnable;
    }
    break;
  }
  return true;
}

// A fiber the walk of records found without a stack and the walk of live
// stacks did not list: still waiting for its first run (runnable, no frames),
// or, if it has got its stack since, described as the others are.
TENDRIL_RACY_READER bool describe_unstarted(Scheduler& s, Unwinder& u, const Unstarted& c, FiberInfo* out) {
  if (*static_cast<const volatile FiberId*>(&c.f->id) != c.id) return false;  // ended meanwhile
  if (!looks_unstarted(c.f)) {
    LiveStack ls;
    ls.slot.lo = *static_cast<char* const volatile*>(&c.f->stack.lo);
    ls.slot.hi = *static_cast<char* const volatile*>(&c.f->stack.hi);
    ls.slot.limit = *static_cast<const volatile std::size_t*>(&c.f->stack.limit);
    ls.fiber_id = c.id;
    ls.ctl = c.f;
    return ls.slot.lo != nullptr && describe_fiber(s, u, ls, out);
  }
  const Snapshot snap = read_ctl(c.f);
  if (snap.id != c.id) return false;
  out->id = snap.id;
  out->name = snap.name;
  out->state = FiberState::runnable;
  out->spawn_site = spawn_site_of(u, snap.ops);
  return true;
}

void for_each_fiber(Scheduler& s, void (*fn)(FiberInfo& info, void* arg), void* arg) {
  std::lock_guard<std::mutex> lock(g_dump_mu);
  // First the fibers without stacks: one that gets its stack after this
  // look is still found below, by one walk or the other.
  const std::vector<Unstarted> unstarted = collect_unstarted(s);
  std::vector<LiveStack> live;
  stack_for_each_live([](const LiveStack& ls, void* v) { static_cast<std::vector<LiveStack>*>(v)->push_back(ls); },
                      &live);
  std::sort(live.begin(), live.end(), [](const LiveStack& a, const LiveStack& b) { return a.fiber_id < b.fiber_id; });
  Unwinder u;
  std::vector<FiberInfo> infos;
  for (const LiveStack& ls : live) {
    FiberInfo info;
    if (describe_fiber(s, u, ls, &info)) infos.push_back(std::move(info));
  }
  const std::size_t with_stacks = infos.size();
  for (const Unstarted& c : unstarted) {
    const bool listed = std::binary_search(infos.begin(), infos.begin() + std::ptrdiff_t(with_stacks), c.id,
                                           [](const auto& a, const auto& b) {
                                             if constexpr (std::is_same_v<std::decay_t<decltype(a)>, FiberInfo>)
                                               return a.id < b;
                                             else
                                               return a < b.id;
                                           });
    FiberInfo info;
    if (!listed && describe_unstarted(s, u, c, &info)) infos.push_back(std::move(info));
  }
  std::sort(infos.begin(), infos.end(), [](const FiberInfo& a, const FiberInfo& b) { return a.id < b.id; });
  for (FiberInfo& info : infos) fn(info, arg);
}

}  // namespace tendril::detail

namespace tendril {

namespace {

std::string format_duration(std::chrono::nanoseconds d) {
  const long long ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  char buf[48];
  if (ms < 1000) std::snprintf(buf, sizeof buf, "%lld ms", ms);
  else if (ms < 120000) std::snprintf(buf, sizeof buf, "%lld s", ms / 1000);
  else std::snprintf(buf, sizeof buf, "%lld min", ms / 60000);
  return buf;
}

}  // namespace

std::string format_fiber(const FiberInfo& f) {
  std::string s = "fiber " + std::to_string(f.id) + " \"" + f.name + "\" [";
  if (f.state == FiberState::parked) {
    s += "parked: ";
    s += to_string(f.reason);
    if (f.fd >= 0) s += " fd=" + std::to_string(f.fd);
    s += ", " + format_duration(f.parked_for);
  } else {
    s += to_string(f.state);
  }
  s += "]";
  s += f.worker >= 0 ? " worker " + std::to_string(f.worker) : std::string(" worker -");
  const std::size_t pages = f.stack_mapped / 4096;
  s += ", " + std::to_string(pages) + (pages == 1 ? " page" : " pages") + " mapped, high water " +
       std::to_string(f.stack_high_water / 1024) + " KiB, spawned as " + f.spawn_site + "\n";
  if (f.frames.empty() && f.state != FiberState::parked)
    s += "  (frames not taken: the fiber is " + std::string(to_string(f.state)) + ")\n";
  else if (f.frames.empty())
    s += "  (frames not taken: the fiber ran while it was read)\n";
  return s + detail::format_frames(f.frames);
}

std::vector<FiberInfo> fibers() {
  detail::Scheduler* s = detail::current_scheduler();
  std::vector<FiberInfo> out;
  if (s == nullptr) return out;
  // From a fiber the work runs on the blocking() pool: the worker goes on
  // running fibers, and the caller shows in the dump parked in "blocking
  // call", with its frames. Not a cancellation point: the call uses `out`.
  const this_fiber::NoCancel no_cancel;
  blocking([&] {
    detail::for_each_fiber(*s, [](FiberInfo& f, void* v) { static_cast<std::vector<FiberInfo>*>(v)->push_back(std::move(f)); },
                           &out);
  });
  return out;
}

namespace {

struct DumpWriter {
  int fd;
  bool failed = false;
  std::size_t count = 0;
  void write_all(const std::string& s) {
    std::size_t off = 0;
    while (!failed && off < s.size()) {
      const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) failed = true;
      else off += std::size_t(n);
    }
  }
};

}  // namespace

void dump_fibers(int fd) {
  detail::Scheduler* s = detail::current_scheduler();
  if (s == nullptr) return;
  // A closed pipe ends the dump quietly instead of killing the process.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  DumpWriter out{fd};
  const this_fiber::NoCancel no_cancel;  // the call uses `out`: wait for it
  blocking([&] {
    out.write_all("tendril: fiber dump (" + std::to_string(s->worker_count()) + " workers)\n");
    detail::for_each_fiber(*s,
                           [](FiberInfo& f, void* v) {
                             auto* w = static_cast<DumpWriter*>(v);
                             w->write_all(format_fiber(f));
                             ++w->count;
                           },
                           &out);
    out.write_all("tendril: " + std::to_string(out.count) + " fibers\n");
  });
  if (out.failed) {
    const timespec zero{0, 0};
    sigtimedwait(&pipe_set, nullptr, &zero);  // take the SIGPIPE our write raised
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
}

}  // namespace tendril
