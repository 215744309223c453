// libFuzzer target: SpawnOptions through spawn inside a running runtime. A
// runtime (one worker) runs for the whole fuzzing session on its own thread;
// each input spawns fibers with an arbitrary name, stack limit and spawn site,
// from a plain thread and from a fiber, and each fiber writes an arbitrary
// depth of its stack (below its limit; at most 256 KiB, since ASan's shadow of
// every stack slot touched stays resident). Allowed outcomes: the fiber runs and
// joins, or spawn throws std::invalid_argument / std::length_error (a bad
// limit) or std::system_error / std::bad_alloc (out of memory), and the
// runtime keeps working.
#include <fuzzer/FuzzedDataProvider.h>

#include <alloca.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "tendril/tendril.hpp"

namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_up{false};
std::thread* g_runtime = nullptr;

void stop_runtime() {
  g_stop.store(true);
  if (g_runtime != nullptr) g_runtime->join();
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "spawn_options_fuzz: %s\n", what);
  std::abort();
}

// Writes depth bytes of the fiber's stack (a frame that grows it).
__attribute__((noinline)) std::uint64_t use_stack(std::size_t depth) {
  auto* p = static_cast<volatile char*>(alloca(depth + 1));
  for (std::size_t i = 0; i <= depth; i += 512) p[i] = static_cast<char>(i);
  p[depth] = 1;
  return p[0] + p[depth];
}

const char kSites[3] = {};

void one_spawn(FuzzedDataProvider& in, bool from_fiber) {
  tendril::SpawnOptions so;
  so.name = in.ConsumeRandomLengthString(48);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: so.stack_limit = 0; break;
    case 1: so.stack_limit = in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{1} << 21); break;
    case 2: {  // around the 1 GiB maximum (only these: ASan's shadow of each huge stack stays resident)
      constexpr std::size_t kEdges[] = {(std::size_t{1} << 30) - 1, std::size_t{1} << 30, (std::size_t{1} << 30) + 1,
                                        std::size_t{1} << 31, std::size_t{64} << 20};
      so.stack_limit = kEdges[in.ConsumeIntegralInRange<std::size_t>(0, 4)];
      break;
    }
    default: so.stack_limit = in.ConsumeIntegral<std::size_t>(); break;
  }
  const int site = in.ConsumeIntegralInRange<int>(0, 3);
  so.site = site == 3 ? nullptr : &kSites[site];
  const std::size_t effective = so.stack_limit != 0 ? so.stack_limit : 256 * 1024;
  // Leave a quarter for the control block, closure and the frames above.
  const std::size_t room = effective >= 16 * 1024 && effective <= (std::size_t{1} << 30) ? effective / 2 : 0;
  const std::size_t depth = room == 0 ? 0 : in.ConsumeIntegralInRange<std::size_t>(0, std::min<std::size_t>(room, 256 << 10));
  std::atomic<std::uint64_t> ran{0};
  try {
    tendril::Fiber f = tendril::spawn(so, [&ran, depth] { ran.fetch_add(1 + use_stack(depth)); });
    f.join();
    if (ran.load() == 0) fail("joined a fiber that did not run");
  } catch (const std::invalid_argument&) {
    if (effective >= 16 * 1024 && effective <= (std::size_t{1} << 30)) fail("invalid_argument for a valid limit");
  } catch (const std::length_error&) {
  } catch (const std::system_error&) {
  } catch (const std::bad_alloc&) {
  }
  (void)from_fiber;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_runtime = new std::thread([] {
    tendril::Options o;
    o.workers = 1;
    o.pin_workers = false;
    tendril::run(o, [] {
      g_up.store(true);
      while (!g_stop.load()) tendril::this_fiber::sleep_for(std::chrono::milliseconds(20));
    });
  });
  while (!g_up.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::atexit(stop_runtime);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  while (in.remaining_bytes() > 0) {
    if (in.ConsumeBool()) {
      one_spawn(in, false);  // from this plain thread
    } else {
      // From a fiber: the worker's own stack index and id block.
      std::string input = in.ConsumeRandomLengthString(256);
      tendril::Fiber f = tendril::spawn([&input] {
        FuzzedDataProvider nested(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
        while (nested.remaining_bytes() > 0) one_spawn(nested, true);
      });
      f.join();
    }
  }
  // Every fiber of this input was joined: only main (asleep) is live, and no
  // live stack holds pages beyond main's (the cache is bounded by its budget).
  // A joined fiber's stack goes back just after the join returns (the
  // exiting fiber's worker releases it once it has switched away), so give
  // the gauges a moment.
  tendril::Stats st = tendril::stats();
  for (int i = 0; i < 200 && (st.fibers_live > 2 || st.stack_pages_mapped > 64); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    st = tendril::stats();
  }
  if (!g_up.load() || st.fibers_live > 2) fail("fibers left behind");
  if (st.stack_pages_mapped > 64) {
    std::fprintf(stderr, "stack_pages_mapped %llu, stack_cache_pages %llu, pool_pages %llu, fibers_live %llu, "
                 "stacks_prepared %llu\n", (unsigned long long)st.stack_pages_mapped,
                 (unsigned long long)st.stack_cache_pages, (unsigned long long)st.pool_pages,
                 (unsigned long long)st.fibers_live, (unsigned long long)st.stacks_prepared);
    fail("stack pages left mapped after every spawned fiber was joined");
  }
  return 0;
}
