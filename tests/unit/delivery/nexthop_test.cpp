#include "petrel/delivery/nexthop.h"

#include <fstream>
#include <memory>
#include <optional>

#include <doctest/doctest.h>
#include <event2/event.h>

#include "../dns/test_peers.h"
#include "test_util.h"

namespace petrel::delivery {
namespace {

using config::TlsPolicy;

config::Config load(const std::string& yaml) {
  auto r = config::load_string("hostname: mx.petrel.test\n" + yaml, "test.yaml");
  for (const auto& e : r.errors) MESSAGE(e.str());
  REQUIRE(r.ok());
  return r.config;
}

TEST_CASE("select_route: MX by default, with queue.port and queue.tls") {
  const config::Config cfg = load("queue: { port: 2526, tls: required }\n");
  const Route r = select_route(cfg, "Example.ORG.");
  CHECK(r.source == Route::Source::Mx);
  CHECK(r.mx);
  CHECK(r.host == "example.org");
  CHECK(r.port == 2526);
  CHECK(r.tls == TlsPolicy::Required);
  CHECK(r.auth_user.empty());
  CHECK(r.describe() == "mx:example.org:2526");
}

TEST_CASE("select_route: domain literals are their own address") {
  const config::Config cfg = load("");
  const Route v4 = select_route(cfg, "[192.0.2.1]");
  CHECK_FALSE(v4.mx);
  CHECK(v4.host == "192.0.2.1");
  CHECK(v4.port == 25);
  const Route v6 = select_route(cfg, "[IPv6:2001:db8::1]");
  CHECK_FALSE(v6.mx);
  CHECK(v6.host == "2001:db8::1");
}

TEST_CASE("select_route: routes, exact domain before *, then smarthost") {
  const config::Config cfg = load(
      "queue: { port: 2526 }\n"
      "routes:\n"
      "  example.net: \"[127.0.0.1]:8025\"\n"
      "  lists.example.net: relay.example.com\n"
      "  mx.example.com: \"relay.example.com:2600\"\n"
      "  named.example: \"[smtp.example]\"\n"
      "  \"*\": \"[fallback.example]:2700\"\n"
      "smarthost: { host: \"smtp.provider.example:587\", tls: verify,\n"
      "             auth: { user: me, password_file: /nonexistent } }\n");

  const Route a = select_route(cfg, "EXAMPLE.net");
  CHECK(a.source == Route::Source::Route);
  CHECK_FALSE(a.mx);
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 8025);
  CHECK(a.tls == TlsPolicy::Opportunistic);
  CHECK(a.auth_user.empty());
  CHECK(a.describe() == "route:[127.0.0.1]:8025");

  const Route b = select_route(cfg, "lists.example.net");  // host without port: MX of host, queue.port
  CHECK(b.mx);
  CHECK(b.host == "relay.example.com");
  CHECK(b.port == 2526);

  const Route c = select_route(cfg, "mx.example.com");
  CHECK(c.mx);
  CHECK(c.port == 2600);

  const Route d = select_route(cfg, "named.example");
  CHECK_FALSE(d.mx);
  CHECK(d.host == "smtp.example");
  CHECK(d.port == 2526);

  const Route w = select_route(cfg, "anything.example");  // "*" wins over the smarthost
  CHECK(w.source == Route::Source::Route);
  CHECK(w.host == "fallback.example");
  CHECK(w.port == 2700);
  CHECK_FALSE(w.mx);

  // Same next hop, same key: the recipients can share connections.
  CHECK(select_route(cfg, "x.example").key() == select_route(cfg, "y.example").key());
  CHECK(a.key() != w.key());
}

TEST_CASE("select_route: smarthost with its TLS policy and AUTH") {
  const config::Config cfg = load(
      "queue: { port: 2526, tls: none }\n"
      "smarthost: { host: \"smtp.provider.example:587\", tls: verify,\n"
      "             auth: { user: me, password_file: /etc/pw } }\n"
      "routes: { example.net: \"[127.0.0.1]:8025\" }\n");
  const Route s = select_route(cfg, "example.org");
  CHECK(s.source == Route::Source::Smarthost);
  CHECK_FALSE(s.mx);
  CHECK(s.host == "smtp.provider.example");
  CHECK(s.port == 587);
  CHECK(s.tls == TlsPolicy::Verify);
  CHECK(s.auth_user == "me");
  CHECK(s.auth_password_file == "/etc/pw");
  CHECK(s.key().find("auth=me") != std::string::npos);

  // A route still beats the smarthost, and uses queue.tls.
  const Route r = select_route(cfg, "example.net");
  CHECK(r.source == Route::Source::Route);
  CHECK(r.tls == TlsPolicy::None);

  const config::Config plain = load("smarthost: { host: relay.example }\nqueue: { port: 2526 }\n");
  const Route p = select_route(plain, "example.org");
  CHECK(p.port == 2526);  // no port written: queue.port
  CHECK(p.tls == TlsPolicy::Opportunistic);
}

TEST_CASE("read_password_file") {
  testing::TempDir dir;
  const std::string path = dir / "pw";
  std::ofstream(path) << "s3cret\r\nignored\n";
  auto pw = read_password_file(path);
  REQUIRE(pw.ok());
  CHECK(*pw == "s3cret");
  CHECK_FALSE(read_password_file(dir / "missing").ok());
  std::ofstream(dir / "empty") << "\n";
  CHECK_FALSE(read_password_file(dir / "empty").ok());
}

TEST_CASE("Endpoint::display") {
  Endpoint e{"mx1.example.org", *dns::IpAddress::parse("192.0.2.1"), 25};
  CHECK(e.display() == "mx1.example.org[192.0.2.1]:25");
  Endpoint v6{"mx", *dns::IpAddress::parse("2001:db8::1"), 2525};
  CHECK(v6.display() == "mx[2001:db8::1]:2525");
}

// ---------------------------------------------------------------- with DNS

struct Fixture {
  petrel::testing::DnsMasq dns{{
      "--mx-host=example.test,mx1.example.test,10",
      "--mx-host=example.test,mx2.example.test,20",
      "--mx-host=example.test,ghost.example.test,30",
      "--host-record=mx1.example.test,127.0.0.1,::1",
      "--host-record=mx2.example.test,127.0.0.2",
      "--host-record=implicit.test,127.0.0.3",
      "--mx-host=nullmx.test,.,0",
      "--mx-host=noaddr.test,ghost.noaddr.test,10",
      "--mx-host=onlymx.test,mx1.example.test,5",
  }};
  event_base* base = event_base_new();
  std::unique_ptr<dns::Resolver> resolver;

