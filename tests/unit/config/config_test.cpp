// Tests for src/config: the petrel.yaml schema (SPEC §3), its errors, and the
// value parsers behind it.
#include <arpa/inet.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "petrel/config/config.h"

using namespace petrel::config;

namespace {

const char* kFile = "/srv/petrel/etc/petrel.yaml";

LoadResult load(const std::string& yaml) { return load_string(yaml, kFile); }

// The single error about `key`, or a failed check listing what came instead.
ConfigError error_for(const LoadResult& r, const std::string& key) {
  std::string all;
  for (const ConfigError& e : r.errors) {
    if (e.key == key) return e;
    all += e.str() + "\n";
  }
  FAIL_CHECK("no error for " << key << "; errors were:\n" << all);
  return {};
}

std::string all_errors(const LoadResult& r) {
  std::string s;
  for (const ConfigError& e : r.errors) s += e.str() + "\n";
  return s;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("an empty config is valid and holds every default") {
  for (const std::string text : {"", "# nothing but a comment\n\n", "null\n", "---\n", "~"}) {
    CAPTURE(text);
    const LoadResult r = load(text);
    REQUIRE_MESSAGE(r.ok(), all_errors(r));
    const Config& c = r.config;
    CHECK(c.file == kFile);
    CHECK(c.dir == "/srv/petrel/etc");
    CHECK_FALSE(c.hostname.empty());
    CHECK(c.state_dir == "/var/lib/petrel");
    CHECK(c.user.empty());
    REQUIRE(c.listen.size() == 1);
    CHECK(c.listen[0].address.host == "127.0.0.1");
    CHECK(c.listen[0].address.port == 2525);
    CHECK_FALSE(c.listen[0].address.is_unix);
    CHECK(c.listen[0].mode == ListenMode::Smtp);
    CHECK_FALSE(c.listen[0].proxy_protocol);
    CHECK(c.limits.max_workers == 200);
    CHECK(c.limits.max_per_ip == 20);
    CHECK(c.limits.max_message_size == 25u * 1024 * 1024);
    CHECK(c.limits.max_recipients == 100);
    CHECK(c.limits.max_errors == 10);
    CHECK(c.limits.max_hops == 50);
    CHECK(c.limits.timeouts.command == 300);
    CHECK(c.limits.timeouts.data_block == 180);
    CHECK(c.limits.timeouts.data_end == 600);
    CHECK(c.tls.cert.empty());
    CHECK(c.tls.min_version == "1.2");
    CHECK(c.auth.require_tls);
    CHECK(c.auth.users.empty());
    REQUIRE(c.relay.networks.size() == 2);
    CHECK(c.relay.networks[0].text == "127.0.0.0/8");
    CHECK(c.relay.networks[1].text == "::1/128");
    CHECK(c.relay.authenticated);
    CHECK(c.domains.empty());
    CHECK(c.recipient_delimiter.empty());
    CHECK(c.routes.empty());
    CHECK_FALSE(c.smarthost.enabled);
    CHECK(c.queue.retry.min == 300);
    CHECK(c.queue.retry.max == 3600);
    CHECK(c.queue.retry.lifetime == 5 * 86400);
    CHECK(c.queue.retry.warn_after == 4 * 3600);
    CHECK(c.queue.max_connections == 50);
    CHECK(c.queue.max_connections_per_domain == 10);
    CHECK(c.queue.max_messages_per_connection == 100);
    CHECK(c.queue.max_recipients_per_transaction == 50);
    CHECK(c.queue.port == 25);
    CHECK(c.queue.tls == TlsPolicy::Opportunistic);
    CHECK(c.queue.nameservers.empty());
    CHECK(c.filters.empty());
    CHECK(c.filter_dir == "/etc/petrel/filters.d");
    CHECK(c.metrics.listen.empty());
    CHECK(c.log.target == LogTarget::Stderr);
    CHECK(c.log.format == LogFormat::Text);
    CHECK(c.log.level == LogLevel::Info);
  }
}

TEST_CASE("a key with no value keeps its default") {
  const LoadResult r = load("hostname:\nlisten:\nlimits:\n  max_workers:\nqueue: ~\n");
  REQUIRE_MESSAGE(r.ok(), all_errors(r));
  CHECK(r.config.listen.size() == 1);
  CHECK(r.config.limits.max_workers == 200);
}

const char* kFull = R"(hostname: mail.example.org
state_dir: /var/lib/petrel
user: petrel

listen:
  - address: "[::]:25"
    mode: smtp
    proxy_protocol: true
  - address: "0.0.0.0:587"
    mode: submission
  - address: "*:465"
    mode: submissions
  - address: unix:/run/petrel/smtp.sock

limits:
  max_workers: 300
  max_per_ip: 5
  max_message_size: 50MiB
  max_recipients: 1000
  max_errors: 3
  max_hops: 30
  timeouts: { command: 1m, data_block: 2m, data_end: 4m }

tls:
  cert: /etc/petrel/tls/cert.pem
  key: /etc/petrel/tls/key.pem
  min_version: "1.3"

auth:
  require_tls: false
  users: { alice: "$y$j9T$abc$def", bob: "$6$salt$hash" }
  passwd_file: /etc/petrel/passwd

relay:
  networks: ["10.0.0.0/8", "2001:db8::/32", 192.0.2.7]
  authenticated: false

domains:
  Example.ORG:
    deliver: "maildir:/var/mail/%d/%u"
    users: [Alice, bob]
    catch_all: Postmaster
  lists.example.org:
    deliver: ["pipe:", "/usr/local/bin/handle-mail", "--to", "%r"]
  box.example.org:
    deliver: "mbox:/var/spool/mail/%u"
  lmtp.example.org:
    deliver: "lmtp:unix:/run/dovecot/lmtp"
  lmtp2.example.org:
    deliver: "lmtp:127.0.0.1:24"
  null.example.org:
    deliver: discard
  proc.example.org:
    deliver: "pipe:/usr/bin/procmail -d %u"

recipient_delimiter: "+"
aliases:
  file: /etc/aliases
  map: { postmaster: alice, Team: [alice, bob@example.net] }

routes:
  example.net: "[127.0.0.1]:8025"
  example.com: mx.example.com
  "*": "relay.example.org:2525"
smarthost:
  host: "smtp.provider.example:587"
  auth: { user: me, password_file: /etc/petrel/smarthost.pw }
  tls: verify

queue:
  retry: { min: 1m, max: 2h, lifetime: 3d, warn_after: 0 }
  max_connections: 20
  max_connections_per_domain: 4
  max_messages_per_connection: 10
  max_recipients_per_transaction: 25
  port: 2525
  tls: required
  dns: { nameservers: ["127.0.0.1:5353", "::1", "192.0.2.53"] }

filters:
  - name: spamassassin
    exec: ["/usr/bin/spamc", "-E", "-x", "-X", "-s", "26214400"]
    mode: rewrite
    timeout: 30s
    on_error: tempfail
  - name: rspamd
    milter: "inet:127.0.0.1:11332"
    on_error: accept
  - name: rules
    plugin: /usr/lib/petrel/filters/rules.so
    options: { rules: /etc/petrel/rules.conf, tag_threshold: 2.0, reject_threshold: 10.0 }
    on_error: reject
filter_dir: /etc/petrel/filters.d

metrics: { listen: "127.0.0.1:9325" }
log: { target: syslog, format: json, level: debug }
)";

TEST_CASE("a full config parses into the right values") {
  const LoadResult r = load(kFull);
  REQUIRE_MESSAGE(r.ok(), all_errors(r));
  const Config& c = r.config;

  CHECK(c.hostname == "mail.example.org");
  CHECK(c.state_dir == "/var/lib/petrel");
  CHECK(c.user == "petrel");

  REQUIRE(c.listen.size() == 4);
  CHECK(c.listen[0].address.host == "::");
  CHECK(c.listen[0].address.port == 25);
  CHECK(c.listen[0].proxy_protocol);
  CHECK(c.listen[1].address.host == "0.0.0.0");
  CHECK(c.listen[1].mode == ListenMode::Submission);
  CHECK(c.listen[2].address.host.empty());
  CHECK(c.listen[2].address.port == 465);
  CHECK(c.listen[2].mode == ListenMode::Submissions);
  CHECK(c.listen[3].address.is_unix);
  CHECK(c.listen[3].address.path == "/run/petrel/smtp.sock");
  CHECK(c.listen[3].mode == ListenMode::Smtp);

  CHECK(c.limits.max_workers == 300);
  CHECK(c.limits.max_per_ip == 5);
  CHECK(c.limits.max_message_size == 50u * 1024 * 1024);
  CHECK(c.limits.max_recipients == 1000);
  CHECK(c.limits.max_errors == 3);
  CHECK(c.limits.max_hops == 30);
  CHECK(c.limits.timeouts.command == 60);
  CHECK(c.limits.timeouts.data_block == 120);
  CHECK(c.limits.timeouts.data_end == 240);

  CHECK(c.tls.cert == "/etc/petrel/tls/cert.pem");
  CHECK(c.tls.key == "/etc/petrel/tls/key.pem");
  CHECK(c.tls.min_version == "1.3");

  CHECK_FALSE(c.auth.require_tls);
  REQUIRE(c.auth.users.size() == 2);
  CHECK(c.auth.users.at("alice") == "$y$j9T$abc$def");
  CHECK(c.auth.users.at("bob") == "$6$salt$hash");
  CHECK(c.auth.passwd_file == "/etc/petrel/passwd");

  REQUIRE(c.relay.networks.size() == 3);
  CHECK(c.relay.networks[0].text == "10.0.0.0/8");
  CHECK(c.relay.networks[1].family == AF_INET6);
  CHECK(c.relay.networks[1].prefix == 32);
  CHECK(c.relay.networks[2].text == "192.0.2.7/32");
  CHECK_FALSE(c.relay.authenticated);

  REQUIRE(c.domains.size() == 7);
  const Domain* d = c.find_domain("EXAMPLE.org");
  REQUIRE(d != nullptr);
  CHECK(d->name == "example.org");
  CHECK(d->deliver == std::vector<std::string>{"maildir:/var/mail/%d/%u"});
  REQUIRE(d->users.has_value());
  CHECK(*d->users == std::vector<std::string>{"alice", "bob"});
  CHECK(d->catch_all == "postmaster");
  d = c.find_domain("lists.example.org");
  REQUIRE(d != nullptr);
  CHECK(d->deliver ==
        std::vector<std::string>{"pipe:", "/usr/local/bin/handle-mail", "--to", "%r"});
  CHECK_FALSE(d->users.has_value());
  CHECK(d->catch_all.empty());
  CHECK(c.find_domain("box.example.org")->deliver[0] == "mbox:/var/spool/mail/%u");
  CHECK(c.find_domain("lmtp.example.org")->deliver[0] == "lmtp:unix:/run/dovecot/lmtp");
  CHECK(c.find_domain("lmtp2.example.org")->deliver[0] == "lmtp:127.0.0.1:24");
  CHECK(c.find_domain("null.example.org")->deliver[0] == "discard");
  CHECK(c.find_domain("proc.example.org")->deliver[0] == "pipe:/usr/bin/procmail -d %u");
  CHECK(c.find_domain("example.net") == nullptr);
  CHECK(c.find_domain("example.org.") != nullptr);

  CHECK(c.recipient_delimiter == "+");
  CHECK(c.aliases.file == "/etc/aliases");
  REQUIRE(c.aliases.map.size() == 2);
  CHECK(c.aliases.map[0].first == "postmaster");
  CHECK(c.aliases.map[0].second == std::vector<std::string>{"alice"});
  CHECK(c.aliases.map[1].first == "team");
  CHECK(c.aliases.map[1].second == std::vector<std::string>{"alice", "bob@example.net"});

  REQUIRE(c.routes.size() == 3);
  CHECK(c.routes[0].first == "example.net");
  CHECK(c.routes[0].second.host == "127.0.0.1");
  CHECK(c.routes[0].second.port == 8025);
  CHECK(c.routes[0].second.no_mx);
  CHECK(c.routes[1].first == "example.com");
  CHECK(c.routes[1].second.host == "mx.example.com");
  CHECK(c.routes[1].second.port == 2525);  // queue.port, since none is written
  CHECK_FALSE(c.routes[1].second.no_mx);
  CHECK(c.routes[2].first == "*");
  CHECK(c.routes[2].second.port == 2525);

  CHECK(c.smarthost.enabled);
  CHECK(c.smarthost.host.host == "smtp.provider.example");
  CHECK(c.smarthost.host.port == 587);
  CHECK(c.smarthost.host.no_mx);
  CHECK(c.smarthost.tls == TlsPolicy::Verify);
  CHECK(c.smarthost.auth_user == "me");
  CHECK(c.smarthost.auth_password_file == "/etc/petrel/smarthost.pw");

  CHECK(c.queue.retry.min == 60);
  CHECK(c.queue.retry.max == 7200);
  CHECK(c.queue.retry.lifetime == 3 * 86400);
  CHECK(c.queue.retry.warn_after == 0);
  CHECK(c.queue.max_connections == 20);
  CHECK(c.queue.max_connections_per_domain == 4);
  CHECK(c.queue.max_messages_per_connection == 10);
  CHECK(c.queue.max_recipients_per_transaction == 25);
  CHECK(c.queue.port == 2525);
  CHECK(c.queue.tls == TlsPolicy::Required);
  CHECK(c.queue.nameservers == std::vector<std::string>{"127.0.0.1:5353", "::1", "192.0.2.53"});

  REQUIRE(c.filters.size() == 3);
  const Filter& spam = c.filters[0];
  CHECK(spam.name == "spamassassin");
  CHECK(spam.kind == FilterKind::Exec);
  CHECK(spam.exec.size() == 6);
  CHECK(spam.exec[0] == "/usr/bin/spamc");
  CHECK(spam.mode == FilterMode::Rewrite);
  CHECK(spam.timeout == std::optional<Seconds>(30));
  CHECK(spam.on_error == OnError::Tempfail);
  const Filter& milter = c.filters[1];
  CHECK(milter.kind == FilterKind::Milter);
  CHECK(milter.milter == "inet:127.0.0.1:11332");
  CHECK_FALSE(milter.timeout.has_value());
  CHECK(milter.on_error == OnError::Accept);
  const Filter& rules = c.filters[2];
  CHECK(rules.kind == FilterKind::Plugin);
  CHECK(rules.plugin == "/usr/lib/petrel/filters/rules.so");
  REQUIRE(rules.options.size() == 3);
  CHECK(rules.options[0] == std::pair<std::string, std::string>{"rules", "/etc/petrel/rules.conf"});
  CHECK(rules.options[1] == std::pair<std::string, std::string>{"tag_threshold", "2.0"});
  CHECK(rules.on_error == OnError::Reject);
  CHECK(c.filter_dir == "/etc/petrel/filters.d");

  CHECK(c.metrics.listen == "127.0.0.1:9325");
  CHECK(c.log.target == LogTarget::Syslog);
  CHECK(c.log.format == LogFormat::Json);
  CHECK(c.log.level == LogLevel::Debug);
}

TEST_CASE("the error format names file, line, key path and reason") {
  // queue.retry.min sits on line 14, as in the SPEC's example.
  std::string yaml;
  for (int i = 1; i <= 11; ++i) yaml += "# line " + std::to_string(i) + "\n";
  yaml += "queue:\n  retry:\n    min: soon\n";
  const LoadResult r = load_string(yaml, "etc/petrel.yaml");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() ==
        "etc/petrel.yaml:14: queue.retry.min: expected a duration like 5m, got \"soon\"");
  CHECK(r.errors[0].file == "etc/petrel.yaml");
  CHECK(r.errors[0].line == 14);
  CHECK(r.errors[0].key == "queue.retry.min");
}

