// What touching many resident pages costs as a function of how far apart
// they are: the machine-side half of a mass wake, without tendril.
//
// A fiber parked with a one-page stack holds one resident page per slot,
// and slots are as far apart as the stack limit's class plus its guard
// (272 KiB at the default 256 KiB limit). Waking a million such fibers
// touches a million pages that far apart. This program maps N pages at a
// given spacing, touches each once (first touch), waits, then reads and
// writes one line of each page again: twice in address order, then in a
// random order. On a guest whose hypervisor shadows the page tables, the
// re-touch jumps from tens of nanoseconds to microseconds per page once
// the page-table pages of the working set (N * spacing / 2 MiB) no longer
// fit in what it keeps shadowed; on bare metal or with nested paging it
// stays near the cost of a TLB miss.
//
//   build/bench/sparse_touch                      # 1M pages, spacings 4..272 KiB
//   build/bench/sparse_touch --pages 100000 --spacing 64,272 --idle-ms 1000
//
// Prints one line per spacing (ns per page) and, with --md FILE, a Markdown
// table. Nothing else runs: compare rows of one run only.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double ns_per(Clock::time_point t0, long n) {
  return double(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()) / double(n);
}

// A read and a write of one byte, which the compiler must keep.
inline void bump(volatile char* p) { *p = char(*p + 1); }

struct Row {
  long spacing_kib = 0;
  double first = 0, seq1 = 0, seq2 = 0, random = 0;
  long pt_pages = 0;  // page-table pages the working set needs
};

void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--pages N] [--spacing K1,K2,...] [--idle-ms MS] [--md FILE]\n", argv0);
}

bool parse_long(const char* s, long* out) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v <= 0) return false;
  *out = v;
  return true;
}

bool measure(long pages, long spacing_kib, long idle_ms, Row* row) {
  const std::size_t stride = std::size_t(spacing_kib) * 1024;
  const std::size_t bytes = std::size_t(pages) * stride;
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    std::fprintf(stderr, "sparse_touch: mmap of %zu bytes: %s\n", bytes, std::strerror(errno));
    return false;
  }
  madvise(m, bytes, MADV_NOHUGEPAGE);  // as the stack arena: small pages only
  auto* base = static_cast<volatile char*>(m);
  // The line a parked fiber's saved context sits on: near its slot's top.
  const std::size_t at = stride - 512;
  auto t0 = Clock::now();
  for (long i = 0; i < pages; ++i) base[std::size_t(i) * stride + at] = 1;
  row->first = ns_per(t0, pages);
  usleep(useconds_t(idle_ms) * 1000);
  t0 = Clock::now();
  for (long i = 0; i < pages; ++i) bump(base + std::size_t(i) * stride + at);
  row->seq1 = ns_per(t0, pages);
  t0 = Clock::now();
  for (long i = 0; i < pages; ++i) bump(base + std::size_t(i) * stride + at);
  row->seq2 = ns_per(t0, pages);
  std::vector<std::uint32_t> order(static_cast<std::size_t>(pages));
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), std::mt19937(1));
  t0 = Clock::now();
  for (std::uint32_t i : order) bump(base + std::size_t(i) * stride + at);
  row->random = ns_per(t0, pages);
  row->spacing_kib = spacing_kib;
  row->pt_pages = long((bytes + (std::size_t(2) << 20) - 1) >> 21);
  munmap(m, bytes);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long pages = 1000000, idle_ms = 2000;
  std::vector<long> spacings = {4, 64, 128, 192, 224, 256, 272};
  const char* md = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--pages" && has_value) {
      if (!parse_long(argv[++i], &pages) || pages > (1L << 26)) {
        std::fprintf(stderr, "sparse_touch: --pages wants 1..%ld\n", 1L << 26);
        return 2;
      }
    } else if (a == "--idle-ms" && has_value) {
      if (!parse_long(argv[++i], &idle_ms)) {
        std::fprintf(stderr, "sparse_touch: --idle-ms wants a positive number\n");
        return 2;
      }
    } else if (a == "--spacing" && has_value) {
      spacings.clear();
      std::string list = argv[++i];
      for (std::size_t p = 0; p <= list.size();) {
        const std::size_t q = std::min(list.find(',', p), list.size());
        long k = 0;
        if (!parse_long(list.substr(p, q - p).c_str(), &k) || k % 4 != 0 || k > (1L << 20)) {
          std::fprintf(stderr, "sparse_touch: --spacing wants KiB multiples of 4, comma-separated\n");
          return 2;
        }
        spacings.push_back(k);
        p = q + 1;
      }
    } else if (a == "--md" && has_value) {
      md = argv[++i];
    } else {
      usage(argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  std::printf("%ld pages, re-touched %ld ms after the first touch (ns per page)\n", pages, idle_ms);
  std::printf("%10s %12s %12s %12s %12s %14s\n", "spacing", "first", "in order", "again", "random", "pt pages");
  std::vector<Row> rows;
  for (long k : spacings) {
    std::fprintf(stderr, "  spacing %ld KiB...\n", k);
    Row r;
    if (!measure(pages, k, idle_ms, &r)) return 1;
    std::printf("%7ld KiB %12.0f %12.0f %12.0f %12.0f %14ld\n", r.spacing_kib, r.first, r.seq1, r.seq2, r.random,
                r.pt_pages);
    std::fflush(stdout);
    rows.push_back(r);
  }
  if (md != nullptr) {
    FILE* f = std::fopen(md, "w");
    if (f == nullptr) {
      std::fprintf(stderr, "sparse_touch: cannot write %s: %s\n", md, std::strerror(errno));
      return 1;
    }
    std::fprintf(f, "| spacing (KiB) | first touch | re-touch in order | again | random order | page-table pages |\n");
    std::fprintf(f, "|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows)
      std::fprintf(f, "| %ld | %.0f | %.0f | %.0f | %.0f | %ld |\n", r.spacing_kib, r.first, r.seq1, r.seq2, r.random,
                   r.pt_pages);
    std::fclose(f);
  }
  return 0;
}
