// Reading live fibers from any thread without stopping them (the fiber dump
// and the stall watchdog share it). See ParkRecord for why a parked fiber's
// copy is consistent, and include/tendril/debug.hpp for what is reported.
#pragma once

#include <cstdint>
#include <mutex>

#include "runtime/debug/unwind.hpp"
#include "runtime/sched/scheduler.hpp"
#include "tendril/debug.hpp"

namespace tendril::detail {

// The control block of the fiber on a live stack, as place_fiber recorded it
// in the stack side table (the block lives in a FiberCtlCache, off the
// stack). It may belong to a fiber that ended meanwhile (the memory stays
// mapped until the runtime ends): check its id against ls.fiber_id.
inline FiberCtl* fiber_ctl_of(const LiveStack& ls) noexcept {
  return const_cast<FiberCtl*>(static_cast<const FiberCtl*>(ls.ctl));
}

// Calls `fn(info)` for every live fiber of `s`, in id order, with frames for
// parked fibers. Serialised with every other dump by an internal mutex; call
// it off the workers (the dump runs on the blocking() pool).
void for_each_fiber(Scheduler& s, void (*fn)(FiberInfo& info, void* arg), void* arg);

// Frames as the dump prints them: "  #<i> 0x<pc> <function> at <file>:<line>".
std::string format_frames(const std::vector<FiberFrame>& frames);

// Drops the runtime's frames below the fiber's own code: its entry function
// and the context trampoline. With `park_frames`, also the park machinery at
// the top (the public call that parked, tendril::Mutex::lock say, stays).
void trim_runtime_frames(std::vector<FiberFrame>* frames, bool park_frames);

// The spawn site as a word: the callable's type, from the symbol of the
// fiber's ClosureOps (`ops`).
std::string spawn_site_of(Unwinder& u, const void* ops);

// Id and name of a fiber that may be running on another thread (plain reads
// of fields fixed at spawn, taken without synchronisation on purpose).
void read_identity(const FiberCtl* f, FiberId* id, char (&name)[sizeof(FiberCtl::name)]) noexcept;

}  // namespace tendril::detail
