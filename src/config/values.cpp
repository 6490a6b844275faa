// Value parsers and formatters for petrel.yaml scalars (durations, sizes,
// networks, addresses, next hops), plus the small non-YAML parts of the
// config API. Everything here is pure: no YAML, no file system.
#include <arpa/inet.h>
#include <sys/un.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "petrel/config/config.h"

namespace petrel::config {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Parses a non-empty run of decimal digits. Fails on overflow.
bool parse_uint(std::string_view s, std::uint64_t* out) {
  if (s.empty()) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return false;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

bool parse_port(std::string_view s, std::uint16_t* out) {
  std::uint64_t v = 0;
  if (s.size() > 5 || !parse_uint(s, &v) || v < 1 || v > 65535) return false;
  *out = static_cast<std::uint16_t>(v);
  return true;
}

bool is_ipv4(std::string_view s) {
  in_addr a{};
  return s.size() < INET_ADDRSTRLEN && inet_pton(AF_INET, std::string(s).c_str(), &a) == 1;
}

bool is_ipv6(std::string_view s) {
  in6_addr a{};
  return s.size() < INET6_ADDRSTRLEN && inet_pton(AF_INET6, std::string(s).c_str(), &a) == 1;
}

// A DNS name as admins write them: dot-separated labels of letters, digits,
// '-' and '_' (the latter is common in internal names), optional final dot.
bool is_hostname(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  if (s.empty() || s.size() > 253) return false;
  std::size_t label = 0;
  for (char c : s) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
                    c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

// 16 bytes of ::ffff:a.b.c.d for an IPv4 address.
void v4_mapped(const std::uint8_t v4[4], std::uint8_t out[16]) {
  std::memset(out, 0, 10);
  out[10] = 0xff;
  out[11] = 0xff;
  std::memcpy(out + 12, v4, 4);
}

bool is_v4_mapped(const std::uint8_t a[16]) {
  static const std::uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(a, prefix, 12) == 0;
}

bool prefix_matches(const std::uint8_t* net, const std::uint8_t* addr, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(net, addr, static_cast<std::size_t>(whole)) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (net[whole] & mask) == (addr[whole] & mask);
}

// Compares an address of the given family against the network, crossing
// between IPv4 and IPv4-mapped IPv6 in both directions.
bool cidr_match(const Cidr& net, int family, const std::uint8_t* addr) {
  if (net.family == family) {
    return prefix_matches(net.addr, addr, net.prefix);
  }
  if (net.family == AF_INET && family == AF_INET6 && is_v4_mapped(addr)) {
    return prefix_matches(net.addr, addr + 12, net.prefix);
  }
  if (net.family == AF_INET6 && family == AF_INET) {
    std::uint8_t mapped[16];
    v4_mapped(addr, mapped);
    return prefix_matches(net.addr, mapped, net.prefix);
  }
  return false;
}

std::string format_unit(std::uint64_t n, std::uint64_t unit, const char* suffix) {
  return std::to_string(n / unit) + suffix;
}

}  // namespace

bool parse_duration(std::string_view s, Seconds* out) {
  // A bare number is accepted only for zero: "300" could mean seconds or
  // minutes depending on who wrote it, so every other value needs a unit.
  // Units may be combined, largest first or not: "1h30m".
  if (!s.empty() && s.find_first_not_of('0') == std::string_view::npos) {
    *out = 0;
    return true;
  }
  constexpr std::uint64_t kMax = std::numeric_limits<std::int64_t>::max() / 2;
  std::uint64_t total = 0;
  if (s.empty()) return false;
  while (!s.empty()) {
    std::size_t n = 0;
    while (n < s.size() && is_digit(s[n])) ++n;
    if (n == 0 || n == s.size() || n > 15) return false;
    std::uint64_t v = 0;
    if (!parse_uint(s.substr(0, n), &v)) return false;
    std::uint64_t unit = 0;
    switch (s[n]) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      default: return false;
    }
    if (v > kMax / unit || total > kMax - v * unit) return false;
    total += v * unit;
    s.remove_prefix(n + 1);
  }
  *out = static_cast<Seconds>(total);
  return true;
}

bool parse_size(std::string_view s, std::uint64_t* out) {
  std::size_t n = 0;
  while (n < s.size() && is_digit(s[n])) ++n;
  if (n == 0 || n > 20) return false;
  const std::string_view unit = s.substr(n);
  std::uint64_t mult = 0;
  if (unit.empty() || unit == "B") {
    mult = 1;
  } else if (unit == "KiB") {
    mult = 1ull << 10;
  } else if (unit == "MiB") {
    mult = 1ull << 20;
  } else if (unit == "GiB") {
    mult = 1ull << 30;
  } else {
    return false;
  }
  std::uint64_t v = 0;
  if (!parse_uint(s.substr(0, n), &v)) return false;
  if (v > std::numeric_limits<std::uint64_t>::max() / mult) return false;
  *out = v * mult;
  return true;
}

bool parse_cidr(std::string_view s, Cidr* out) {
  const std::size_t slash = s.find('/');
  const std::string addr(s.substr(0, slash));
  Cidr c;
  int max_prefix = 0;
  if (inet_pton(AF_INET, addr.c_str(), c.addr) == 1) {
    c.family = AF_INET;
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, addr.c_str(), c.addr) == 1) {
    c.family = AF_INET6;
    max_prefix = 128;
  } else {
    return false;
  }
  c.prefix = max_prefix;
  if (slash != std::string_view::npos) {
    std::uint64_t p = 0;
    const std::string_view ps = s.substr(slash + 1);
    if (ps.size() > 3 || !parse_uint(ps, &p) || p > static_cast<std::uint64_t>(max_prefix)) {
      return false;
    }
    c.prefix = static_cast<int>(p);
  }
  // Like Postfix, refuse set host bits: "10.1.2.3/8" is almost always a
  // typo for a narrower network, and silently widening it would open relay.
  for (int bit = c.prefix; bit < max_prefix; ++bit) {
    if (c.addr[bit / 8] & (0x80 >> (bit % 8))) return false;
  }
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(c.family, c.addr, buf, sizeof buf);
  c.text = std::string(buf) + "/" + std::to_string(c.prefix);
  *out = c;
  return true;
}

