#include "petrel/master/proxy.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace petrel::master {
namespace {

constexpr char kV2Sig[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};
constexpr size_t kV1Max = 107;  // including CRLF

ProxyHeader invalid() {
  ProxyHeader h;
  h.status = ProxyHeader::Status::Invalid;
  return h;
}

bool parse_port(std::string_view s, std::uint16_t* out) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  *out = static_cast<std::uint16_t>(v);
  return true;
}

// The address as describe_peer() writes it for direct connections:
// canonical text, IPv4-mapped IPv6 as plain IPv4.
std::string canonical_ip(int family, const unsigned char* addr) {
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET6 && std::memcmp(addr, kMapped, sizeof kMapped) == 0)
    inet_ntop(AF_INET, addr + 12, buf, sizeof buf);
  else
    inet_ntop(family, addr, buf, sizeof buf);
  return buf;
}

ProxyHeader parse_v1(std::string_view data) {
  size_t crlf = data.find("\r\n");
  // A bare LF or CR inside the line can never become a valid header.
  size_t bad = data.substr(0, crlf == std::string_view::npos ? data.size() : crlf)
                   .find_first_of("\r\n");
  if (bad != std::string_view::npos && !(bad + 1 == data.size() && data[bad] == '\r'))
    return invalid();
  if (crlf == std::string_view::npos) {
    if (data.size() >= kV1Max) return invalid();
    return ProxyHeader{};
  }
  if (crlf + 2 > kV1Max) return invalid();
  std::string_view line = data.substr(0, crlf);
  std::vector<std::string_view> f;
  size_t pos = 0;
  while (pos <= line.size()) {
    size_t sp = line.find(' ', pos);
    f.push_back(line.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos));
    if (sp == std::string_view::npos) break;
    pos = sp + 1;
  }
  ProxyHeader h;
  h.length = crlf + 2;
  if (f.size() >= 2 && f[0] == "PROXY" && f[1] == "UNKNOWN") {
    h.status = ProxyHeader::Status::Ok;
    h.local = true;
    return h;
  }
  if (f.size() != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6")) return invalid();
  unsigned char src_addr[16], dst_addr[16];
  int family = f[1] == "TCP4" ? AF_INET : AF_INET6;
  std::string src(f[2]), dst(f[3]);
  if (inet_pton(family, src.c_str(), src_addr) != 1 ||
      inet_pton(family, dst.c_str(), dst_addr) != 1)
    return invalid();
  std::uint16_t dport = 0;
  if (!parse_port(f[4], &h.port) || !parse_port(f[5], &dport)) return invalid();
  h.ip = canonical_ip(family, src_addr);
  h.status = ProxyHeader::Status::Ok;
  return h;
}

ProxyHeader parse_v2(std::string_view data) {
  if (data.size() < 16) return ProxyHeader{};
  auto b = reinterpret_cast<const unsigned char*>(data.data());
  if ((b[12] & 0xf0) != 0x20) return invalid();
  int cmd = b[12] & 0x0f;
  size_t len = (static_cast<size_t>(b[14]) << 8) | b[15];
  if (data.size() < 16 + len) return ProxyHeader{};
  ProxyHeader h;
  h.length = 16 + len;
  h.status = ProxyHeader::Status::Ok;
  if (cmd == 0x0) {  // LOCAL: health checks from the proxy itself
    h.local = true;
    return h;
  }
  if (cmd != 0x1) return invalid();
  int fam = b[13] >> 4;
  if (fam == 0x1 && len >= 12) {
    h.ip = canonical_ip(AF_INET, b + 16);
    h.port = static_cast<std::uint16_t>((b[16 + 8] << 8) | b[16 + 9]);
  } else if (fam == 0x2 && len >= 36) {
    h.ip = canonical_ip(AF_INET6, b + 16);
    h.port = static_cast<std::uint16_t>((b[16 + 32] << 8) | b[16 + 33]);
  } else if (fam == 0x0 || fam == 0x3) {
    h.local = true;  // UNSPEC or unix: no usable client address
    return h;
  } else {
    return invalid();
  }
  return h;
}

}  // namespace

ProxyHeader parse_proxy_header(std::string_view data) {
  if (data.empty()) return ProxyHeader{};
  if (data[0] == '\r') {
    size_t n = std::min(data.size(), sizeof kV2Sig);
    if (std::memcmp(data.data(), kV2Sig, n) != 0) return invalid();
    return parse_v2(data);
  }
  constexpr std::string_view kV1 = "PROXY ";
  size_t n = std::min(data.size(), kV1.size());
  if (data.substr(0, n) != kV1.substr(0, n)) return invalid();
  return parse_v1(data);
}

}  // namespace petrel::master
