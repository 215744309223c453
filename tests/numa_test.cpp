// The stack cache's NUMA rules on the machine's real topology, with real
// move_pages: stacks used on one node and finished on another are counted as
// mismatched and their foreign pages given back; the next spawn on each node
// gets pages of that node; idle workers prepare stacks only for workers of
// their own node; the depots are per node. And placement through tendril::run:
// the pages a fiber's stack grows by are on the node of the worker it runs on.
//
// These need two NUMA nodes: they skip themselves on one (this project's
// machine) and run in the two-node qemu guest of scripts/test-kernels.sh.
// Plain threads pinned to a CPU of each node stand in for workers, as in
// stack_cache_test.cpp. No timing assertions.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <functional>
#include <set>
#include <thread>
#include <vector>

#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <sys/mman.h>

#include <boost/context/detail/fcontext.hpp>

#include "../runtime/stack/stack.hpp"
#include "tendril/fiber.hpp"
#include "tendril/runtime.hpp"
#include "tendril/stats.hpp"
#include "tests/numa.hpp"

namespace {

using namespace tendril::detail;
namespace bctx = boost::context::detail;

constexpr std::size_t kPage = 4096;
constexpr std::size_t kLimit = 256 * 1024;

// ---- running code on a slot ------------------------------------------------------

struct OnStack {
  std::function<void()> fn;
  bctx::fcontext_t back = nullptr;
};

void trampoline(bctx::transfer_t t) {
  auto* job = static_cast<OnStack*>(t.data);
  job->back = t.fctx;
  job->fn();
  bctx::jump_fcontext(job->back, nullptr);
}

__attribute__((noinline)) long recurse_to(const char* stop, long depth) {
  volatile char frame[1000];
  frame[0] = char(depth);
  frame[sizeof frame - 1] = char(depth);
  if (const_cast<const char*>(&frame[0]) <= stop) return frame[0];
  long below = recurse_to(stop, depth + 1);
  return below + frame[sizeof frame - 1];
}

void use_stack(const StackSlot& s, std::size_t bytes) {
  OnStack job{[&] { recurse_to(s.hi - bytes, 0); }};
  bctx::fcontext_t c = bctx::make_fcontext(s.hi, s.limit, trampoline);
  bctx::jump_fcontext(c, &job);
}

// ---- the real topology --------------------------------------------------------------

int first_cpu_of_node(int node) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &allowed) && numa_node_of_cpu(cpu) == node) return cpu;
  return -1;
}

// Runs fn on a thread pinned to a CPU of `node` that stands in for worker
// `worker` (stack_thread_init: the worker's node, its fault handler's CPU).
void as_worker_on_node(unsigned worker, int node, const std::function<void()>& fn) {
  std::thread t([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first_cpu_of_node(node), &one);
    ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    stack_thread_init(worker);
    fn();
  });
  t.join();
}

// Node of every resident page of [lo, hi), per page (-ENOENT: not resident).
std::vector<int> page_nodes(const char* lo, const char* hi) {
  std::vector<void*> pages;
  for (const char* p = lo; p < hi; p += kPage) pages.push_back(const_cast<char*>(p));
  std::vector<int> status(pages.size(), -1);
  if (move_pages(0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) return {};
  return status;
}

// Resident pages of [lo, hi) on `node`, and on other nodes.
struct Placement {
  unsigned local = 0, foreign = 0;
};
Placement placement(const char* lo, const char* hi, int node) {
  Placement p;
  for (int s : page_nodes(lo, hi)) {
    if (s == node) ++p.local;
    else if (s >= 0) ++p.foreign;
  }
  return p;
}

class RealNuma : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (tendril_test::numa_nodes() < 2 || first_cpu_of_node(0) < 0 || first_cpu_of_node(1) < 0)
      GTEST_SKIP() << "needs 2 NUMA nodes with CPUs (run by scripts/test-kernels.sh in a two-node guest)";
    stack_set_topology_for_testing(nullptr);  // the real one
    StackConfig c;
    c.default_limit = kLimit;
    c.workers = 4;
    c.mode = GetParam();
    stack_init(c);
    started_ = true;
    // Workers 0 and 2 on node 0, workers 1 and 3 on node 1.
    for (unsigned w = 0; w < 4; ++w) as_worker_on_node(w, int(w % 2), [] {});
  }
  void TearDown() override {
    if (started_) stack_shutdown();
  }
  bool started_ = false;
};

