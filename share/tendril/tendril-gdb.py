# tendril fibers in gdb: on a live process (gdb -p PID) and on a core file.
#
#   (gdb) source /usr/share/tendril/tendril-gdb.py   # or let gdb auto-load it
#   (gdb) info tendril-fibers        # every live fiber: id, name, state, reason
#   (gdb) tendril-fiber-bt 42        # the backtrace of fiber 42
#
# libtendril is usually built without debug info, so this script does not use
# gdb's type information for the runtime. The library exports one object,
# `tendril_debug` (runtime/debug/gdb_descriptor.cpp): a versioned descriptor
# holding the address of the stack arena's tables and the sizes and offsets of
# the few fields read here. Everything else is plain memory reads, which work
# the same on a running process and on a core.
#
# A parked (or runnable) fiber's registers are in its saved context, on its
# own stack. Its backtrace is taken with gdb's own unwinders: while
# tendril-fiber-bt runs, a Python frame unwinder presents the saved context as
# the caller of the selected thread's innermost frame, so frame 1 onwards is
# the fiber. No register is written, which is what makes it work on cores.
# A running fiber is on some thread's stack: the commands name that thread.
# A fiber that has not run yet has no stack (Options::stack_defer): it is
# found in the control-block caches, listed as runnable and not started, and
# has no frames.

import struct
import time

import gdb
import gdb.unwinder

_MAGIC = 0x4742444C52444E54  # "TNDRLDBG"
_VERSION = 1

# The descriptor's words, in order (see tendril_debug_descriptor).
_FIELDS = (
    "magic version size "
    "stack_runtime runtime_workers runtime_w worker_size worker_arenas worker_tid num_classes "
    "subarena_size subarena_base subarena_stride subarena_carved subarena_meta "
    "slotmeta_size slotmeta_fiber_id slotmeta_limit_pages slotmeta_state slot_live page_size "
    "fiberctl_size fiberctl_align fiberctl_fctx fiberctl_id fiberctl_name fiberctl_name_size "
    "fiberctl_park_wait fiberctl_park_since "
    "wait_reason_mask wait_fd_shift wait_worker_shift reason_count reason_names "
    "reason_fd_first reason_fd_last "
    "fctx_r12 fctx_r13 fctx_r14 fctx_r15 fctx_rbx fctx_rbp fctx_rip fctx_size"
).split()
# Appended later; a descriptor from an older libtendril lacks them.
_OPTIONAL_FIELDS = (
    "subarena_ctl "
    "scheduler scheduler_workers scheduler_external_ctl_cache worker_ctl_cache "
    "ctlcache_regions ctlcache_max_regions ctlcache_carved ctlcache_region_bytes ctlcache_record_bytes "
    "fiberctl_stack_lo fiberctl_stack_limit"
).split()

_MAX_FRAMES = 256


class _Descriptor:
    pass


def _mem(addr, n):
    return bytes(gdb.selected_inferior().read_memory(addr, n))


def _u(data, off, size):
    return int.from_bytes(data[off:off + size], "little")


def _cstr(addr, limit=64):
    data = _mem(addr, limit)
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _descriptor():
    try:
        addr = int(gdb.parse_and_eval("(unsigned long)&tendril_debug"))
    except gdb.error:
        raise gdb.GdbError(
            "tendril: no 'tendril_debug' symbol: is libtendril loaded in this process "
            "(for a core, give gdb the program too: gdb PROGRAM CORE)?")
    head = struct.unpack("<3Q", _mem(addr, 24))
    if head[0] != _MAGIC:
        raise gdb.GdbError("tendril: 'tendril_debug' at 0x%x is not a tendril debug descriptor" % addr)
    if head[1] != _VERSION:
        raise gdb.GdbError("tendril: descriptor version %d, this script reads version %d: "
                           "use the tendril-gdb.py installed with this libtendril" % (head[1], _VERSION))
    if head[2] < 8 * len(_FIELDS):
        raise gdb.GdbError("tendril: descriptor too short (%d bytes)" % head[2])
    names = _FIELDS + [f for i, f in enumerate(_OPTIONAL_FIELDS) if head[2] >= 8 * (len(_FIELDS) + i + 1)]
    words = struct.unpack("<%dQ" % len(names), _mem(addr, 8 * len(names)))
    d = _Descriptor()
    for name in _OPTIONAL_FIELDS:
        setattr(d, name, None)
    for name, value in zip(names, words):
        setattr(d, name, value)
    d.reasons = [_cstr(_u(_mem(d.reason_names + 8 * i, 8), 0, 8)) for i in range(d.reason_count)]
    return d