TEST_CASE("ConfigError::str leaves out what it does not know") {
  CHECK(ConfigError{"f.yaml", 0, "", "no such file"}.str() == "f.yaml: no such file");
  CHECK(ConfigError{"f.yaml", 3, "", "YAML syntax error: x"}.str() == "f.yaml:3: YAML syntax error: x");
}

TEST_CASE("unknown keys are errors, at the top level and nested") {
  const LoadResult r = load(
      "hostnme: mail.example.org\n"          // 1
      "limits:\n"                            // 2
      "  max_worker: 10\n"                   // 3
      "listen:\n"                            // 4
      "  - address: 127.0.0.1:25\n"          // 5
      "    colour: blue\n"                   // 6
      "domains:\n"                           // 7
      "  example.org:\n"                     // 8
      "    delivr: discard\n"                // 9
      "queue:\n"                             // 10
      "  retry: { min: 5m, mx: 1h }\n");     // 11
  CHECK(r.errors.size() == 5);
  ConfigError e = error_for(r, "hostnme");
  CHECK(e.line == 1);
  CHECK(contains(e.reason, "unknown key"));
  CHECK(contains(e.reason, "did you mean hostname?"));
  e = error_for(r, "limits.max_worker");
  CHECK(e.line == 3);
  CHECK(contains(e.reason, "max_workers"));
  e = error_for(r, "listen[0].colour");
  CHECK(e.line == 6);
  CHECK(e.reason == "unknown key");
  e = error_for(r, "domains.example.org.delivr");
  CHECK(e.line == 9);
  e = error_for(r, "queue.retry.mx");
  CHECK(e.line == 11);
}