TEST_P(RealNuma, StolenFibersStackFollowsItToTheThiefsNodeAndIsReleasedAsAMatch) {
  StackSlot s;
  as_worker_on_node(0, 0, [&] {
    s = stack_allocate(0, kLimit);
    use_stack(s, 12 * 1024);
  });
  const Placement before = placement(s.lo, s.hi, 0);
  ASSERT_GE(before.local, 3u);
  ASSERT_EQ(before.foreign, 0u);
  StackCounters c0 = stack_counters();
  as_worker_on_node(1, 1, [&] {
    // Worker 1 stole the parked fiber: its saved stack pointer is a page
    // below the top.
    stack_follow_to_node(1, s, s.hi - 4096 - 64);
    const Placement moved = placement(s.lo, s.hi, 1);
    EXPECT_EQ(moved.foreign, 0u) << "pages left on node 0";
    EXPECT_EQ(moved.local, before.local);
    stack_release(1, s);
    stack_maintain(1);
  });
  StackCounters c = stack_counters();
  EXPECT_EQ(c.stack_pages_moved - c0.stack_pages_moved, before.local);
  EXPECT_EQ(c.node_match - c0.node_match, 1u);
  EXPECT_EQ(c.node_mismatch - c0.node_mismatch, 0u);
}

TEST_P(RealNuma, StackFinishedOnTheOtherNodeIsMismatchedTrimmedAndRelocated) {
  StackSlot s;
  as_worker_on_node(0, 0, [&] {
    s = stack_allocate(0, kLimit);
    use_stack(s, 12 * 1024);  // 3-4 pages, faulted in on node 0
  });
  Placement before = placement(s.lo, s.hi, 0);
  ASSERT_GE(before.local, 3u);
  ASSERT_EQ(before.foreign, 0u) << "pages of a stack used on node 0 are not on node 0";
  StackCounters c0 = stack_counters();
  as_worker_on_node(1, 1, [&] {  // the fiber finished on worker 1, node 1
    stack_release(1, s);
    stack_maintain(1);
  });
  StackCounters c = stack_counters();
  EXPECT_EQ(c.node_mismatch - c0.node_mismatch, 1u);
  EXPECT_EQ(c.pages_trimmed - c0.pages_trimmed, before.local);  // every node-0 page given back
  EXPECT_EQ(c.stacks_cached - c0.stacks_cached, 1u);          // and the stack kept
  Placement after = placement(s.lo, s.hi, 1);
  EXPECT_EQ(after.foreign, 0u);
  EXPECT_EQ(after.local, 1u);  // its top page, mapped again on node 1

  // The next spawn on node 1 gets it, with local pages only.
  as_worker_on_node(3, 1, [&] {
    StackSlot t = stack_allocate(1, kLimit);
    EXPECT_EQ(t.index, s.index);
    use_stack(t, 12 * 1024);
    Placement p = placement(t.lo, t.hi, 1);
    EXPECT_EQ(p.foreign, 0u);
    EXPECT_GE(p.local, 3u);
    stack_release(1, t);
  });
  // The next spawn on node 0 does not: a stack of its own node, local pages.
  as_worker_on_node(0, 0, [&] {
    StackSlot t = stack_allocate(0, kLimit);
    EXPECT_NE(t.index, s.index);
    use_stack(t, 12 * 1024);
    Placement p = placement(t.lo, t.hi, 0);
    EXPECT_EQ(p.foreign, 0u);
    EXPECT_GE(p.local, 3u);
    stack_release(0, t);
  });
  c = stack_counters();
  EXPECT_EQ(c.node_mismatch - c0.node_mismatch, 1u);  // the two later releases matched
  EXPECT_EQ(c.node_match - c0.node_match, 2u);
}