def _is_core():
    inf = gdb.selected_inferior()
    conn = getattr(inf, "connection", None)
    if conn is not None and getattr(conn, "type", None) is not None:
        return conn.type == "core"
    return "core file" in gdb.execute("info target", to_string=True)


class Fiber:
    """One live fiber as read from memory."""

    def __init__(self, d, id, name, lo, hi, fctx, wait, since):
        self.id, self.name, self.lo, self.hi = id, name, lo, hi
        self.fctx, self.since = fctx, since
        reason = wait & d.wait_reason_mask
        self.worker = None
        self.thread = None  # the gdb thread running it
        self.unstarted = False
        if reason:
            self.state = "parked"
            self.reason = d.reasons[reason] if reason < len(d.reasons) else "reason %d" % reason
            if d.reason_fd_first <= reason <= d.reason_fd_last:
                fd = (wait >> d.wait_fd_shift) & 0xFFFFFFFF
                self.reason += " fd=%d" % (fd - (1 << 32) if fd >= 1 << 31 else fd)
            self.worker = (wait >> d.wait_worker_shift) & 0xFF
        else:
            self.state = "runnable" if fctx else "running"
            self.reason = ""


def _live_fibers(d):
    """Every live fiber, in id order, from the stack arena's slot tables."""
    if d.stack_runtime == 0:
        raise gdb.GdbError("tendril: this libtendril has no stack arena to read fibers from")
    rt = _mem(d.stack_runtime, max(d.runtime_workers + 4, d.runtime_w + 8))
    nworkers = _u(rt, d.runtime_workers, 4)
    warray = _u(rt, d.runtime_w, 8)
    fibers = []
    if nworkers == 0 or warray == 0:
        return fibers  # the runtime is not running
    end_of_arena = max(d.subarena_base + 8, d.subarena_stride + 8, d.subarena_carved + 4, d.subarena_meta + 8,
                       (d.subarena_ctl or 0) + 8)
    for w in range(nworkers):
        for c in range(d.num_classes):
            a = warray + w * d.worker_size + d.worker_arenas + c * d.subarena_size
            sa = _mem(a, end_of_arena)
            base = _u(sa, d.subarena_base, 8)
            if base == 0:
                continue
            stride = _u(sa, d.subarena_stride, 8)
            carved = _u(sa, d.subarena_carved, 4)
            meta = _u(sa, d.subarena_meta, 8)
            # Each slot's control block pointer (the blocks live off the
            # stacks); older libraries kept the block at the top of the slot.
            ctls = _u(sa, d.subarena_ctl, 8) if d.subarena_ctl is not None else 0
            chunk = 4096
            for first in range(0, carved, chunk):
                n = min(chunk, carved - first)
                m = _mem(meta + first * d.slotmeta_size, n * d.slotmeta_size)
                cp = _mem(ctls + first * 8, n * 8) if ctls else None
                for i in range(n):
                    off = i * d.slotmeta_size
                    if _u(m, off + d.slotmeta_state, 2) != d.slot_live:
                        continue
                    fid = _u(m, off + d.slotmeta_fiber_id, 8)
                    if fid == 0:
                        continue  # being spawned
                    slot = first + i
                    hi = base + (slot + 1) * stride
                    lo = hi - _u(m, off + d.slotmeta_limit_pages, 4) * d.page_size
                    if cp is not None:
                        ctl = _u(cp, i * 8, 8)
                        if ctl == 0:
                            continue
                    else:
                        ctl = (hi - d.fiberctl_size) & ~(d.fiberctl_align - 1)
                    try:
                        cb = _mem(ctl, d.fiberctl_size)
                    except gdb.MemoryError:
                        continue  # not in the core, or unmapped meanwhile
                    if _u(cb, d.fiberctl_id, 8) != fid:
                        continue  # spawned or finished meanwhile
                    name = cb[d.fiberctl_name:d.fiberctl_name + d.fiberctl_name_size]
                    name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
                    fibers.append(Fiber(d, fid, name, lo, hi, _u(cb, d.fiberctl_fctx, 8),
                                        _u(cb, d.fiberctl_park_wait, 8), _u(cb, d.fiberctl_park_since, 8)))
    fibers += _unstarted_fibers(d, set(f.id for f in fibers))
    fibers.sort(key=lambda f: f.id)
    tids = [_u(_mem(warray + w * d.worker_size + d.worker_tid, 4), 0, 4) for w in range(nworkers)]
    _attach_threads(fibers, tids)
    return fibers


