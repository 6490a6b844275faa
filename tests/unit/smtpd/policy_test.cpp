// ConfigPolicy: relay rules and local recipient verification (SPEC §3, §5).
#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "petrel/config/config.h"
#include "petrel/smtpd/policy.h"

using namespace petrel::smtpd;
using petrel::config::Cidr;
using petrel::config::Config;
using petrel::config::Domain;

namespace {

Cidr cidr(std::string_view s) {
  Cidr c;
  REQUIRE(petrel::config::parse_cidr(s, &c));
  return c;
}

Config test_config() {
  Config cfg;
  cfg.hostname = "mx.example.com";
  cfg.relay.networks = {cidr("127.0.0.0/8"), cidr("::1/128"), cidr("10.1.0.0/16"),
                        cidr("2001:db8:1::/48")};
  cfg.relay.authenticated = true;

  Domain ex;
  ex.name = "example.com";
  ex.users = std::vector<std::string>{"alice", "bob"};
  Domain open;
  open.name = "open.test";  // no users list: every local part exists
  Domain catchall;
  catchall.name = "catch.test";
  catchall.users = std::vector<std::string>{"zed"};
  catchall.catch_all = "zed";
  Domain strict;
  strict.name = "strict.test";
  strict.users = std::vector<std::string>{"zed"};
  cfg.domains = {ex, open, catchall, strict};

  cfg.aliases.map = {{"sales", {"alice"}},
                     {"info@example.com", {"bob"}},
                     {"Support", {"alice", "bob"}}};
  return cfg;
}

ClientInfo ip_client(std::string ip) {
  ClientInfo c;
  c.ip = std::move(ip);
  c.port = 2525;
  return c;
}

ClientInfo unix_client() {
  ClientInfo c;
  c.is_unix = true;
  return c;
}

Address addr(std::string local, std::string domain) {
  Address a;
  a.local = std::move(local);
  a.domain = std::move(domain);
  return a;
}

Address parsed(std::string_view path) {
  auto a = parse_path(path, PathKind::ForwardPath, false);
  REQUIRE(a.ok());
  return *a;
}

}  // namespace

TEST_CASE("policy: relay from relay.networks") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  const Address remote = addr("friend", "elsewhere.example");
  for (const char* ip : {"127.0.0.1", "127.255.0.9", "::1", "10.1.2.3", "10.1.255.255",
                         "::ffff:127.0.0.1", "::ffff:10.1.0.1", "2001:db8:1:ffff::5"}) {
    INFO(ip);
    CHECK(p.may_relay(ip_client(ip), false));
    CHECK(p.check_recipient(remote, ip_client(ip), false) == RcptVerdict::Ok);
  }
  for (const char* ip : {"192.0.2.1", "10.2.0.1", "10.0.255.255", "128.0.0.1", "::2",
                         "2001:db8:2::1", "::ffff:192.0.2.1", "", "not-an-ip"}) {
    INFO(ip);
    CHECK_FALSE(p.may_relay(ip_client(ip), false));
    CHECK(p.check_recipient(remote, ip_client(ip), false) == RcptVerdict::RelayDenied);
  }
}

TEST_CASE("policy: relay from unix sockets") {
  Config cfg = test_config();
  cfg.relay.networks.clear();
  ConfigPolicy p(cfg);
  CHECK(p.may_relay(unix_client(), false));
  CHECK(p.check_recipient(addr("x", "elsewhere.example"), unix_client(), false) ==
        RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("x", "elsewhere.example"), ip_client("127.0.0.1"), false) ==
        RcptVerdict::RelayDenied);
}

TEST_CASE("policy: relay for authenticated clients") {
  Config cfg = test_config();
  const Address remote = addr("friend", "elsewhere.example");
  {
    ConfigPolicy p(cfg);
    CHECK(p.check_recipient(remote, ip_client("192.0.2.1"), true) == RcptVerdict::Ok);
    CHECK(p.check_recipient(remote, ip_client("192.0.2.1"), false) == RcptVerdict::RelayDenied);
  }
  cfg.relay.authenticated = false;
  {
    ConfigPolicy p(cfg);
    CHECK_FALSE(p.may_relay(ip_client("192.0.2.1"), true));
    CHECK(p.check_recipient(remote, ip_client("192.0.2.1"), true) == RcptVerdict::RelayDenied);
    // Networks still count.
    CHECK(p.check_recipient(remote, ip_client("10.1.0.1"), true) == RcptVerdict::Ok);
  }
}

TEST_CASE("policy: address literals are never local") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  CHECK(p.check_recipient(parsed("<a@[192.0.2.7]>"), ip_client("192.0.2.1"), false) ==
        RcptVerdict::RelayDenied);
  CHECK(p.check_recipient(parsed("<a@[192.0.2.7]>"), ip_client("127.0.0.1"), false) ==
        RcptVerdict::Ok);
}

