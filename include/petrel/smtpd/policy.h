// Relay rules and recipient verification over the configuration (SPEC §3
// `relay`, `domains`, `recipient_delimiter`, `aliases`). Local recipients are
// checked with the same resolver the queue runner delivers with, so what is
// accepted at RCPT is what gets delivered.
#pragma once

#include <memory>

#include "petrel/config/config.h"
#include "petrel/queue/resolver.h"
#include "petrel/smtpd/session.h"

namespace petrel::smtpd {

class ConfigPolicy : public Policy {
 public:
  // `resolver` (with aliases.file loaded) is shared by the master with its
  // workers; without one a map-only resolver is built from `cfg`.
  explicit ConfigPolicy(const config::Config& cfg, const queue::Resolver* resolver = nullptr);
  RcptVerdict check_recipient(const Address& rcpt, const ClientInfo& client,
                              bool authenticated) override;

  // May this client send to non-local domains?
  bool may_relay(const ClientInfo& client, bool authenticated) const;
  // Is local part `local` (already unquoted, any case) a known recipient of
  // local domain `domain`?
  bool known_local(const config::Domain& domain, std::string_view local) const;

 private:
  const config::Config& cfg_;
  std::unique_ptr<queue::Resolver> own_;
  const queue::Resolver* resolver_;
};

}  // namespace petrel::smtpd
