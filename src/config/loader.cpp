// Walks the YAML tree of petrel.yaml into a Config (SPEC §3).
//
// Every error is collected, not just the first, each naming the file, the
// 1-based line of the offending node, the dotted key path and a reason, so an
// admin fixes a config in one pass. A YAML null (`key:` with no value) means
// "use the default" everywhere. yaml-cpp throws; nothing escapes this file.
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <system_error>

#include <yaml-cpp/yaml.h>

#include "petrel/config/config.h"

namespace petrel::config {
namespace {

namespace fs = std::filesystem;

std::string lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// A value quoted for an error message: escaped, and cut short if long.
std::string show(std::string_view s) {
  std::string out = "\"";
  std::size_t n = 0;
  for (char c : s) {
    if (++n > 60) {
      out += "...";
      break;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += '?';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string kind_of(const YAML::Node& n) {
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (n.IsNull()) return "nothing";
  if (n.IsScalar()) return show(n.Scalar());
  return "an undefined value";
}

int line_of(const YAML::Node& n) {
  try {
    const YAML::Mark m = n.Mark();
    return m.is_null() || m.line < 0 ? 0 : m.line + 1;
  } catch (const YAML::Exception&) {
    return 0;
  }
}

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string item(const std::string& path, std::size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

bool valid_domain(std::string_view s) {
  if (s.empty() || s.size() > 253 || s.front() == '.' || s.back() == '.') return false;
  std::size_t label = 0;
  for (char c : s) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return true;
}

bool has_space(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
  });
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// True when a next hop names its port, so the rest get queue.port.
bool hop_has_port(std::string_view text) {
  if (text.starts_with("[")) {
    const std::size_t close = text.find(']');
    return close != std::string_view::npos && close + 1 < text.size();
  }
  return std::count(text.begin(), text.end(), ':') == 1;
}

// The machine's FQDN: gethostname(), canonicalised through the resolver when
// it is not already dotted; "localhost" when even gethostname() fails.
std::string machine_fqdn() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  std::string out = name;
  if (out.find('.') != std::string::npos) return out;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_CANONNAME;
  addrinfo* res = nullptr;
  if (getaddrinfo(name, nullptr, &hints, &res) == 0) {
    if (res != nullptr && res->ai_canonname != nullptr && res->ai_canonname[0] != '\0') {
      out = res->ai_canonname;
    }
    freeaddrinfo(res);
  }
  return out;
}

using Handler = std::function<void(const YAML::Node& value, const std::string& path)>;

struct Field {
  const char* name;
  Handler handle;
};

template <typename E>
using Names = std::initializer_list<std::pair<const char*, E>>;

class Loader {
 public:
  Loader(std::string file, std::string dir, std::vector<ConfigError>* errors)
      : file_(std::move(file)), dir_(std::move(dir)), errors_(errors) {}

  void load(const YAML::Node& root, Config* cfg);

 private:
  // --- reporting and generic walking
  void error(const YAML::Node& n, const std::string& key, std::string reason) {
    errors_->push_back(ConfigError{file_, line_of(n), key, std::move(reason)});
  }
  bool expect_map(const YAML::Node& n, const std::string& path);
  bool expect_list(const YAML::Node& n, const std::string& path, const char* what);
  void fields(const YAML::Node& map, const std::string& path, const std::vector<Field>& fields);
  void entries(const YAML::Node& map, const std::string& path, bool lower_keys,
               const std::function<void(const YAML::Node& key_node, const std::string& key,
                                        const YAML::Node& value, const std::string& path)>& fn);

  // --- scalars
  std::optional<std::string> scalar(const YAML::Node& n, const std::string& path, const char* what);
  void word(const YAML::Node& n, const std::string& path, std::string* out);
  void file_path(const YAML::Node& n, const std::string& path, std::string* out);
  void integer(const YAML::Node& n, const std::string& path, int* out, long long min,
               long long max = 1000000000);
  void port(const YAML::Node& n, const std::string& path, std::uint16_t* out);
  void boolean(const YAML::Node& n, const std::string& path, bool* out);
  void duration(const YAML::Node& n, const std::string& path, Seconds* out, Seconds min);
  void size(const YAML::Node& n, const std::string& path, std::uint64_t* out);
  template <typename E>
  void enumeration(const YAML::Node& n, const std::string& path, E* out, Names<E> names);
  std::optional<std::vector<std::string>> string_list(const YAML::Node& n, const std::string& path,
                                                      bool allow_scalar);
  std::string resolve(const std::string& p) const;

  // --- sections
  void listen(const YAML::Node& n, const std::string& path, std::vector<Listener>* out);
  void limits(const YAML::Node& n, const std::string& path, Limits* out);
  void tls(const YAML::Node& n, const std::string& path, Tls* out);
  void auth(const YAML::Node& n, const std::string& path, Auth* out);
  void relay(const YAML::Node& n, const std::string& path, Relay* out, bool* networks_set);
  void domains(const YAML::Node& n, const std::string& path, std::vector<Domain>* out);
  void deliver(const YAML::Node& n, const std::string& path, std::vector<std::string>* out);
  std::string deliver_string(std::string s, std::string* reason) const;
  void aliases(const YAML::Node& n, const std::string& path, Aliases* out);
  void routes(const YAML::Node& n, const std::string& path,
              std::vector<std::pair<std::string, NextHop>>* out);
  void smarthost(const YAML::Node& n, const std::string& path, Smarthost* out, bool* tls_set);
  void queue(const YAML::Node& n, const std::string& path, Queue* out);
  void filters(const YAML::Node& n, const std::string& path, std::vector<Filter>* out);
  void filter(const YAML::Node& n, const std::string& path, Filter* out, bool* named);
  std::string milter_address(const std::string& s) const;
  void metrics(const YAML::Node& n, const std::string& path, Metrics* out);
  void log(const YAML::Node& n, const std::string& path, Log* out);

  std::string file_;
  std::string dir_;
  std::vector<ConfigError>* errors_;
};

bool Loader::expect_map(const YAML::Node& n, const std::string& path) {
  if (n.IsMap()) return true;
  error(n, path, "expected a mapping (key: value), got " + kind_of(n));
  return false;
}

bool Loader::expect_list(const YAML::Node& n, const std::string& path, const char* what) {
  if (n.IsSequence()) return true;
  error(n, path, std::string("expected a list of ") + what + ", got " + kind_of(n));
  return false;
}

void Loader::fields(const YAML::Node& map, const std::string& path,
                    const std::vector<Field>& known) {
  if (!expect_map(map, path)) return;
  std::map<std::string, int> seen;  // key -> line
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node k = it->first;  // a copy: it-> yields a temporary
    if (!k.IsScalar()) {
      error(k, path, "expected a plain key, got " + kind_of(k));
      continue;
    }
    const std::string key = k.Scalar();
    const std::string kpath = join(path, key);
    if (auto [pos, fresh] = seen.emplace(key, line_of(k)); !fresh) {
      error(k, kpath, "duplicate key (first at line " + std::to_string(pos->second) + ")");
      continue;
    }
    const auto f = std::find_if(known.begin(), known.end(),
                                [&](const Field& f) { return key == f.name; });
    if (f == known.end()) {
      std::string reason = "unknown key";
      const Field* best = nullptr;
      std::size_t best_d = 3;
      for (const Field& cand : known) {
        const std::size_t d = edit_distance(lower(key), cand.name);
        if (d < best_d) {
          best_d = d;
          best = &cand;
        }
      }
      if (best != nullptr) reason += std::string(" (did you mean ") + best->name + "?)";
      error(k, kpath, reason);
      continue;
    }
    const YAML::Node v = it->second;
    if (v.IsNull()) continue;  // `key:` alone keeps the default
    f->handle(v, kpath);
  }
}

void Loader::entries(
    const YAML::Node& map, const std::string& path, bool lower_keys,
    const std::function<void(const YAML::Node&, const std::string&, const YAML::Node&,
                             const std::string&)>& fn) {
  if (!expect_map(map, path)) return;
  std::map<std::string, int> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node k = it->first;  // a copy: it-> yields a temporary
    if (!k.IsScalar() || k.Scalar().empty()) {
      error(k, path, "expected a plain key, got " + kind_of(k));
      continue;
    }
    const std::string key = lower_keys ? lower(k.Scalar()) : k.Scalar();
    const std::string kpath = join(path, key);
    if (auto [pos, fresh] = seen.emplace(key, line_of(k)); !fresh) {
      error(k, kpath, "duplicate entry (first at line " + std::to_string(pos->second) + ")");
      continue;
    }
    const YAML::Node v = it->second;
    fn(k, key, v, kpath);
  }
}

std::optional<std::string> Loader::scalar(const YAML::Node& n, const std::string& path,
                                          const char* what) {
  if (n.IsScalar()) return n.Scalar();
  error(n, path, std::string("expected ") + what + ", got " + kind_of(n));
  return std::nullopt;
}

// A non-empty string without spaces: names, hostnames, user names.
void Loader::word(const YAML::Node& n, const std::string& path, std::string* out) {
  auto s = scalar(n, path, "a string");
  if (!s) return;
  if (s->empty() || has_space(*s)) {
    error(n, path, "expected a name without spaces, got " + show(*s));
    return;
  }
  *out = *s;
}

std::string Loader::resolve(const std::string& p) const {
  if (p.empty()) return p;
  fs::path path(p);
  if (path.is_relative()) path = fs::path(dir_) / path;
  return path.lexically_normal().string();
}

void Loader::file_path(const YAML::Node& n, const std::string& path, std::string* out) {
  auto s = scalar(n, path, "a path");
  if (!s) return;
  if (s->empty()) {
    error(n, path, "expected a path, got an empty string");
    return;
  }
  *out = resolve(*s);
}

void Loader::integer(const YAML::Node& n, const std::string& path, int* out, long long min,
                     long long max) {
  auto s = scalar(n, path, "an integer");
  if (!s) return;
  std::string_view v = *s;
  const bool neg = v.starts_with("-");
  if (neg || v.starts_with("+")) v.remove_prefix(1);
  long long x = 0;
  bool ok = !v.empty() && v.size() <= 12;
  for (char c : v) {
    if (c < '0' || c > '9') ok = false;
    if (ok) x = x * 10 + (c - '0');
  }
  if (!ok) {
    error(n, path, "expected an integer, got " + show(*s));
    return;
  }
  if (neg) x = -x;
  if (x < min) {
    error(n, path, "must be at least " + std::to_string(min) + ", got " + *s);
  } else if (x > max) {
    error(n, path, "must be at most " + std::to_string(max) + ", got " + *s);
  } else {
    *out = static_cast<int>(x);
  }
}

void Loader::port(const YAML::Node& n, const std::string& path, std::uint16_t* out) {
  int p = *out;
  const std::size_t before = errors_->size();
  integer(n, path, &p, 1, 65535);
  if (errors_->size() == before) *out = static_cast<std::uint16_t>(p);
}

void Loader::boolean(const YAML::Node& n, const std::string& path, bool* out) {
  auto s = scalar(n, path, "true or false");
  if (!s) return;
  const std::string v = lower(*s);
  if (v == "true" || v == "yes" || v == "on") {
    *out = true;
  } else if (v == "false" || v == "no" || v == "off") {
    *out = false;
  } else {
    error(n, path, "expected true or false, got " + show(*s));
  }
}

void Loader::duration(const YAML::Node& n, const std::string& path, Seconds* out, Seconds min) {
  auto s = scalar(n, path, "a duration like 5m");
  if (!s) return;
  Seconds v = 0;
  if (!parse_duration(*s, &v)) {
    error(n, path, "expected a duration like 5m, got " + show(*s));
  } else if (v < min) {
    error(n, path, "must be at least " + format_duration(min) + ", got " + *s);
  } else {
    *out = v;
  }
}

void Loader::size(const YAML::Node& n, const std::string& path, std::uint64_t* out) {
  auto s = scalar(n, path, "a size like 25MiB");
  if (!s) return;
  std::uint64_t v = 0;
  if (!parse_size(*s, &v)) {
    error(n, path, "expected a size like 25MiB, got " + show(*s));
  } else if (v == 0) {
    error(n, path, "must be at least 1, got " + *s);
  } else {
    *out = v;
  }
}

template <typename E>
void Loader::enumeration(const YAML::Node& n, const std::string& path, E* out, Names<E> names) {
  std::string choices;
  for (const auto& [name, value] : names) choices += (choices.empty() ? "" : ", ") + std::string(name);
  auto s = scalar(n, path, ("one of " + choices).c_str());
  if (!s) return;
  for (const auto& [name, value] : names) {
    if (*s == name) {
      *out = value;
      return;
    }
  }
  error(n, path, "expected one of " + choices + ", got " + show(*s));
}

std::optional<std::vector<std::string>> Loader::string_list(const YAML::Node& n,
                                                            const std::string& path,
                                                            bool allow_scalar) {
  if (allow_scalar && n.IsScalar()) return std::vector<std::string>{n.Scalar()};
  if (!expect_list(n, path, "strings")) return std::nullopt;
  std::vector<std::string> out;
  bool ok = true;
  std::size_t i = 0;
  for (auto it = n.begin(); it != n.end(); ++it, ++i) {
    const YAML::Node v = *it;
    if (!v.IsScalar()) {
      error(v, item(path, i), "expected a string, got " + kind_of(v));
      ok = false;
      continue;
    }
    out.push_back(v.Scalar());
  }
  if (!ok) return std::nullopt;
  return out;
}

// ---------------------------------------------------------------- sections

void Loader::listen(const YAML::Node& n, const std::string& path, std::vector<Listener>* out) {
  if (!expect_list(n, path, "listeners")) return;
  if (n.size() == 0) {
    error(n, path, "expected at least one listener");
    return;
  }
  std::vector<Listener> list;
  std::map<std::string, std::string> seen;  // address -> first key path
  std::size_t i = 0;
  for (auto it = n.begin(); it != n.end(); ++it, ++i) {
    const YAML::Node node = *it;
    const std::string p = item(path, i);
    Listener l;
    bool has_address = false;
    fields(node, p, {
        {"address",
         [&](const YAML::Node& v, const std::string& kp) {
           auto s = scalar(v, kp, "an address");
           if (!s) return;
           has_address = true;
           SocketAddress a;
           if (!parse_socket_address(*s, &a)) {
             error(v, kp, "expected host:port, [v6]:port or unix:/path (port 1-65535), got " +
                              show(*s));
             return;
           }
           if (a.is_unix) {
             a.path = resolve(a.path);
             if (a.path.size() >= sizeof(sockaddr_un::sun_path)) {
               error(v, kp, "unix socket path too long: " + a.path);
               return;
             }
           }
           const std::string id = a.is_unix ? "unix:" + a.path : a.text;
           if (auto [pos, fresh] = seen.emplace(id, kp); !fresh) {
             error(v, kp, "same address as " + pos->second);
           }
           l.address = a;
         }},
        {"mode",
         [&](const YAML::Node& v, const std::string& kp) {
           enumeration<ListenMode>(v, kp, &l.mode,
                                   {{"smtp", ListenMode::Smtp},
                                    {"submission", ListenMode::Submission},
                                    {"submissions", ListenMode::Submissions}});
         }},
        {"proxy_protocol",
         [&](const YAML::Node& v, const std::string& kp) { boolean(v, kp, &l.proxy_protocol); }},
    });
    if (node.IsMap() && !has_address) error(node, p + ".address", "required");
    list.push_back(l);
  }
  *out = list;
}

void Loader::limits(const YAML::Node& n, const std::string& path, Limits* out) {
  auto int_field = [&](const char* name, int* dst) {
    return Field{name, [this, dst](const YAML::Node& v, const std::string& kp) {
                   integer(v, kp, dst, 1);
                 }};
  };
  auto timeout_field = [&](const char* name, Seconds* dst) {
    return Field{name, [this, dst](const YAML::Node& v, const std::string& kp) {
                   duration(v, kp, dst, 1);
                 }};
  };
  fields(n, path, {
      int_field("max_workers", &out->max_workers),
      int_field("max_per_ip", &out->max_per_ip),
      {"max_message_size",
       [&](const YAML::Node& v, const std::string& kp) { size(v, kp, &out->max_message_size); }},
      int_field("max_recipients", &out->max_recipients),
      int_field("max_errors", &out->max_errors),
      int_field("max_hops", &out->max_hops),
      {"timeouts",
       [&](const YAML::Node& v, const std::string& kp) {
         fields(v, kp, {
             timeout_field("command", &out->timeouts.command),
             timeout_field("data_block", &out->timeouts.data_block),
             timeout_field("data_end", &out->timeouts.data_end),
         });
       }},
  });
}

void Loader::tls(const YAML::Node& n, const std::string& path, Tls* out) {
  fields(n, path, {
      {"cert", [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &out->cert); }},
      {"key", [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &out->key); }},
      {"min_version",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration<std::string>(v, kp, &out->min_version, {{"1.2", "1.2"}, {"1.3", "1.3"}});
       }},
  });
  if (out->cert.empty() != out->key.empty()) {
    error(n, join(path, out->cert.empty() ? "cert" : "key"),
          "required when tls." + std::string(out->cert.empty() ? "key" : "cert") + " is set");
  }
}

