#include "petrel/smtpd/policy.h"

#include <algorithm>

namespace petrel::smtpd {

ConfigPolicy::ConfigPolicy(const config::Config& cfg, const queue::Resolver* resolver)
    : cfg_(cfg), resolver_(resolver) {
  if (!resolver_) {
    own_ = std::make_unique<queue::Resolver>(cfg);
    resolver_ = own_.get();
  }
}

bool ConfigPolicy::may_relay(const ClientInfo& client, bool authenticated) const {
  if (client.is_unix) return true;
  if (authenticated && cfg_.relay.authenticated) return true;
  return std::any_of(cfg_.relay.networks.begin(), cfg_.relay.networks.end(),
                     [&](const config::Cidr& n) { return n.contains_text(client.ip); });
}

bool ConfigPolicy::known_local(const config::Domain& domain, std::string_view local) const {
  std::string address(local);
  // Re-quote a local part that needs it, so the resolver parses it back.
  bool plain = !address.empty() && address.find_first_of(" \"\\@,;:<>()[]") == std::string::npos;
  if (!plain) {
    std::string q = "\"";
    for (char c : address) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    address = q + "\"";
  }
  return resolver_->local_exists(address + "@" + domain.name);
}

RcptVerdict ConfigPolicy::check_recipient(const Address& rcpt, const ClientInfo& client,
                                          bool authenticated) {
  if (rcpt.is_postmaster_only()) return RcptVerdict::Ok;
  if (const config::Domain* d = cfg_.find_domain(rcpt.domain)) {
    return known_local(*d, unquote_local(rcpt.local)) ? RcptVerdict::Ok : RcptVerdict::UnknownUser;
  }
  return may_relay(client, authenticated) ? RcptVerdict::Ok : RcptVerdict::RelayDenied;
}

}  // namespace petrel::smtpd