TEST_CASE("wrong types are errors") {
  const LoadResult r = load(
      "hostname: [a, b]\n"                   // 1
      "limits:\n"                            // 2
      "  max_workers: abc\n"                 // 3
      "  max_per_ip: 2.5\n"                  // 4
      "listen: 127.0.0.1:25\n"               // 5
      "relay:\n"                             // 6
      "  authenticated: maybe\n"             // 7
      "  networks: 10.0.0.0/8\n"             // 8
      "tls: yes\n"                           // 9
      "domains:\n"                           // 10
      "  example.org:\n"                     // 11
      "    users: alice\n"                   // 12
      "    deliver: { maildir: x }\n"        // 13
      "filters:\n"                           // 14
      "  - name: x\n"                        // 15
      "    exec: /usr/bin/spamc\n");         // 16
  CHECK(error_for(r, "hostname").line == 1);
  CHECK(contains(error_for(r, "hostname").reason, "got a list"));
  CHECK(error_for(r, "limits.max_workers").line == 3);
  CHECK(error_for(r, "limits.max_workers").reason == "expected an integer, got \"abc\"");
  CHECK(error_for(r, "limits.max_per_ip").line == 4);
  CHECK(error_for(r, "listen").line == 5);
  CHECK(contains(error_for(r, "listen").reason, "expected a list of listeners"));
  CHECK(error_for(r, "relay.authenticated").reason == "expected true or false, got \"maybe\"");
  CHECK(error_for(r, "relay.networks").line == 8);
  CHECK(contains(error_for(r, "tls").reason, "expected a mapping"));
  CHECK(error_for(r, "domains.example.org.users").line == 12);
  CHECK(error_for(r, "domains.example.org.deliver").line == 13);
  CHECK(error_for(r, "filters[0].exec").line == 16);
}

