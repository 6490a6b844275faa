// Asynchronous DNS for outbound mail (SPEC §7 "Remote"), on the queue
// runner's libevent loop.
//
// Nameservers come from `queue.dns.nameservers` ("ip", "ip:port",
// "[v6]:port") or, when that list is empty, from /etc/resolv.conf, through
// one evdns_base. A and AAAA lookups use evdns; libevent 2.1 has no MX
// lookup, so MX queries are built with petrel/dns/wire.h and sent over UDP
// to the same nameservers (in order, `attempts` rounds, `timeout` each),
// with a retry over TCP when an answer comes back truncated. A response
// counts only when it comes from the server asked (connected socket) and
// carries our random id and our question.
//
// Callbacks run on the event loop, never inside the call that starts the
// lookup, exactly once per lookup unless it is cancelled or the Resolver is
// destroyed first. A callback may start new lookups, cancel others, or
// destroy the Resolver.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <sys/socket.h>

#include "petrel/common/result.h"
#include "petrel/dns/wire.h"

struct event_base;
struct evdns_base;

namespace petrel::dns {

// An IPv4 or IPv6 address.
struct IpAddress {
  int family = AF_INET;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> bytes{};

  // "192.0.2.1", "2001:db8::1".
  std::string text() const;
  // The address with `port`, ready for connect(); returns its length.
  socklen_t to_sockaddr(std::uint16_t port, sockaddr_storage* out) const;
  // Parses an IPv4 or IPv6 literal (no brackets); nullopt otherwise.
  static std::optional<IpAddress> parse(std::string_view text);

  bool operator==(const IpAddress&) const = default;
};

struct MxHost {
  std::string name;  // as in DNS, without the trailing dot
  std::uint16_t preference = 0;
};

struct MxResult {
  enum class Kind {
    Hosts,     // MX records: `hosts` by preference, equal preferences shuffled
    Implicit,  // no MX (NOERROR/NODATA): `hosts` is the domain itself (RFC 5321 §5.1)
    NullMx,    // RFC 7505 "MX 0 .": the domain accepts no mail (5.1.10)
    NxDomain,  // the domain does not exist (5.1.2)
    TempFail,  // SERVFAIL, timeout, garbage: try again later (4.4.3)
  };
  Kind kind = Kind::TempFail;
  std::vector<MxHost> hosts;
  std::string error;  // NullMx/NxDomain/TempFail: one line for logs and DSNs

  bool ok() const { return kind == Kind::Hosts || kind == Kind::Implicit; }
  bool permanent() const { return kind == Kind::NullMx || kind == Kind::NxDomain; }
  // The RFC 3463 code for a failure: "5.1.10", "5.1.2", "4.4.3"; "" when ok().
  std::string status() const;
};

struct AddressResult {
  enum class Kind {
    Ok,         // at least one address
    NoAddress,  // the name exists but has neither A nor AAAA
    NxDomain,   // the name does not exist
    TempFail,   // both lookups failed and at least one for a transient reason
  };
  Kind kind = Kind::TempFail;
  // IPv4 first, then IPv6, each in the server's order, without duplicates.
  // A caller tries them all before giving up on the host.
  std::vector<IpAddress> addresses;
  std::string error;  // one line when kind != Ok
};

// Interprets an MX response for `domain` (pure; the Resolver uses it and
// tests call it directly). MX records count when their owner is `domain` or
// a name it is a CNAME for within the answer. A lone "." target (any
// preference, RFC 7505) is a null MX; among real hosts a "." is dropped.
// Targets that are not valid host names are dropped; when nothing is left
// the result is TempFail (an admin can fix the zone). `rng` shuffles
// equal preferences.
MxResult interpret_mx(const Message& response, std::string_view domain, std::mt19937& rng);

struct ResolverOptions {
  std::vector<std::string> nameservers;  // empty: /etc/resolv.conf
  std::chrono::milliseconds timeout{5000};  // per query try
  int attempts = 2;                         // rounds over the nameservers
};

class Resolver {
 public:
  using RequestId = std::uint64_t;
  using MxCallback = std::function<void(const MxResult&)>;
  using AddressCallback = std::function<void(const AddressResult&)>;

  // Fails when a nameserver does not parse or /etc/resolv.conf names none.
  static Result<std::unique_ptr<Resolver>> create(event_base* base, const ResolverOptions& options);
  // Pending lookups are dropped without calling their callbacks. evdns may
  // still need one pass of the event loop afterwards to release its
  // cancelled requests, so destroy the Resolver before the event_base and
  // let the loop run once when that matters (leak checkers).
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // MX lookup for a mail domain (a trailing dot is ignored). Never fails
  // synchronously: an unusable name comes back as TempFail.
  RequestId resolve_mx(std::string_view domain, MxCallback cb);
  // A and AAAA for a host, in parallel, without search domains. An IP
  // literal (no brackets) resolves to itself.
  RequestId resolve_addresses(std::string_view host, AddressCallback cb);
  // Stops a lookup; its callback will not be called. Unknown ids are ignored.
  void cancel(RequestId id);

  // Deterministic shuffling of equal MX preferences, for tests.
  void seed(std::uint32_t s) { rng_.seed(s); }
  // The nameservers in use, as "ip:port" (for logs and check-config).
  std::vector<std::string> nameservers() const;

 private:
  struct Lookup;
  struct MxLookup;
  struct AddressLookup;
  struct EvdnsCall;
  friend struct MxLookup;
  friend struct AddressLookup;

  Resolver(event_base* base, evdns_base* dns, ResolverOptions options);
  // Removes a finished lookup and hands it to its caller-facing completion.
  std::unique_ptr<Lookup> take(RequestId id);
  static void on_evdns(int result, char type, int count, int ttl, void* addresses, void* arg);

  event_base* base_;
  evdns_base* dns_;
  ResolverOptions options_;
  std::vector<sockaddr_storage> servers_;
  std::mt19937 rng_;
  RequestId next_id_ = 1;
  std::map<RequestId, std::unique_ptr<Lookup>> lookups_;
};

}  // namespace petrel::dns
