// The milter packet codec, without sockets: wire bytes written out by hand,
// round trips, and random input that must never crash the decoders.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include "petrel/filter/milter.h"

namespace petrel::filter::milter {
namespace {

using namespace std::string_literals;

std::string u32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

TEST_CASE("milter codec: a packet is a big-endian length, the code, the data") {
  CHECK(encode_packet('c') == "\0\0\0\1c"s);
  CHECK(encode_packet('O', optneg_data(6, 0x1FF, 0x1FFFFF)) ==
        "\0\0\0\x0dO"s + u32(6) + u32(0x1FF) + u32(0x1FFFFF));

  const std::string wire = encode_packet('h', header_data("X-A", "v")) + encode_packet('c');
  Packet p;
  std::size_t used = 0;
  REQUIRE(decode_packet(wire, 1000, &p, &used) == DecodeStatus::Ok);
  CHECK(p == Packet{'h', "X-A\0v\0"s});
  CHECK(used == 11);
  REQUIRE(decode_packet(std::string_view(wire).substr(used), 1000, &p, &used) == DecodeStatus::Ok);
  CHECK(p == Packet{'c', ""});

  // Every proper prefix needs more; a zero or oversized length is bad.
  const std::string one = encode_packet('b', std::string(300, 'x'));
  for (std::size_t n = 0; n < one.size(); ++n)
    CHECK(decode_packet(std::string_view(one).substr(0, n), 1000, &p, &used) ==
          DecodeStatus::NeedMore);
  CHECK(decode_packet("\0\0\0\0c"s, 1000, &p, &used) == DecodeStatus::Bad);
  CHECK(decode_packet(one, 299, &p, &used) == DecodeStatus::Bad);
  CHECK(decode_packet(one, 300, &p, &used) == DecodeStatus::Ok);
}

TEST_CASE("milter codec: command payloads") {
  CHECK(connect_data("[192.0.2.1]", '4', 25, "192.0.2.1") == "[192.0.2.1]\0" "4\0\x19" "192.0.2.1\0"s);
  CHECK(connect_data("localhost", 'U', 0, "") == "localhost\0U"s);
  CHECK(strings_data({"<a@b>", "SIZE=10"}) == "<a@b>\0SIZE=10\0"s);
  CHECK(header_data("Subject", "hi\n\tthere") == "Subject\0hi\n\tthere\0"s);
  CHECK(macro_data('C', {{"j", "mx"}, {"{daemon_name}", "petrel"}}) ==
        "Cj\0mx\0{daemon_name}\0petrel\0"s);
  // A NUL inside a string would end it early on the wire: it is cut there.
  CHECK(strings_data({"a\0b"s}) == "a\0"s);
  CHECK(macro_stage_command(MacroStage::EndOfMessage) == 'E');
  CHECK(macro_stage_command(MacroStage::EndOfHeaders) == 'N');
}

TEST_CASE("milter codec: negotiation answers are checked and masked by version") {
  auto v6 = parse_optneg(u32(6) + u32(0x1FF) + u32(kNoConnect | kNrHeader | kHeaderLeadingSpace));
  REQUIRE(v6.ok());
  CHECK(v6->version == 6);
  CHECK(v6->actions == 0x1FF);
  CHECK(v6->protocol == (kNoConnect | kNrHeader | kHeaderLeadingSpace));

  // Version 2 knows neither DATA nor UNKNOWN, nor actions past quarantine.
  auto v2 = parse_optneg(u32(2) + u32(0x3F) + u32(kHeaderLeadingSpace | kNoBody));
  REQUIRE(v2.ok());
  CHECK(v2->actions == 0x3F);
  CHECK(v2->protocol == (kNoBody | kNoUnknown | kNoData));
  auto v3 = parse_optneg(u32(3) + u32(0x1) + u32(0));
  REQUIRE(v3.ok());
  CHECK(v3->protocol == kNoData);
  auto v4 = parse_optneg(u32(4) + u32(0x1) + u32(kNrBody));
  REQUIRE(v4.ok());
  CHECK(v4->protocol == 0);

  // Flags we never offered (SMFIP_MDS_*) are dropped.
  auto mds = parse_optneg(u32(6) + u32(0) + u32(0x10000000 | kNoHelo));
  REQUIRE(mds.ok());
  CHECK(mds->protocol == kNoHelo);

  CHECK_FALSE(parse_optneg(u32(1) + u32(0) + u32(0)).ok());
  CHECK_FALSE(parse_optneg(u32(7) + u32(0) + u32(0)).ok());
  CHECK_FALSE(parse_optneg(u32(6) + u32(0x200) + u32(0)).ok());
  CHECK_FALSE(parse_optneg(u32(6) + u32(0)).ok());

  // Macro lists per stage may follow; an unknown stage is ignored.
  auto lists = parse_optneg(u32(6) + u32(0x1FF) + u32(0) + u32(0) + "j {client_addr}\0"s +
                            u32(5) + "i\0"s + u32(42) + "x\0"s);
  REQUIRE(lists.ok());
  CHECK(lists->macros[0] == "j {client_addr}");
  CHECK(lists->macros[5] == "i");
  CHECK_FALSE(lists->macros[1].has_value());
  CHECK_FALSE(parse_optneg(u32(6) + u32(0) + u32(0) + u32(0) + "unterminated"s).ok());
}

TEST_CASE("milter codec: replies") {
  auto ok = [](char code, const std::string& data) {
    auto r = parse_reply(Packet{code, data});
    REQUIRE_MESSAGE(r.ok(), r.error());
    return *r;
  };
  for (char c : {kAccept, kContinue, kDiscard, kReject, kTempfail, kProgress, kSkip})
    CHECK(ok(c, "").code == c);

  CHECK(ok(kReplyCode, "550 5.7.1 100%% spam\0"s).text == "550 5.7.1 100% spam");
  CHECK(ok(kReplyCode, "451 4.7.1 later").text == "451 4.7.1 later");
  CHECK(ok(kReplyCode, "550-5.7.1 a\r\n550 5.7.1 b\r\n\0"s).text == "550-5.7.1 a\r\n550 5.7.1 b");

  const Reply add = ok(kAddHeader, "X-Spam\0yes\0"s);
  CHECK(add.name == "X-Spam");
  CHECK(add.value == "yes");
  const Reply ins = ok(kInsertHeader, u32(0) + "X-First\0v\0"s);
  CHECK(ins.index == 0);
  CHECK(ins.name == "X-First");
  const Reply chg = ok(kChangeHeader, u32(2) + "Subject\0\0"s);
  CHECK(chg.index == 2);
  CHECK(chg.value.empty());
  CHECK(ok(kAddRcpt, "<c@d>\0"s).addr == "<c@d>");
  CHECK(ok(kDelRcpt, "c@d\0"s).addr == "c@d");
  const Reply par = ok(kAddRcptPar, "<c@d>\0NOTIFY=NEVER\0"s);
  CHECK(par.addr == "<c@d>");
  CHECK(par.args == "NOTIFY=NEVER");
  CHECK(ok(kChangeFrom, "<new@x>\0"s).args.empty());
  CHECK(ok(kReplaceBody, "new\r\nbody\0x"s).body == "new\r\nbody\0x"s);
  CHECK(ok(kQuarantine, "virus\0"s).text == "virus");

  auto bad = [](char code, const std::string& data) { return !parse_reply(Packet{code, data}).ok(); };
  CHECK(bad(kAccept, "x"));
  CHECK(bad(kContinue, "\0"s));
  CHECK(bad(kReplyCode, "250 ok"));
  CHECK(bad(kReplyCode, "55"));
  CHECK(bad(kReplyCode, "550x"));
  CHECK(bad(kReplyCode, "550 a\0b"s));
  CHECK(bad(kAddHeader, "X-A\0no-nul"s));
  CHECK(bad(kAddHeader, "\0v\0"s));
  CHECK(bad(kAddHeader, "X\0v\0extra"s));
  CHECK(bad(kInsertHeader, "\0\0"s));
  CHECK(bad(kDelRcpt, "a@b"));
  CHECK(bad(kChangeFrom, "a\0b"s));
  CHECK(bad(kQuarantine, ""));
  CHECK(bad('Z', ""));
  CHECK(bad('O', ""));
}

TEST_CASE("milter codec: the message as a milter sees it") {
  const std::string msg =
      "Received: from c.example\n\tby mx.example; Tue, 1 Jan 2030 00:00:00 +0000\n"
      "Subject:no space\n"
      "X-Obsolete :x\n"
      "From: <a@example.org>\n"
      "\n"
      "line 1\n\nline 3\n";
  const MessageParts m = split_message(msg);
  REQUIRE(m.headers.size() == 4);
  CHECK(m.headers[0].name == "Received");
  CHECK(m.headers[0].value == " from c.example\n\tby mx.example; Tue, 1 Jan 2030 00:00:00 +0000");
  CHECK(m.headers[1].value == "no space");
  CHECK(m.headers[2].name == "X-Obsolete");
  CHECK(m.body == "line 1\n\nline 3\n");

  CHECK(header_value_for_milter(" from c", false) == "from c");
  CHECK(header_value_for_milter("  two", false) == " two");
  CHECK(header_value_for_milter(" from c", true) == " from c");

  // No empty line: all header. A non-header line starts the body.
  CHECK(split_message("A: 1\nB: 2").headers.size() == 2);
  CHECK(split_message("A: 1\nB: 2").body.empty());
  const MessageParts odd = split_message("A: 1\nnot a header\nmore\n");
  CHECK(odd.headers.size() == 1);
  CHECK(odd.body == "not a header\nmore\n");
  CHECK(split_message("").headers.empty());
}

TEST_CASE("milter codec: body chunks are CRLF and at most 65535 bytes") {
  std::string body;
  for (int i = 0; body.size() < 200 * 1024; ++i) body += "line " + std::to_string(i) + "\n";
  std::string expected;
  for (char c : body) {
    if (c == '\n') expected += '\r';
    expected += c;
  }
  for (std::size_t max : {std::size_t{65535}, std::size_t{2}, std::size_t{3}, std::size_t{7}}) {
    BodyChunker chunks(body, max);
    std::string joined;
    std::size_t n = 0;
    while (auto c = chunks.next()) {
      CHECK(!c->empty());
      CHECK(c->size() <= max);
      joined += *c;
      ++n;
    }
    CHECK(joined == expected);
    if (max == 65535) CHECK(n == (expected.size() + 65534) / 65535);
  }
  // Existing CRLFs are not doubled, even across a chunk boundary.
  BodyChunker crlf("ab\r\ncd\n", 3);
  std::string joined;
  while (auto c = crlf.next()) joined += *c;
  CHECK(joined == "ab\r\ncd\r\n");
  BodyChunker empty("");
  CHECK_FALSE(empty.next().has_value());
}

TEST_CASE("milter codec: header values from a milter") {
  CHECK(header_value_from_milter("v=1; a=rsa-sha256;\r\n\tb=abc") == "v=1; a=rsa-sha256;\n\tb=abc");
  CHECK(header_value_from_milter(" spaced") == " spaced");
  // A newline can never start a header line of its own.
  CHECK(header_value_from_milter("a\nInjected: yes") == "a\n\tInjected: yes");
  CHECK(header_value_from_milter("a\r\n\r\n") == "a");
  CHECK(header_value_from_milter("a\n\t \n") == "a");
  CHECK(header_value_from_milter("a\r\n \r\n\tb") == "a\n\tb");
  CHECK(header_value_from_milter("\r\n\tv=1") == "\n\tv=1");
  CHECK(crlf_to_lf("a\r\nb\r\n\rc") == "a\nb\n\rc");
}

TEST_CASE("milter codec: random bytes never crash the decoders") {
  std::mt19937 rng(7);
  const std::string codes = "+-24abcdefhimpqrsty'O\x01";
  for (int i = 0; i < 20000; ++i) {
    std::string data(rng() % 40, '\0');
    for (char& c : data) c = static_cast<char>(rng() % 4 == 0 ? 0 : rng());
    const char code = codes[rng() % codes.size()];
    (void)parse_reply(Packet{code, data});
    (void)parse_optneg(data);
    Packet p;
    std::size_t used = 0;
    if (decode_packet(data, 64, &p, &used) == DecodeStatus::Ok) CHECK(used <= data.size());
    (void)split_message(data);
    BodyChunker chunks(data, 1 + rng() % 8);
    while (chunks.next()) {
    }
    // What comes out is always a value the chain accepts: no CR, and every
    // continuation line starts with a blank and is not blank.
    const std::string value = header_value_from_milter(data);
    CHECK(value.find('\r') == std::string::npos);
    for (std::size_t nl = value.find('\n'); nl != std::string::npos; nl = value.find('\n', nl + 1)) {
      const std::size_t end = std::min(value.find('\n', nl + 1), value.size());
      const std::string_view line = std::string_view(value).substr(nl + 1, end - nl - 1);
      CHECK((line.starts_with(' ') || line.starts_with('\t')));
      CHECK(line.find_first_not_of(" \t") != std::string_view::npos);
    }
  }
}

}  // namespace
}  // namespace petrel::filter::milter
