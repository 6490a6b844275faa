// RFC 5321 path parsing (SPEC §5): what MAIL FROM and RCPT TO accept.
#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "petrel/smtpd/address.h"

using petrel::smtpd::Address;
using petrel::smtpd::parse_mailbox;
using petrel::smtpd::parse_path;
using petrel::smtpd::PathKind;
using petrel::smtpd::unquote_local;
using petrel::smtpd::valid_domain;

namespace {

// "jöe" and "exämple" in UTF-8, spelled with escapes so the source stays ASCII.
const std::string kJoe = "j\xc3\xb6" "e";
const std::string kExample = "ex\xc3\xa4" "mple";

petrel::Result<Address> rev(std::string_view s, bool utf8 = false) {
  return parse_path(s, PathKind::ReversePath, utf8);
}
petrel::Result<Address> fwd(std::string_view s, bool utf8 = false) {
  return parse_path(s, PathKind::ForwardPath, utf8);
}

// Either kind: a mailbox path must parse (or fail) the same for both.
void both_ok(std::string_view s) {
  INFO("path: ", std::string(s));
  CHECK(rev(s).ok());
  CHECK(fwd(s).ok());
}
void both_bad(std::string_view s, bool utf8 = false) {
  INFO("path: ", std::string(s));
  auto r = rev(s, utf8);
  auto f = fwd(s, utf8);
  REQUIRE_FALSE(r.ok());
  REQUIRE_FALSE(f.ok());
  CHECK(r.error() == "syntax");
  CHECK(f.error() == "syntax");
}

}  // namespace

TEST_CASE("address: plain mailbox") {
  auto a = fwd("<alice@example.com>");
  REQUIRE(a.ok());
  CHECK(a->local == "alice");
  CHECK(a->domain == "example.com");
  CHECK_FALSE(a->null);
  CHECK_FALSE(a->utf8);
  CHECK_FALSE(a->is_postmaster_only());
  CHECK(a->str() == "alice@example.com");

  both_ok("<a.b.c@x.example.org>");
  both_ok("<first.last+tag@example.com>");
  both_ok("<!#$%&'*+-/=?^_`{|}~@example.com>");
  both_ok("<a@x-y.example>");
  both_ok("<a@localhost>");
  both_ok("<a@123.example>");
}

TEST_CASE("address: domain is lower-cased, local part kept as written") {
  auto a = rev("<Alice.Smith@Example.COM>");
  REQUIRE(a.ok());
  CHECK(a->local == "Alice.Smith");
  CHECK(a->domain == "example.com");
  CHECK(a->str() == "Alice.Smith@example.com");
}

TEST_CASE("address: quoted local parts") {
  auto a = fwd("<\"john doe\"@example.com>");
  REQUIRE(a.ok());
  CHECK(a->local == "\"john doe\"");
  CHECK(a->domain == "example.com");
  CHECK(unquote_local(a->local) == "john doe");

  auto b = fwd(R"(<"a\"b"@example.com>)");
  REQUIRE(b.ok());
  CHECK(b->local == R"("a\"b")");
  CHECK(unquote_local(b->local) == "a\"b");

  auto c = fwd(R"(<"back\\slash"@example.com>)");
  REQUIRE(c.ok());
  CHECK(unquote_local(c->local) == "back\\slash");

  // '>' and '@' inside the quotes do not end the path or split it.
  auto d = rev("<\"a>b@c\"@example.com> SIZE=10");
  REQUIRE(d.ok());
  CHECK(d->local == "\"a>b@c\"");
  CHECK(d->domain == "example.com");

  CHECK(unquote_local("plain") == "plain");

  both_bad("<\"unterminated@example.com>");
  both_bad("<\"a\"b\"@example.com>");     // a bare quote inside
  both_bad("<\"a\"x@example.com>");       // text after the closing quote
  both_bad("<\"a\tb\"@example.com>");     // control character
  both_bad("<\"a\\\"@example.com>");      // the escape eats the closing quote
}

