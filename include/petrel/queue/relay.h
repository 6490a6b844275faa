// The queue runner's outbound scheduler (SPEC §7 "Remote", "Batching").
//
// The runner hands it transactions: one message's recipients for one
// destination (a delivery::Route key), at most max_recipients_per_transaction
// each. The scheduler groups them per destination, resolves the destination
// once per burst (NextHopLookup), and carries them over smtp::Connections:
//   - at most queue.max_connections connections in all and
//     queue.max_connections_per_domain per destination;
//   - a connection carries up to max_messages_per_connection messages, then
//     says QUIT and, if work is left, a fresh one takes its place;
//   - when the caps are reached, work for a destination that has a
//     connection waits in that destination's line and joins the connection
//     as it frees up (pull, not a fixed share per connection: a big queue for
//     one domain never trickles);
//   - destinations waiting for a connection slot get one in turn (round
//     robin), so one busy domain cannot starve the others;
//   - a destination whose connection could not be set up at all (every MX
//     and address failed) has all its waiting work deferred at once with
//     that error, instead of one connection attempt per message.
// Message files are opened by the connection only while a message is sent,
// so file descriptors stay bounded by the number of connections.
//
// Results come back per transaction through the Done callback, on the
// event loop, never inside submit().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "petrel/config/config.h"
#include "petrel/delivery/agent.h"
#include "petrel/delivery/nexthop.h"
#include "petrel/delivery/smtp_client.h"

struct event_base;

namespace petrel::queue {

struct RelayResult {
  delivery::Verdict verdict;
  std::string reply;  // the server's reply on one line; "" when none
};

struct RelayTransaction {
  std::string id;                    // queue id
  std::vector<std::size_t> targets;  // the runner's target indexes, in recipient order
  delivery::smtp::Message message;   // sender, recipients, spool location
};

struct RelayOutcome {
  std::string id;
  std::vector<std::size_t> targets;
  std::vector<RelayResult> results;  // one per target, same order
  std::string relay;                 // "host[ip]:port", or "none"
  std::string tls;                   // "TLSv1.3", "" for plaintext
};

class Relay {
 public:
  using Done = std::function<void(const RelayOutcome&)>;

  // Fails when the resolver cannot be set up (bad nameserver, no
  // /etc/resolv.conf) or the TLS context cannot be made.
  static Result<std::unique_ptr<Relay>> create(event_base* base, const config::Config& cfg, Done done);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Queues a transaction for the destination of `route`.
  void submit(const delivery::Route& route, RelayTransaction tx);
  // New settings (caps, TLS, nameservers, timeouts). Connections in flight
  // finish with the old ones; lookups in flight start again.
  Status reload(const config::Config& cfg);
  // Takes no more work: waiting transactions are answered deferred ("queue
  // runner stopping"), connections finish their message in progress and QUIT.
  void stop();
  // Nothing in flight: no connection, no lookup, no waiting transaction.
  bool idle() const;

  // For tests and logs.
  std::size_t connections() const;
  std::size_t waiting() const;

  struct Impl;

 private:
  explicit Relay(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace petrel::queue