void Loader::auth(const YAML::Node& n, const std::string& path, Auth* out) {
  fields(n, path, {
      {"require_tls",
       [&](const YAML::Node& v, const std::string& kp) { boolean(v, kp, &out->require_tls); }},
      {"users",
       [&](const YAML::Node& v, const std::string& kp) {
         entries(v, kp, false,
                 [&](const YAML::Node& k, const std::string& user, const YAML::Node& hash,
                     const std::string& up) {
                   if (has_space(user) || user.find(':') != std::string::npos) {
                     error(k, up, "a user name has no spaces or ':'");
                     return;
                   }
                   auto h = scalar(hash, up, "a crypt(3) hash");
                   if (!h) return;
                   // Refuse what is evidently not a hash: a clear-text password
                   // in the config would never match and leak on every backup.
                   const bool modular = h->size() > 3 && (*h)[0] == '$';
                   const bool des = h->size() == 13 && !has_space(*h);
                   if (!modular && !des) {
                     error(hash, up, "expected a crypt(3) hash such as `petrel passwd` prints");
                     return;
                   }
                   out->users[user] = *h;
                 });
       }},
      {"passwd_file",
       [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &out->passwd_file); }},
  });
}

void Loader::relay(const YAML::Node& n, const std::string& path, Relay* out, bool* networks_set) {
  fields(n, path, {
      {"networks",
       [&](const YAML::Node& v, const std::string& kp) {
         if (!expect_list(v, kp, "networks")) return;
         *networks_set = true;
         std::size_t i = 0;
         for (auto it = v.begin(); it != v.end(); ++it, ++i) {
           const YAML::Node e = *it;
           const std::string ip = item(kp, i);
           auto s = scalar(e, ip, "a network like 192.0.2.0/24");
           if (!s) continue;
           Cidr c;
           if (parse_cidr(*s, &c)) {
             out->networks.push_back(c);
             continue;
           }
           std::string reason =
               "expected a network like 192.0.2.0/24 or 2001:db8::/32, got " + show(*s);
           // Host bits set: say which network was probably meant.
           const std::size_t slash = s->find('/');
           Cidr host;
           std::uint64_t bits = 0;
           if (slash != std::string::npos && parse_cidr(s->substr(0, slash), &host)) {
             const std::string pfx = s->substr(slash + 1);
             if (!pfx.empty() && pfx.size() <= 3 &&
                 pfx.find_first_not_of("0123456789") == std::string::npos &&
                 (bits = std::stoull(pfx)) <= static_cast<std::uint64_t>(host.prefix)) {
               for (int b = static_cast<int>(bits); b < host.prefix; ++b) {
                 host.addr[b / 8] &= static_cast<std::uint8_t>(~(0x80 >> (b % 8)));
               }
               char buf[INET6_ADDRSTRLEN] = {};
               inet_ntop(host.family, host.addr, buf, sizeof buf);
               reason = "host bits set in " + show(*s) + "; did you mean " + buf + "/" + pfx +
                        "?";
             }
           }
           error(e, ip, reason);
         }
       }},
      {"authenticated",
       [&](const YAML::Node& v, const std::string& kp) { boolean(v, kp, &out->authenticated); }},
  });
}

