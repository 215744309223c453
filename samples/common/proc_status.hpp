// Reading "Key:   value [kB]" fields of /proc/<pid>/status (threads, RSS,
// peak RSS, page tables) and of /proc/meminfo, and counting this process's
// mappings, as the sample servers report them in their stats and the
// benchmarks measure them. Header-only, so the
// bench programs can use it without the samples' runtime shim.
//
//   std::uint64_t rss = sample::proc_status_field("VmRSS").value_or(0);  // bytes
//   auto threads = sample::proc_status_field("Threads", child_pid);
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

namespace sample {

// The number of field `key` in a /proc file of "Key: value [kB]" lines, kB
// fields in bytes; nullopt if the file or the field is missing.
inline std::optional<std::uint64_t> proc_field(const char* path, std::string_view key) {
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return std::nullopt;
  std::optional<std::uint64_t> value;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    const std::string_view l(line);
    if (l.size() <= key.size() || l.compare(0, key.size(), key) != 0 || l[key.size()] != ':') continue;
    unsigned long long v = 0;
    char unit[8] = "";
    if (std::sscanf(line + key.size() + 1, "%llu %7s", &v, unit) >= 1)
      value = std::string_view(unit) == "kB" ? v * 1024 : v;
    break;
  }
  std::fclose(f);
  return value;
}

// A field of this process's status (pid 0) or another's.
inline std::optional<std::uint64_t> proc_status_field(std::string_view key, pid_t pid = 0) {
  const std::string path = pid == 0 ? "/proc/self/status" : "/proc/" + std::to_string(pid) + "/status";
  return proc_field(path.c_str(), key);
}

// Mappings (VMAs) of this process: lines of /proc/self/maps; -1 if unreadable.
// vm.max_map_count caps them, which is why stack designs count them.
inline int vma_count() {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return -1;
  int n = 0;
  for (int c; (c = std::fgetc(f)) != EOF;) n += c == '\n';
  std::fclose(f);
  return n;
}

}  // namespace sample