TEST_CASE("policy: local users list") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  const ClientInfo outside = ip_client("192.0.2.1");
  const ClientInfo inside = ip_client("127.0.0.1");
  CHECK(p.check_recipient(addr("alice", "example.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("bob", "example.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("ALICE", "example.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("carol", "example.com"), outside, false) ==
        RcptVerdict::UnknownUser);
  // Relay permission does not make unknown local users exist.
  CHECK(p.check_recipient(addr("carol", "example.com"), inside, false) == RcptVerdict::UnknownUser);
  CHECK(p.check_recipient(addr("carol", "example.com"), unix_client(), true) ==
        RcptVerdict::UnknownUser);
  // Quoted local parts are compared unquoted.
  CHECK(p.check_recipient(parsed("<\"alice\"@example.com>"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(parsed("<\"carol\"@example.com>"), outside, false) ==
        RcptVerdict::UnknownUser);
  // Prefixes and suffixes of a user are different users.
  CHECK(p.check_recipient(addr("alic", "example.com"), outside, false) == RcptVerdict::UnknownUser);
  CHECK(p.check_recipient(addr("alicex", "example.com"), outside, false) ==
        RcptVerdict::UnknownUser);

  CHECK(p.known_local(cfg.domains[0], "Bob"));
  CHECK_FALSE(p.known_local(cfg.domains[0], "dave"));
}

TEST_CASE("policy: domains without a users list accept every local part") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  CHECK(p.check_recipient(addr("anyone", "open.test"), ip_client("192.0.2.1"), false) ==
        RcptVerdict::Ok);
  CHECK(p.known_local(cfg.domains[1], "whatever"));
}

TEST_CASE("policy: catch_all accepts unknown local parts") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  const ClientInfo outside = ip_client("192.0.2.1");
  CHECK(p.check_recipient(addr("nobody", "catch.test"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("nobody", "strict.test"), outside, false) ==
        RcptVerdict::UnknownUser);
  CHECK(p.check_recipient(addr("zed", "strict.test"), outside, false) == RcptVerdict::Ok);
}

TEST_CASE("policy: recipient_delimiter") {
  Config cfg = test_config();
  const ClientInfo outside = ip_client("192.0.2.1");
  {
    ConfigPolicy p(cfg);  // no delimiter
    CHECK(p.check_recipient(addr("alice+tag", "example.com"), outside, false) ==
          RcptVerdict::UnknownUser);
  }
  cfg.recipient_delimiter = "+";
  {
    ConfigPolicy p(cfg);
    CHECK(p.check_recipient(addr("alice+tag", "example.com"), outside, false) == RcptVerdict::Ok);
    CHECK(p.check_recipient(addr("Alice+Tag", "example.com"), outside, false) == RcptVerdict::Ok);
    CHECK(p.check_recipient(addr("alice+", "example.com"), outside, false) == RcptVerdict::Ok);
    CHECK(p.check_recipient(addr("carol+tag", "example.com"), outside, false) ==
          RcptVerdict::UnknownUser);
    CHECK(p.check_recipient(addr("+alice", "example.com"), outside, false) ==
          RcptVerdict::UnknownUser);
    CHECK(p.check_recipient(addr("alice-tag", "example.com"), outside, false) ==
          RcptVerdict::UnknownUser);
    CHECK(p.check_recipient(addr("sales+q1", "example.com"), outside, false) == RcptVerdict::Ok);
  }
  cfg.recipient_delimiter = "+-";  // every character is a delimiter
  {
    ConfigPolicy p(cfg);
    CHECK(p.check_recipient(addr("alice-tag", "example.com"), outside, false) == RcptVerdict::Ok);
    CHECK(p.check_recipient(addr("bob+x", "example.com"), outside, false) == RcptVerdict::Ok);
  }
}

TEST_CASE("policy: alias map keys make local parts known") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  const ClientInfo outside = ip_client("192.0.2.1");
  // A bare local part key applies to every local domain.
  CHECK(p.check_recipient(addr("sales", "example.com"), outside, false) == RcptVerdict::Ok);
  // ...but its target stays in the domain being resolved: at strict.test
  // "sales" -> alice@strict.test, who is not a user there, so RCPT refuses
  // what delivery would bounce.
  CHECK(p.check_recipient(addr("sales", "strict.test"), outside, false) ==
        RcptVerdict::UnknownUser);
  CHECK(p.check_recipient(addr("sales", "open.test"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("SALES", "example.com"), outside, false) == RcptVerdict::Ok);
  // Keys compare case-insensitively.
  CHECK(p.check_recipient(addr("support", "example.com"), outside, false) == RcptVerdict::Ok);
  // A full-address key only for its domain.
  CHECK(p.check_recipient(addr("info", "example.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("Info", "EXAMPLE.COM"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("info", "strict.test"), outside, false) == RcptVerdict::UnknownUser);
}

TEST_CASE("policy: postmaster is always accepted") {
  Config cfg = test_config();
  cfg.relay.networks.clear();
  ConfigPolicy p(cfg);
  const ClientInfo outside = ip_client("192.0.2.1");
  CHECK(p.check_recipient(parsed("<postmaster>"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(parsed("<POSTMASTER>"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("postmaster", "example.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("PostMaster", "strict.test"), outside, false) == RcptVerdict::Ok);
  // But not for somebody else's domain.
  CHECK(p.check_recipient(addr("postmaster", "elsewhere.example"), outside, false) ==
        RcptVerdict::RelayDenied);
}

TEST_CASE("policy: local domains match case-insensitively") {
  Config cfg = test_config();
  ConfigPolicy p(cfg);
  const ClientInfo outside = ip_client("192.0.2.1");
  CHECK(p.check_recipient(addr("alice", "EXAMPLE.com"), outside, false) == RcptVerdict::Ok);
  CHECK(p.check_recipient(addr("carol", "Example.Com"), outside, false) ==
        RcptVerdict::UnknownUser);
  CHECK(p.check_recipient(parsed("<alice@ExAmPlE.CoM>"), outside, false) == RcptVerdict::Ok);
  // A subdomain is not the domain.
  CHECK(p.check_recipient(addr("alice", "sub.example.com"), outside, false) ==
        RcptVerdict::RelayDenied);
  CHECK(cfg.find_domain("EXAMPLE.COM") == &cfg.domains[0]);
  CHECK(cfg.find_domain("example.org") == nullptr);
}