void Loader::domains(const YAML::Node& n, const std::string& path, std::vector<Domain>* out) {
  entries(n, path, true,
          [&](const YAML::Node& k, const std::string& name, const YAML::Node& v,
              const std::string& dp) {
            Domain d;
            d.name = name;
            if (!valid_domain(name)) {
              error(k, dp, "expected a domain name like example.org, got " + show(name));
            }
            if (!v.IsNull()) {
              fields(v, dp, {
                  {"deliver",
                   [&](const YAML::Node& x, const std::string& kp) { deliver(x, kp, &d.deliver); }},
                  {"users",
                   [&](const YAML::Node& x, const std::string& kp) {
                     auto list = string_list(x, kp, false);
                     if (!list) return;
                     std::vector<std::string> users;
                     for (std::size_t i = 0; i < list->size(); ++i) {
                       const std::string u = lower((*list)[i]);
                       if (u.empty() || has_space(u) || u.find('@') != std::string::npos) {
                         error(x[i], item(kp, i),
                               "expected a local part (no @ or spaces), got " + show(u));
                         continue;
                       }
                       if (std::find(users.begin(), users.end(), u) == users.end()) {
                         users.push_back(u);
                       }
                     }
                     d.users = users;
                   }},
                  {"catch_all",
                   [&](const YAML::Node& x, const std::string& kp) {
                     // "" (or null) means no catch-all, as when the key is absent.
                     if (x.IsNull() || (x.IsScalar() && x.Scalar().empty())) {
                       d.catch_all.clear();
                       return;
                     }
                     word(x, kp, &d.catch_all);
                     d.catch_all = lower(d.catch_all);
                   }},
              });
            }
            out->push_back(d);
          });
}