TEST_P(RealNuma, DepotsArePerNode) {
  constexpr int kStacks = 40;  // more than a magazine: 32 go to node 0's depot
  std::set<std::uint32_t> cached;
  as_worker_on_node(0, 0, [&] {
    std::vector<StackSlot> slots;
    for (int i = 0; i < kStacks; ++i) slots.push_back(stack_allocate(0, kLimit));
    for (auto& s : slots) {
      cached.insert(s.index);
      stack_release(0, s);
    }
  });
  StackCounters c = stack_counters();
  EXPECT_EQ(c.node_match, std::uint64_t(kStacks));
  EXPECT_EQ(c.node_mismatch, 0u);
  // Worker 3 (node 1) never gets them; worker 2 (node 0) gets the depot's magazine.
  std::vector<StackSlot> on1, on2;
  as_worker_on_node(3, 1, [&] {
    for (int i = 0; i < kStacks; ++i) {
      on1.push_back(stack_allocate(3, kLimit));
      EXPECT_EQ(cached.count(on1.back().index), 0u) << "a node-1 worker got a node-0 stack";
      Placement p = placement(on1.back().lo, on1.back().hi, 1);
      EXPECT_EQ(p.foreign, 0u);
    }
  });
  as_worker_on_node(2, 0, [&] {
    for (int i = 0; i < 32; ++i) {
      on2.push_back(stack_allocate(2, kLimit));
      EXPECT_EQ(cached.count(on2.back().index), 1u);
      Placement p = placement(on2.back().lo, on2.back().hi, 0);
      EXPECT_EQ(p.foreign, 0u);
    }
  });
  EXPECT_EQ(stack_counters().cache_hits, 32u);
  as_worker_on_node(3, 1, [&] { for (auto& s : on1) stack_release(3, s); });
  as_worker_on_node(2, 0, [&] { for (auto& s : on2) stack_release(2, s); });
}

unsigned prepare_until_done(unsigned worker) {
  unsigned batches = 0;
  while (stack_prepare_ahead(worker)) ++batches;
  return batches;
}

TEST_P(RealNuma, IdleWorkersPrepareStacksOnlyForWorkersOfTheirNode) {
  std::vector<StackSlot> live;
  as_worker_on_node(0, 0, [&] {
    for (int i = 0; i < 64; ++i) live.push_back(stack_allocate(0, kLimit));  // fresh carves: demand
  });
  as_worker_on_node(1, 1, [&] { EXPECT_EQ(prepare_until_done(1), 0u); });  // other node: no help
  as_worker_on_node(3, 1, [&] { EXPECT_EQ(prepare_until_done(3), 0u); });
  EXPECT_EQ(stack_counters().stacks_prepared, 0u);
  as_worker_on_node(2, 0, [&] { EXPECT_GT(prepare_until_done(2), 0u); });  // same node: prepares
  const std::uint64_t prepared = stack_counters().stacks_prepared;
  EXPECT_GT(prepared, 0u);
  as_worker_on_node(0, 0, [&] {
    for (std::uint64_t i = 0; i < prepared; ++i) {
      StackSlot s = stack_allocate(0, kLimit);
      Placement p = placement(s.lo, s.hi, 0);  // prepared on node 0
      EXPECT_EQ(p.foreign, 0u);
      EXPECT_EQ(p.local, 1u);
      live.push_back(s);
    }
    EXPECT_EQ(stack_counters().cache_hits, prepared);
    for (auto& s : live) stack_release(0, s);
  });
}

// ---- placement through tendril::run -------------------------------------------------
// 4 workers on 2 nodes; rounds of 400 fibers spawned from one fiber, each
// growing its stack to 64 KiB and yielding. Every page a fiber's stack grows
// by must be on the node of the worker it runs on while it grows (a stolen
// fiber's growth faults go to its slot owner's handler, on the owner's node),
// and most releases must find their stacks local.

int current_node() {
  unsigned cpu = 0, node = 0;
  return getcpu(&cpu, &node) == 0 ? int(node) : -1;
}

std::atomic<std::uint64_t> g_growth_pages{0}, g_growth_foreign{0};