TEST_CASE("bad values are errors with the offending line") {
  const LoadResult r = load(
      "limits:\n"                                     // 1
      "  max_message_size: lots\n"                    // 2
      "  max_workers: 0\n"                            // 3
      "  timeouts: { command: 300 }\n"                // 4
      "relay:\n"                                      // 5
      "  networks:\n"                                 // 6
      "    - 127.0.0.0/8\n"                           // 7
      "    - 10.0.0.0/33\n"                           // 8
      "    - 10.1.2.3/8\n"                            // 9
      "listen:\n"                                     // 10
      "  - address: 127.0.0.1:25\n"                   // 11
      "  - address: localhost\n"                      // 12
      "  - address: 127.0.0.1:70000\n"                // 13
      "    mode: lmtp\n"                              // 14
      "log: { level: loud }\n"                        // 15
      "queue:\n"                                      // 16
      "  port: 0\n"                                   // 17
      "  tls: maybe\n"                                // 18
      "  retry: { min: 1h, max: 5m }\n"               // 19
      "domains:\n"                                    // 20
      "  example.org: { deliver: \"nowhere\" }\n"     // 21
      "  bad_domain!: {}\n"                           // 22
      "tls: { min_version: \"1.0\" }\n");             // 23
  ConfigError e = error_for(r, "limits.max_message_size");
  CHECK(e.line == 2);
  CHECK(e.reason == "expected a size like 25MiB, got \"lots\"");
  e = error_for(r, "limits.max_workers");
  CHECK(e.line == 3);
  CHECK(e.reason == "must be at least 1, got 0");
  e = error_for(r, "limits.timeouts.command");
  CHECK(e.line == 4);
  CHECK(contains(e.reason, "expected a duration like 5m"));
  e = error_for(r, "relay.networks[1]");
  CHECK(e.line == 8);
  CHECK(contains(e.reason, "expected a network"));
  e = error_for(r, "relay.networks[2]");
  CHECK(e.line == 9);
  CHECK(contains(e.reason, "did you mean 10.0.0.0/8?"));
  e = error_for(r, "listen[1].address");
  CHECK(e.line == 12);
  CHECK(contains(e.reason, "expected host:port"));
  CHECK(error_for(r, "listen[2].address").line == 13);
  e = error_for(r, "listen[2].mode");
  CHECK(e.line == 14);
  CHECK(e.reason == "expected one of smtp, submission, submissions, got \"lmtp\"");
  CHECK(error_for(r, "log.level").line == 15);
  CHECK(error_for(r, "queue.port").line == 17);
  CHECK(contains(error_for(r, "queue.tls").reason, "none, opportunistic, required, verify"));
  CHECK(error_for(r, "queue.retry.max").line == 19);
  e = error_for(r, "domains.example.org.deliver");
  CHECK(e.line == 21);
  CHECK(contains(e.reason, "maildir:PATH"));
  CHECK(error_for(r, "domains.bad_domain!").line == 22);
  CHECK(error_for(r, "tls.min_version").line == 23);
  CHECK(r.errors.size() == 15);
}