// Checks one deliver string and returns it with its path resolved; on error
// returns "" and sets *reason.
std::string Loader::deliver_string(std::string s, std::string* reason) const {
  auto path_with_placeholders = [&](std::string_view p) -> std::string {
    if (p.empty()) {
      *reason = "needs a path after the colon";
      return {};
    }
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (p[i] != '%') continue;
      const char c = i + 1 < p.size() ? p[i + 1] : ' ';
      if (std::string_view("uedrsi").find(c) == std::string_view::npos) {
        *reason = "unknown placeholder %" + std::string(1, c) + " in " + show(s) +
                  " (known: %u %e %d %r %s %i)";
        return {};
      }
      ++i;
    }
    return resolve(std::string(p));
  };
  if (s == "discard") return s;
  if (s.starts_with("maildir:")) {
    const std::string p = path_with_placeholders(std::string_view(s).substr(8));
    return p.empty() ? p : "maildir:" + p;
  }
  if (s.starts_with("mbox:")) {
    const std::string p = path_with_placeholders(std::string_view(s).substr(5));
    return p.empty() ? p : "mbox:" + p;
  }
  if (s.starts_with("lmtp:")) {
    SocketAddress a;
    if (!parse_socket_address(std::string_view(s).substr(5), &a)) {
      *reason = "expected lmtp:unix:/path or lmtp:host:port, got " + show(s);
      return {};
    }
    return a.is_unix ? "lmtp:unix:" + resolve(a.path) : s;
  }
  if (s.starts_with("pipe:")) {
    if (s.find_first_not_of(" \t", 5) == std::string::npos) {
      *reason = "pipe: needs a command, e.g. \"pipe:/usr/bin/procmail -d %u\"";
      return {};
    }
    return s;
  }
  *reason =
      "expected maildir:PATH, mbox:PATH, lmtp:unix:/path, lmtp:host:port, pipe:COMMAND or "
      "discard, got " +
      show(s);
  return {};
}