TEST_CASE("address: IP address literals") {
  auto a = fwd("<a@[192.0.2.1]>");
  REQUIRE(a.ok());
  CHECK(a->domain == "[192.0.2.1]");
  CHECK(a->str() == "a@[192.0.2.1]");

  auto b = fwd("<a@[IPv6:2001:db8::1]>");
  REQUIRE(b.ok());
  CHECK(b->local == "a");
  both_ok("<a@[IPv6:::1]>");
  both_ok("<a@[ipv6:fe80::1:2:3:4]>");

  both_bad("<a@[256.1.1.1]>");
  both_bad("<a@[1.2.3]>");
  both_bad("<a@[1.2.3.4.5]>");
  both_bad("<a@[]>");
  both_bad("<a@[1.2.3.4>");
  both_bad("<a@1.2.3.4]>");
  both_bad("<a@[example.com]>");
  both_bad("<a@[IPv6:2001:db8::g]>");
  both_bad("<a@[IPv6:1.2.3.4]>");          // an IPv4 address is not an IPv6 literal
  both_bad("<a@[2001:db8::1]>");           // IPv6 needs the tag
  both_bad("<a@[IPv6:]>");
  both_bad("<a@[ 1.2.3.4]>");
}

TEST_CASE("address: the null path <> is only a reverse path") {
  auto a = rev("<>");
  REQUIRE(a.ok());
  CHECK(a->null);
  CHECK(a->str() == "");
  CHECK_FALSE(a->is_postmaster_only());

  std::string_view rest;
  auto b = parse_path("<> BODY=8BITMIME", PathKind::ReversePath, false, &rest);
  REQUIRE(b.ok());
  CHECK(b->null);
  CHECK(rest == " BODY=8BITMIME");

  auto f = fwd("<>");
  REQUIRE_FALSE(f.ok());
  CHECK(f.error() == "syntax");
}

TEST_CASE("address: <postmaster> in any case is only a forward path") {
  for (const char* s : {"<postmaster>", "<Postmaster>", "<POSTMASTER>", "<PostMaster>"}) {
    INFO(s);
    auto a = fwd(s);
    REQUIRE(a.ok());
    CHECK(a->is_postmaster_only());
    CHECK(a->domain.empty());
    CHECK_FALSE(a->null);
    CHECK(a->str() == "postmaster");
    CHECK_FALSE(rev(s).ok());
  }
  CHECK_FALSE(fwd("<postmasters>").ok());
  CHECK_FALSE(fwd("<postmaste>").ok());
  CHECK_FALSE(fwd("<abuse>").ok());
  // With a domain it is an ordinary mailbox.
  auto p = rev("<postmaster@example.com>");
  REQUIRE(p.ok());
  CHECK_FALSE(p->is_postmaster_only());
  CHECK(p->domain == "example.com");
}

TEST_CASE("address: source routes are accepted and dropped") {
  auto a = fwd("<@relay1.example,@relay2.example:joe@dest.example>");
  REQUIRE(a.ok());
  CHECK(a->local == "joe");
  CHECK(a->domain == "dest.example");
  CHECK(a->str() == "joe@dest.example");

  auto b = rev("<@relay.example:joe@Dest.Example>");
  REQUIRE(b.ok());
  CHECK(b->str() == "joe@dest.example");

  both_bad("<@relay.example joe@dest.example>");    // no ':'
  both_bad("<@relay..example:joe@dest.example>");    // bad route domain
  both_bad("<@relay.example,relay2:joe@dest.example>");  // second hop without '@'
  both_bad("<@:joe@dest.example>");
  both_bad("<@relay.example:>");
  both_bad("<@relay.example:joe>");
}

TEST_CASE("address: UTF-8 only with SMTPUTF8") {
  const std::string local_path = "<" + kJoe + "@example.com>";
  const std::string domain_path = "<joe@" + kExample + ".com>";
  const std::string quoted_path = "<\"" + kJoe + " x\"@example.com>";

  for (const std::string& p : {local_path, domain_path, quoted_path}) {
    INFO("path: ", p);
    auto r = rev(p, false);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error() == "utf8");
    auto f = fwd(p, false);
    REQUIRE_FALSE(f.ok());
    CHECK(f.error() == "utf8");

    auto ok = fwd(p, true);
    REQUIRE(ok.ok());
    CHECK(ok->utf8);
    CHECK(rev(p, true).ok());
  }

  auto a = fwd(local_path, true);
  REQUIRE(a.ok());
  CHECK(a->local == kJoe);
  CHECK(a->domain == "example.com");

  auto d = fwd(domain_path, true);
  REQUIRE(d.ok());
  CHECK(d->domain == kExample + ".com");

  // ASCII addresses are not marked utf8 even when UTF-8 is allowed.
  auto ascii = fwd("<joe@example.com>", true);
  REQUIRE(ascii.ok());
  CHECK_FALSE(ascii->utf8);

  // Invalid UTF-8 is a syntax error even when UTF-8 is allowed.
  both_bad("<j\xff" "e@example.com>", true);
  both_bad("<j\xc3@example.com>", true);         // truncated sequence
  both_bad("<joe@ex\xc3(mple.com>", true);       // bad continuation byte
  both_bad("<j\xc0\xaf" "e@example.com>", true);  // overlong encoding
}