TEST_CASE("filters need exactly one kind and a unique name") {
  const LoadResult r = load(
      "filters:\n"                                    // 1
      "  - name: both\n"                              // 2
      "    exec: [/bin/true]\n"                       // 3
      "    milter: unix:/run/m.sock\n"                // 4
      "  - exec: [/bin/true]\n"                       // 5
      "  - name: none\n"                              // 6
      "  - name: dup\n"                               // 7
      "    exec: [/bin/true]\n"                       // 8
      "  - name: dup\n"                               // 9
      "    plugin: x.so\n"                            // 10
      "  - name: opts\n"                              // 11
      "    milter: \"inet:localhost\"\n"              // 12
      "    options: { a: 1 }\n"                       // 13
      "    mode: rewrite\n"                           // 14
      "    timeout: 0\n"                              // 15
      "    on_error: ignore\n");                      // 16
  ConfigError e = error_for(r, "filters[0]");
  CHECK(e.line == 2);
  CHECK(contains(e.reason, "exactly one of exec, milter or plugin"));
  e = error_for(r, "filters[1].name");
  CHECK(e.line == 5);
  CHECK(e.reason == "required");
  e = error_for(r, "filters[2]");
  CHECK(e.line == 6);
  CHECK(contains(e.reason, "needs one of exec, milter or plugin"));
  e = error_for(r, "filters[4].name");
  CHECK(e.line == 9);
  CHECK(contains(e.reason, "duplicate filter name \"dup\" (also filters[3])"));
  CHECK(error_for(r, "filters[5].milter").line == 12);
  CHECK(error_for(r, "filters[5].options").line == 13);
  CHECK(error_for(r, "filters[5].mode").line == 14);
  CHECK(error_for(r, "filters[5].timeout").line == 15);
  CHECK(error_for(r, "filters[5].on_error").line == 16);
}

TEST_CASE("milter sockets are normalised to unix:/path or inet:host:port") {
  const LoadResult r = load(
      "filters:\n"
      "  - { name: a, milter: \"inet:8891@localhost\" }\n"
      "  - { name: b, milter: \"inet6:8891@::1\" }\n"
      "  - { name: c, milter: \"local:run/opendkim.sock\" }\n"
      "  - { name: d, milter: \"inet:[::1]:11332\" }\n");
  REQUIRE_MESSAGE(r.ok(), all_errors(r));
  CHECK(r.config.filters[0].milter == "inet:localhost:8891");
  CHECK(r.config.filters[1].milter == "inet:[::1]:8891");
  CHECK(r.config.filters[2].milter == "unix:/srv/petrel/etc/run/opendkim.sock");
  CHECK(r.config.filters[3].milter == "inet:[::1]:11332");
}