void Loader::deliver(const YAML::Node& n, const std::string& path, std::vector<std::string>* out) {
  if (n.IsScalar()) {
    std::string reason;
    std::string s = deliver_string(n.Scalar(), &reason);
    if (s.empty()) {
      error(n, path, reason);
    } else {
      *out = {s};
    }
    return;
  }
  if (!n.IsSequence()) {
    error(n, path, "expected a string such as \"maildir:/var/mail/%d/%u\" or a pipe: list, got " +
                       kind_of(n));
    return;
  }
  // The list form is an argv for pipe: ["pipe:", "/bin/cmd", "arg"...] or
  // ["pipe:/bin/cmd", "arg"...]; arguments are taken as written.
  auto argv = string_list(n, path, false);
  if (!argv) return;
  if (argv->empty() || !(*argv)[0].starts_with("pipe:")) {
    error(n, path, "a list is only for pipe:, e.g. [\"pipe:\", \"/usr/bin/cmd\", \"%r\"]");
    return;
  }
  if ((*argv)[0] == "pipe:" && (argv->size() < 2 || (*argv)[1].empty())) {
    error(n, path, "pipe: needs a command after it");
    return;
  }
  *out = *argv;
}

void Loader::aliases(const YAML::Node& n, const std::string& path, Aliases* out) {
  fields(n, path, {
      {"file", [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &out->file); }},
      {"map",
       [&](const YAML::Node& v, const std::string& kp) {
         entries(v, kp, true,
                 [&](const YAML::Node& k, const std::string& name, const YAML::Node& t,
                     const std::string& ap) {
                   if (has_space(name)) {
                     error(k, ap, "an alias name has no spaces");
                     return;
                   }
                   if (t.IsNull()) {
                     error(t, ap, "expected a target address or a list of them");
                     return;
                   }
                   auto targets = string_list(t, ap, true);
                   if (!targets) return;
                   if (targets->empty()) {
                     error(t, ap, "expected at least one target");
                     return;
                   }
                   for (std::size_t i = 0; i < targets->size(); ++i) {
                     if ((*targets)[i].empty()) {
                       error(t.IsSequence() ? t[i] : t, t.IsSequence() ? item(ap, i) : ap,
                             "empty target");
                       return;
                     }
                   }
                   out->map.emplace_back(name, *targets);
                 });
       }},
  });
}

void Loader::routes(const YAML::Node& n, const std::string& path,
                    std::vector<std::pair<std::string, NextHop>>* out) {
  entries(n, path, true,
          [&](const YAML::Node& k, const std::string& domain, const YAML::Node& v,
              const std::string& rp) {
            if (domain != "*" && !valid_domain(domain)) {
              error(k, rp, "expected a domain name or \"*\", got " + show(domain));
              return;
            }
            auto s = scalar(v, rp, "a next hop like \"[mx.example.net]:25\"");
            if (!s) return;
            NextHop h;
            if (!parse_next_hop(*s, &h)) {
              error(v, rp, "expected a next hop like host, host:port or [host]:port, got " +
                               show(*s));
              return;
            }
            out->emplace_back(domain, h);
          });
}

constexpr Names<TlsPolicy> kTlsPolicies = {{"none", TlsPolicy::None},
                                           {"opportunistic", TlsPolicy::Opportunistic},
                                           {"required", TlsPolicy::Required},
                                           {"verify", TlsPolicy::Verify}};

void Loader::smarthost(const YAML::Node& n, const std::string& path, Smarthost* out,
                       bool* tls_set) {
  bool has_host = false;
  fields(n, path, {
      {"host",
       [&](const YAML::Node& v, const std::string& kp) {
         auto s = scalar(v, kp, "a host like \"smtp.example.net:587\"");
         if (!s) return;
         has_host = true;
         if (!parse_next_hop(*s, &out->host)) {
           error(v, kp, "expected host, host:port or [host]:port, got " + show(*s));
           return;
         }
         out->host.no_mx = true;  // a smarthost is always its own A/AAAA
         out->enabled = true;
       }},
      {"tls",
       [&](const YAML::Node& v, const std::string& kp) {
         *tls_set = true;
         enumeration(v, kp, &out->tls, kTlsPolicies);
       }},
      {"auth",
       [&](const YAML::Node& v, const std::string& kp) {
         fields(v, kp, {
             {"user",
              [&](const YAML::Node& x, const std::string& p) { word(x, p, &out->auth_user); }},
             {"password_file",
              [&](const YAML::Node& x, const std::string& p) {
                file_path(x, p, &out->auth_password_file);
              }},
         });
         if (v.IsMap() && out->auth_user.empty() != out->auth_password_file.empty()) {
           error(v, join(kp, out->auth_user.empty() ? "user" : "password_file"),
                 "required: smarthost auth needs both user and password_file");
         }
       }},
  });
  if (n.IsMap() && !has_host) error(n, join(path, "host"), "required");
}

