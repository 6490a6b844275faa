#include "petrel/delivery/nexthop.h"

#include <algorithm>
#include <utility>

#include "petrel/common/fd.h"
#include "petrel/common/strings.h"

namespace petrel::delivery {

namespace {

std::string_view strip_dot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return s;
}

// parse_next_hop() fills in 25 when no port is written; tell the two apart
// from the text so an unwritten port can follow queue.port.
bool has_explicit_port(const config::NextHop& hop) {
  const std::string_view t = hop.text;
  if (t.starts_with("[")) {
    const std::size_t close = t.find(']');
    return close != std::string_view::npos && t.substr(close + 1).starts_with(":");
  }
  return std::count(t.begin(), t.end(), ':') == 1;
}

const char* tls_name(config::TlsPolicy p) {
  switch (p) {
    case config::TlsPolicy::None: return "none";
    case config::TlsPolicy::Opportunistic: return "opportunistic";
    case config::TlsPolicy::Required: return "required";
    case config::TlsPolicy::Verify: return "verify";
  }
  return "?";
}

Route from_hop(const config::NextHop& hop, const config::Config& cfg) {
  Route r;
  r.source = Route::Source::Route;
  r.host = hop.host;
  r.mx = !hop.no_mx && !dns::IpAddress::parse(hop.host);
  r.port = has_explicit_port(hop) ? hop.port : cfg.queue.port;
  r.tls = cfg.queue.tls;
  return r;
}

}  // namespace

std::string Route::key() const {
  std::string k = mx ? "mx:" : "a:";
  k += to_lower(host) + ":" + std::to_string(port) + ":" + tls_name(tls);
  if (!auth_user.empty()) k += ":auth=" + auth_user;
  return k;
}

std::string Route::describe() const {
  const char* src = source == Source::Route ? "route" : source == Source::Smarthost ? "smarthost" : "mx";
  const std::string h = mx ? host : "[" + host + "]";  // brackets: no MX lookup, as in the config
  return std::string(src) + ":" + h + ":" + std::to_string(port);
}

Route select_route(const config::Config& cfg, std::string_view domain_in) {
  const std::string domain = to_lower(strip_dot(domain_in));
  const config::NextHop* wildcard = nullptr;
  for (const auto& [name, hop] : cfg.routes) {
    if (name == "*") {
      if (!wildcard) wildcard = &hop;
      continue;
    }
    if (to_lower(strip_dot(name)) == domain) return from_hop(hop, cfg);
  }
  if (wildcard) return from_hop(*wildcard, cfg);

  if (cfg.smarthost.enabled) {
    const config::Smarthost& s = cfg.smarthost;
    Route r;
    r.source = Route::Source::Smarthost;
    r.host = s.host.host;
    r.mx = false;
    r.port = has_explicit_port(s.host) ? s.host.port : cfg.queue.port;
    r.tls = s.tls;
    r.auth_user = s.auth_user;
    r.auth_password_file = s.auth_password_file;
    return r;
  }

  Route r;
  r.source = Route::Source::Mx;
  r.port = cfg.queue.port;
  r.tls = cfg.queue.tls;
  if (domain.size() > 2 && domain.front() == '[' && domain.back() == ']') {
    std::string_view lit = std::string_view(domain).substr(1, domain.size() - 2);
    if (lit.starts_with("ipv6:")) lit.remove_prefix(5);
    r.host = std::string(lit);
    r.mx = false;
    return r;
  }
  r.host = domain;
  r.mx = true;
  return r;
}

Result<std::string> read_password_file(const std::string& path) {
  auto text = read_file(path);
  if (!text) return Error{"cannot read password file " + path + ": " + text.error()};
  std::string pw = text->substr(0, text->find('\n'));
  if (!pw.empty() && pw.back() == '\r') pw.pop_back();
  if (pw.empty()) return Error{"password file " + path + " is empty"};
  return pw;
}

std::string Endpoint::display() const {
  return host + "[" + address.text() + "]:" + std::to_string(port);
}

// ---------------------------------------------------------------- lookup

NextHopLookup::NextHopLookup(dns::Resolver& resolver, Route route, Callback cb)
    : resolver_(resolver), route_(std::move(route)), cb_(std::move(cb)) {
  if (route_.mx) {
    mx_id_ = resolver_.resolve_mx(route_.host, [this](const dns::MxResult& r) { on_mx(r); });
  } else {
    hosts_.push_back({route_.host, 0, std::nullopt});
    resolve_hosts();
  }
}

NextHopLookup::~NextHopLookup() {
  if (mx_id_) resolver_.cancel(mx_id_);
  for (const Host& h : hosts_)
    if (h.id && !h.result) resolver_.cancel(h.id);
}

void NextHopLookup::on_mx(const dns::MxResult& mx) {
  mx_id_ = 0;
  if (!mx.ok()) {
    Resolution r;
    r.kind = mx.permanent() ? Resolution::Kind::Bounced : Resolution::Kind::Deferred;
    r.status = mx.status();
    r.error = mx.error;
    done(std::move(r));
    return;
  }
  implicit_ = mx.kind == dns::MxResult::Kind::Implicit;
  for (const dns::MxHost& h : mx.hosts) hosts_.push_back({h.name, 0, std::nullopt});
  resolve_hosts();
}

void NextHopLookup::resolve_hosts() {
  pending_ = hosts_.size();
  for (std::size_t i = 0; i < hosts_.size(); ++i) {
    hosts_[i].id = resolver_.resolve_addresses(
        hosts_[i].name, [this, i](const dns::AddressResult& r) { on_addresses(i, r); });
  }
}

void NextHopLookup::on_addresses(std::size_t index, const dns::AddressResult& result) {
  hosts_[index].result = result;
  if (--pending_ > 0) return;

  Resolution r;
  const std::string* temp_error = nullptr;
  const std::string* perm_error = nullptr;
  for (const Host& h : hosts_) {
    const dns::AddressResult& a = *h.result;
    if (a.kind == dns::AddressResult::Kind::TempFail) {
      if (!temp_error) temp_error = &a.error;
    } else if (a.kind != dns::AddressResult::Kind::Ok) {
      if (!perm_error) perm_error = &a.error;
    }
    // Literal hosts log as themselves; named hosts keep the name for TLS.
    for (const dns::IpAddress& ip : a.addresses) r.endpoints.push_back({h.name, ip, route_.port});
  }
  if (!r.endpoints.empty()) {
    r.kind = Resolution::Kind::Ok;
  } else if (temp_error) {
    r.kind = Resolution::Kind::Deferred;
    r.status = "4.4.3";
    r.error = *temp_error;
  } else if (route_.source != Route::Source::Mx) {
    r.kind = Resolution::Kind::Deferred;
    r.status = "4.4.4";
    r.error = (perm_error ? *perm_error : std::string("no address")) + " (check the " +
              (route_.source == Route::Source::Smarthost ? "smarthost" : "routes") + " setting)";
  } else {
    r.kind = Resolution::Kind::Bounced;
    r.status = "5.4.4";
    r.error = perm_error ? *perm_error : std::string("no address");
    if (implicit_) r.error = "domain " + route_.host + " has no MX and no address: " + r.error;
  }
  done(std::move(r));
}

void NextHopLookup::done(Resolution r) {
  Callback cb = std::move(cb_);
  cb(r);  // may destroy *this: nothing after this line
}

}  // namespace petrel::delivery
