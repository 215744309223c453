// stats_json: builds /stats from tendril::stats() (tendril build) or the
// thread count (pthread twin), plus what both report the same way.
#include "samples/http/stats_json.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string_view>

#include "samples/common/proc_status.hpp"
#include "samples/common/runtime.hpp"

namespace sample_http {

namespace {

// A flat JSON object, built field by field.
class JsonObject {
 public:
  void add(std::string_view key, std::uint64_t v) {
    begin_field(key);
    out_ += std::to_string(v);
  }
  void add(std::string_view key, std::string_view v) {
    begin_field(key);
    quoted(v);
  }
  std::string str() const { return out_.empty() ? "{}" : out_ + "}"; }

 private:
  void begin_field(std::string_view key) {
    out_ += out_.empty() ? "{" : ",";
    quoted(key);
    out_ += ':';
  }
  void quoted(std::string_view s) {
    out_ += '"';
    for (const char c : s) {
      if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
        out_ += esc;
      } else {
        out_ += c;
      }
    }
    out_ += '"';
  }
  std::string out_;
};

}  // namespace

std::uint64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

std::uint64_t thread_count() { return sample::proc_status_field("Threads").value_or(0); }

std::string stats_json(const Counters& counters) {
  JsonObject j;
  j.add("runtime", sample::runtime_name());
#if !SAMPLE_PTHREAD
  const tendril::Stats s = tendril::stats();
  j.add("workers", s.workers);
  j.add("fibers_spawned", s.fibers_spawned);
  j.add("fibers_live", s.fibers_live);
  j.add("context_switches", s.context_switches);
  j.add("steals", s.steals);
  j.add("worker_parks", s.worker_parks);
  j.add("worker_wakeups", s.worker_wakeups);
  j.add("stack_mode", s.stack_mode);
  j.add("stack_faults", s.stack_faults);
  j.add("stack_pages_mapped", s.stack_pages_mapped);
  j.add("pool_refills", s.pool_refills);
  j.add("pool_pages", s.pool_pages);
  j.add("cache_hits", s.cache_hits);
  j.add("cache_misses", s.cache_misses);
  j.add("stacks_cached", s.stacks_cached);
  j.add("stacks_dropped", s.stacks_dropped);
  j.add("stacks_evicted", s.stacks_evicted);
  j.add("node_match", s.node_match);
  j.add("node_mismatch", s.node_mismatch);
  j.add("pages_trimmed", s.pages_trimmed);
  j.add("stack_cache_pages", s.stack_cache_pages);
  j.add("stacks_prepared", s.stacks_prepared);
  j.add("stack_compaction", s.stack_compaction);
  j.add("compactions", s.compactions);
  j.add("restores", s.restores);
  j.add("fibers_compacted", s.fibers_compacted);
  j.add("compact_bytes", s.compact_bytes);
  j.add("io_backend", s.io_backend);
#endif
  j.add("threads", thread_count());
  j.add("connections_open", counters.connections_open.load(std::memory_order_relaxed));
  j.add("requests_served", counters.requests_served.load(std::memory_order_relaxed));
  j.add("rss_bytes", rss_bytes());
  return j.str();
}

}  // namespace sample_http
