// Next-hop selection for remote recipients (SPEC §3 `routes`, `smarthost`,
// `queue`; §7 "Remote").
//
// select_route() is a pure function of the config and the recipient domain:
//   1. `routes`: the exact domain (case-insensitive, trailing dot ignored),
//      then "*". "[host]:port" (or an IP literal) connects to the host's
//      A/AAAA; "host:port" resolves the MX of host first. TLS per queue.tls.
//   2. `smarthost`, when configured: its A/AAAA (never MX), its own `tls`
//      policy and AUTH credentials.
//   3. Otherwise DNS MX of the domain itself. A domain literal
//      ("[192.0.2.1]", "[IPv6:2001:db8::1]") is its own address.
// The port is the one written in the route or smarthost, else queue.port.
//
// NextHopLookup then turns a Route into the ordered list of endpoints a
// Connection (petrel/delivery/smtp_client.h) tries: MX hosts by preference
// (equal preferences shuffled), each host's addresses IPv4 first then IPv6.
// Outcomes:
//   - Ok: at least one endpoint (hosts that did not resolve are skipped).
//   - Bounced: null MX (5.1.10), NXDOMAIN for the domain (5.1.2), or every
//     MX host (or the implicit MX) exists without an address or does not
//     exist (5.4.4).
//   - Deferred (4.4.3): SERVFAIL, timeouts, and any host failing
//     temporarily when no endpoint is left. A route or smarthost host that
//     does not resolve is a configuration problem, so it is deferred (4.4.4)
//     too rather than bounced: fixing the config delivers the mail.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/config/config.h"
#include "petrel/dns/resolver.h"

namespace petrel::delivery {

struct Route {
  enum class Source { Route, Smarthost, Mx };
  Source source = Source::Mx;
  std::string host;  // domain whose MX to resolve, or host (name or IP literal) whose A/AAAA to use
  bool mx = true;    // resolve MX records of `host` first
  std::uint16_t port = 25;
  config::TlsPolicy tls = config::TlsPolicy::Opportunistic;
  std::string auth_user;           // empty: no AUTH
  std::string auth_password_file;  // read with read_password_file()

  // Recipients whose routes have equal keys may share connections and
  // transactions: same lookup, host, port, TLS policy and credentials.
  std::string key() const;
  // For logs: "mx:example.org:25", "route:[192.0.2.1]:2525", "smarthost:relay.example:587".
  std::string describe() const;
};

// Pure: see above. `domain` is the recipient's domain (any case).
Route select_route(const config::Config& cfg, std::string_view domain);

// Reads the smarthost password: the first line of the file, without its
// line end. An unreadable or empty file is an error.
Result<std::string> read_password_file(const std::string& path);

// Where to connect: one address of one host.
struct Endpoint {
  std::string host;  // the host name looked up (for TLS SNI and verification, logs); the IP for literals
  dns::IpAddress address;
  std::uint16_t port = 25;

  // "mx1.example.org[192.0.2.1]:25", as in `relay=` log fields.
  std::string display() const;
};

struct Resolution {
  enum class Kind { Ok, Deferred, Bounced };
  Kind kind = Kind::Deferred;
  std::string status;  // RFC 3463 code when not Ok: "4.4.3", "5.1.10", ...
  std::string error;   // one line when not Ok
  std::vector<Endpoint> endpoints;  // Ok: in the order to try
};

// One asynchronous resolution of a Route on `resolver`'s event loop. The
// callback runs once, on the loop, never inside the constructor; destroying
// the lookup first cancels it (no callback). The callback may destroy the
// lookup.
class NextHopLookup {
 public:
  using Callback = std::function<void(const Resolution&)>;
  NextHopLookup(dns::Resolver& resolver, Route route, Callback cb);
  ~NextHopLookup();
  NextHopLookup(const NextHopLookup&) = delete;
  NextHopLookup& operator=(const NextHopLookup&) = delete;

 private:
  struct Host {
    std::string name;
    dns::Resolver::RequestId id = 0;
    std::optional<dns::AddressResult> result;
  };
  void on_mx(const dns::MxResult& mx);
  void resolve_hosts();
  void on_addresses(std::size_t index, const dns::AddressResult& r);
  void done(Resolution r);

  dns::Resolver& resolver_;
  Route route_;
  Callback cb_;
  dns::Resolver::RequestId mx_id_ = 0;
  bool implicit_ = false;
  std::vector<Host> hosts_;
  std::size_t pending_ = 0;
};

}  // namespace petrel::delivery
