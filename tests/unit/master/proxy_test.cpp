// PROXY protocol v1/v2 header parsing (SPEC §3 `listen.proxy_protocol`).
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "petrel/master/proxy.h"

using petrel::master::parse_proxy_header;
using petrel::master::ProxyHeader;
using Status = ProxyHeader::Status;

namespace {

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s += static_cast<char>(c);
  return s;
}

// A v2 header: version/command byte, family/transport byte, then `payload`.
std::string v2(int ver_cmd, int fam, const std::string& payload) {
  return kSig + bytes({ver_cmd, fam, static_cast<int>(payload.size() >> 8),
                       static_cast<int>(payload.size() & 0xff)}) +
         payload;
}

std::string v2_tcp4() {
  // 192.0.2.1:56324 -> 198.51.100.7:25
  return v2(0x21, 0x11, bytes({192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0, 25}));
}

std::string v2_tcp6() {
  // [2001:db8::1]:443 -> [2001:db8::2]:25
  std::string src = bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
  std::string dst = bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2});
  return v2(0x21, 0x21, src + dst + bytes({0x01, 0xbb, 0, 25}));
}

// Every proper prefix of a valid header asks for more; never Invalid.
void check_prefixes_need_more(const std::string& header) {
  for (size_t n = 0; n < header.size(); ++n) {
    INFO("prefix length ", n);
    CHECK(parse_proxy_header(std::string_view(header).substr(0, n)).status == Status::NeedMore);
  }
}

}  // namespace

TEST_CASE("proxy v1: TCP4") {
  const std::string hdr = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n";
  ProxyHeader h = parse_proxy_header(hdr);
  REQUIRE(h.status == Status::Ok);
  CHECK_FALSE(h.local);
  CHECK(h.ip == "192.0.2.1");
  CHECK(h.port == 56324);
  CHECK(h.length == hdr.size());
  check_prefixes_need_more(hdr);
}

TEST_CASE("proxy v1: TCP6, with the address in canonical form") {
  const std::string hdr = "PROXY TCP6 2001:DB8:0::1 2001:db8::2 443 25\r\n";
  ProxyHeader h = parse_proxy_header(hdr);
  REQUIRE(h.status == Status::Ok);
  CHECK(h.ip == "2001:db8::1");
  CHECK(h.port == 443);
  CHECK(h.length == hdr.size());

  // IPv4-mapped: shown as IPv4, as for a direct connection on a dual-stack socket.
  h = parse_proxy_header("PROXY TCP6 ::ffff:192.0.2.9 ::1 1000 25\r\n");
  REQUIRE(h.status == Status::Ok);
  CHECK(h.ip == "192.0.2.9");
}

TEST_CASE("proxy v1: UNKNOWN keeps the connection's own address") {
  for (std::string hdr : {std::string("PROXY UNKNOWN\r\n"),
                          std::string("PROXY UNKNOWN ffff:f...:f ffff:f...:f 65535 65535\r\n")}) {
    INFO(hdr);
    ProxyHeader h = parse_proxy_header(hdr);
    REQUIRE(h.status == Status::Ok);
    CHECK(h.local);
    CHECK(h.ip.empty());
    CHECK(h.length == hdr.size());
  }
}

TEST_CASE("proxy v1: early data after the header is not consumed") {
  const std::string hdr = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n";
  ProxyHeader h = parse_proxy_header(hdr + "EHLO client.example\r\nMAIL FROM:<a@b>\r\n");
  REQUIRE(h.status == Status::Ok);
  CHECK(h.length == hdr.size());
  CHECK(h.ip == "192.0.2.1");
}

TEST_CASE("proxy v1: invalid headers") {
  for (std::string bad : {
           std::string("EHLO client.example\r\n"),
           std::string("GET / HTTP/1.0\r\n"),
           std::string("proxy TCP4 192.0.2.1 198.51.100.7 1 25\r\n"),
           std::string("PROXY TCP5 192.0.2.1 198.51.100.7 1 25\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 1 25 extra\r\n"),
           std::string("PROXY TCP4  192.0.2.1 198.51.100.7 1 25\r\n"),
           std::string("PROXY TCP4 2001:db8::1 198.51.100.7 1 25\r\n"),
           std::string("PROXY TCP6 192.0.2.1 2001:db8::2 1 25\r\n"),
           std::string("PROXY TCP4 192.0.2.256 198.51.100.7 1 25\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 -1 25\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 0080 25\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 1 x\r\n"),
           std::string("PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\n"),  // bare LF
           std::string("PROXY TCP4 192.0.2.1\r198.51.100.7 56324 25\r\n"),
           std::string("PROXY\r\n"),
           std::string("X"),
           std::string("\x16\x03\x01\x02\x00", 5),  // a TLS ClientHello
       }) {
    INFO(bad);
    CHECK(parse_proxy_header(bad).status == Status::Invalid);
  }
}

TEST_CASE("proxy v1: a line longer than 107 octets is invalid, with or without CRLF") {
  std::string longline = "PROXY TCP6 " + std::string(120, 'f');
  CHECK(parse_proxy_header(longline).status == Status::Invalid);
  CHECK(parse_proxy_header(longline + "\r\n").status == Status::Invalid);
  // Exactly 107 octets without a CRLF cannot become valid either.
  std::string at_limit = "PROXY UNKNOWN " + std::string(107 - 14, 'x');
  REQUIRE(at_limit.size() == 107);
  CHECK(parse_proxy_header(at_limit).status == Status::Invalid);
  // 105 octets + CRLF = 107 is the longest valid line.
  std::string max_ok = "PROXY UNKNOWN " + std::string(105 - 14, 'x') + "\r\n";
  REQUIRE(max_ok.size() == 107);
  CHECK(parse_proxy_header(max_ok).status == Status::Ok);
}

