// The whole petrel.yaml schema (SPEC §3) as typed structs with their defaults.
// load() validates everything: unknown keys, wrong types and bad values come
// back as ConfigErrors naming file, line, key path and reason. Relative paths
// are resolved against the config file's folder.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>

namespace petrel::config {

// Durations are whole seconds.
using Seconds = std::int64_t;

// An IPv4 or IPv6 network in CIDR form. IPv4-mapped IPv6 clients
// (::ffff:a.b.c.d) match IPv4 networks.
struct Cidr {
  int family = AF_INET;  // AF_INET or AF_INET6
  std::uint8_t addr[16] = {};
  int prefix = 0;
  std::string text;

  bool contains(const sockaddr* sa) const;
  bool contains_text(const std::string& ip) const;
};

struct SocketAddress {
  bool is_unix = false;
  std::string host;   // "127.0.0.1", "::", "" (= any), or a name
  std::uint16_t port = 0;
  std::string path;   // unix socket path (resolved)
  std::string text;   // as written, for messages
};

enum class ListenMode { Smtp, Submission, Submissions };

struct Listener {
  SocketAddress address;
  ListenMode mode = ListenMode::Smtp;
  bool proxy_protocol = false;
};

struct Timeouts {
  Seconds command = 300;
  Seconds data_block = 180;
  Seconds data_end = 600;
};

struct Limits {
  int max_workers = 200;
  int max_per_ip = 20;
  std::uint64_t max_message_size = 25ull * 1024 * 1024;
  int max_recipients = 100;
  int max_errors = 10;
  int max_hops = 50;
  Timeouts timeouts;
};

struct Tls {
  std::string cert;  // empty: self-signed in state_dir
  std::string key;
  std::string min_version = "1.2";  // "1.2" | "1.3"
};

struct Auth {
  bool require_tls = true;
  std::map<std::string, std::string> users;  // user -> crypt(3) hash
  std::string passwd_file;
};

struct Relay {
  std::vector<Cidr> networks;  // default 127.0.0.0/8, ::1/128
  bool authenticated = true;
};

struct Domain {
  std::string name;                 // lower-case
  std::vector<std::string> deliver;  // a string is one element; a list is argv-ish
  std::optional<std::vector<std::string>> users;  // absent: accept every local part
  std::string catch_all;
};

struct Aliases {
  std::string file;
  // key (local part, or full address) -> targets, in file order
  std::vector<std::pair<std::string, std::vector<std::string>>> map;
};

enum class TlsPolicy { None, Opportunistic, Required, Verify };

struct NextHop {
  std::string host;
  std::uint16_t port = 25;
  bool no_mx = false;  // written as [host]:port
  std::string text;
};

struct Smarthost {
  bool enabled = false;
  NextHop host;
  TlsPolicy tls = TlsPolicy::Opportunistic;
  std::string auth_user;
  std::string auth_password_file;
};

struct Retry {
  Seconds min = 300;
  Seconds max = 3600;
  Seconds lifetime = 5 * 86400;
  Seconds warn_after = 4 * 3600;  // 0: never warn
};

struct Queue {
  Retry retry;
  int max_connections = 50;
  int max_connections_per_domain = 10;
  int max_messages_per_connection = 100;
  int max_recipients_per_transaction = 50;
  std::uint16_t port = 25;
  TlsPolicy tls = TlsPolicy::Opportunistic;
  std::vector<std::string> nameservers;  // "ip" or "ip:port"; empty = resolv.conf
};

enum class FilterKind { Exec, Milter, Plugin };
enum class FilterMode { Headers, Rewrite };
enum class OnError { Tempfail, Accept, Reject };

struct Filter {
  std::string name;
  FilterKind kind = FilterKind::Exec;
  std::vector<std::string> exec;  // argv
  std::string milter;             // "unix:/path" or "inet:host:port"
  std::string plugin;             // path to .so
  std::vector<std::pair<std::string, std::string>> options;  // plugin options, scalars
  FilterMode mode = FilterMode::Headers;
  std::optional<Seconds> timeout;  // unset: 30s exec/plugin, milter per SPEC §8
  OnError on_error = OnError::Tempfail;
};

enum class LogTarget { Stderr, Syslog };
enum class LogFormat { Text, Json };
enum class LogLevel { Debug, Info, Warn, Error };

struct Log {
  LogTarget target = LogTarget::Stderr;
  LogFormat format = LogFormat::Text;
  LogLevel level = LogLevel::Info;
};

struct Metrics {
  std::string listen;  // empty: no metrics endpoint
};

struct Config {
  std::string file;  // the file it was read from ("" for defaults)
  std::string dir;   // its folder, for relative paths

  std::string hostname;                 // default: the machine's FQDN
  std::string state_dir = "/var/lib/petrel";
  std::string user;                     // empty: stay the invoking user
  std::vector<Listener> listen;         // default: smtp on 127.0.0.1:2525
  Limits limits;
  Tls tls;
  Auth auth;
  Relay relay;
  std::vector<Domain> domains;
  std::string recipient_delimiter;
  Aliases aliases;
  std::vector<std::pair<std::string, NextHop>> routes;  // domain or "*" -> hop
  Smarthost smarthost;
  Queue queue;
  std::vector<Filter> filters;
  std::string filter_dir = "/etc/petrel/filters.d";
  Metrics metrics;
  Log log;

  // Case-insensitive lookup of a local domain; nullptr when not local.
  const Domain* find_domain(std::string_view domain) const;
};

struct ConfigError {
  std::string file;
  int line = 0;        // 1-based; 0 when unknown
  std::string key;     // dotted key path, e.g. "queue.retry.min"
  std::string reason;
  std::string str() const;  // "file:line: key: reason"
};

struct LoadResult {
  Config config;
  std::vector<ConfigError> errors;  // empty: config is valid
  bool ok() const { return errors.empty(); }
};

// Reads and validates a config file. A missing file is an error.
LoadResult load_file(const std::string& path);
// Parses YAML text as if read from `file` (for tests and stdin).
LoadResult load_string(const std::string& yaml, const std::string& file);

// The config path petrel uses: -c wins, then $PETREL_CONFIG, then the default.
std::string default_path();

// Human-readable effective configuration, as `petrel check-config` prints it.
std::string describe(const Config& config);

// Value parsers, exposed for tests and reuse. They return false on bad input.
bool parse_duration(std::string_view s, Seconds* out);
bool parse_size(std::string_view s, std::uint64_t* out);
bool parse_cidr(std::string_view s, Cidr* out);
bool parse_socket_address(std::string_view s, SocketAddress* out);
bool parse_next_hop(std::string_view s, NextHop* out);

std::string format_duration(Seconds s);
std::string format_size(std::uint64_t n);

}  // namespace petrel::config
