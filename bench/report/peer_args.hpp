// The command line every peer benchmark program shares (bench/skynet.cpp for
// tendril, bench/peers/boost_fiber for Boost.Fiber; the Go program mirrors
// it): --quick, --reps N, --only NAME[,NAME...]. scripts/bench-peers.sh
// passes the same flags to each.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>

namespace bench {

struct PeerConfig {
  bool quick = false;
  int reps = 0;                // 0: 3 with --quick, else 5 (see finish)
  std::set<std::string> only;  // empty: all
  // A benchmark named "skynet_join" is wanted by --only skynet_join or --only skynet.
  bool wants(const std::string& name) const {
    if (only.empty()) return true;
    for (const std::string& o : only)
      if (name == o || name.rfind(o + "_", 0) == 0) return true;
    return false;
  }
  void finish() {
    if (reps <= 0) reps = quick ? 3 : 5;
  }
};

// Takes argv[i] (and its value, advancing i) if it is one of the shared
// flags; false if it is not.
inline bool parse_peer_arg(int argc, char** argv, int& i, PeerConfig& cfg) {
  const std::string a = argv[i];
  if (a == "--quick") {
    cfg.quick = true;
    return true;
  }
  if ((a != "--reps" && a != "--only") || i + 1 >= argc) return false;
  const std::string v = argv[++i];
  if (a == "--reps") {
    cfg.reps = std::atoi(v.c_str());
    return true;
  }
  for (std::size_t p = 0; p <= v.size();) {
    const std::size_t q = std::min(v.find(',', p), v.size());
    if (q > p) cfg.only.insert(v.substr(p, q - p));
    p = q + 1;
  }
  return true;
}

}  // namespace bench