def _ctl_caches(d):
    """The addresses of the running scheduler's control-block caches."""
    if d.scheduler is None:
        return []  # an older libtendril: unstarted fibers are not described
    sched = _u(_mem(d.scheduler, 8), 0, 8)
    if sched == 0:
        return []
    vec = _mem(sched + d.scheduler_workers, 16)
    begin, end = _u(vec, 0, 8), _u(vec, 8, 8)
    n = (end - begin) // 8 if end > begin else 0
    workers = struct.unpack("<%dQ" % n, _mem(begin, 8 * n)) if n else ()
    return [w + d.worker_ctl_cache for w in workers if w] + [sched + d.scheduler_external_ctl_cache]


def _unstarted_fibers(d, known_ids):
    """Fibers that have not run yet: records in the control-block caches with
    no saved context and no stack but a stack limit and an id."""
    fibers = []
    size = d.fiberctl_size
    rec = d.ctlcache_record_bytes if d.ctlcache_record_bytes else size
    per_region = d.ctlcache_region_bytes // rec if rec else 0
    chunk = 256
    for cache in _ctl_caches(d):
        carved = _u(_mem(cache + d.ctlcache_carved, 8), 0, 8)
        nregions = min(d.ctlcache_max_regions, (carved + per_region - 1) // per_region) if per_region else 0
        regions = struct.unpack("<%dQ" % nregions, _mem(cache + d.ctlcache_regions, 8 * nregions)) if nregions else ()
        for r, region in enumerate(regions):
            if region == 0:
                break
            count = min(per_region, carved - r * per_region)
            for first in range(0, count, chunk):
                n = min(chunk, count - first)
                try:
                    data = _mem(region + first * rec, (n - 1) * rec + size)
                except gdb.MemoryError:
                    continue  # not in the core
                for i in range(n):
                    off = i * rec
                    fid = _u(data, off + d.fiberctl_id, 8)
                    if (fid == 0 or fid in known_ids or _u(data, off + d.fiberctl_fctx, 8) != 0
                            or _u(data, off + d.fiberctl_stack_lo, 8) != 0
                            or _u(data, off + d.fiberctl_stack_limit, 8) == 0):
                        continue
                    name = data[off + d.fiberctl_name:off + d.fiberctl_name + d.fiberctl_name_size]
                    name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
                    f = Fiber(d, fid, name, 0, 0, 0, 0, 0)
                    f.state, f.reason, f.unstarted = "runnable", "", True
                    fibers.append(f)
    return fibers


def _attach_threads(fibers, worker_tids):
    """Finds the thread each running fiber runs on (the one whose sp is in its
    stack) and, from the thread id, the worker."""
    running = [f for f in fibers if f.state == "running"]
    if not running:
        return
    inf = gdb.selected_inferior()
    old_thread = gdb.selected_thread()
    try:
        for t in inf.threads():
            if not t.is_valid():
                continue
            t.switch()
            try:
                sp = int(gdb.newest_frame().read_register("rsp")) & 0xFFFFFFFFFFFFFFFF
            except gdb.error:
                continue
            for f in running:
                if f.lo <= sp < f.hi:
                    f.thread = t
                    if t.ptid[1] in worker_tids:
                        f.worker = worker_tids.index(t.ptid[1])
    finally:
        if old_thread is not None and old_thread.is_valid():
            old_thread.switch()


def _now_ns():
    # The runtime's park clock; 6 is CLOCK_MONOTONIC_COARSE on Linux (the
    # time module does not name it).
    return time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))


