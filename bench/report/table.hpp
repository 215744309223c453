// Text and Markdown tables for the whole-run benchmark programs: each column
// padded to its widest cell; the first `left` columns (and the last, with
// last_left: a free-text notes column) left-aligned, the others right-aligned
// (numbers).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace bench {

// One number as a table cell, printf-style: cell(3.14159, "%.2f") is "3.14".
inline std::string cell(double v, const char* format) {
  char b[64];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::size_t left = 1;
  bool last_left = false;
};

inline std::string render(const Table& t, bool markdown) {
  std::vector<std::size_t> w(t.header.size());
  for (std::size_t c = 0; c < t.header.size(); ++c) {
    w[c] = t.header[c].size();
    for (const auto& r : t.rows) w[c] = std::max(w[c], c < r.size() ? r[c].size() : 0);
  }
  auto left_aligned = [&](std::size_t c) { return c < t.left || (t.last_left && c + 1 == w.size()); };
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s = markdown ? "| " : "";
    for (std::size_t c = 0; c < w.size(); ++c) {
      std::string cell = c < cells.size() ? cells[c] : std::string();
      if (left_aligned(c)) cell.resize(w[c], ' ');
      else cell.insert(0, w[c] - cell.size(), ' ');
      s += cell + (markdown ? " | " : "  ");
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = line(t.header);
  if (markdown) {
    out += "|";
    for (std::size_t c = 0; c < w.size(); ++c) {
      out += left_aligned(c) ? " :" : " ";
      out.append(w[c] - 1, '-');
      out += left_aligned(c) ? " |" : ": |";
    }
    out += "\n";
  } else {
    std::size_t total = 0;
    for (auto x : w) total += x + 2;
    out += std::string(total, '-') + "\n";
  }
  for (const auto& r : t.rows) out += line(r);
  return out;
}

inline void print_text(const Table& t, std::FILE* out) { std::fputs(render(t, false).c_str(), out); }
inline void print_markdown(const Table& t, std::FILE* out) { std::fputs(render(t, true).c_str(), out); }

}  // namespace bench
