// PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy sends them in
// front of a `proxy_protocol: true` listener. Pure: bytes in, result out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace petrel::master {

struct ProxyHeader {
  enum class Status { NeedMore, Ok, Invalid };
  Status status = Status::NeedMore;
  size_t length = 0;     // octets the header takes (Ok)
  bool local = false;    // v1 UNKNOWN / v2 LOCAL: keep the connection's own address
  std::string ip;        // the original client (Ok, !local)
  std::uint16_t port = 0;
};

ProxyHeader parse_proxy_header(std::string_view data);

}  // namespace petrel::master