  Fixture() {
    if (!dns.ok()) return;
    dns::ResolverOptions o;
    o.nameservers = {dns.nameserver()};
    o.timeout = std::chrono::milliseconds(1000);
    auto r = dns::Resolver::create(base, o);
    REQUIRE(r.ok());
    resolver = std::move(*r);
  }
  ~Fixture() {
    resolver.reset();
    petrel::testing::drain(base);
    event_base_free(base);
  }

  std::optional<Resolution> resolve(const Route& route) {
    std::optional<Resolution> out;
    NextHopLookup lookup(*resolver, route, [&](const Resolution& r) { out = r; });
    petrel::testing::run_until(base, [&] { return out.has_value(); });
    return out;
  }
};

Route mx_route(const std::string& domain, std::uint16_t port = 2525) {
  Route r;
  r.host = domain;
  r.port = port;
  return r;
}

std::vector<std::string> displays(const Resolution& r) {
  std::vector<std::string> out;
  for (const Endpoint& e : r.endpoints) out.push_back(e.display());
  return out;
}

TEST_CASE("NextHopLookup against dnsmasq") {
  Fixture f;
  if (!f.dns.ok()) {
    FAIL("dnsmasq did not start (scripts/install-deps.sh installs dnsmasq-base)");
  }
  SUBCASE("MX hosts by preference, each address, unresolvable hosts skipped") {
    auto r = f.resolve(mx_route("example.test"));
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Ok);
    CHECK(displays(*r) == std::vector<std::string>{"mx1.example.test[127.0.0.1]:2525",
                                                   "mx1.example.test[::1]:2525",
                                                   "mx2.example.test[127.0.0.2]:2525"});
  }
  SUBCASE("implicit MX") {
    auto r = f.resolve(mx_route("implicit.test"));
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Ok);
    CHECK(displays(*r) == std::vector<std::string>{"implicit.test[127.0.0.3]:2525"});
  }
  SUBCASE("null MX bounces with 5.1.10") {
    auto r = f.resolve(mx_route("nullmx.test"));
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Bounced);
    CHECK(r->status == "5.1.10");
  }
  SUBCASE("NXDOMAIN bounces with 5.1.2") {
    auto r = f.resolve(mx_route("nope.test"));
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Bounced);
    CHECK(r->status == "5.1.2");
  }
  SUBCASE("MX hosts without any address bounce with 5.4.4") {
    auto r = f.resolve(mx_route("noaddr.test"));
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Bounced);
    CHECK(r->status == "5.4.4");
  }
  SUBCASE("a route host that does not resolve is deferred, not bounced") {
    Route route;
    route.source = Route::Source::Route;
    route.host = "missing.test";
    route.mx = false;
    auto r = f.resolve(route);
    REQUIRE(r);
    CHECK(r->kind == Resolution::Kind::Deferred);
    CHECK(r->status == "4.4.4");
  }
  SUBCASE("a route to host:port resolves the MX of the host") {
    Route route;
    route.source = Route::Source::Route;
    route.host = "onlymx.test";
    route.port = 8025;
    auto r = f.resolve(route);
    REQUIRE(r);
    CHECK(displays(*r) == std::vector<std::string>{"mx1.example.test[127.0.0.1]:8025",
                                                   "mx1.example.test[::1]:8025"});
  }
  SUBCASE("an IP literal needs no DNS") {
    Route route;
    route.host = "127.0.0.1";
    route.mx = false;
    route.port = 8025;
    auto r = f.resolve(route);
    REQUIRE(r);
    CHECK(displays(*r) == std::vector<std::string>{"127.0.0.1[127.0.0.1]:8025"});
  }
  SUBCASE("destroying the lookup cancels it") {
    int calls = 0;
    auto lookup = std::make_unique<NextHopLookup>(*f.resolver, mx_route("example.test"),
                                                  [&](const Resolution&) { ++calls; });
    lookup.reset();
    petrel::testing::run_until(f.base, [] { return false; }, std::chrono::milliseconds(300));
    CHECK(calls == 0);
  }
  SUBCASE("the callback may destroy the lookup") {
    std::unique_ptr<NextHopLookup> lookup;
    bool called = false;
    lookup = std::make_unique<NextHopLookup>(*f.resolver, mx_route("example.test"), [&](const Resolution&) {
      called = true;
      lookup.reset();
    });
    petrel::testing::run_until(f.base, [&] { return called; });
    CHECK(called);
  }
}

}  // namespace
}  // namespace petrel::delivery
