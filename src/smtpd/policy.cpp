#include "petrel/smtpd/policy.h"

#include <algorithm>

namespace petrel::smtpd {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace

bool ConfigPolicy::may_relay(const ClientInfo& client, bool authenticated) const {
  if (client.is_unix) return true;
  if (authenticated && cfg_.relay.authenticated) return true;
  return std::any_of(cfg_.relay.networks.begin(), cfg_.relay.networks.end(),
                     [&](const config::Cidr& n) { return n.contains_text(client.ip); });
}

bool ConfigPolicy::known_local(const config::Domain& domain, std::string_view local_in) const {
  if (!domain.users) return true;
  std::string local = lower(local_in);
  auto is_known = [&](const std::string& l) {
    if (l == "postmaster") return true;
    if (std::find(domain.users->begin(), domain.users->end(), l) != domain.users->end())
      return true;
    std::string full = l + "@" + domain.name;
    for (const auto& [key, targets] : cfg_.aliases.map) {
      std::string k = lower(key);
      if (k == l || k == full) return true;
    }
    return false;
  };
  if (is_known(local)) return true;
  const std::string& delim = cfg_.recipient_delimiter;
  if (!delim.empty()) {
    size_t pos = local.find_first_of(delim);
    if (pos != std::string::npos && pos > 0 && is_known(local.substr(0, pos))) return true;
  }
  return !domain.catch_all.empty();
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
