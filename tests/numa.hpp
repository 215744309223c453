// Helpers for tests that must hold on a machine with several NUMA nodes (the
// two-node qemu guest of scripts/test-kernels.sh) as well as on one node.
#pragma once

#include <sched.h>
#include <sys/mman.h>

#include <numa.h>

namespace tendril_test {

// Nodes with memory, as the runtime sees them.
inline int numa_nodes() {
  if (numa_available() < 0) return 1;
  int n = numa_num_configured_nodes();
  return n > 0 ? n : 1;
}

// NUMA node of the CPU the calling thread runs on (the argument, a worker
// index, is ignored: fits StackTopology::worker_node for tests in which one
// pinned thread stands in for every worker).
inline int node_of_calling_thread(unsigned = 0) {
  unsigned cpu = 0, node = 0;
  return getcpu(&cpu, &node) == 0 ? int(node) : 0;
}

// Keeps the calling thread on the CPU it runs on now, until destroyed. Tests
// that stand in for several workers with one plain thread need this on a
// multi-node machine: a thread the scheduler moves between nodes maps pages
// on whichever node it happens to be on, and the stack cache rightly treats
// those as foreign. (Workers are pinned for the same reason.)
class PinToCurrentCpu {
 public:
  PinToCurrentCpu() {
    saved_ok_ = sched_getaffinity(0, sizeof saved_, &saved_) == 0;
    cpu_set_t one;
    CPU_ZERO(&one);
    int cpu = sched_getcpu();
    CPU_SET(cpu >= 0 ? cpu : 0, &one);
    sched_setaffinity(0, sizeof one, &one);
  }
  ~PinToCurrentCpu() {
    if (saved_ok_) sched_setaffinity(0, sizeof saved_, &saved_);
  }
  PinToCurrentCpu(const PinToCurrentCpu&) = delete;
  PinToCurrentCpu& operator=(const PinToCurrentCpu&) = delete;

 private:
  cpu_set_t saved_{};
  bool saved_ok_ = false;
};

// True where madvise(MADV_GUARD_INSTALL) works (Linux 6.13+). Without it the
// kernel stack mode guards stacks with mprotect, two VMAs per stack.
inline bool guard_madvise_available() {
  constexpr int kMadvGuardInstall = 102;
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  bool ok = madvise(p, 4096, kMadvGuardInstall) == 0;
  munmap(p, 4096);
  return ok;
}

}  // namespace tendril_test