void Loader::queue(const YAML::Node& n, const std::string& path, Queue* out) {
  auto int_field = [&](const char* name, int* dst) {
    return Field{name, [this, dst](const YAML::Node& v, const std::string& kp) {
                   integer(v, kp, dst, 1);
                 }};
  };
  fields(n, path, {
      {"retry",
       [&](const YAML::Node& v, const std::string& kp) {
         Retry& r = out->retry;
         // std::optional: assigning to a bound YAML::Node would overwrite the
         // node it refers to, not rebind the handle.
         std::optional<YAML::Node> max_node;
         fields(v, kp, {
             {"min", [&](const YAML::Node& x, const std::string& p) { duration(x, p, &r.min, 1); }},
             {"max",
              [&](const YAML::Node& x, const std::string& p) {
                max_node.emplace(x);
                duration(x, p, &r.max, 1);
              }},
             {"lifetime",
              [&](const YAML::Node& x, const std::string& p) { duration(x, p, &r.lifetime, 1); }},
             {"warn_after",
              [&](const YAML::Node& x, const std::string& p) {
                duration(x, p, &r.warn_after, 0);
              }},
         });
         if (r.max < r.min) {
           error(max_node ? *max_node : v, join(kp, "max"),
                 "must not be shorter than retry.min (" + format_duration(r.min) + ")");
         }
       }},
      int_field("max_connections", &out->max_connections),
      int_field("max_connections_per_domain", &out->max_connections_per_domain),
      int_field("max_messages_per_connection", &out->max_messages_per_connection),
      int_field("max_recipients_per_transaction", &out->max_recipients_per_transaction),
      {"port", [&](const YAML::Node& v, const std::string& kp) { port(v, kp, &out->port); }},
      {"tls",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration(v, kp, &out->tls, kTlsPolicies);
       }},
      {"dns",
       [&](const YAML::Node& v, const std::string& kp) {
         fields(v, kp, {
             {"nameservers",
              [&](const YAML::Node& x, const std::string& p) {
                auto list = string_list(x, p, false);
                if (!list) return;
                for (std::size_t i = 0; i < list->size(); ++i) {
                  const std::string& s = (*list)[i];
                  // An address, or an address with a port (53 when omitted).
                  Cidr ip;
                  SocketAddress a;
                  const bool bare = s.find('/') == std::string::npos && parse_cidr(s, &ip);
                  const bool with_port = parse_socket_address(s, &a) && !a.is_unix &&
                                         parse_cidr(a.host, &ip);
                  if (!bare && !with_port) {
                    error(x[i], item(p, i),
                          "expected an IP address, ip:port or [v6]:port, got " + show(s));
                    continue;
                  }
                  out->nameservers.push_back(s);
                }
              }},
         });
       }},
  });
}

// Milter sockets as Postfix writes them (unix:/path, inet:host:port) or as
// Sendmail does (local:/path, inet:port@host, inet6:port@host). The result
// is always "unix:/abs/path" or "inet:host:port" ("inet:[v6]:port"), so the
// milter client parses one form. "" when invalid.
std::string Loader::milter_address(const std::string& s) const {
  std::string_view v = s;
  if (v.starts_with("unix:") || v.starts_with("local:")) {
    v.remove_prefix(v.find(':') + 1);
    if (v.empty()) return {};
    const std::string p = resolve(std::string(v));
    if (p.size() >= sizeof(sockaddr_un::sun_path)) return {};
    return "unix:" + p;
  }
  std::string hostport;
  if (v.starts_with("inet:") || v.starts_with("inet6:")) {
    const bool six = v.starts_with("inet6:");
    v.remove_prefix(six ? 6 : 5);
    const std::size_t at = v.find('@');
    if (at != std::string_view::npos) {
      const std::string_view port = v.substr(0, at);
      std::string_view host = v.substr(at + 1);
      if (host.starts_with("[") && host.ends_with("]")) host = host.substr(1, host.size() - 2);
      hostport = host.find(':') != std::string_view::npos
                     ? "[" + std::string(host) + "]:" + std::string(port)
                     : std::string(host) + ":" + std::string(port);
    } else {
      hostport = std::string(v);
    }
  } else {
    return {};
  }
  SocketAddress a;
  if (!parse_socket_address(hostport, &a) || a.is_unix || a.host.empty()) return {};
  return "inet:" + hostport;
}

