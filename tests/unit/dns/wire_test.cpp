#include "petrel/dns/wire.h"

#include <random>
#include <set>
#include <string>

#include <doctest/doctest.h>

#include "petrel/dns/resolver.h"

namespace petrel::dns {
namespace {

// Builds DNS messages byte by byte, so tests control compression exactly.
struct Packet {
  std::string p;

  Packet& u8(unsigned v) {
    p.push_back(static_cast<char>(v & 0xff));
    return *this;
  }
  Packet& u16(unsigned v) { return u8(v >> 8).u8(v); }
  Packet& u32(unsigned v) { return u16(v >> 16).u16(v & 0xffff); }
  Packet& raw(std::string_view s) {
    p.append(s);
    return *this;
  }
  // Uncompressed labels, then the root (or a pointer when ptr >= 0).
  Packet& name(std::string_view n, int ptr = -1) {
    while (!n.empty()) {
      const std::size_t dot = n.find('.');
      const std::string_view l = n.substr(0, dot);
      u8(static_cast<unsigned>(l.size())).raw(l);
      if (dot == std::string_view::npos) break;
      n.remove_prefix(dot + 1);
    }
    if (ptr >= 0) return u16(0xc000 | static_cast<unsigned>(ptr));
    return u8(0);
  }
  Packet& header(unsigned id, unsigned flags, unsigned qd, unsigned an, unsigned ns = 0, unsigned ar = 0) {
    return u16(id).u16(flags).u16(qd).u16(an).u16(ns).u16(ar);
  }
  std::size_t size() const { return p.size(); }
};

constexpr unsigned kResponse = 0x8180;  // QR, RD, RA, NOERROR

// example.org MX: two MX records using compression, plus an A in additional.
std::string mx_response() {
  Packet b;
  b.header(0x1234, kResponse, 1, 2, 0, 1);
  b.name("example.org").u16(kTypeMx).u16(kClassIn);  // question at offset 12
  // MX 10 mx1.example.org: owner is a pointer to the question name.
  Packet rd1;
  rd1.u16(10).name("mx1", 12);
  b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(300).u16(static_cast<unsigned>(rd1.size())).raw(rd1.p);
  const std::size_t mx1_name = b.size() - rd1.size() + 2;
  // MX 20 mx2.example.org written out in full.
  Packet rd2;
  rd2.u16(20).name("mx2.example.org");
  b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(300).u16(static_cast<unsigned>(rd2.size())).raw(rd2.p);
  // Additional: A for mx1 via a pointer into the first MX's RDATA.
  b.u16(0xc000 | static_cast<unsigned>(mx1_name)).u16(kTypeA).u16(kClassIn).u32(60).u16(4).raw(std::string("\xc0\x00\x02\x01", 4));
  return b.p;
}

TEST_CASE("build_query encodes a recursive query with EDNS0") {
  auto q = build_query(0xbeef, "Example.ORG.", kTypeMx);
  REQUIRE(q.ok());
  const std::string expect_head("\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01", 12);
  CHECK(q->substr(0, 12) == expect_head);
  CHECK(q->substr(12, 13) == std::string("\x07" "Example\x03ORG\x00", 13));
  CHECK(q->substr(25, 4) == std::string("\x00\x0f\x00\x01", 4));

  auto m = parse_message(*q);
  REQUIRE(m.ok());
  CHECK(m->id == 0xbeef);
  CHECK_FALSE(m->response);
  CHECK(m->recursion_desired);
  REQUIRE(m->questions.size() == 1);
  CHECK(m->questions[0].name == "Example.ORG");
  CHECK(m->questions[0].type == kTypeMx);
  REQUIRE(m->additional.size() == 1);
  CHECK(m->additional[0].type == kTypeOpt);
  CHECK(m->additional[0].cls == 1232);

  auto plain = build_query(1, "a.b", kTypeA, 0);
  REQUIRE(plain.ok());
  CHECK(plain->size() == 12 + 5 + 4);
}

TEST_CASE("build_query rejects names that cannot be encoded") {
  CHECK_FALSE(build_query(1, "a..b", kTypeA).ok());
  CHECK_FALSE(build_query(1, ".a", kTypeA).ok());
  CHECK_FALSE(build_query(1, "a..", kTypeA).ok());
  CHECK_FALSE(build_query(1, std::string(64, 'x') + ".org", kTypeA).ok());
  CHECK(build_query(1, std::string(63, 'x') + ".org", kTypeA).ok());
  std::string longname;
  for (int i = 0; i < 50; ++i) longname += "abcde.";
  CHECK_FALSE(build_query(1, longname, kTypeA).ok());
}

TEST_CASE("MX answers with name compression") {
  auto m = parse_message(mx_response());
  REQUIRE(m.ok());
  CHECK(m->response);
  CHECK(m->rcode == kNoError);
  REQUIRE(m->answers.size() == 2);
  CHECK(m->answers[0].name == "example.org");
  CHECK(m->answers[0].preference == 10);
  CHECK(m->answers[0].target == "mx1.example.org");
  CHECK(m->answers[1].preference == 20);
  CHECK(m->answers[1].target == "mx2.example.org");
  REQUIRE(m->additional.size() == 1);
  CHECK(m->additional[0].name == "mx1.example.org");
  CHECK(m->additional[0].address[0] == 192);
  CHECK(m->additional[0].address[3] == 1);

  std::mt19937 rng(1);
  MxResult r = interpret_mx(*m, "EXAMPLE.org.", rng);
  CHECK(r.kind == MxResult::Kind::Hosts);
  REQUIRE(r.hosts.size() == 2);
  CHECK(r.hosts[0].name == "mx1.example.org");
  CHECK(r.hosts[1].name == "mx2.example.org");
  CHECK(r.status().empty());
}

TEST_CASE("A, AAAA and CNAME records") {
  Packet b;
  b.header(7, kResponse, 1, 3);
  b.name("www.example.org").u16(kTypeAaaa).u16(kClassIn);
  Packet cn;
  cn.name("host", 16);  // "host" + pointer to "example.org" inside the question
  b.u16(0xc00c).u16(kTypeCname).u16(kClassIn).u32(1).u16(static_cast<unsigned>(cn.size())).raw(cn.p);
  const std::size_t host_at = b.size() - cn.size();
  std::string v6(16, '\0');
  v6[0] = '\x20';
  v6[1] = '\x01';
  v6[15] = '\x05';
  b.u16(0xc000 | static_cast<unsigned>(host_at)).u16(kTypeAaaa).u16(kClassIn).u32(1).u16(16).raw(v6);
  b.u16(0xc000 | static_cast<unsigned>(host_at)).u16(kTypeA).u16(kClassIn).u32(1).u16(4).raw(std::string("\x7f\x00\x00\x01", 4));
  auto m = parse_message(b.p);
  REQUIRE(m.ok());
  REQUIRE(m->answers.size() == 3);
  CHECK(m->answers[0].type == kTypeCname);
  CHECK(m->answers[0].target == "host.example.org");
  CHECK(m->answers[1].name == "host.example.org");
  CHECK(m->answers[1].address[0] == 0x20);
  CHECK(m->answers[1].address[15] == 5);
  CHECK(m->answers[2].address[0] == 127);

  IpAddress a;
  a.family = AF_INET6;
  a.bytes = m->answers[1].address;
  CHECK(a.text() == "2001::5");
}

TEST_CASE("interpret_mx follows a CNAME chain in the answer") {
  Packet b;
  b.header(1, kResponse, 1, 2);
  b.name("alias.test").u16(kTypeMx).u16(kClassIn);
  b.u16(0xc00c).u16(kTypeCname).u16(kClassIn).u32(1);
  Packet cn;
  cn.name("real.test");
  b.u16(static_cast<unsigned>(cn.size())).raw(cn.p);
  const std::size_t real_at = b.size() - cn.size();
  Packet rd;
  rd.u16(5).name("mx", static_cast<int>(real_at));
  b.u16(0xc000 | static_cast<unsigned>(real_at)).u16(kTypeMx).u16(kClassIn).u32(1)
      .u16(static_cast<unsigned>(rd.size())).raw(rd.p);
  auto m = parse_message(b.p);
  REQUIRE(m.ok());
  std::mt19937 rng(1);
  MxResult r = interpret_mx(*m, "alias.test", rng);
  CHECK(r.kind == MxResult::Kind::Hosts);
  REQUIRE(r.hosts.size() == 1);
  CHECK(r.hosts[0].name == "mx.real.test");

  // An MX for some other name is not ours: no MX for alias.test's chain.
  MxResult other = interpret_mx(*m, "unrelated.test", rng);
  CHECK(other.kind == MxResult::Kind::Implicit);
}

TEST_CASE("NXDOMAIN, NODATA, SERVFAIL and null MX") {
  std::mt19937 rng(1);
  {
    Packet b;
    b.header(1, 0x8183, 1, 0, 1);  // NXDOMAIN with an SOA in authority
    b.name("nope.test").u16(kTypeMx).u16(kClassIn);
    Packet soa;
    soa.name("ns", 17).name("admin", 17).u32(1).u32(2).u32(3).u32(4).u32(5);  // 17: "test"
    b.u16(0xc000 | 17).u16(kTypeSoa).u16(kClassIn).u32(60).u16(static_cast<unsigned>(soa.size())).raw(soa.p);
    auto m = parse_message(b.p);
    INFO((m.ok() ? std::string() : m.error()));
    REQUIRE(m.ok());
    CHECK(m->rcode == kNxDomain);
    CHECK(m->authority.size() == 1);
    MxResult r = interpret_mx(*m, "nope.test", rng);
    CHECK(r.kind == MxResult::Kind::NxDomain);
    CHECK(r.permanent());
    CHECK(r.status() == "5.1.2");
    CHECK(r.error.find("nope.test") != std::string::npos);
  }
  {
    Packet b;
    b.header(1, kResponse, 1, 0);
    b.name("implicit.test").u16(kTypeMx).u16(kClassIn);
    auto m = parse_message(b.p);
    REQUIRE(m.ok());
    MxResult r = interpret_mx(*m, "implicit.test.", rng);
    CHECK(r.kind == MxResult::Kind::Implicit);
    REQUIRE(r.hosts.size() == 1);
    CHECK(r.hosts[0].name == "implicit.test");
    CHECK(r.ok());
  }
  {
    Packet b;
    b.header(1, 0x8182, 1, 0);
    b.name("broken.test").u16(kTypeMx).u16(kClassIn);
    auto m = parse_message(b.p);
    REQUIRE(m.ok());
    MxResult r = interpret_mx(*m, "broken.test", rng);
    CHECK(r.kind == MxResult::Kind::TempFail);
    CHECK(r.status() == "4.4.3");
    CHECK_FALSE(r.permanent());
  }
  {
    Packet b;  // RFC 7505: "MX 0 ."
    b.header(1, kResponse, 1, 1);
    b.name("nullmx.test").u16(kTypeMx).u16(kClassIn);
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(3).u16(0).u8(0);
    auto m = parse_message(b.p);
    REQUIRE(m.ok());
    CHECK(m->answers[0].target.empty());
    MxResult r = interpret_mx(*m, "nullmx.test", rng);
    CHECK(r.kind == MxResult::Kind::NullMx);
    CHECK(r.status() == "5.1.10");
    CHECK(r.permanent());
  }
  {
    Packet b;  // a "." among real hosts is ignored
    b.header(1, kResponse, 1, 2);
    b.name("mixed.test").u16(kTypeMx).u16(kClassIn);
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(3).u16(0).u8(0);
    Packet rd;
    rd.u16(10).name("mx", 12);
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(static_cast<unsigned>(rd.size())).raw(rd.p);
    auto m = parse_message(b.p);
    REQUIRE(m.ok());
    MxResult r = interpret_mx(*m, "mixed.test", rng);
    CHECK(r.kind == MxResult::Kind::Hosts);
    REQUIRE(r.hosts.size() == 1);
    CHECK(r.hosts[0].name == "mx.mixed.test");
  }
}

TEST_CASE("equal MX preferences are shuffled, lower preferences first") {
  Packet b;
  b.header(1, kResponse, 1, 5);
  b.name("d.test").u16(kTypeMx).u16(kClassIn);
  const char* names[] = {"b1", "b2", "b3", "a", "c"};
  const unsigned prefs[] = {20, 20, 20, 10, 30};
  for (int i = 0; i < 5; ++i) {
    Packet rd;
    rd.u16(prefs[i]).name(names[i], 12);
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(static_cast<unsigned>(rd.size())).raw(rd.p);
  }
  auto m = parse_message(b.p);
  REQUIRE(m.ok());
  std::set<std::string> seconds;
  for (std::uint32_t seed = 0; seed < 50; ++seed) {
    std::mt19937 rng(seed);
    MxResult r = interpret_mx(*m, "d.test", rng);
    REQUIRE(r.hosts.size() == 5);
    CHECK(r.hosts[0].name == "a.d.test");
    CHECK(r.hosts[4].name == "c.d.test");
    for (int i = 1; i < 4; ++i) CHECK(r.hosts[i].preference == 20);
    seconds.insert(r.hosts[1].name);
  }
  CHECK(seconds.size() == 3);  // each of b1, b2, b3 came first at least once
}

TEST_CASE("invalid MX targets are dropped; none left is a temporary failure") {
  Packet b;
  b.header(1, kResponse, 1, 1);
  b.name("bad.test").u16(kTypeMx).u16(kClassIn);
  Packet rd;
  rd.u16(10).name("in*valid", 12);
  b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(static_cast<unsigned>(rd.size())).raw(rd.p);
  auto m = parse_message(b.p);
  REQUIRE(m.ok());
  std::mt19937 rng(1);
  MxResult r = interpret_mx(*m, "bad.test", rng);
  CHECK(r.kind == MxResult::Kind::TempFail);
}

TEST_CASE("compression loops, forward pointers and bad labels are errors") {
  {
    Packet b;  // the question name is a pointer to itself
    b.header(1, kResponse, 1, 0);
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn);
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // a pointer forward
    b.header(1, kResponse, 1, 0);
    b.u16(0xc010).u16(kTypeMx).u16(kClassIn).u8(1).raw("a").u8(0);
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // a cycle through labels: pointer back to an earlier label run
    b.header(1, kResponse, 1, 1);
    b.name("a.b").u16(kTypeMx).u16(kClassIn);
    const std::size_t at = b.size();
    b.u8(1).raw("x").u16(0xc000 | static_cast<unsigned>(at));  // back to its own label: x.x.x...
    b.u16(kTypeA).u16(kClassIn).u32(1).u16(4).raw("abcd");
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // a label with a dot in it cannot be a host name
    b.header(1, kResponse, 1, 0);
    b.u8(3).raw("a.b").u8(0).u16(kTypeMx).u16(kClassIn);
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // control bytes in a label
    b.header(1, kResponse, 1, 0);
    b.u8(2).raw(std::string("a\n", 2)).u8(0).u16(kTypeMx).u16(kClassIn);
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // RDLENGTH past the end
    b.header(1, kResponse, 1, 1);
    b.name("x.test").u16(kTypeA).u16(kClassIn);
    b.u16(0xc00c).u16(kTypeA).u16(kClassIn).u32(1).u16(40).raw("abcd");
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // an A record with 5 bytes
    b.header(1, kResponse, 1, 1);
    b.name("x.test").u16(kTypeA).u16(kClassIn);
    b.u16(0xc00c).u16(kTypeA).u16(kClassIn).u32(1).u16(5).raw("abcde");
    CHECK_FALSE(parse_message(b.p).ok());
  }
  {
    Packet b;  // an MX name running past its RDLENGTH
    b.header(1, kResponse, 1, 1);
    b.name("x.test").u16(kTypeMx).u16(kClassIn);
    Packet rd;
    rd.u16(1).name("mx.x.test");
    b.u16(0xc00c).u16(kTypeMx).u16(kClassIn).u32(1).u16(5).raw(rd.p);
    CHECK_FALSE(parse_message(b.p).ok());
  }
}

TEST_CASE("a truncated response keeps what parses") {
  std::string p = mx_response();
  p[2] = static_cast<char>(p[2] | 0x02);  // TC
  const std::string cut = p.substr(0, p.size() - 10);
  auto m = parse_message(cut);
  REQUIRE(m.ok());
  CHECK(m->truncated);
  CHECK(m->answers.size() == 2);
  CHECK(m->additional.empty());
}

TEST_CASE("every prefix and random corruption of a packet is handled") {
  const std::string good = mx_response();
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto m = parse_message(good.substr(0, n));
    CHECK_FALSE(m.ok());  // without TC, a short packet is an error
  }
  std::mt19937 rng(42);
  int parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string p = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] = static_cast<char>(rng());
    auto m = parse_message(p);
    if (m.ok()) {
      ++parsed;
      std::mt19937 r2(1);
      (void)interpret_mx(*m, "example.org", r2);
    }
  }
  CHECK(parsed > 0);
  for (int i = 0; i < 20000; ++i) {
    std::string p(rng() % 300, '\0');
    for (char& c : p) c = static_cast<char>(rng());
    (void)parse_message(p);
  }
}

TEST_CASE("name helpers") {
  CHECK(name_equal("Example.ORG.", "example.org"));
  CHECK_FALSE(name_equal("example.org", "example.or"));
  CHECK(is_host_name("mx-1.example_x.org."));
  CHECK_FALSE(is_host_name(""));
  CHECK_FALSE(is_host_name("a..b"));
  CHECK_FALSE(is_host_name("a b"));
  CHECK_FALSE(is_host_name(std::string(64, 'a')));
  CHECK(IpAddress::parse("192.0.2.1")->family == AF_INET);
  CHECK(IpAddress::parse("::1")->text() == "::1");
  CHECK_FALSE(IpAddress::parse("example.org").has_value());
  CHECK_FALSE(IpAddress::parse("[::1]").has_value());
}

}  // namespace
}  // namespace petrel::dns