TEST_CASE("other structural errors") {
  SUBCASE("the top level must be a mapping") {
    LoadResult r = load("- a\n- b\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 1);
    CHECK(contains(r.errors[0].reason, "expected a mapping"));
    r = load("just a string\n");
    CHECK(r.errors.size() == 1);
  }
  SUBCASE("duplicate keys") {
    const LoadResult r = load("hostname: a\nhostname: b\n");
    const ConfigError e = error_for(r, "hostname");
    CHECK(e.line == 2);
    CHECK(contains(e.reason, "first at line 1"));
  }
  SUBCASE("duplicate domains after lower-casing") {
    const LoadResult r = load("domains:\n  a.org: {}\n  A.ORG: {}\n");
    CHECK(error_for(r, "domains.a.org").line == 3);
  }
  SUBCASE("tls needs both cert and key") {
    const LoadResult r = load("tls:\n  cert: c.pem\n");
    CHECK(error_for(r, "tls.key").line == 2);
  }
  SUBCASE("a listener needs an address") {
    const LoadResult r = load("listen:\n  - mode: smtp\n");
    CHECK(error_for(r, "listen[0].address").reason == "required");
  }
  SUBCASE("an empty listener list") {
    CHECK(error_for(load("listen: []\n"), "listen").line == 1);
  }
  SUBCASE("a smarthost needs a host") {
    const LoadResult r = load("smarthost:\n  tls: verify\n");
    CHECK(error_for(r, "smarthost.host").reason == "required");
  }
  SUBCASE("auth users need hashes, not passwords") {
    const LoadResult r = load("auth:\n  users:\n    alice: secret\n");
    CHECK(error_for(r, "auth.users.alice").line == 3);
  }
  SUBCASE("unknown deliver placeholders") {
    const LoadResult r = load("domains:\n  a.org: { deliver: \"maildir:/m/%U\" }\n");
    CHECK(contains(error_for(r, "domains.a.org.deliver").reason, "%U"));
  }
  SUBCASE("a deliver list is only for pipe:") {
    const LoadResult r = load("domains:\n  a.org: { deliver: [\"maildir:/m\"] }\n");
    CHECK(error_for(r, "domains.a.org.deliver").line == 2);
  }
  SUBCASE("users are local parts") {
    const LoadResult r = load("domains:\n  a.org:\n    users: [alice, bob@b.org]\n");
    CHECK(error_for(r, "domains.a.org.users[1]").line == 3);
  }
  SUBCASE("bad route") {
    const LoadResult r = load("routes:\n  example.net: \"[127.0.0.1]:x\"\n");
    CHECK(error_for(r, "routes.example.net").line == 2);
  }
  SUBCASE("bad nameserver") {
    const LoadResult r = load("queue:\n  dns:\n    nameservers: [\"dns.example\"]\n");
    CHECK(error_for(r, "queue.dns.nameservers[0]").line == 3);
  }
  SUBCASE("metrics on a unix socket") {
    CHECK(error_for(load("metrics: { listen: \"unix:/m\" }\n"), "metrics.listen").line == 1);
  }
}

TEST_CASE("YAML syntax errors carry a line") {
  const LoadResult r = load("hostname: a\nlisten:\n  - address: [127.0.0.1:25\n  mode: smtp\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].line >= 3);
  CHECK(contains(r.errors[0].reason, "YAML syntax error"));
  const LoadResult r2 = load("a: b\n c: d\n: :\n");
  REQUIRE(r2.errors.size() == 1);
  CHECK(r2.errors[0].line == 2);
}

TEST_CASE("relative paths resolve against the config file's folder") {
  const LoadResult r = load(
      "state_dir: ../var\n"
      "tls: { cert: tls/cert.pem, key: ./tls/key.pem }\n"
      "auth: { passwd_file: passwd }\n"
      "aliases: { file: aliases }\n"
      "listen:\n"
      "  - address: unix:run/smtp.sock\n"
      "domains:\n"
      "  localhost: { deliver: \"maildir:../var/mail/%d/%u\" }\n"
      "  mbox.test: { deliver: \"mbox:mail/%u\" }\n"
      "  lmtp.test: { deliver: \"lmtp:unix:lmtp.sock\" }\n"
      "  default.test: {}\n"
      "  abs.test: { deliver: \"maildir:/var/mail/%u\" }\n"
      "smarthost: { host: relay.test, auth: { user: me, password_file: sh.pw } }\n"
      "filters:\n"
      "  - { name: p, plugin: ../lib/rules.so }\n"
      "  - { name: e, exec: [./filters/check.sh, arg/x] }\n"
      "  - { name: s, exec: [spamc] }\n"
      "filter_dir: filters.d\n");
  REQUIRE_MESSAGE(r.ok(), all_errors(r));
  const Config& c = r.config;
  CHECK(c.state_dir == "/srv/petrel/var");
  CHECK(c.tls.cert == "/srv/petrel/etc/tls/cert.pem");
  CHECK(c.tls.key == "/srv/petrel/etc/tls/key.pem");
  CHECK(c.auth.passwd_file == "/srv/petrel/etc/passwd");
  CHECK(c.aliases.file == "/srv/petrel/etc/aliases");
  CHECK(c.listen[0].address.path == "/srv/petrel/etc/run/smtp.sock");
  CHECK(c.find_domain("localhost")->deliver[0] == "maildir:/srv/petrel/var/mail/%d/%u");
  CHECK(c.find_domain("mbox.test")->deliver[0] == "mbox:/srv/petrel/etc/mail/%u");
  CHECK(c.find_domain("lmtp.test")->deliver[0] == "lmtp:unix:/srv/petrel/etc/lmtp.sock");
  CHECK(c.find_domain("default.test")->deliver[0] == "maildir:/srv/petrel/var/mail/%d/%u");
  CHECK(c.find_domain("abs.test")->deliver[0] == "maildir:/var/mail/%u");
  CHECK(c.smarthost.auth_password_file == "/srv/petrel/etc/sh.pw");
  CHECK(c.smarthost.host.port == 25);
  CHECK(c.filters[0].plugin == "/srv/petrel/lib/rules.so");
  CHECK(c.filters[1].exec ==
        std::vector<std::string>{"/srv/petrel/etc/filters/check.sh", "arg/x"});
  CHECK(c.filters[2].exec == std::vector<std::string>{"spamc"});
  CHECK(c.filter_dir == "/srv/petrel/etc/filters.d");
}

TEST_CASE("load_file reads a file and reports a missing one") {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("petrel-config-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "petrel.yaml").string();
  {
    std::ofstream out(path);
    out << "state_dir: var\nlimits:\n  max_hops: -1\n";
  }
  const LoadResult r = load_file(path);
  CHECK(r.config.dir == dir.string());
  CHECK(r.config.state_dir == (dir / "var").string());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() == path + ":3: limits.max_hops: must be at least 1, got -1");

  const LoadResult missing = load_file((dir / "nope.yaml").string());
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0].line == 0);
  CHECK(contains(missing.errors[0].str(), "nope.yaml: no such file"));
  CHECK(load_file(dir.string()).errors.size() == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("default_path honours PETREL_CONFIG") {
  const char* old = std::getenv("PETREL_CONFIG");
  const std::string saved = old ? old : "";
  unsetenv("PETREL_CONFIG");
  CHECK(default_path() == "/etc/petrel/petrel.yaml");
  setenv("PETREL_CONFIG", "/tmp/x.yaml", 1);
  CHECK(default_path() == "/tmp/x.yaml");
  if (old) {
    setenv("PETREL_CONFIG", saved.c_str(), 1);
  } else {
    unsetenv("PETREL_CONFIG");
  }
}

TEST_CASE("parse_duration") {
  Seconds s = -1;
  CHECK(parse_duration("30s", &s));
  CHECK(s == 30);
  CHECK(parse_duration("5m", &s));
  CHECK(s == 300);
  CHECK(parse_duration("4h", &s));
  CHECK(s == 4 * 3600);
  CHECK(parse_duration("5d", &s));
  CHECK(s == 5 * 86400);
  CHECK(parse_duration("1h30m", &s));
  CHECK(s == 5400);
  CHECK(parse_duration("0", &s));
  CHECK(s == 0);
  CHECK(parse_duration("0s", &s));
  CHECK(s == 0);
  s = 7;
  for (const std::string bad : {"", "30", "soon", "5", "m", "5 m", "-5m", "5M", "5mm", "1.5h", "5w",
                          "99999999999999999999d", " 5m", "5m "}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_duration(bad, &s));
  }
  CHECK(s == 7);  // untouched on failure
  CHECK(format_duration(0) == "0");
  CHECK(format_duration(30) == "30s");
  CHECK(format_duration(90) == "90s");
  CHECK(format_duration(300) == "5m");
  CHECK(format_duration(5400) == "90m");
  CHECK(format_duration(3600) == "1h");
  CHECK(format_duration(5 * 86400) == "5d");
}

TEST_CASE("parse_size") {
  std::uint64_t n = 0;
  CHECK(parse_size("512", &n));
  CHECK(n == 512);
  CHECK(parse_size("0", &n));
  CHECK(n == 0);
  CHECK(parse_size("100B", &n));
  CHECK(n == 100);
  CHECK(parse_size("64KiB", &n));
  CHECK(n == 64 * 1024);
  CHECK(parse_size("25MiB", &n));
  CHECK(n == 25u * 1024 * 1024);
  CHECK(parse_size("1GiB", &n));
  CHECK(n == 1024u * 1024 * 1024);
  CHECK(parse_size("18446744073709551615", &n));
  n = 9;
  for (const std::string bad : {"", "MiB", "25 MiB", "25mib", "25MB", "25M", "1.5MiB", "-1",
                          "18446744073709551616", "17179869184GiB", "25MiBs"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_size(bad, &n));
  }
  CHECK(n == 9);
  CHECK(format_size(0) == "0");
  CHECK(format_size(512) == "512");
  CHECK(format_size(1536) == "1536");
  CHECK(format_size(64 * 1024) == "64KiB");
  CHECK(format_size(25u * 1024 * 1024) == "25MiB");
  CHECK(format_size(2048u * 1024 * 1024) == "2GiB");
}

TEST_CASE("parse_cidr and Cidr::contains") {
  Cidr v4, v6, host, all, mapped_net;
  REQUIRE(parse_cidr("127.0.0.0/8", &v4));
  REQUIRE(parse_cidr("2001:db8::/32", &v6));
  REQUIRE(parse_cidr("192.0.2.7", &host));
  REQUIRE(parse_cidr("0.0.0.0/0", &all));
  REQUIRE(parse_cidr("::ffff:10.0.0.0/104", &mapped_net));
  CHECK(v4.family == AF_INET);
  CHECK(v4.prefix == 8);
  CHECK(v6.family == AF_INET6);
  CHECK(host.prefix == 32);
  CHECK(host.text == "192.0.2.7/32");

  CHECK(v4.contains_text("127.0.0.1"));
  CHECK(v4.contains_text("127.255.255.255"));
  CHECK_FALSE(v4.contains_text("128.0.0.1"));
  CHECK(v4.contains_text("::ffff:127.0.0.1"));
  CHECK_FALSE(v4.contains_text("::1"));
  CHECK_FALSE(v4.contains_text("not an ip"));
  CHECK(v6.contains_text("2001:db8::1"));
  CHECK(v6.contains_text("[2001:db8:ffff::1]"));
  CHECK_FALSE(v6.contains_text("2001:db9::1"));
  CHECK_FALSE(v6.contains_text("10.0.0.1"));
  CHECK(host.contains_text("192.0.2.7"));
  CHECK_FALSE(host.contains_text("192.0.2.8"));
  CHECK(all.contains_text("203.0.113.9"));
  CHECK(mapped_net.contains_text("10.1.2.3"));
  CHECK_FALSE(mapped_net.contains_text("11.1.2.3"));

  Cidr odd;
  REQUIRE(parse_cidr("10.0.0.0/9", &odd));
  CHECK(odd.contains_text("10.127.0.1"));
  CHECK_FALSE(odd.contains_text("10.128.0.1"));

  Cidr loop6;
  REQUIRE(parse_cidr("::1/128", &loop6));
  CHECK(loop6.contains_text("::1"));
  CHECK_FALSE(loop6.contains_text("::2"));

  SUBCASE("sockaddrs of every family") {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    CHECK(v4.contains(reinterpret_cast<const sockaddr*>(&sin)));
    CHECK_FALSE(v6.contains(reinterpret_cast<const sockaddr*>(&sin)));

    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6.sin6_addr);
    CHECK(v4.contains(reinterpret_cast<const sockaddr*>(&sin6)));
    inet_pton(AF_INET6, "2001:db8:1::5", &sin6.sin6_addr);
    CHECK(v6.contains(reinterpret_cast<const sockaddr*>(&sin6)));
    CHECK_FALSE(v4.contains(reinterpret_cast<const sockaddr*>(&sin6)));

    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    CHECK_FALSE(all.contains(reinterpret_cast<const sockaddr*>(&sun)));
    CHECK_FALSE(all.contains(nullptr));
  }

  Cidr bad;
  for (const std::string s : {"", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/x",
                        "10.1.2.3/8", "2001:db8::1/32", "example.org", "10.0.0.0/08a"}) {
    CAPTURE(s);
    CHECK_FALSE(parse_cidr(s, &bad));
  }
}