void Loader::filter(const YAML::Node& n, const std::string& path, Filter* f, bool* named) {
  std::vector<std::string> kinds;
  std::optional<YAML::Node> options_node;  // see queue(): never assign to a YAML::Node
  std::optional<YAML::Node> mode_node;
  fields(n, path, {
      {"name",
       [&](const YAML::Node& v, const std::string& kp) {
         *named = true;
         word(v, kp, &f->name);
       }},
      {"exec",
       [&](const YAML::Node& v, const std::string& kp) {
         kinds.push_back("exec");
         f->kind = FilterKind::Exec;
         auto argv = string_list(v, kp, false);
         if (!argv) return;
         if (argv->empty() || (*argv)[0].empty()) {
           error(v, kp, "expected a command and its arguments, e.g. [\"/usr/bin/spamc\", \"-E\"]");
           return;
         }
         // A program named with a slash is a path, relative to the config
         // file like every other path; a bare name is looked up in $PATH.
         std::string& prog = (*argv)[0];
         if (prog.find('/') != std::string::npos) prog = resolve(prog);
         f->exec = *argv;
       }},
      {"milter",
       [&](const YAML::Node& v, const std::string& kp) {
         kinds.push_back("milter");
         f->kind = FilterKind::Milter;
         auto s = scalar(v, kp, "a milter socket");
         if (!s) return;
         f->milter = milter_address(*s);
         if (f->milter.empty()) {
           error(v, kp, "expected unix:/path or inet:host:port, got " + show(*s));
         }
       }},
      {"plugin",
       [&](const YAML::Node& v, const std::string& kp) {
         kinds.push_back("plugin");
         f->kind = FilterKind::Plugin;
         file_path(v, kp, &f->plugin);
       }},
      {"options",
       [&](const YAML::Node& v, const std::string& kp) {
         options_node.emplace(v);
         entries(v, kp, false,
                 [&](const YAML::Node&, const std::string& key, const YAML::Node& x,
                     const std::string& op) {
                   if (x.IsNull()) {
                     f->options.emplace_back(key, "");
                   } else if (auto s = scalar(x, op, "a scalar value")) {
                     f->options.emplace_back(key, *s);
                   }
                 });
       }},
      {"mode",
       [&](const YAML::Node& v, const std::string& kp) {
         mode_node.emplace(v);
         enumeration<FilterMode>(v, kp, &f->mode,
                                 {{"headers", FilterMode::Headers}, {"rewrite", FilterMode::Rewrite}});
       }},
      {"timeout",
       [&](const YAML::Node& v, const std::string& kp) {
         Seconds t = 0;
         const std::size_t before = errors_->size();
         duration(v, kp, &t, 1);
         if (errors_->size() == before) f->timeout = t;
       }},
      {"on_error",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration<OnError>(v, kp, &f->on_error,
                              {{"tempfail", OnError::Tempfail},
                               {"accept", OnError::Accept},
                               {"reject", OnError::Reject}});
       }},
  });
  if (!n.IsMap()) return;
  if (kinds.empty()) {
    error(n, path, "needs one of exec, milter or plugin");
  } else if (kinds.size() > 1) {
    error(n, path, "has both " + kinds[0] + " and " + kinds[1] +
                       "; a filter is exactly one of exec, milter or plugin");
  } else {
    if (options_node && f->kind != FilterKind::Plugin) {
      error(*options_node, join(path, "options"), "only plugin filters take options");
    }
    if (mode_node && f->kind != FilterKind::Exec) {
      error(*mode_node, join(path, "mode"), "only exec filters have a mode");
    }
  }
}

void Loader::filters(const YAML::Node& n, const std::string& path, std::vector<Filter>* out) {
  if (!expect_list(n, path, "filters")) return;
  std::map<std::string, std::string> names;  // name -> key path of its first use
  std::size_t i = 0;
  for (auto it = n.begin(); it != n.end(); ++it, ++i) {
    const YAML::Node node = *it;
    const std::string p = item(path, i);
    Filter f;
    bool named = false;
    filter(node, p, &f, &named);
    if (node.IsMap() && !named) error(node, p + ".name", "required");
    if (!f.name.empty()) {
      if (auto [pos, fresh] = names.emplace(f.name, p); !fresh) {
        error(node, p + ".name", "duplicate filter name " + show(f.name) + " (also " +
                                     pos->second + ")");
      }
    }
    out->push_back(f);
  }
}

void Loader::metrics(const YAML::Node& n, const std::string& path, Metrics* out) {
  fields(n, path, {
      {"listen",
       [&](const YAML::Node& v, const std::string& kp) {
         auto s = scalar(v, kp, "an address like 127.0.0.1:9325");
         if (!s) return;
         SocketAddress a;
         if (!s->empty() && (!parse_socket_address(*s, &a) || a.is_unix)) {
           error(v, kp, "expected host:port or [v6]:port, got " + show(*s));
           return;
         }
         out->listen = *s;
       }},
  });
}

void Loader::log(const YAML::Node& n, const std::string& path, Log* out) {
  fields(n, path, {
      {"target",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration<LogTarget>(v, kp, &out->target,
                                {{"stderr", LogTarget::Stderr}, {"syslog", LogTarget::Syslog}});
       }},
      {"format",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration<LogFormat>(v, kp, &out->format,
                                {{"text", LogFormat::Text}, {"json", LogFormat::Json}});
       }},
      {"level",
       [&](const YAML::Node& v, const std::string& kp) {
         enumeration<LogLevel>(v, kp, &out->level,
                               {{"debug", LogLevel::Debug},
                                {"info", LogLevel::Info},
                                {"warn", LogLevel::Warn},
                                {"error", LogLevel::Error}});
       }},
  });
}

