// Timer precision and idle cost ("timers for sleep_for / wait_for with
// sub-millisecond precision", "idle workers that spin briefly and then park
// without burning CPU"), beside the same measurements for plain threads.
//
//   core_timers [--quick]
//
// Prints, for sleeps of 50 us, 200 us and 1 ms: the median and p99 overshoot
// (how late the sleeper woke) for a fiber (alone, and with 100 busy yielding
// fibers on the same workers) and for a pthread using std::this_thread::sleep_for;
// then the CPU time an idle runtime burns per second of wall time.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <tendril/tendril.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Overshoot {
  double p50_us, p99_us;
};

Overshoot summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)]};
}

template <class SleepFn>
Overshoot measure(SleepFn sleep, microseconds d, int samples) {
  std::vector<double> over;
  over.reserve(samples);
  for (int i = 0; i < samples; ++i) {
    const auto t0 = Clock::now();
    sleep(d);
    over.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0 - d).count());
  }
  return summarize(std::move(over));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int samples = quick ? 200 : 1000;
  std::printf("timer overshoot, microseconds past the requested sleep (%d samples each)\n", samples);
  std::printf("%-10s %-26s %-26s %-26s\n", "sleep", "fiber, idle runtime", "fiber, 100 busy fibers",
              "pthread sleep_for");
  for (microseconds d : {microseconds(50), microseconds(200), microseconds(1000)}) {
    Overshoot idle{}, busy{}, thread{};
    tendril::Options o;
    o.workers = 2;
    tendril::run(o, [&] {
      auto fiber_sleep = [](microseconds x) { tendril::this_fiber::sleep_for(x); };
      idle = measure(fiber_sleep, d, samples);
      std::atomic<bool> stop{false};
      std::vector<tendril::Fiber> busy_fibers;
      for (int i = 0; i < 100; ++i)
        busy_fibers.push_back(tendril::spawn([&stop] {
          while (!stop.load(std::memory_order_relaxed)) tendril::this_fiber::yield();
        }));
      busy = measure(fiber_sleep, d, samples);
      stop = true;
      for (auto& f : busy_fibers) f.join();
    });
    thread = measure([](microseconds x) { std::this_thread::sleep_for(x); }, d, samples);
    std::printf("%-10s p50 %7.1f  p99 %7.1f   p50 %7.1f  p99 %7.1f   p50 %7.1f  p99 %7.1f\n",
                (std::to_string(d.count()) + " us").c_str(), idle.p50_us, idle.p99_us, busy.p50_us,
                busy.p99_us, thread.p50_us, thread.p99_us);
  }

  const double wall = quick ? 1.0 : 3.0;
  double burned = 0;
  tendril::Options o;
  o.workers = 2;
  tendril::run(o, [&] {
    tendril::this_fiber::sleep_for(std::chrono::milliseconds(100));  // let workers park
    const double c0 = cpu_seconds();
    tendril::this_fiber::sleep_for(std::chrono::duration<double>(wall));
    burned = cpu_seconds() - c0;
  });
  const tendril::Stats s = tendril::stats();
  std::printf("\nidle runtime (2 workers, one fiber asleep %.0f s): %.2f ms of CPU per second "
              "(%.3f%% of one CPU); %llu parks\n",
              wall, burned * 1000 / wall, burned * 100 / wall,
              static_cast<unsigned long long>(s.worker_parks));
}