TEST_CASE("parse_socket_address") {
  SocketAddress a;
  REQUIRE(parse_socket_address("127.0.0.1:2525", &a));
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 2525);
  CHECK(a.text == "127.0.0.1:2525");
  REQUIRE(parse_socket_address("[::1]:25", &a));
  CHECK(a.host == "::1");
  CHECK(a.port == 25);
  REQUIRE(parse_socket_address("localhost:587", &a));
  CHECK(a.host == "localhost");
  REQUIRE(parse_socket_address(":25", &a));
  CHECK(a.host.empty());
  REQUIRE(parse_socket_address("unix:/run/petrel.sock", &a));
  CHECK(a.is_unix);
  CHECK(a.path == "/run/petrel.sock");
  for (const std::string bad : {"", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:25",
                          "[::1]", "[::1]25", "[not-v6]:25", "host name:25", "unix:",
                          "127.0.0.1:2x"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_socket_address(bad, &a));
  }
}

TEST_CASE("parse_next_hop") {
  NextHop h;
  REQUIRE(parse_next_hop("[127.0.0.1]:8025", &h));
  CHECK(h.host == "127.0.0.1");
  CHECK(h.port == 8025);
  CHECK(h.no_mx);
  REQUIRE(parse_next_hop("mx.example.org", &h));
  CHECK(h.host == "mx.example.org");
  CHECK(h.port == 25);
  CHECK_FALSE(h.no_mx);
  REQUIRE(parse_next_hop("smtp.example.org:587", &h));
  CHECK(h.port == 587);
  CHECK_FALSE(h.no_mx);
  REQUIRE(parse_next_hop("[mail.example.org]", &h));
  CHECK(h.host == "mail.example.org");
  CHECK(h.no_mx);
  REQUIRE(parse_next_hop("[ipv6:2001:db8::1]:26", &h));
  CHECK(h.host == "2001:db8::1");
  CHECK(h.port == 26);
  for (const std::string bad : {"", "[", "[]:25", "host:", "host:0", "[host]x", "a b", "::1:25x"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_next_hop(bad, &h));
  }
}

