// Parsing "host:port" as the samples and their load generators take it on the
// command line (--backend, --at) and print it ("... listening on host:port").
// Header-only, so the bench programs can use it without the samples' runtime
// shim.
//
//   auto hp = sample::parse_host_port("[::1]:7000");  // {"::1", 7000}
//   std::vector<sample::HostPort> list;
//   std::string why;
//   if (!sample::parse_host_port_list("a:1,b:2", &list, &why)) die(why);
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sample {

struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};

// "host:port" with a non-empty host and a port in 1..65535; an IPv6 host in
// brackets ("[::1]:7000") comes back without them. nullopt otherwise.
inline std::optional<HostPort> parse_host_port(std::string_view s) {
  const std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string_view port = s.substr(colon + 1);
  unsigned p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535 || host.empty())
    return std::nullopt;
  return HostPort{std::string(host), static_cast<std::uint16_t>(p)};
}

// "host:port[,host:port...]" appended to *out; false with *why naming the bad
// item (or saying the list is empty) otherwise.
inline bool parse_host_port_list(std::string_view list, std::vector<HostPort>* out, std::string* why) {
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find(',', start);
    if (end == std::string_view::npos) end = list.size();
    const std::string_view item = list.substr(start, end - start);
    auto hp = parse_host_port(item);
    if (!hp) {
      const bool has_port = !item.empty() && item.rfind(':') != std::string_view::npos && item.rfind(':') != 0;
      *why = "bad backend '" + std::string(item) + (has_port ? "' (want host:port, port 1..65535)" : "' (want host:port)");
      return false;
    }
    out->push_back(std::move(*hp));
    start = end + 1;
  }
  return !out->empty();
}

// The port of a server's first line, "<name> (<runtime>) listening on
// <host>:<port>", or nullopt if the line is not one.
inline std::optional<std::uint16_t> listening_port(std::string_view line) {
  constexpr std::string_view kListening = " listening on ";
  const std::size_t at = line.find(kListening);
  if (at == std::string_view::npos) return std::nullopt;
  const auto hp = parse_host_port(line.substr(at + kListening.size()));
  if (!hp) return std::nullopt;
  return hp->port;
}

}  // namespace sample