TEST_CASE("address: length limits") {
  const std::string l64(64, 'a');
  const std::string l65(65, 'a');
  auto a = fwd("<" + l64 + "@example.com>");
  REQUIRE(a.ok());
  CHECK(a->local == l64);
  both_bad("<" + l65 + "@example.com>");
  both_bad("<\"" + std::string(63, 'a') + "\"@example.com>");  // 65 with the quotes

  // Domains: 255 octets at most, labels 63 at most.
  const std::string label63(63, 'b');
  const std::string d255 = label63 + "." + label63 + "." + label63 + "." + label63;
  const std::string d256 = label63 + "." + label63 + "." + label63 + "." + std::string(62, 'b') + ".c";
  REQUIRE(d255.size() == 255);
  REQUIRE(d256.size() == 256);
  CHECK(valid_domain(d255, false));
  CHECK_FALSE(valid_domain(d256, false));
  auto m = parse_mailbox("x@" + d255, false);
  REQUIRE(m.ok());
  CHECK(m->domain == d255);
  CHECK_FALSE(parse_mailbox("x@" + d256, false).ok());

  CHECK(valid_domain(label63 + ".example", false));
  CHECK_FALSE(valid_domain(std::string(64, 'b') + ".example", false));
  both_ok("<x@" + label63 + ".example>");
  both_bad("<x@" + std::string(64, 'b') + ".example>");
}

TEST_CASE("address: dots and domain syntax") {
  both_bad("<.alice@example.com>");
  both_bad("<alice.@example.com>");
  both_bad("<al..ice@example.com>");
  both_bad("<alice@example..com>");
  both_bad("<alice@.example.com>");
  both_bad("<alice@example.com.>");
  both_bad("<alice@.>");
  both_bad("<alice@-example.com>");
  both_bad("<alice@example-.com>");
  both_bad("<alice@exa_mple.com>");
  both_bad("<alice@exa mple.com>");
  both_bad("<al ice@example.com>");
  both_bad("<al(ice)@example.com>");
  both_bad("<alice@>");
  both_bad("<@example.com>");
  both_bad("<alice>");
  both_bad("<alice@example.com@example.org>");
  both_bad("<a\"b@example.com>");
}

TEST_CASE("address: angle brackets are required") {
  both_bad("alice@example.com");
  both_bad("<alice@example.com");
  both_bad("alice@example.com>");
  both_bad("");
  both_bad("<");
  both_bad(" <alice@example.com>");
  CHECK_FALSE(rev("").ok());
  CHECK_FALSE(fwd("<").ok());
}

TEST_CASE("address: rest receives what follows the path") {
  std::string_view rest = "unchanged";
  auto a = parse_path("<alice@example.com> SIZE=1000 BODY=8BITMIME", PathKind::ReversePath, false,
                      &rest);
  REQUIRE(a.ok());
  CHECK(a->str() == "alice@example.com");
  CHECK(rest == " SIZE=1000 BODY=8BITMIME");

  auto b = parse_path("<bob@example.com>", PathKind::ForwardPath, false, &rest);
  REQUIRE(b.ok());
  CHECK(rest.empty());

  auto c = parse_path("<postmaster> NOTIFY=NEVER", PathKind::ForwardPath, false, &rest);
  REQUIRE(c.ok());
  CHECK(rest == " NOTIFY=NEVER");
}

TEST_CASE("address: parse_mailbox takes a bare mailbox") {
  auto a = parse_mailbox("Bob@Example.Net", false);
  REQUIRE(a.ok());
  CHECK(a->local == "Bob");
  CHECK(a->domain == "example.net");
  CHECK_FALSE(parse_mailbox("<bob@example.net>", false).ok());
  CHECK_FALSE(parse_mailbox("bob", false).ok());
  CHECK_FALSE(parse_mailbox("bob@", false).ok());
  auto u = parse_mailbox(kJoe + "@example.net", false);
  REQUIRE_FALSE(u.ok());
  CHECK(u.error() == "utf8");
}
