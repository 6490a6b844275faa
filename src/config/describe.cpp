// The effective configuration as `petrel check-config` prints it: every key
// of SPEC §3 with its value after defaults and path resolution, laid out like
// petrel.yaml itself so an admin can compare it with what they wrote.
// Secrets never appear: auth users are listed by name, without their hashes.
#include <sstream>

#include "petrel/config/config.h"

namespace petrel::config {
namespace {

// A YAML scalar: plain when that reads back as the same string, else quoted.
std::string y(std::string_view s) {
  if (s.empty()) return "\"\"";
  static const std::string_view words[] = {"true", "false", "yes", "no", "on", "off", "null",
                                           "~",    "True", "False", "Yes", "No", "On", "Off",
                                           "Null", "NULL", "TRUE", "FALSE"};
  // Starting with a letter, '/' or '_' keeps clear of YAML indicators and of
  // numbers ("1.2" would read back as a float).
  bool plain = (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '/' ||
               s[0] == '_';
  for (std::string_view w : words) plain = plain && s != w;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("_./@%+-").find(c) != std::string_view::npos;
    plain = plain && ok;
  }
  if (plain) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[(c >> 4) & 0xf];
      out += hex[c & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A string setting that may be unset: "~" reads as YAML null.
std::string opt(std::string_view s) { return s.empty() ? "~" : y(s); }

std::string flow(const std::vector<std::string>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + y(v[i]);
  return out + "]";
}

std::string yes_no(bool b) { return b ? "true" : "false"; }

const char* name(ListenMode m) {
  switch (m) {
    case ListenMode::Smtp: return "smtp";
    case ListenMode::Submission: return "submission";
    case ListenMode::Submissions: return "submissions";
  }
  return "?";
}

const char* name(TlsPolicy p) {
  switch (p) {
    case TlsPolicy::None: return "none";
    case TlsPolicy::Opportunistic: return "opportunistic";
    case TlsPolicy::Required: return "required";
    case TlsPolicy::Verify: return "verify";
  }
  return "?";
}

const char* name(FilterKind k) {
  switch (k) {
    case FilterKind::Exec: return "exec";
    case FilterKind::Milter: return "milter";
    case FilterKind::Plugin: return "plugin";
  }
  return "?";
}

const char* name(FilterMode m) { return m == FilterMode::Rewrite ? "rewrite" : "headers"; }

const char* name(OnError e) {
  switch (e) {
    case OnError::Tempfail: return "tempfail";
    case OnError::Accept: return "accept";
    case OnError::Reject: return "reject";
  }
  return "?";
}

const char* name(LogTarget t) { return t == LogTarget::Syslog ? "syslog" : "stderr"; }
const char* name(LogFormat f) { return f == LogFormat::Json ? "json" : "text"; }

const char* name(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
  }
  return "?";
}

std::string hop_note(const NextHop& h) {
  std::string host = h.host.find(':') != std::string::npos ? "[" + h.host + "]" : h.host;
  return host + " port " + std::to_string(h.port) + (h.no_mx ? ", no MX lookup" : ", by MX");
}

// Writes "key: value" lines at an indent, with an optional trailing comment.
class Out {
 public:
  void kv(int indent, std::string_view key, std::string_view value, std::string_view note = {}) {
    s_ << std::string(static_cast<std::size_t>(indent) * 2, ' ') << key << ":";
    if (!value.empty()) s_ << " " << value;
    if (!note.empty()) s_ << "  # " << note;
    s_ << "\n";
  }
  void raw(std::string_view line) { s_ << line << "\n"; }
  std::string str() const { return s_.str(); }

 private:
  std::ostringstream s_;
};

void describe_listen(const Config& c, Out& o) {
  if (c.listen.empty()) {
    o.kv(0, "listen", "[]", "no listeners");
    return;
  }
  o.kv(0, "listen", "");
  for (const Listener& l : c.listen) {
    const SocketAddress& a = l.address;
    std::string addr = a.is_unix ? "unix:" + a.path : a.text;
    o.raw("  - address: " + y(addr));
    o.kv(2, "mode", name(l.mode));
    o.kv(2, "proxy_protocol", yes_no(l.proxy_protocol));
  }
}

void describe_limits(const Config& c, Out& o) {
  const Limits& l = c.limits;
  o.kv(0, "limits", "");
  o.kv(1, "max_workers", std::to_string(l.max_workers));
  o.kv(1, "max_per_ip", std::to_string(l.max_per_ip));
  o.kv(1, "max_message_size", format_size(l.max_message_size),
       std::to_string(l.max_message_size) + " bytes");
  o.kv(1, "max_recipients", std::to_string(l.max_recipients));
  o.kv(1, "max_errors", std::to_string(l.max_errors));
  o.kv(1, "max_hops", std::to_string(l.max_hops));
  o.kv(1, "timeouts",
       "{ command: " + format_duration(l.timeouts.command) +
           ", data_block: " + format_duration(l.timeouts.data_block) +
           ", data_end: " + format_duration(l.timeouts.data_end) + " }");
}

void describe_security(const Config& c, Out& o) {
  o.kv(0, "tls", "");
  o.kv(1, "cert", opt(c.tls.cert),
       c.tls.cert.empty() ? "unset: a self-signed certificate is made in state_dir" : "");
  o.kv(1, "key", opt(c.tls.key));
  o.kv(1, "min_version", y(c.tls.min_version));

  o.kv(0, "auth", "");
  o.kv(1, "require_tls", yes_no(c.auth.require_tls));
  std::vector<std::string> users;
  for (const auto& [user, hash] : c.auth.users) users.push_back(user);
  o.kv(1, "users", flow(users), users.empty() ? "" : "names only; hashes not shown");
  o.kv(1, "passwd_file", opt(c.auth.passwd_file));

  o.kv(0, "relay", "");
  std::vector<std::string> nets;
  for (const Cidr& n : c.relay.networks) nets.push_back(n.text);
  o.kv(1, "networks", flow(nets), "unix: listeners may always relay");
  o.kv(1, "authenticated", yes_no(c.relay.authenticated));
}

void describe_domains(const Config& c, Out& o) {
  if (c.domains.empty()) {
    o.kv(0, "domains", "{}", "none: every recipient domain is remote");
  } else {
    o.kv(0, "domains", "");
    for (const Domain& d : c.domains) {
      o.kv(1, y(d.name), "");
      o.kv(2, "deliver", d.deliver.size() == 1 ? y(d.deliver[0]) : flow(d.deliver));
      if (d.users) {
        o.kv(2, "users", flow(*d.users));
      } else {
        o.kv(2, "users", "~", "unset: every local part is accepted");
      }
      o.kv(2, "catch_all", opt(d.catch_all));
    }
  }
  o.kv(0, "recipient_delimiter", opt(c.recipient_delimiter),
       c.recipient_delimiter.empty() ? "unset: no address extensions" : "");
  o.kv(0, "aliases", "");
  o.kv(1, "file", opt(c.aliases.file));
  if (c.aliases.map.empty()) {
    o.kv(1, "map", "{}");
  } else {
    o.kv(1, "map", "");
    for (const auto& [key, targets] : c.aliases.map) {
      o.kv(2, y(key), targets.size() == 1 ? y(targets[0]) : flow(targets));
    }
  }
}

void describe_relaying(const Config& c, Out& o) {
  if (c.routes.empty()) {
    o.kv(0, "routes", "{}", "none: next hops come from the smarthost or DNS MX");
  } else {
    o.kv(0, "routes", "");
    for (const auto& [domain, hop] : c.routes) o.kv(1, y(domain), y(hop.text), hop_note(hop));
  }
  const Smarthost& s = c.smarthost;
  if (!s.enabled) {
    o.kv(0, "smarthost", "~", "unset: non-local mail goes by routes, then DNS MX");
  } else {
    o.kv(0, "smarthost", "");
    o.kv(1, "host", y(s.host.text), hop_note(s.host));
    o.kv(1, "tls", name(s.tls));
    if (s.auth_user.empty()) {
      o.kv(1, "auth", "~", "unset: no SMTP AUTH");
    } else {
      o.kv(1, "auth",
           "{ user: " + y(s.auth_user) + ", password_file: " + y(s.auth_password_file) + " }",
           "password not shown");
    }
  }
  const Queue& q = c.queue;
  o.kv(0, "queue", "");
  o.kv(1, "retry",
       "{ min: " + format_duration(q.retry.min) + ", max: " + format_duration(q.retry.max) +
           ", lifetime: " + format_duration(q.retry.lifetime) +
           ", warn_after: " + format_duration(q.retry.warn_after) + " }",
       q.retry.warn_after == 0 ? "warn_after 0: no delay warnings" : "");
  o.kv(1, "max_connections", std::to_string(q.max_connections));
  o.kv(1, "max_connections_per_domain", std::to_string(q.max_connections_per_domain));
  o.kv(1, "max_messages_per_connection", std::to_string(q.max_messages_per_connection));
  o.kv(1, "max_recipients_per_transaction", std::to_string(q.max_recipients_per_transaction));
  o.kv(1, "port", std::to_string(q.port));
  o.kv(1, "tls", name(q.tls));
  o.kv(1, "dns", "{ nameservers: " + flow(q.nameservers) + " }",
       q.nameservers.empty() ? "empty: from /etc/resolv.conf" : "");
}

void describe_filters(const Config& c, Out& o) {
  if (c.filters.empty()) {
    o.kv(0, "filters", "[]", "none");
  } else {
    o.kv(0, "filters", "");
    for (const Filter& f : c.filters) {
      o.raw("  - name: " + y(f.name));
      switch (f.kind) {
        case FilterKind::Exec: o.kv(2, name(f.kind), flow(f.exec)); break;
        case FilterKind::Milter: o.kv(2, name(f.kind), y(f.milter)); break;
        case FilterKind::Plugin: o.kv(2, name(f.kind), y(f.plugin)); break;
      }
      if (f.kind == FilterKind::Exec) o.kv(2, "mode", name(f.mode));
      if (f.kind == FilterKind::Plugin) {
        if (f.options.empty()) {
          o.kv(2, "options", "{}");
        } else {
          o.kv(2, "options", "");
          for (const auto& [k, v] : f.options) o.kv(3, y(k), y(v));
        }
      }
      if (f.timeout) {
        o.kv(2, "timeout", format_duration(*f.timeout));
      } else if (f.kind == FilterKind::Milter) {
        o.kv(2, "timeout", "5m", "default: 30s to connect and per command, 5m for the content");
      } else {
        o.kv(2, "timeout", "30s", "default");
      }
      o.kv(2, "on_error", name(f.on_error));
    }
  }
  o.kv(0, "filter_dir", y(c.filter_dir), "its executables run after the filters above");
}

}  // namespace

std::string describe(const Config& c) {
  Out o;
  if (c.file.empty()) {
    o.raw("# petrel effective configuration: built-in defaults");
  } else {
    o.raw("# petrel effective configuration from " + c.file);
    o.raw("# relative paths resolved against " + c.dir);
  }
  o.kv(0, "hostname", y(c.hostname));
  o.kv(0, "state_dir", y(c.state_dir));
  o.kv(0, "user", opt(c.user), c.user.empty() ? "unset: petrel stays the invoking user" : "");
  describe_listen(c, o);
  describe_limits(c, o);
  describe_security(c, o);
  describe_domains(c, o);
  describe_relaying(c, o);
  describe_filters(c, o);
  o.kv(0, "metrics", "{ listen: " + opt(c.metrics.listen) + " }",
       c.metrics.listen.empty() ? "unset: no metrics endpoint" : "Prometheus text at /metrics");
  o.kv(0, "log",
       std::string("{ target: ") + name(c.log.target) + ", format: " + name(c.log.format) +
           ", level: " + name(c.log.level) + " }");
  return o.str();
}

}  // namespace petrel::config