TEST_CASE("describe shows every section with effective values and no secrets") {
  const LoadResult r = load(kFull);
  REQUIRE(r.ok());
  const std::string d = describe(r.config);
  for (const std::string key :
       {"hostname: mail.example.org", "state_dir: /var/lib/petrel", "user: petrel", "listen:",
        "address: \"[::]:25\"", "mode: submissions", "address: \"unix:/run/petrel/smtp.sock\"",
        "proxy_protocol: true", "max_workers: 300", "max_message_size: 50MiB",
        "timeouts: { command: 1m, data_block: 2m, data_end: 4m }", "min_version: \"1.3\"",
        "users: [alice, bob]", "networks: [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7/32\"]",
        "example.org:", "deliver: \"maildir:/var/mail/%d/%u\"", "catch_all: postmaster",
        "recipient_delimiter: \"+\"", "team: [alice, bob@example.net]",
        "example.net: \"[127.0.0.1]:8025\"", "host: \"smtp.provider.example:587\"",
        "tls: verify", "retry: { min: 1m, max: 2h, lifetime: 3d, warn_after: 0 }",
        "max_connections_per_domain: 4", "port: 2525", "tls: required", "name: spamassassin",
        "exec: [/usr/bin/spamc, \"-E\", \"-x\", \"-X\", \"-s\", \"26214400\"]", "mode: rewrite",
        "milter: \"inet:127.0.0.1:11332\"", "on_error: accept", "plugin: /usr/lib/petrel",
        "tag_threshold: \"2.0\"", "filter_dir: /etc/petrel/filters.d",
        "metrics: { listen: \"127.0.0.1:9325\" }",
        "log: { target: syslog, format: json, level: debug }"}) {
    CAPTURE(key);
    CHECK(contains(d, key));
  }
  CHECK_FALSE(contains(d, "$y$"));
  CHECK_FALSE(contains(d, "$6$"));

  const std::string defaults = describe(load("").config);
  for (const std::string key : {"address: \"127.0.0.1:2525\"", "mode: smtp", "max_workers: 200",
                          "max_message_size: 25MiB", "networks: [\"127.0.0.0/8\", \"::1/128\"]",
                          "domains: {}", "smarthost: ~", "filters: []", "user: ~",
                          "retry: { min: 5m, max: 1h, lifetime: 5d, warn_after: 4h }"}) {
    CAPTURE(key);
    CHECK(contains(defaults, key));
  }
}