bool Cidr::contains(const sockaddr* sa) const {
  if (sa == nullptr) return false;
  if (sa->sa_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, sa, sizeof sin);
    std::uint8_t a[4];
    std::memcpy(a, &sin.sin_addr, 4);
    return cidr_match(*this, AF_INET, a);
  }
  if (sa->sa_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, sa, sizeof sin6);
    std::uint8_t a[16];
    std::memcpy(a, &sin6.sin6_addr, 16);
    return cidr_match(*this, AF_INET6, a);
  }
  return false;
}

bool Cidr::contains_text(const std::string& ip) const {
  std::string s = ip;
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  if (const auto pct = s.find('%'); pct != std::string::npos) s.resize(pct);  // zone id
  std::uint8_t a[16];
  if (inet_pton(AF_INET, s.c_str(), a) == 1) return cidr_match(*this, AF_INET, a);
  if (inet_pton(AF_INET6, s.c_str(), a) == 1) return cidr_match(*this, AF_INET6, a);
  return false;
}

bool parse_socket_address(std::string_view s, SocketAddress* out) {
  SocketAddress a;
  a.text = std::string(s);
  if (s.starts_with("unix:")) {
    const std::string_view path = s.substr(5);
    if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path) ||
        path.find('\0') != std::string_view::npos) {
      return false;
    }
    a.is_unix = true;
    a.path = std::string(path);
    *out = a;
    return true;
  }
  std::string_view host;
  std::string_view port;
  if (s.starts_with("[")) {
    const std::size_t close = s.find(']');
    if (close == std::string_view::npos || s.substr(close + 1, 1) != ":") return false;
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    if (!is_ipv6(host)) return false;
  } else {
    const std::size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host == "*") host = {};
    // More than one colon without brackets is an unbracketed IPv6 address,
    // where the port cannot be told apart from the last group.
    if (host.find(':') != std::string_view::npos) return false;
    if (!host.empty() && !is_ipv4(host) && !is_hostname(host)) return false;
  }
  if (!parse_port(port, &a.port)) return false;
  a.host = std::string(host);
  *out = a;
  return true;
}

bool parse_next_hop(std::string_view s, NextHop* out) {
  NextHop h;
  h.text = std::string(s);
  std::string_view host = s;
  std::string_view port;
  if (s.starts_with("[")) {
    const std::size_t close = s.find(']');
    if (close == std::string_view::npos) return false;
    host = s.substr(1, close - 1);
    const std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return false;
      port = rest.substr(1);
      if (port.empty()) return false;
    }
    if (host.starts_with("ipv6:") || host.starts_with("IPv6:")) host.remove_prefix(5);
    h.no_mx = true;
    if (!is_ipv4(host) && !is_ipv6(host) && !is_hostname(host)) return false;
  } else {
    const std::size_t colons =
        static_cast<std::size_t>(std::count(s.begin(), s.end(), ':'));
    if (colons > 1) {
      // A bare IPv6 literal: no port possible, and an address has no MX.
      if (!is_ipv6(s)) return false;
      h.no_mx = true;
    } else if (colons == 1) {
      const std::size_t colon = s.find(':');
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      if (port.empty()) return false;
    }
    if (colons <= 1) {
      if (is_ipv4(host)) {
        h.no_mx = true;
      } else if (!is_hostname(host)) {
        return false;
      }
    }
  }
  if (!port.empty() && !parse_port(port, &h.port)) return false;
  h.host = std::string(host);
  *out = h;
  return true;
}

std::string format_duration(Seconds s) {
  if (s <= 0) return "0";
  const auto n = static_cast<std::uint64_t>(s);
  if (n % 86400 == 0) return format_unit(n, 86400, "d");
  if (n % 3600 == 0) return format_unit(n, 3600, "h");
  if (n % 60 == 0) return format_unit(n, 60, "m");
  return format_unit(n, 1, "s");
}

std::string format_size(std::uint64_t n) {
  if (n == 0) return "0";
  if (n % (1ull << 30) == 0) return format_unit(n, 1ull << 30, "GiB");
  if (n % (1ull << 20) == 0) return format_unit(n, 1ull << 20, "MiB");
  if (n % (1ull << 10) == 0) return format_unit(n, 1ull << 10, "KiB");
  return std::to_string(n);
}

const Domain* Config::find_domain(std::string_view domain) const {
  if (!domain.empty() && domain.back() == '.') domain.remove_suffix(1);
  for (const Domain& d : domains) {
    if (d.name.size() != domain.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < domain.size() && same; ++i) {
      char c = domain[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      same = c == d.name[i];
    }
    if (same) return &d;
  }
  return nullptr;
}

std::string ConfigError::str() const {
  std::string s = file.empty() ? "<config>" : file;
  if (line > 0) {
    s += ':';
    s += std::to_string(line);
  }
  s += ": ";
  if (!key.empty()) s += key + ": ";
  s += reason;
  return s;
}

std::string default_path() {
  const char* env = std::getenv("PETREL_CONFIG");
  if (env != nullptr && *env != '\0') return env;
  return "/etc/petrel/petrel.yaml";
}

}  // namespace petrel::config