// At the deepest frame: the pages of [deep, top) that were not resident
// before (`before`, one entry per page from top down) and are now, against
// the node of the CPU this runs on (no yield in between: the same worker).
__attribute__((noinline)) void check_growth(const char* top, const std::vector<unsigned char>& before) {
  const int node = current_node();
  std::vector<void*> pages;
  for (std::size_t i = 0; i < before.size(); ++i)
    if (!(before[i] & 1)) pages.push_back(const_cast<char*>(top - (i + 1) * kPage));
  std::vector<int> status(pages.size(), -1);
  if (pages.empty() || move_pages(0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) return;
  std::uint64_t grown = 0, foreign = 0;
  for (int st : status) {
    if (st < 0) continue;  // below the recursion: not grown
    ++grown;
    if (st != node) ++foreign;
  }
  g_growth_pages += grown;
  g_growth_foreign += foreign;
}

__attribute__((noinline)) long grow_to(const char* stop, const char* top, const std::vector<unsigned char>& before) {
  volatile char frame[1000];
  frame[0] = 1;
  if (const_cast<const char*>(&frame[0]) <= stop) {
    check_growth(top, before);
    return frame[0];
  }
  return grow_to(stop, top, before) + frame[sizeof frame - 1];
}

void grow_64k_and_check() {
  constexpr std::size_t kGrow = 64 * 1024;
  char here = 0;
  const char* top = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(&here) & ~(kPage - 1));
  std::vector<unsigned char> before(kGrow / kPage + 2);
  if (mincore(const_cast<char*>(top - before.size() * kPage), before.size() * kPage, before.data()) != 0) return;
  std::reverse(before.begin(), before.end());  // index i: the page i+1 below top
  grow_to(top - kGrow, top, before);
}

TEST(RealNumaRun, StacksGrowOnTheNodeOfTheWorkerTheFiberRunsOn) {
  if (tendril_test::numa_nodes() < 2 || first_cpu_of_node(0) < 0 || first_cpu_of_node(1) < 0)
    GTEST_SKIP() << "needs 2 NUMA nodes with CPUs (run by scripts/test-kernels.sh in a two-node guest)";
  tendril::Options o;
  o.workers = 4;  // pinned to CPUs 0-3: two per node in the guest
  constexpr int kRounds = 20, kFibers = 400;
  g_growth_pages = 0;
  g_growth_foreign = 0;
  tendril::Stats s;
  tendril::run(o, [&] {
    for (int r = 0; r < kRounds; ++r) {
      std::vector<tendril::Fiber> fibers;
      fibers.reserve(kFibers);
      for (int i = 0; i < kFibers; ++i)
        fibers.push_back(tendril::spawn([] {
          grow_64k_and_check();
          tendril::this_fiber::yield();
          tendril::this_fiber::yield();
        }));
      for (auto& f : fibers) f.join();
    }
    s = tendril::stats();
  });
  const std::uint64_t releases = s.node_match + s.node_mismatch;
  std::printf("placement: mode %s, %llu fibers, growth pages %llu (foreign %llu); node_match %llu node_mismatch %llu "
              "(%.0f%% of checked releases) pages_trimmed %llu pages_moved %llu; steals %llu (remote %llu); cache hits %llu misses %llu\n",
              s.stack_mode.c_str(), (unsigned long long)s.fibers_spawned, (unsigned long long)g_growth_pages.load(),
              (unsigned long long)g_growth_foreign.load(), (unsigned long long)s.node_match,
              (unsigned long long)s.node_mismatch, releases ? 100.0 * double(s.node_mismatch) / double(releases) : 0.0,
              (unsigned long long)s.pages_trimmed, (unsigned long long)s.stack_pages_moved, (unsigned long long)s.steals, (unsigned long long)s.steals_remote,
              (unsigned long long)s.cache_hits, (unsigned long long)s.cache_misses);
  EXPECT_EQ(g_growth_foreign.load(), 0u) << "stack pages grown on another node than the fiber's worker";
  // Stolen fibers' stacks follow them: at most a quarter of releases find
  // foreign pages (the ones that do were woken onto the other node mid-run).
  EXPECT_LE(4 * s.node_mismatch, releases) << "pages moved with stolen fibers: " << s.stack_pages_moved;
  EXPECT_GT(releases, 0u);
  EXPECT_LE(s.steals_remote, s.steals);
}

INSTANTIATE_TEST_SUITE_P(Modes, RealNuma, ::testing::Values("uffd", "kernel"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
