// Relay rules and recipient verification over the configuration (SPEC §3
// `relay`, `domains`, `recipient_delimiter`, `aliases`).
#pragma once

#include "petrel/config/config.h"
#include "petrel/smtpd/session.h"

namespace petrel::smtpd {

class ConfigPolicy : public Policy {
 public:
  explicit ConfigPolicy(const config::Config& cfg) : cfg_(cfg) {}
  RcptVerdict check_recipient(const Address& rcpt, const ClientInfo& client,
                              bool authenticated) override;

  // May this client send to non-local domains?
  bool may_relay(const ClientInfo& client, bool authenticated) const;
  // Is local part `local` (already unquoted, any case) a known recipient of
  // local domain `domain`?
  bool known_local(const config::Domain& domain, std::string_view local) const;

 private:
  const config::Config& cfg_;
};

}  // namespace petrel::smtpd