TEST_CASE("proxy: nothing yet, or a partial signature, needs more") {
  CHECK(parse_proxy_header("").status == Status::NeedMore);
  CHECK(parse_proxy_header("PRO").status == Status::NeedMore);
  CHECK(parse_proxy_header("PROXY TCP4 192.0.2.1 198.5").status == Status::NeedMore);
  CHECK(parse_proxy_header("PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r").status ==
        Status::NeedMore);
  CHECK(parse_proxy_header(kSig.substr(0, 5)).status == Status::NeedMore);
  CHECK(parse_proxy_header(kSig + "\x21\x11").status == Status::NeedMore);
}

TEST_CASE("proxy v2: PROXY over TCP/IPv4") {
  std::string hdr = v2_tcp4();
  ProxyHeader h = parse_proxy_header(hdr);
  REQUIRE(h.status == Status::Ok);
  CHECK_FALSE(h.local);
  CHECK(h.ip == "192.0.2.1");
  CHECK(h.port == 56324);
  CHECK(h.length == 28);
  check_prefixes_need_more(hdr);
}

TEST_CASE("proxy v2: PROXY over TCP/IPv6") {
  std::string hdr = v2_tcp6();
  ProxyHeader h = parse_proxy_header(hdr);
  REQUIRE(h.status == Status::Ok);
  CHECK(h.ip == "2001:db8::1");
  CHECK(h.port == 443);
  CHECK(h.length == 52);
  check_prefixes_need_more(hdr);

  // IPv4-mapped source.
  std::string src = bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 33});
  h = parse_proxy_header(v2(0x21, 0x21, src + std::string(16, '\0') + bytes({0, 1, 0, 25})));
  REQUIRE(h.status == Status::Ok);
  CHECK(h.ip == "192.0.2.33");
}

TEST_CASE("proxy v2: LOCAL (health checks) keeps the connection's own address") {
  ProxyHeader h = parse_proxy_header(v2(0x20, 0x00, ""));
  REQUIRE(h.status == Status::Ok);
  CHECK(h.local);
  CHECK(h.length == 16);
  // LOCAL may still carry an address block: it is skipped, not used.
  h = parse_proxy_header(v2(0x20, 0x11, bytes({10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2})));
  REQUIRE(h.status == Status::Ok);
  CHECK(h.local);
  CHECK(h.length == 28);
  // PROXY with AF_UNSPEC or AF_UNIX: no usable address either.
  h = parse_proxy_header(v2(0x21, 0x00, ""));
  REQUIRE(h.status == Status::Ok);
  CHECK(h.local);
  h = parse_proxy_header(v2(0x21, 0x31, std::string(216, '\0')));
  REQUIRE(h.status == Status::Ok);
  CHECK(h.local);
  CHECK(h.length == 16 + 216);
}

TEST_CASE("proxy v2: TLVs after the addresses and early data are measured exactly") {
  // An address block plus a PP2_TYPE_ALPN TLV ("smtp").
  std::string payload = bytes({192, 0, 2, 1, 198, 51, 100, 7, 0, 99, 0, 25}) +
                        bytes({0x01, 0x00, 0x04}) + "smtp";
  std::string hdr = v2(0x21, 0x11, payload);
  ProxyHeader h = parse_proxy_header(hdr + "EHLO x\r\n");
  REQUIRE(h.status == Status::Ok);
  CHECK(h.ip == "192.0.2.1");
  CHECK(h.port == 99);
  CHECK(h.length == hdr.size());
  // The TLV bytes not yet arrived: wait for them.
  CHECK(parse_proxy_header(hdr.substr(0, hdr.size() - 1)).status == Status::NeedMore);
}

TEST_CASE("proxy v2: invalid headers") {
  std::string addr4 = bytes({192, 0, 2, 1, 198, 51, 100, 7, 0, 99, 0, 25});
  CHECK(parse_proxy_header(v2(0x11, 0x11, addr4)).status == Status::Invalid);  // version 1
  CHECK(parse_proxy_header(v2(0x31, 0x11, addr4)).status == Status::Invalid);  // version 3
  CHECK(parse_proxy_header(v2(0x22, 0x11, addr4)).status == Status::Invalid);  // command 2
  CHECK(parse_proxy_header(v2(0x21, 0x41, addr4)).status == Status::Invalid);  // family 4
  // Address block shorter than the family needs.
  CHECK(parse_proxy_header(v2(0x21, 0x11, addr4.substr(0, 8))).status == Status::Invalid);
  CHECK(parse_proxy_header(v2(0x21, 0x21, std::string(20, '\0'))).status == Status::Invalid);
  // A broken signature, at any position.
  for (size_t i = 0; i < 12; ++i) {
    std::string hdr = v2_tcp4();
    hdr[i] = static_cast<char>(hdr[i] ^ 0x40);
    INFO("signature byte ", i);
    CHECK(parse_proxy_header(hdr).status == Status::Invalid);
  }
  CHECK(parse_proxy_header("\r\n\r\n").status == Status::NeedMore);
  CHECK(parse_proxy_header("\r\nEHLO").status == Status::Invalid);
}