def _duration(ns):
    ms = ns // 1000000
    if ms < 1000:
        return "%d ms" % ms
    if ms < 120000:
        return "%d s" % (ms // 1000)
    return "%d min" % (ms // 60000)


def _thread_words(t):
    return "thread %d (LWP %d)" % (t.num, t.ptid[1])


def _describe(f, now_ns):
    s = 'fiber %d "%s" [%s' % (f.id, f.name, f.state)
    if f.state == "parked":
        s += ": " + f.reason
        if now_ns is not None and f.since:
            s += ", " + _duration(max(0, now_ns - f.since))
    s += "]"
    if f.unstarted:
        s += " not started (no stack yet)"
    if f.worker is not None:
        s += " worker %d" % f.worker
    if f.thread is not None:
        s += " on " + _thread_words(f.thread)
    return s


class InfoTendrilFibers(gdb.Command):
    """List every live tendril fiber: id, name, state (running, runnable or
parked) and, for a parked fiber, what it waits for.

Usage: info tendril-fibers
A running fiber is shown with the thread it runs on; `tendril-fiber-bt ID`
prints any fiber's backtrace."""

    def __init__(self):
        super().__init__("info tendril-fibers", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        d = _descriptor()
        fibers = _live_fibers(d)
        # Park times are CLOCK_MONOTONIC_COARSE of this machine: meaningful
        # for a live process only.
        now = None if _is_core() else _now_ns()
        gdb.write("%d fiber%s\n" % (len(fibers), "" if len(fibers) == 1 else "s"))
        for f in fibers:
            gdb.write(_describe(f, now) + "\n")


class _FrameId:
    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


class _SavedContextUnwinder(gdb.unwinder.Unwinder):
    """While `regs` is set: the innermost frame's caller is the saved context."""

    def __init__(self):
        super().__init__("tendril-fiber")
        self.regs = None
        self.frame_sp = 0

    def __call__(self, pending_frame):
        if self.regs is None or pending_frame.level() != 0:
            return None
        pc = pending_frame.read_register("rip")
        # An id below the fiber's frames, so gdb sees a stack that grows the
        # usual way from this frame into the fiber's.
        sp = gdb.Value(self.frame_sp).cast(pending_frame.read_register("rsp").type)
        info = pending_frame.create_unwind_info(_FrameId(sp, pc))
        for reg, value in self.regs.items():
            info.add_saved_register(reg, gdb.Value(value).cast(pending_frame.read_register(reg).type))
        return info


_unwinder = _SavedContextUnwinder()
gdb.unwinder.register_unwinder(None, _unwinder, replace=True)


def _frame_line(n, frame):
    pc = frame.pc()
    name = frame.name() or "??"
    s = "#%-3d 0x%016x in %s" % (n, pc, name)
    sal = frame.find_sal()
    if sal is not None and sal.symtab is not None and sal.line:
        s += " at %s:%d" % (sal.symtab.filename, sal.line)
    else:
        lib = gdb.solib_name(pc)
        if lib:
            s += " from " + lib
    return s


def _saved_context_regs(d, fctx):
    data = _mem(fctx, d.fctx_size)
    regs = {r: _u(data, getattr(d, "fctx_" + r), 8) for r in ("r12", "r13", "r14", "r15", "rbx", "rbp", "rip")}
    regs["rsp"] = fctx + d.fctx_size
    return regs


def _backtrace_of_saved_context(d, f):
    if d.fctx_size == 0:
        raise gdb.GdbError("tendril: saved contexts are not described for this architecture")
    _unwinder.regs = _saved_context_regs(d, f.fctx)
    _unwinder.frame_sp = f.fctx
    lines = []
    try:
        gdb.invalidate_cached_frames()
        frame = gdb.newest_frame().older()
        n = 0
        while frame is not None and n < _MAX_FRAMES:
            # The context's first frame (Boost.Context's entry trampoline)
            # ends the fiber's stack.
            if frame.pc() == 0 or frame.name() == "make_fcontext":
                break
            lines.append(_frame_line(n, frame))
            n += 1
            frame = frame.older()
    finally:
        _unwinder.regs = None
        gdb.invalidate_cached_frames()
    return lines


class TendrilFiberBt(gdb.Command):
    """Print the backtrace of a tendril fiber.

Usage: tendril-fiber-bt ID
ID is the fiber id `info tendril-fibers` shows. For a parked or runnable
fiber the frames start where it switched away (inside the runtime's park).
A running fiber's frames are those of the thread running it: this command
names that thread and prints its backtrace."""

    def __init__(self):
        super().__init__("tendril-fiber-bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        argv = gdb.string_to_argv(arg)
        if len(argv) != 1 or not argv[0].isdigit():
            raise gdb.GdbError("usage: tendril-fiber-bt ID")
        want = int(argv[0])
        d = _descriptor()
        found = [f for f in _live_fibers(d) if f.id == want]
        if not found:
            raise gdb.GdbError("tendril: no live fiber %d (see info tendril-fibers)" % want)
        f = found[0]
        now = None if _is_core() else _now_ns()
        gdb.write(_describe(f, now) + "\n")
        if f.state == "running":
            if f.thread is None:
                gdb.write("  (running, and no thread's stack pointer is in its stack: it is being switched)\n")
                return
            gdb.write("  (running on %s: its frames are that thread's; `thread %d` then `bt`)\n"
                      % (_thread_words(f.thread), f.thread.num))
            gdb.execute("thread apply %d bt" % f.thread.num)
            return
        if f.unstarted:
            gdb.write("  (not started: it has no stack and no frames yet)\n")
            return
        for line in _backtrace_of_saved_context(d, f):
            gdb.write(line + "\n")


InfoTendrilFibers()
TendrilFiberBt()