void Loader::load(const YAML::Node& root, Config* c) {
  bool listen_set = false;
  bool networks_set = false;
  bool smarthost_tls_set = false;
  if (!root.IsNull()) {
    if (!root.IsMap()) {
      error(root, "", "expected a mapping of settings at the top level, got " + kind_of(root));
      return;
    }
    fields(root, "", {
        {"hostname",
         [&](const YAML::Node& v, const std::string& kp) {
           auto s = scalar(v, kp, "a host name");
           if (!s) return;
           if (!valid_domain(*s)) {
             error(v, kp, "expected a host name like mail.example.org, got " + show(*s));
             return;
           }
           c->hostname = *s;
         }},
        {"state_dir",
         [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &c->state_dir); }},
        {"user", [&](const YAML::Node& v, const std::string& kp) { word(v, kp, &c->user); }},
        {"listen",
         [&](const YAML::Node& v, const std::string& kp) {
           listen_set = true;
           listen(v, kp, &c->listen);
         }},
        {"limits",
         [&](const YAML::Node& v, const std::string& kp) { limits(v, kp, &c->limits); }},
        {"tls", [&](const YAML::Node& v, const std::string& kp) { tls(v, kp, &c->tls); }},
        {"auth", [&](const YAML::Node& v, const std::string& kp) { auth(v, kp, &c->auth); }},
        {"relay",
         [&](const YAML::Node& v, const std::string& kp) {
           relay(v, kp, &c->relay, &networks_set);
         }},
        {"domains",
         [&](const YAML::Node& v, const std::string& kp) { domains(v, kp, &c->domains); }},
        {"recipient_delimiter",
         [&](const YAML::Node& v, const std::string& kp) {
           auto s = scalar(v, kp, "delimiter characters like \"+\"");
           if (!s) return;
           const bool bad = has_space(*s) || std::any_of(s->begin(), s->end(), [](char ch) {
             return ch == '@' || std::isalnum(static_cast<unsigned char>(ch));
           });
           if (bad) {
             error(v, kp, "expected delimiter characters like \"+\" or \"+-\", got " + show(*s));
             return;
           }
           c->recipient_delimiter = *s;
         }},
        {"aliases",
         [&](const YAML::Node& v, const std::string& kp) { aliases(v, kp, &c->aliases); }},
        {"routes", [&](const YAML::Node& v, const std::string& kp) { routes(v, kp, &c->routes); }},
        {"smarthost",
         [&](const YAML::Node& v, const std::string& kp) {
           smarthost(v, kp, &c->smarthost, &smarthost_tls_set);
         }},
        {"queue", [&](const YAML::Node& v, const std::string& kp) { queue(v, kp, &c->queue); }},
        {"filters",
         [&](const YAML::Node& v, const std::string& kp) { filters(v, kp, &c->filters); }},
        {"filter_dir",
         [&](const YAML::Node& v, const std::string& kp) { file_path(v, kp, &c->filter_dir); }},
        {"metrics",
         [&](const YAML::Node& v, const std::string& kp) { metrics(v, kp, &c->metrics); }},
        {"log", [&](const YAML::Node& v, const std::string& kp) { log(v, kp, &c->log); }},
    });
  }

  // Defaults that depend on other settings or on the machine.
  if (!listen_set) {
    Listener l;
    parse_socket_address("127.0.0.1:2525", &l.address);
    c->listen.push_back(l);
  }
  if (!networks_set) {
    for (const char* net : {"127.0.0.0/8", "::1/128"}) {
      Cidr cidr;
      parse_cidr(net, &cidr);
      c->relay.networks.push_back(cidr);
    }
  }
  if (c->hostname.empty()) c->hostname = machine_fqdn();
  for (Domain& d : c->domains) {
    if (d.deliver.empty()) {
      d.deliver = {"maildir:" + (fs::path(c->state_dir) / "mail/%d/%u").lexically_normal().string()};
    }
  }
  for (auto& [domain, hop] : c->routes) {
    if (!hop_has_port(hop.text)) hop.port = c->queue.port;
  }
  if (c->smarthost.enabled && !hop_has_port(c->smarthost.host.text)) {
    c->smarthost.host.port = c->queue.port;
  }
  if (!smarthost_tls_set) c->smarthost.tls = c->queue.tls;
}

std::string absolute_dir(const std::string& file) {
  std::error_code ec;
  if (file.empty()) {
    const fs::path cwd = fs::current_path(ec);
    return ec ? "/" : cwd.string();
  }
  const fs::path abs = fs::absolute(fs::path(file), ec);
  if (ec) return fs::path(file).parent_path().lexically_normal().string();
  std::string dir = abs.lexically_normal().parent_path().string();
  return dir.empty() ? "/" : dir;
}

}  // namespace

LoadResult load_string(const std::string& yaml, const std::string& file) {
  LoadResult r;
  try {
    r.config.file = file;
    r.config.dir = absolute_dir(file);
    Loader loader(file, r.config.dir, &r.errors);
    YAML::Node root;
    try {
      root = YAML::Load(yaml);
    } catch (const YAML::Exception& e) {
      const int line = e.mark.is_null() || e.mark.line < 0 ? 0 : e.mark.line + 1;
      r.errors.push_back(ConfigError{file, line, "", "YAML syntax error: " + e.msg});
      return r;
    }
    loader.load(root, &r.config);
  } catch (const YAML::Exception& e) {
    const int line = e.mark.is_null() || e.mark.line < 0 ? 0 : e.mark.line + 1;
    r.errors.push_back(ConfigError{file, line, "", e.msg});
  } catch (const std::exception& e) {
    r.errors.push_back(ConfigError{file, 0, "", std::string("cannot load: ") + e.what()});
  }
  return r;
}

LoadResult load_file(const std::string& path) {
  std::error_code ec;
  std::string why;
  std::ostringstream text;
  if (!fs::exists(path, ec)) {
    why = "no such file";
  } else if (fs::is_directory(path, ec)) {
    why = "is a directory, not a config file";
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      why = "cannot open the file (permissions?)";
    } else {
      text << in.rdbuf();
      if (in.bad()) why = "cannot read the file";
    }
  }
  if (!why.empty()) {
    LoadResult r;
    r.config.file = path;
    r.config.dir = absolute_dir(path);
    r.errors.push_back(ConfigError{path, 0, "", why});
    return r;
  }
  return load_string(text.str(), path);
}

}  // namespace petrel::config
