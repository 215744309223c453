// Shared by bench/core_micro.cpp and bench/core_compare.cpp: pinning helpers,
// the core targets, the peer figures measured earlier on this machine
// (docs: /work/shared/notes/measured-facts.md), and small table helpers.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "tendril/stats.hpp"

#include "bench/report/table.hpp"

namespace bench {

// ---- CPU pinning for the pthread baselines --------------------------------

inline std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// Pins the calling thread to `cpu` (< 0: leaves it alone). Returns the previous
// mask so the caller can restore it.
inline cpu_set_t pin_self(int cpu) {
  cpu_set_t old;
  CPU_ZERO(&old);
  pthread_getaffinity_np(pthread_self(), sizeof(old), &old);
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  return old;
}
inline void restore_affinity(const cpu_set_t& mask) {
  pthread_setaffinity_np(pthread_self(), sizeof(mask), &mask);
}

// Placement of a pthread pair. kSame and kAcross need two allowed CPUs for
// kAcross; with one CPU kAcross degrades to kSame.
enum class Placement { kFree, kSame, kAcross };
inline const char* placement_name(Placement p) {
  switch (p) {
    case Placement::kFree: return "unpinned";
    case Placement::kSame: return "same CPU";
    case Placement::kAcross: return "across CPUs";
  }
  return "?";
}
// CPUs for thread A and thread B of a pair.
inline std::pair<int, int> placement_cpus(Placement p) {
  const std::vector<int> cpus = allowed_cpus();
  if (p == Placement::kFree || cpus.empty()) return {-1, -1};
  if (p == Placement::kSame || cpus.size() < 2) return {cpus[0], cpus[0]};
  return {cpus[0], cpus[1]};
}

// ---- mutex + condvar ping-pong (works for tendril and std types) ----------

// Main and partner take turns: round_trip() hands the turn to the partner and
// waits for it back.
template <class M, class CV>
struct TurnPair {
  M m;
  CV cv;
  int turn = 0;  // 1: partner's turn, 0: main's
  bool stop = false;

  void partner_loop() {
    std::unique_lock<M> lk(m);
    for (;;) {
      cv.wait(lk, [&] { return turn == 1 || stop; });
      if (stop) return;
      turn = 0;
      cv.notify_one();
    }
  }
  void round_trip() {
    std::unique_lock<M> lk(m);
    turn = 1;
    cv.notify_one();
    cv.wait(lk, [&] { return turn == 0; });
  }
  void finish() {
    {
      std::lock_guard<M> g(m);
      stop = true;
    }
    cv.notify_one();
  }
};

// ---- stats deltas ------------------------------------------------------------

struct StatsDelta {
  double switches = 0, steals = 0, parks = 0, wakeups = 0;  // per operation
};
inline StatsDelta stats_delta(const tendril::Stats& a, const tendril::Stats& b, double ops) {
  StatsDelta d;
  if (ops <= 0) return d;
  d.switches = double(b.context_switches - a.context_switches) / ops;
  d.steals = double(b.steals - a.steals) / ops;
  d.parks = double(b.worker_parks - a.worker_parks) / ops;
  d.wakeups = double(b.worker_wakeups - a.worker_wakeups) / ops;
  return d;
}

// ---- targets and peers -----------------------------------------------------

// Targets of the core comparison (ns per unit).
constexpr double kTargetSpawnJoinNs = 100.0;     // spawn+join, per fiber
constexpr double kTargetPingPongNs = 150.0;      // channel ping-pong, per round trip

struct Peer {
  const char* what;     // row
  const char* go;       // Go 1.19
  const char* bfiber;   // Boost.Fiber 1.74
  const char* pthread;  // pthreads
};
// From /work/shared/notes/measured-facts.md: measured earlier on this machine,
// NOT in this run.
inline const std::vector<Peer>& peers() {
  static const std::vector<Peer> p = {
      {"spawn+join, ns per task", "120-150", "4,000-5,000", "~32,000"},
      {"ping-pong round trip, ns", "~206 (unbuffered chan)",
       "~178 (one thread) / ~660 (work stealing)", "~6,400 same CPU / ~49,000 across"},
  };
  return p;
}
constexpr const char* kPeerNote =
    "peers: measured earlier on this machine (measured-facts.md), not in this run";

// ---- formatting -----------------------------------------------------------

inline std::string fmt_ns(double ns) {
  char buf[64];
  if (!(ns == ns)) return "n/a";
  if (ns < 10) std::snprintf(buf, sizeof buf, "%.2f", ns);
  else if (ns < 100) std::snprintf(buf, sizeof buf, "%.1f", ns);
  else if (ns < 1e6) std::snprintf(buf, sizeof buf, "%.0f", ns);
  else std::snprintf(buf, sizeof buf, "%.3g", ns);
  // thousands separators for readability
  const std::string s(buf);
  if (s.find('e') != std::string::npos) return s;
  const std::size_t dot = s.find('.');
  const std::size_t end = dot == std::string::npos ? s.size() : dot;
  std::string out;
  for (std::size_t i = 0; i < end; ++i) {
    if (i > 0 && (end - i) % 3 == 0) out += ',';
    out += s[i];
  }
  out.append(s, end, std::string::npos);
  return out;
}
inline std::string fmt_ratio(double r) {
  char buf[32];
  if (!(r == r) || r <= 0) return "n/a";
  if (r >= 100) std::snprintf(buf, sizeof buf, "%.0fx", r);
  else if (r >= 10) std::snprintf(buf, sizeof buf, "%.1fx", r);
  else std::snprintf(buf, sizeof buf, "%.2fx", r);
  return buf;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Warns when TENDRIL_* variables would override the Options a benchmark asks for.
inline void warn_env_overrides(std::FILE* out) {
  for (const char* v : {"TENDRIL_WORKERS", "TENDRIL_SPIN_US", "TENDRIL_PIN", "TENDRIL_STACK_MODE",
                        "TENDRIL_STACK_LIMIT"})
    if (const char* val = std::getenv(v))
      std::fprintf(out, "note: %s=%s is set and overrides the benchmark's Options\n", v, val);
}

}  // namespace bench
