#include "petrel/dns/resolver.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include <doctest/doctest.h>
#include <event2/event.h>

#include "test_peers.h"

namespace petrel::dns {
namespace {

using namespace std::chrono_literals;
using petrel::testing::DnsMasq;
using petrel::testing::drain;
using petrel::testing::run_until;

std::vector<std::string> records() {
  std::vector<std::string> r = {
      "--mx-host=example.test,mx1.example.test,10",
      "--mx-host=example.test,mx2.example.test,20",
      "--host-record=mx1.example.test,127.0.0.1,::1",
      "--host-record=mx2.example.test,127.0.0.2",
      "--host-record=implicit.test,127.0.0.3",
      "--mx-host=nullmx.test,.,0",
      "--cname=alias.test,example.test",
  };
  // Enough MX records that the answer does not fit 1232 bytes: TCP retry.
  for (int i = 0; i < 40; ++i) {
    r.push_back("--mx-host=big.test,mx" + std::to_string(i) +
                ".a-rather-long-label-to-fill-the-packet.big.test," + std::to_string(i));
  }
  return r;
}

struct Loop {
  event_base* base = event_base_new();
  ~Loop() {
    drain(base);
    event_base_free(base);
  }
};

std::unique_ptr<Resolver> make(event_base* base, const std::vector<std::string>& ns,
                               std::chrono::milliseconds timeout = 2000ms, int attempts = 2) {
  ResolverOptions o;
  o.nameservers = ns;
  o.timeout = timeout;
  o.attempts = attempts;
  auto r = Resolver::create(base, o);
  REQUIRE(r.ok());
  return std::move(*r);
}

std::optional<MxResult> mx(event_base* base, Resolver& r, const std::string& domain) {
  std::optional<MxResult> out;
  r.resolve_mx(domain, [&](const MxResult& m) { out = m; });
  run_until(base, [&] { return out.has_value(); });
  return out;
}

std::optional<AddressResult> addresses(event_base* base, Resolver& r, const std::string& host) {
  std::optional<AddressResult> out;
  r.resolve_addresses(host, [&](const AddressResult& a) { out = a; });
  run_until(base, [&] { return out.has_value(); });
  return out;
}

std::vector<std::string> texts(const std::vector<IpAddress>& a) {
  std::vector<std::string> out;
  for (const IpAddress& x : a) out.push_back(x.text());
  return out;
}

TEST_CASE("resolver against dnsmasq") {
  DnsMasq dns(records());
  if (!dns.ok()) {
    FAIL("dnsmasq did not start (scripts/install-deps.sh installs dnsmasq-base)");
  }
  Loop loop;
  auto r = make(loop.base, {dns.nameserver()});
  CHECK(r->nameservers() == std::vector<std::string>{dns.nameserver()});

  SUBCASE("MX records by preference") {
    auto m = mx(loop.base, *r, "example.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::Hosts);
    REQUIRE(m->hosts.size() == 2);
    CHECK(m->hosts[0].name == "mx1.example.test");
    CHECK(m->hosts[0].preference == 10);
    CHECK(m->hosts[1].name == "mx2.example.test");
  }
  SUBCASE("implicit MX") {
    auto m = mx(loop.base, *r, "implicit.test.");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::Implicit);
    REQUIRE(m->hosts.size() == 1);
    CHECK(m->hosts[0].name == "implicit.test");
  }
  SUBCASE("null MX") {
    auto m = mx(loop.base, *r, "nullmx.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::NullMx);
    CHECK(m->status() == "5.1.10");
  }
  SUBCASE("NXDOMAIN") {
    auto m = mx(loop.base, *r, "nope.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::NxDomain);
    CHECK(m->status() == "5.1.2");
  }
  SUBCASE("CNAME to a domain with MX") {
    auto m = mx(loop.base, *r, "alias.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::Hosts);
    REQUIRE_FALSE(m->hosts.empty());
    CHECK(m->hosts[0].name == "mx1.example.test");
  }
  SUBCASE("a truncated UDP answer is fetched again over TCP") {
    auto m = mx(loop.base, *r, "big.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::Hosts);
    CHECK(m->hosts.size() == 40);
    CHECK(m->hosts.front().preference == 0);
    CHECK(m->hosts.back().preference == 39);
  }
  SUBCASE("an unusable domain name") {
    auto m = mx(loop.base, *r, "a..b");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::NxDomain);
  }
  SUBCASE("A and AAAA, IPv4 first") {
    auto a = addresses(loop.base, *r, "mx1.example.test");
    REQUIRE(a);
    CHECK(a->kind == AddressResult::Kind::Ok);
    CHECK(texts(a->addresses) == std::vector<std::string>{"127.0.0.1", "::1"});

    auto b = addresses(loop.base, *r, "implicit.test");
    REQUIRE(b);
    CHECK(texts(b->addresses) == std::vector<std::string>{"127.0.0.3"});
  }
  SUBCASE("no address, no such host, literals") {
    auto a = addresses(loop.base, *r, "example.test");  // MX only
    REQUIRE(a);
    CHECK(a->kind == AddressResult::Kind::NoAddress);
    auto b = addresses(loop.base, *r, "nope.test");
    REQUIRE(b);
    CHECK(b->kind == AddressResult::Kind::NxDomain);
    auto c = addresses(loop.base, *r, "2001:db8::7");
    REQUIRE(c);
    CHECK(c->kind == AddressResult::Kind::Ok);
    CHECK(texts(c->addresses) == std::vector<std::string>{"2001:db8::7"});
  }
  SUBCASE("callbacks never run inside the call") {
    bool called = false;
    r->resolve_addresses("192.0.2.1", [&](const AddressResult&) { called = true; });
    r->resolve_mx("a..b", [&](const MxResult&) { called = true; });
    CHECK_FALSE(called);
    run_until(loop.base, [&] { return called; });
    CHECK(called);
  }
  SUBCASE("cancelled lookups and a destroyed resolver call nobody") {
    int calls = 0;
    const auto id1 = r->resolve_mx("example.test", [&](const MxResult&) { ++calls; });
    const auto id2 = r->resolve_addresses("mx1.example.test", [&](const AddressResult&) { ++calls; });
    r->cancel(id1);
    r->cancel(id2);
    r->cancel(9999);
    r->resolve_mx("example.test", [&](const MxResult&) { ++calls; });
    r->resolve_addresses("mx1.example.test", [&](const AddressResult&) { ++calls; });
    r.reset();
    run_until(loop.base, [] { return false; }, 300ms);
    CHECK(calls == 0);
  }
  SUBCASE("a callback may destroy the resolver") {
    bool called = false;
    r->resolve_mx("example.test", [&](const MxResult&) {
      called = true;
      r.reset();
    });
    r->resolve_addresses("mx1.example.test", [&](const AddressResult&) { FAIL("not expected"); });
    run_until(loop.base, [&] { return called; });
    CHECK(called);
    CHECK(r == nullptr);
  }
}

// A nameserver that answers MX queries in scripted, hostile ways.
class FakeDns {
 public:
  enum class Mode { WrongIdFirst, ServFail, Silent };

  explicit FakeDns(Mode mode) : mode_(mode) {
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeDns() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string nameserver() const { return "127.0.0.1:" + std::to_string(port_); }
  int queries() const { return queries_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) != 1) continue;
      char buf[1500];
      sockaddr_in from{};
      socklen_t flen = sizeof from;
      const ssize_t n = ::recvfrom(fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
      if (n < 12) continue;
      ++queries_;
      if (mode_ == Mode::Silent) continue;
      // Header and question of the query, then our answer.
      std::size_t q = 12;
      while (q < static_cast<std::size_t>(n) && buf[q] != 0) q += 1 + static_cast<unsigned char>(buf[q]);
      q += 1 + 4;
      std::string reply(buf, q);
      reply[2] = static_cast<char>(0x81);
      reply[3] = static_cast<char>(mode_ == Mode::ServFail ? 0x82 : 0x80);
      reply[10] = reply[11] = 0;  // no additional
      if (mode_ == Mode::WrongIdFirst) {
        reply[7] = 1;  // one answer: MX 10 fake-mx.<question name>
        reply += std::string("\xc0\x0c\x00\x0f\x00\x01\x00\x00\x00\x3c\x00\x0c\x00\x0a\x07" "fake-mx\xc0\x0c", 24);
        std::string forged = reply;
        forged[0] = static_cast<char>(forged[0] ^ 0x55);
        ::sendto(fd_, forged.data(), forged.size(), 0, reinterpret_cast<sockaddr*>(&from), flen);
        ::sendto(fd_, "garbage", 7, 0, reinterpret_cast<sockaddr*>(&from), flen);
      }
      ::sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), flen);
    }
  }

  Mode mode_;
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

TEST_CASE("forged and garbage datagrams are ignored") {
  FakeDns fake(FakeDns::Mode::WrongIdFirst);
  Loop loop;
  auto r = make(loop.base, {fake.nameserver()});
  auto m = mx(loop.base, *r, "example.test");
  REQUIRE(m);
  CHECK(m->kind == MxResult::Kind::Hosts);
  REQUIRE(m->hosts.size() == 1);
  CHECK(m->hosts[0].name == "fake-mx.example.test");
}

TEST_CASE("SERVFAIL moves on to the next nameserver, then fails temporarily") {
  FakeDns bad(FakeDns::Mode::ServFail);
  Loop loop;
  {
    auto r = make(loop.base, {bad.nameserver()}, 500ms, 2);
    auto m = mx(loop.base, *r, "example.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::TempFail);
    CHECK(m->status() == "4.4.3");
    CHECK(m->error.find("SERVFAIL") != std::string::npos);
    CHECK(bad.queries() == 2);  // attempts x nameservers
  }
  DnsMasq dns(records());
  if (!dns.ok()) return;
  auto r = make(loop.base, {bad.nameserver(), dns.nameserver()}, 500ms, 1);
  auto m = mx(loop.base, *r, "example.test");
  REQUIRE(m);
  CHECK(m->kind == MxResult::Kind::Hosts);
}

TEST_CASE("timeouts and refused nameservers are temporary and bounded") {
  Loop loop;
  SUBCASE("silent") {
    FakeDns silent(FakeDns::Mode::Silent);
    auto r = make(loop.base, {silent.nameserver()}, 200ms, 2);
    const auto t0 = std::chrono::steady_clock::now();
    auto m = mx(loop.base, *r, "example.test");
    const auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::TempFail);
    CHECK(m->error.find("no answer") != std::string::npos);
    CHECK(took >= 350ms);
    CHECK(took < 3s);
    auto a = addresses(loop.base, *r, "mx1.example.test");
    REQUIRE(a);
    CHECK(a->kind == AddressResult::Kind::TempFail);
  }
  SUBCASE("nothing listening") {
    const std::uint16_t port = petrel::testing::free_port();
    auto r = make(loop.base, {"127.0.0.1:" + std::to_string(port)}, 300ms, 1);
    auto m = mx(loop.base, *r, "example.test");
    REQUIRE(m);
    CHECK(m->kind == MxResult::Kind::TempFail);
  }
}

TEST_CASE("bad nameserver settings are refused") {
  Loop loop;
  ResolverOptions o;
  o.nameservers = {"not-an-ip"};
  CHECK_FALSE(Resolver::create(loop.base, o).ok());
  o.nameservers = {"[::1]:5353", "127.0.0.1"};
  auto r = Resolver::create(loop.base, o);
  REQUIRE(r.ok());
  CHECK((*r)->nameservers() == std::vector<std::string>{"[::1]:5353", "127.0.0.1:53"});
}

}  // namespace
}  // namespace petrel::dns
