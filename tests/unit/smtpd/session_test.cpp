// The SMTP session state machine (SPEC §5), driven with strings.
#include <doctest/doctest.h>

#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/log.h"
#include "petrel/smtpd/session.h"

using namespace petrel::smtpd;

namespace {

// local.test is ours (users alice, bob, and the UTF-8 "jöe"); other domains
// are relayed only for clients in 127.0.0.0/8 or on a unix socket.
class FakePolicy : public Policy {
 public:
  RcptVerdict check_recipient(const Address& rcpt, const ClientInfo& client,
                              bool /*authenticated*/) override {
    ++calls;
    if (rcpt.is_postmaster_only()) return RcptVerdict::Ok;
    if (rcpt.domain == "local.test") {
      std::string l = unquote_local(rcpt.local);
      return l == "alice" || l == "bob" || l == "j\xc3\xb6" "e" ? RcptVerdict::Ok
                                                              : RcptVerdict::UnknownUser;
    }
    if (client.is_unix || client.ip.rfind("127.", 0) == 0) return RcptVerdict::Ok;
    return RcptVerdict::RelayDenied;
  }
  int calls = 0;
};

struct Stored {
  MessageInfo info;
  std::string received;
  std::string body;
};

class FakeSink : public MessageSink {
 public:
  Reply accept_message(const MessageInfo& info, std::string_view received,
                       std::string_view body) override {
    messages.push_back({info, std::string(received), std::string(body)});
    messages.back().info.client = nullptr;  // points into the session
    if (fixed_reply) return *fixed_reply;
    return Reply{250, "2.0.0 Ok: queued as " + info.queue_id};
  }
  std::vector<Stored> messages;
  std::unique_ptr<Reply> fixed_reply;
};

SessionSettings test_settings() {
  SessionSettings s;
  s.hostname = "mx.test";
  s.max_message_size = 10000;
  s.max_recipients = 3;
  s.max_errors = 20;
  s.max_hops = 5;
  return s;
}

ClientInfo remote_client() {
  ClientInfo c;
  c.ip = "192.0.2.10";
  c.port = 40000;
  return c;
}

struct Harness {
  explicit Harness(SessionSettings st = test_settings(), ClientInfo client = remote_client())
      : session(std::move(st), std::move(client), policy, sink) {
    session.greeting();
    greeting = session.take_output();
  }
  // Feeds bytes in one go and returns the replies they produced.
  std::string send(std::string_view bytes) {
    session.feed(bytes);
    return session.take_output();
  }
  // Feeds bytes one at a time, collecting every reply.
  std::string send_bytewise(std::string_view bytes) {
    std::string out;
    for (char c : bytes) {
      session.feed(std::string_view(&c, 1));
      out += session.take_output();
    }
    return out;
  }
  // EHLO + MAIL + RCPT alice + DATA, each checked; leaves the session reading content.
  void open_data(std::string_view rcpt = "<alice@local.test>") {
    REQUIRE(send("EHLO client.test\r\n").rfind("250-mx.test\r\n", 0) == 0);
    REQUIRE(send("MAIL FROM:<sender@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
    REQUIRE(send("RCPT TO:" + std::string(rcpt) + "\r\n") == "250 2.1.5 Ok\r\n");
    std::string r = send("DATA\r\n");
    REQUIRE(r.rfind("354 ", 0) == 0);
    REQUIRE(session.in_data());
  }

  FakePolicy policy;
  FakeSink sink;
  Session session;
  std::string greeting;
};

// Splits output into reply lines (without CRLF). Fails on a line not ending in CRLF.
std::vector<std::string> lines_of(std::string_view out) {
  std::vector<std::string> v;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t e = out.find("\r\n", pos);
    REQUIRE(e != std::string_view::npos);
    v.emplace_back(out.substr(pos, e - pos));
    pos = e + 2;
  }
  return v;
}

// The final lines of each reply (code followed by a space).
std::vector<std::string> replies_of(std::string_view out) {
  std::vector<std::string> v;
  for (auto& l : lines_of(out)) {
    REQUIRE(l.size() >= 4);
    if (l[3] == ' ') v.push_back(l);
  }
  return v;
}

std::vector<int> codes_of(std::string_view out) {
  std::vector<int> v;
  for (auto& l : replies_of(out)) v.push_back(std::stoi(l.substr(0, 3)));
  return v;
}

bool starts(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Exactly one reply, starting with `prefix`.
void check_one(std::string_view out, std::string_view prefix) {
  INFO("output: ", std::string(out));
  auto r = replies_of(out);
  REQUIRE(r.size() == 1);
  CHECK(starts(r[0], prefix));
  CHECK(lines_of(out).size() == 1);
}

std::string queued_id(std::string_view reply) {
  const std::string_view p = "250 2.0.0 Ok: queued as ";
  REQUIRE(starts(reply, p));
  std::string id(reply.substr(p.size()));
  if (id.size() >= 2 && id.substr(id.size() - 2) == "\r\n") id.resize(id.size() - 2);
  return id;
}

std::string crlf_to_lf(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') continue;
    out += s[i];
  }
  return out;
}

const std::string kMsg = "From: sender@remote.test\r\nTo: alice@local.test\r\nSubject: hi\r\n\r\nHello.\r\n";

}  // namespace

TEST_CASE("session: greeting") {
  Harness h;
  CHECK(h.greeting == "220 mx.test ESMTP petrel\r\n");
  CHECK_FALSE(h.session.closed());
  CHECK_FALSE(h.session.in_data());
}

TEST_CASE("session: EHLO advertises the extensions") {
  Harness h;
  std::string out = h.send("EHLO client.example\r\n");
  auto lines = lines_of(out);
  REQUIRE(lines.size() >= 7);
  CHECK(lines.front() == "250-mx.test");
  for (size_t i = 0; i + 1 < lines.size(); ++i) CHECK(starts(lines[i], "250-"));
  CHECK(starts(lines.back(), "250 "));
  std::set<std::string> kw;
  for (auto& l : lines) kw.insert(l.substr(4));
  for (const char* k : {"PIPELINING", "SIZE 10000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                        "CHUNKING"}) {
    INFO(k);
    CHECK(kw.count(k) == 1);
  }
  CHECK(codes_of(out) == std::vector<int>{250});

  // EHLO needs an argument.
  check_one(h.send("EHLO\r\n"), "501 5.5.4");
  check_one(h.send("EHLO   \r\n"), "501 5.5.4");
}

TEST_CASE("session: HELO") {
  Harness h;
  CHECK(h.send("HELO client.example\r\n") == "250 mx.test\r\n");
  check_one(h.send("HELO\r\n"), "501 5.5.4");
  // HELO sessions take no MAIL parameters.
  check_one(h.send("MAIL FROM:<a@remote.test> SIZE=10\r\n"), "555 5.5.4");
  CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<alice@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  std::string r = h.send(kMsg + ".\r\n");
  queued_id(r);
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].received.find("with SMTP id") != std::string::npos);
}

TEST_CASE("session: HELO/EHLO reset the transaction") {
  Harness h;
  h.send("EHLO c.test\r\n");
  CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(starts(h.send("EHLO c.test\r\n"), "250-"));
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");
}

TEST_CASE("session: NOOP, VRFY, HELP, RSET outside a transaction") {
  Harness h;
  CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  check_one(h.send("VRFY alice\r\n"), "252 ");
  check_one(h.send("HELP\r\n"), "214 ");
  CHECK(h.send("RSET\r\n") == "250 2.0.0 Ok\r\n");
  CHECK(h.send("noop\r\n") == "250 2.0.0 Ok\r\n");  // verbs are case-insensitive
}

TEST_CASE("session: unknown command is 500 5.5.2") {
  Harness h;
  h.send("EHLO c.test\r\n");
  check_one(h.send("XYZZY\r\n"), "500 5.5.2");
  check_one(h.send("\r\n"), "500 5.5.2");
  CHECK_FALSE(h.session.closed());
  CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
}

TEST_CASE("session: command lines of 512 octets pass, 513 are too long") {
  // "NOOP " + filler + CRLF
  const std::string ok = "NOOP " + std::string(512 - 7, 'x') + "\r\n";
  const std::string bad = "NOOP " + std::string(513 - 7, 'x') + "\r\n";
  REQUIRE(ok.size() == 512);
  REQUIRE(bad.size() == 513);

  SUBCASE("in one buffer") {
    Harness h;
    CHECK(h.send(ok) == "250 2.0.0 Ok\r\n");
    check_one(h.send(bad), "500 5.5.2");
    CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  }
  SUBCASE("byte by byte") {
    Harness h;
    CHECK(h.send_bytewise(ok) == "250 2.0.0 Ok\r\n");
    check_one(h.send_bytewise(bad), "500 5.5.2");
    CHECK(h.send_bytewise("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  }
  SUBCASE("a very long line gives one reply and is not executed") {
    Harness h;
    h.send("EHLO c.test\r\n");
    std::string huge = "MAIL FROM:<" + std::string(5000, 'a') + "@remote.test>\r\n";
    std::string out = h.send(huge.substr(0, 2000));
    CHECK(out == "");
    out += h.send(huge.substr(2000));
    check_one(out, "500 5.5.2");
    // The MAIL was not taken: RCPT is still out of sequence, MAIL works.
    check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");
    CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  }
}

TEST_CASE("session: bad sequence is 503 5.5.1") {
  Harness h;
  check_one(h.send("MAIL FROM:<a@remote.test>\r\n"), "503 5.5.1");  // before HELO
  h.send("EHLO c.test\r\n");
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");  // before MAIL
  check_one(h.send("DATA\r\n"), "503 5.5.1");                        // before MAIL
  CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  check_one(h.send("MAIL FROM:<b@remote.test>\r\n"), "503 5.5.1");  // nested
  CHECK(h.send("RCPT TO:<alice@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK_FALSE(h.session.closed());
}

TEST_CASE("session: DATA with no accepted recipient is 554 5.5.1") {
  Harness h;
  h.send("EHLO c.test\r\n");
  h.send("MAIL FROM:<a@remote.test>\r\n");
  check_one(h.send("DATA\r\n"), "554 5.5.1");
  check_one(h.send("RCPT TO:<nobody@local.test>\r\n"), "550 5.1.1");
  check_one(h.send("DATA\r\n"), "554 5.5.1");
  CHECK_FALSE(h.session.in_data());
  // The transaction is still open: a good recipient makes DATA work.
  CHECK(h.send("RCPT TO:<bob@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
}

TEST_CASE("session: bad address syntax is 501 5.1.7 / 501 5.1.3") {
  Harness h;
  h.send("EHLO c.test\r\n");
  check_one(h.send("MAIL FROM:<a b@remote.test>\r\n"), "501 5.1.7");
  check_one(h.send("MAIL FROM:a@remote.test\r\n"), "501 5.1.7");
  check_one(h.send("MAIL FROM:<a@remote..test>\r\n"), "501 5.1.7");
  check_one(h.send("MAIL FROM:<postmaster>\r\n"), "501 5.1.7");
  check_one(h.send("MAIL TO:<a@remote.test>\r\n"), "501 5.5.4");
  CHECK(h.send("MAIL FROM:<>\r\n") == "250 2.1.0 Ok\r\n");
  check_one(h.send("RCPT TO:<>\r\n"), "501 5.1.3");
  check_one(h.send("RCPT TO:<alice@>\r\n"), "501 5.1.3");
  check_one(h.send("RCPT TO:alice@local.test\r\n"), "501 5.1.3");
  check_one(h.send("RCPT TO:<alice@[1.2.3.999]>\r\n"), "501 5.1.3");
  check_one(h.send("RCPT FROM:<alice@local.test>\r\n"), "501 5.5.4");
  CHECK(h.policy.calls == 0);
  CHECK(h.send("RCPT TO:<alice@local.test>\r\n") == "250 2.1.5 Ok\r\n");
}

TEST_CASE("session: UTF-8 addresses need SMTPUTF8 (553 5.6.7)") {
  const std::string joe = "j\xc3\xb6" "e";
  Harness h;
  h.send("EHLO c.test\r\n");
  check_one(h.send("MAIL FROM:<" + joe + "@remote.test>\r\n"), "553 5.6.7");
  CHECK(h.send("MAIL FROM:<sender@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  check_one(h.send("RCPT TO:<" + joe + "@local.test>\r\n"), "553 5.6.7");
  CHECK(h.send("RSET\r\n") == "250 2.0.0 Ok\r\n");

  CHECK(h.send("MAIL FROM:<" + joe + "@remote.test> SMTPUTF8 BODY=8BITMIME\r\n") ==
        "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<" + joe + "@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  const MessageInfo& info = h.sink.messages[0].info;
  CHECK(info.smtputf8);
  CHECK(info.body_8bit);
  CHECK(info.sender.str() == joe + "@remote.test");
  REQUIRE(info.recipients.size() == 1);
  CHECK(info.recipients[0].str() == joe + "@local.test");
}

TEST_CASE("session: MAIL parameters") {
  Harness h;
  h.send("EHLO c.test\r\n");
  check_one(h.send("MAIL FROM:<a@remote.test> FOO=BAR\r\n"), "555 5.5.4");
  check_one(h.send("MAIL FROM:<a@remote.test> BODY=BINARYMIME\r\n"), "501 5.5.4");
  check_one(h.send("MAIL FROM:<a@remote.test> SIZE=abc\r\n"), "501 5.5.4");
  CHECK(h.send("MAIL FROM:<a@remote.test> BODY=7BIT SIZE=100\r\n") == "250 2.1.0 Ok\r\n");
  check_one(h.send("RCPT TO:<alice@local.test> NOTIFY=NEVER\r\n"), "555 5.5.4");
}

TEST_CASE("session: policy refusals: 554 5.7.1 relay, 550 5.1.1 unknown user") {
  Harness h;
  h.send("EHLO c.test\r\n");
  h.send("MAIL FROM:<a@remote.test>\r\n");
  std::string relay = h.send("RCPT TO:<friend@elsewhere.test>\r\n");
  check_one(relay, "554 5.7.1");
  CHECK(relay.find("Relay access denied") != std::string::npos);
  check_one(h.send("RCPT TO:<carol@local.test>\r\n"), "550 5.1.1");
  CHECK(h.send("RCPT TO:<Postmaster>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(h.send("RCPT TO:<alice@LOCAL.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  const auto& r = h.sink.messages[0].info.recipients;
  REQUIRE(r.size() == 2);
  CHECK(r[0].str() == "postmaster");
  CHECK(r[1].str() == "alice@local.test");
}

TEST_CASE("session: relay allowed for a permitted client") {
  ClientInfo c;
  c.ip = "127.0.0.1";
  c.port = 1234;
  Harness h(test_settings(), c);
  h.send("EHLO c.test\r\n");
  h.send("MAIL FROM:<a@remote.test>\r\n");
  CHECK(h.send("RCPT TO:<friend@elsewhere.test>\r\n") == "250 2.1.5 Ok\r\n");
}

TEST_CASE("session: more than max_recipients is 452 4.5.3") {
  Harness h;  // max_recipients 3
  h.send("EHLO c.test\r\n");
  h.send("MAIL FROM:<a@remote.test>\r\n");
  std::string out = h.send(
      "RCPT TO:<alice@local.test>\r\nRCPT TO:<bob@local.test>\r\nRCPT TO:<postmaster>\r\n"
      "RCPT TO:<alice@local.test>\r\nRCPT TO:<bob@local.test>\r\n");
  auto r = replies_of(out);
  REQUIRE(r.size() == 5);
  CHECK(r[0] == "250 2.1.5 Ok");
  CHECK(r[1] == "250 2.1.5 Ok");
  CHECK(r[2] == "250 2.1.5 Ok");
  CHECK(starts(r[3], "452 4.5.3"));
  CHECK(starts(r[4], "452 4.5.3"));
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].info.recipients.size() == 3);
}

TEST_CASE("session: SIZE= over the limit is 552 5.3.4") {
  Harness h;  // max_message_size 10000
  h.send("EHLO c.test\r\n");
  check_one(h.send("MAIL FROM:<a@remote.test> SIZE=10001\r\n"), "552 5.3.4");
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");  // no transaction
  CHECK(h.send("MAIL FROM:<a@remote.test> SIZE=10000\r\n") == "250 2.1.0 Ok\r\n");
}

TEST_CASE("session: real message size: max ok, max+1 is 552 5.3.4") {
  // 100 lines of 98 octets + CRLF = 10000 octets on the wire.
  std::string exact;
  for (int i = 0; i < 100; ++i) exact += std::string(98, static_cast<char>('a' + i % 26)) + "\r\n";
  REQUIRE(exact.size() == 10000);
  std::string over = "x" + exact;

  {
    Harness h;
    h.open_data();
    queued_id(h.send(exact + ".\r\n"));
    REQUIRE(h.sink.messages.size() == 1);
    CHECK(h.sink.messages[0].info.size == 10000);
    CHECK(h.sink.messages[0].body == crlf_to_lf(exact));
  }
  {
    Harness h;
    h.open_data();
    check_one(h.send(over + ".\r\n"), "552 5.3.4");
    CHECK(h.sink.messages.empty());
    CHECK_FALSE(h.session.closed());
    CHECK_FALSE(h.session.in_data());
    CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  }
  {
    // The size counts after un-stuffing: the stuffed dot is not part of the message.
    Harness h;
    h.open_data();
    std::string stuffed = "." + exact;  // the first line becomes ".aaa...", un-stuffed back
    queued_id(h.send(stuffed + ".\r\n"));
    REQUIRE(h.sink.messages.size() == 1);
    CHECK(h.sink.messages[0].body == crlf_to_lf(exact));
  }
}

TEST_CASE("session: bare LF or bare CR in DATA is 550 5.5.2, the session goes on") {
  for (const std::string& body : {std::string("Subject: x\r\n\r\nbare\nLF\r\n"),
                                 std::string("Subject: x\r\n\r\nbare\rCR\r\n"),
                                 std::string("Subject: x\r\n\r\nends in CR\r\r\n"),
                                 std::string("Subject: x\nSecond: header\r\n\r\nbody\r\n")}) {
    for (bool bytewise : {false, true}) {
      INFO("body: ", body, " bytewise: ", bytewise);
      Harness h;
      h.open_data();
      std::string out = bytewise ? h.send_bytewise(body + ".\r\n") : h.send(body + ".\r\n");
      check_one(out, "550 5.5.2");
      CHECK(h.sink.messages.empty());
      CHECK_FALSE(h.session.closed());
      CHECK_FALSE(h.session.in_data());
      // The next transaction on the same session is accepted.
      CHECK(h.send("MAIL FROM:<a@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
      CHECK(h.send("RCPT TO:<bob@local.test>\r\n") == "250 2.1.5 Ok\r\n");
      CHECK(starts(h.send("DATA\r\n"), "354 "));
      queued_id(h.send(kMsg + ".\r\n"));
      CHECK(h.sink.messages.size() == 1);
    }
  }
}

TEST_CASE("session: smuggling sequences never end DATA early") {
  const std::string smuggled =
      "MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n"
      "Subject: smuggled\r\n\r\nevil\r\n";
  for (const char* seq : {"\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n"}) {
    for (bool bytewise : {false, true}) {
      INFO("sequence: ", petrel::log::sanitize(seq), " bytewise: ", bytewise);
      Harness h;
      h.open_data();
      std::string content = "Subject: s\r\n\r\nhello" + std::string(seq) + smuggled;
      std::string out = bytewise ? h.send_bytewise(content) : h.send(content);
      CHECK(out == "");  // still inside DATA: nothing answered
      CHECK(h.session.in_data());
      check_one(h.send(".\r\n"), "550 5.5.2");
      CHECK(h.sink.messages.empty());
      CHECK_FALSE(h.session.in_data());
      CHECK_FALSE(h.session.closed());
      // Back in command mode, with no transaction from the smuggled commands.
      check_one(h.send("RCPT TO:<bob@local.test>\r\n"), "503 5.5.1");
    }
  }
}

TEST_CASE("session: text line of 1000 octets passes, 1001 is 500 5.5.2") {
  const std::string ok = std::string(998, 'a') + "\r\n";
  const std::string bad = std::string(999, 'a') + "\r\n";
  const std::string huge = std::string(8000, 'b') + "\r\n";  // within max_message_size
  for (bool bytewise : {false, true}) {
    INFO("bytewise: ", bytewise);
    {
      Harness h;
      h.open_data();
      std::string in = "Subject: long\r\n\r\n" + ok + ".\r\n";
      queued_id(bytewise ? h.send_bytewise(in) : h.send(in));
      REQUIRE(h.sink.messages.size() == 1);
      CHECK(h.sink.messages[0].body == "Subject: long\n\n" + std::string(998, 'a') + "\n");
    }
    {
      Harness h;
      h.open_data();
      std::string in = "Subject: long\r\n\r\n" + bad + ".\r\n";
      check_one(bytewise ? h.send_bytewise(in) : h.send(in), "500 5.5.2");
      CHECK(h.sink.messages.empty());
      CHECK_FALSE(h.session.closed());
    }
  }
  {
    Harness h;
    h.open_data();
    std::string in = "Subject: long\r\n\r\n" + huge + "tail\r\n";
    CHECK(h.send(in.substr(0, 3000)) == "");
    CHECK(h.send(in.substr(3000, 3000)) == "");
    CHECK(h.send(in.substr(6000)) == "");
    CHECK(h.session.in_data());
    check_one(h.send(".\r\n"), "500 5.5.2");
    CHECK(h.sink.messages.empty());
    CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  }
}

TEST_CASE("session: hops: max_hops Received headers pass, one more is 554 5.4.6") {
  auto with_hops = [](int n) {
    std::string m;
    for (int i = 0; i < n; ++i) m += "Received: from hop" + std::to_string(i) + " by x; date\r\n";
    return m + "Subject: hops\r\n\r\nbody\r\n";
  };
  {
    Harness h;  // max_hops 5
    h.open_data();
    queued_id(h.send(with_hops(5) + ".\r\n"));
  }
  {
    Harness h;
    h.open_data();
    check_one(h.send(with_hops(6) + ".\r\n"), "554 5.4.6");
    CHECK(h.sink.messages.empty());
    CHECK_FALSE(h.session.closed());
  }
  {
    // Only the header section counts.
    Harness h;
    h.open_data();
    std::string m = "Subject: quoted\r\n\r\n";
    for (int i = 0; i < 10; ++i) m += "Received: in the body\r\n";
    queued_id(h.send(m + ".\r\n"));
  }
}

TEST_CASE("session: max_errors ends the session with 421") {
  SessionSettings st = test_settings();
  st.max_errors = 3;
  Harness h(st);
  h.send("EHLO c.test\r\n");
  check_one(h.send("XYZZY\r\n"), "500 5.5.2");
  CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");  // good commands do not count
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");
  CHECK_FALSE(h.session.closed());
  check_one(h.send("FOO\r\n"), "421 4.7.0");
  CHECK(h.session.closed());
  CHECK(h.send("NOOP\r\n") == "");
}

TEST_CASE("session: max_errors counted over pipelined commands") {
  SessionSettings st = test_settings();
  st.max_errors = 2;
  Harness h(st);
  std::string out = h.send("EHLO c.test\r\nBAD1\r\nBAD2\r\nNOOP\r\nNOOP\r\n");
  auto r = replies_of(out);
  REQUIRE(r.size() == 3);
  CHECK(starts(r[1], "500 5.5.2"));
  CHECK(starts(r[2], "421 4.7.0"));
  CHECK(h.session.closed());
}

TEST_CASE("session: timeout() is 421 and closes") {
  Harness h;
  h.send("EHLO c.test\r\n");
  h.session.timeout();
  check_one(h.session.take_output(), "421 4.4.2");
  CHECK(h.session.closed());
  h.session.timeout();
  CHECK(h.session.take_output() == "");

  Harness d;
  d.open_data();
  d.send("Subject: half a message\r\n");
  d.session.timeout();
  check_one(d.session.take_output(), "421 4.");
  CHECK(d.session.closed());
  CHECK(d.sink.messages.empty());
}

TEST_CASE("session: QUIT is 221 and closes") {
  Harness h;
  h.send("EHLO c.test\r\n");
  check_one(h.send("QUIT\r\n"), "221 2.0.0");
  CHECK(h.session.closed());
  CHECK(h.send("NOOP\r\n") == "");
  // Commands pipelined after QUIT are not answered.
  Harness p;
  auto r = replies_of(p.send("QUIT\r\nNOOP\r\n"));
  REQUIRE(r.size() == 1);
  CHECK(starts(r[0], "221 "));
}

TEST_CASE("session: a whole pipelined transaction in one buffer") {
  Harness h;
  std::string out = h.send(
      "EHLO client.test\r\n"
      "MAIL FROM:<sender@remote.test> BODY=8BITMIME\r\n"
      "RCPT TO:<alice@local.test>\r\n"
      "RCPT TO:<bob@local.test>\r\n"
      "DATA\r\n");
  auto r = replies_of(out);
  REQUIRE(r.size() == 5);
  CHECK(lines_of(out).front() == "250-mx.test");
  CHECK(starts(r[0], "250 "));
  CHECK(r[1] == "250 2.1.0 Ok");
  CHECK(r[2] == "250 2.1.5 Ok");
  CHECK(r[3] == "250 2.1.5 Ok");
  CHECK(starts(r[4], "354 "));
  CHECK(h.session.in_data());

  std::string done = h.send(kMsg + ".\r\nQUIT\r\n");
  auto r2 = replies_of(done);
  REQUIRE(r2.size() == 2);
  std::string id = queued_id(r2[0]);
  CHECK(starts(r2[1], "221 "));
  CHECK(h.session.closed());
  CHECK(h.session.messages_accepted() == 1);

  REQUIRE(h.sink.messages.size() == 1);
  const Stored& m = h.sink.messages[0];
  CHECK(m.info.queue_id == id);
  CHECK(id.size() == 18);
  CHECK(m.info.sender.str() == "sender@remote.test");
  REQUIRE(m.info.recipients.size() == 2);
  CHECK(m.info.recipients[0].str() == "alice@local.test");
  CHECK(m.info.recipients[1].str() == "bob@local.test");
  CHECK(m.info.body_8bit);
  CHECK_FALSE(m.info.smtputf8);
  CHECK(m.info.helo == "client.test");
  CHECK(m.info.size == kMsg.size());
  CHECK(m.body == crlf_to_lf(kMsg));
  // Two recipients: no "for" clause.
  CHECK(m.received.find("\tfor <") == std::string::npos);
}

TEST_CASE("session: pipelined group with a rejected recipient") {
  Harness h;
  h.send("EHLO c.test\r\n");
  auto r = replies_of(h.send(
      "MAIL FROM:<s@remote.test>\r\nRCPT TO:<nobody@local.test>\r\nRCPT TO:<alice@local.test>\r\n"
      "DATA\r\n"));
  REQUIRE(r.size() == 4);
  CHECK(r[0] == "250 2.1.0 Ok");
  CHECK(starts(r[1], "550 5.1.1"));
  CHECK(r[2] == "250 2.1.5 Ok");
  CHECK(starts(r[3], "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  REQUIRE(h.sink.messages[0].info.recipients.size() == 1);
  CHECK(h.sink.messages[0].info.recipients[0].str() == "alice@local.test");
}

TEST_CASE("session: content in the same buffer as DATA is refused (554 5.5.0)") {
  Harness h;
  std::string out = h.send(
      "EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
      "Subject: too early\r\n\r\nearly body\r\n.\r\n");
  auto r = replies_of(out);
  REQUIRE(r.size() == 4);
  CHECK(r[1] == "250 2.1.0 Ok");
  CHECK(r[2] == "250 2.1.5 Ok");
  CHECK(starts(r[3], "554 5.5.0"));
  CHECK(out.find("354") == std::string::npos);
  CHECK(out.find("queued") == std::string::npos);
  CHECK(h.session.closed());
  CHECK(h.sink.messages.empty());
  CHECK(h.send("\r\n.\r\n") == "");
  CHECK(h.sink.messages.empty());
}

TEST_CASE("session: DATA content byte by byte equals content in one go") {
  const std::string content =
      "From: a@remote.test\r\nSubject: bytes\r\n\r\nline one\r\n..stuffed\r\n..\r\n"
      "\r\nlast line\r\n.\r\nNOOP\r\n";
  Harness one, bytes;
  one.open_data();
  bytes.open_data();
  std::string out1 = one.send(content);
  std::string out2 = bytes.send_bytewise(content);
  auto r1 = replies_of(out1);
  auto r2 = replies_of(out2);
  REQUIRE(r1.size() == 2);
  REQUIRE(r2.size() == 2);
  queued_id(r1[0]);
  queued_id(r2[0]);
  CHECK(r1[1] == "250 2.0.0 Ok");
  CHECK(r2[1] == "250 2.0.0 Ok");
  REQUIRE(one.sink.messages.size() == 1);
  REQUIRE(bytes.sink.messages.size() == 1);
  CHECK(one.sink.messages[0].body == bytes.sink.messages[0].body);
  CHECK(one.sink.messages[0].info.size == bytes.sink.messages[0].info.size);
  CHECK(one.sink.messages[0].body ==
        "From: a@remote.test\nSubject: bytes\n\nline one\n.stuffed\n.\n\nlast line\n");
}

TEST_CASE("session: dot un-stuffing and LF line ends") {
  Harness h;
  h.open_data();
  queued_id(h.send("Subject: dots\r\n\r\n..x\r\n...\r\n..\r\n.y\r\nplain . line\r\n\r\n.\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  const Stored& m = h.sink.messages[0];
  CHECK(m.body == "Subject: dots\n\n.x\n..\n.\ny\nplain . line\n\n");
  CHECK(m.body.find('\r') == std::string::npos);
  // Size: CRLF line ends after un-stuffing.
  CHECK(m.info.size == m.body.size() + 8);  // 8 lines
}

TEST_CASE("session: empty message") {
  Harness h;
  h.open_data();
  queued_id(h.send(".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].body == "");
  CHECK(h.sink.messages[0].info.size == 0);
}

TEST_CASE("session: the Received header") {
  Harness h;
  h.open_data();
  std::string id = queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  const std::string& rc = h.sink.messages[0].received;
  CHECK(starts(rc, "Received: from client.test ([192.0.2.10])"));
  CHECK(rc.find("by mx.test") != std::string::npos);
  CHECK(rc.find("ESMTP id " + id) != std::string::npos);
  CHECK(rc.find("for <alice@local.test>") != std::string::npos);
  CHECK(rc.find('\r') == std::string::npos);
  REQUIRE_FALSE(rc.empty());
  CHECK(rc.back() == '\n');
  // Continuation lines are folded with whitespace: one header field.
  size_t pos = 0;
  while ((pos = rc.find('\n', pos)) != std::string::npos && pos + 1 < rc.size()) {
    CHECK((rc[pos + 1] == '\t' || rc[pos + 1] == ' '));
    ++pos;
  }
  // The message itself does not carry it: the sink prepends it.
  CHECK(h.sink.messages[0].body == crlf_to_lf(kMsg));
}

TEST_CASE("session: HELO names are sanitised in the Received header") {
  Harness h;
  REQUIRE(starts(h.send("EHLO evil (by x)\x01;\xc3\xa9\r\n"), "250-"));
  h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
  REQUIRE(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  const std::string& rc = h.sink.messages[0].received;
  std::string first_line = rc.substr(0, rc.find('\n'));
  CHECK(first_line.find("(by x)") == std::string::npos);
  CHECK(first_line.find('\x01') == std::string::npos);
  CHECK(first_line.find(';') == std::string::npos);
  for (unsigned char c : h.sink.messages[0].info.helo) CHECK((c >= 0x20 && c < 0x7f));
}

TEST_CASE("session: unix client in the Received header") {
  ClientInfo c;
  c.is_unix = true;
  Harness h(test_settings(), c);
  h.open_data("<friend@elsewhere.test>");  // unix clients may relay
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(starts(h.sink.messages[0].received, "Received: from client.test (unix socket)"));
}

TEST_CASE("session: the sink's reply goes to the client as is") {
  Harness h;
  h.sink.fixed_reply = std::make_unique<Reply>(Reply{452, "4.3.1 Error: insufficient system storage"});
  h.open_data();
  CHECK(h.send(kMsg + ".\r\n") == "452 4.3.1 Error: insufficient system storage\r\n");
  CHECK(h.session.messages_accepted() == 0);
  CHECK_FALSE(h.session.closed());
  // The transaction is over.
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");
}

TEST_CASE("session: null sender") {
  Harness h;
  h.send("EHLO c.test\r\n");
  CHECK(h.send("MAIL FROM:<>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<alice@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].info.sender.null);
  CHECK(h.sink.messages[0].info.sender.str() == "");
}

TEST_CASE("session: RSET clears the transaction") {
  Harness h;
  h.send("EHLO c.test\r\n");
  h.send("MAIL FROM:<a@remote.test>\r\n");
  h.send("RCPT TO:<alice@local.test>\r\n");
  CHECK(h.send("RSET\r\n") == "250 2.0.0 Ok\r\n");
  check_one(h.send("DATA\r\n"), "503 5.5.1");
  check_one(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1");
  check_one(h.send("RSET x\r\n"), "501 5.5.4");
  // A new transaction starts clean: only its own recipient is delivered.
  CHECK(h.send("MAIL FROM:<b@remote.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<bob@local.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(starts(h.send("DATA\r\n"), "354 "));
  queued_id(h.send(kMsg + ".\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].info.sender.str() == "b@remote.test");
  REQUIRE(h.sink.messages[0].info.recipients.size() == 1);
  CHECK(h.sink.messages[0].info.recipients[0].str() == "bob@local.test");
}

TEST_CASE("session: BDAT with several chunks") {
  Harness h;
  h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
  check_one(h.send("BDAT 11\r\nSubject: t\r"), "250 2.0.0 ");
  CHECK_FALSE(h.session.in_data());
  // Chunk boundaries may split a CRLF and need not follow lines.
  h.session.feed("BDAT 11\r\n\n\r\nbody ..");
  CHECK(h.session.in_data());
  CHECK(h.session.take_output() == "");
  check_one(h.send("x"), "250 2.0.0 ");
  CHECK(h.sink.messages.empty());
  std::string out = h.send("BDAT 8 LAST\r\n\r\n.\r\nZ\r\n");
  std::string id = queued_id(out);
  REQUIRE(h.sink.messages.size() == 1);
  const Stored& m = h.sink.messages[0];
  CHECK(m.info.queue_id == id);
  // No dot-stuffing in BDAT: dots are kept as sent.
  CHECK(m.body == "Subject: t\n\nbody ..x\n.\nZ\n");
  CHECK(m.info.size == 30);
  CHECK(starts(m.received, "Received: from c.test"));
  // DATA after the BDAT transaction ended needs a new MAIL.
  check_one(h.send("DATA\r\n"), "503 5.5.1");
}

TEST_CASE("session: BDAT 0 LAST ends the message") {
  Harness h;
  h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
  check_one(h.send("BDAT 6\r\nab\r\ncd"), "250 2.0.0 ");
  CHECK(h.sink.messages.empty());
  queued_id(h.send("BDAT 0 LAST\r\n"));
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].body == "ab\ncd\n");
}

TEST_CASE("session: pipelined BDATs in one buffer") {
  Harness h;
  std::string out = h.send(
      "EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n"
      "RCPT TO:<bob@local.test>\r\nBDAT 17\r\nSubject: pipe\r\n\r\nBDAT 6 LAST\r\nbody\r\n"
      "NOOP\r\n");
  auto r = replies_of(out);
  REQUIRE(r.size() == 7);
  CHECK(r[1] == "250 2.1.0 Ok");
  CHECK(r[2] == "250 2.1.5 Ok");
  CHECK(r[3] == "250 2.1.5 Ok");
  CHECK(starts(r[4], "250 2.0.0 "));
  CHECK(r[4].find("queued") == std::string::npos);
  queued_id(r[5]);
  CHECK(r[6] == "250 2.0.0 Ok");
  REQUIRE(h.sink.messages.size() == 1);
  CHECK(h.sink.messages[0].body == "Subject: pipe\n\nbody\n");
  CHECK(h.sink.messages[0].info.recipients.size() == 2);
}

TEST_CASE("session: BDAT without MAIL is 503, its bytes are skipped") {
  Harness h;
  h.send("EHLO c.test\r\n");
  auto r = replies_of(h.send("BDAT 10\r\nNOOP\r\nXXXXNOOP\r\n"));
  REQUIRE(r.size() == 2);
  CHECK(starts(r[0], "503 5.5.1"));
  CHECK(r[1] == "250 2.0.0 Ok");
  // Split over several feeds, LAST too.
  CHECK(starts(h.send("BDAT 8 LAST\r\nQUIT"), "503 5.5.1"));
  CHECK(h.session.in_data());
  CHECK(h.send("\r\nRS") == "");
  CHECK_FALSE(h.session.in_data());
  CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  CHECK_FALSE(h.session.closed());
  CHECK(h.sink.messages.empty());
}

TEST_CASE("session: BDAT with no accepted recipient is 554 5.5.1") {
  Harness h;
  h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n");
  check_one(h.send("RCPT TO:<nobody@local.test>\r\n"), "550 5.1.1");
  auto r = replies_of(h.send("BDAT 4 LAST\r\nabcdNOOP\r\n"));
  REQUIRE(r.size() == 2);
  CHECK(starts(r[0], "554 5.5.1"));
  CHECK(r[1] == "250 2.0.0 Ok");
  CHECK(h.sink.messages.empty());
}

TEST_CASE("session: BDAT over the size limit is 552 5.3.4") {
  SUBCASE("one chunk") {
    Harness h;
    h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
    std::string chunk(10001, 'x');
    check_one(h.send("BDAT 10001 LAST\r\n" + chunk), "552 5.3.4");
    CHECK(h.sink.messages.empty());
    CHECK(h.send("NOOP\r\n") == "250 2.0.0 Ok\r\n");
  }
  SUBCASE("two chunks") {
    Harness h;
    h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
    check_one(h.send("BDAT 6000\r\n" + std::string(6000, 'y')), "250 2.0.0 ");
    std::string out = h.send("BDAT 4001\r\n" + std::string(4001, 'z'));
    check_one(out, "552 5.3.4");
    CHECK(h.sink.messages.empty());
    CHECK(h.send("RSET\r\n") == "250 2.0.0 Ok\r\n");
  }
  SUBCASE("exactly the limit is accepted") {
    Harness h;
    h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
    std::string chunk;
    for (int i = 0; i < 100; ++i) chunk += std::string(98, 'q') + "\r\n";
    queued_id(h.send("BDAT 10000 LAST\r\n" + chunk));
    REQUIRE(h.sink.messages.size() == 1);
    CHECK(h.sink.messages[0].info.size == 10000);
  }
}

TEST_CASE("session: DATA after BDAT in one transaction is 503") {
  Harness h;
  h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
  check_one(h.send("BDAT 3\r\nabc"), "250 2.0.0 ");
  check_one(h.send("DATA\r\n"), "503 5.5.1");
}

TEST_CASE("session: malformed BDAT closes with 421") {
  Harness h;
  h.send("EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\n");
  check_one(h.send("BDAT x\r\n"), "421 4.5.4");
  CHECK(h.session.closed());
}

TEST_CASE("session: 100 messages pipelined on one session (DATA)") {
  Harness h;
  const std::string group =
      "MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n";
  std::string out = h.send("EHLO c.test\r\n" + group);
  REQUIRE(codes_of(out) == std::vector<int>{250, 250, 250, 354});
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    std::string msg = "Subject: m" + std::to_string(i) + "\r\n\r\nmessage number " +
                      std::to_string(i) + "\r\n.\r\n";
    auto r = replies_of(h.send(msg + (i < 99 ? group : std::string("QUIT\r\n"))));
    if (i < 99) {
      REQUIRE(r.size() == 4);
      CHECK(r[1] == "250 2.1.0 Ok");
      CHECK(r[2] == "250 2.1.5 Ok");
      CHECK(starts(r[3], "354 "));
    } else {
      REQUIRE(r.size() == 2);
      CHECK(starts(r[1], "221 "));
    }
    ids.push_back(queued_id(r[0]));
  }
  CHECK(h.session.closed());
  CHECK(h.session.messages_accepted() == 100);
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == 100);
  REQUIRE(h.sink.messages.size() == 100);
  for (int i : {0, 50, 99}) {
    CHECK(h.sink.messages[i].info.queue_id == ids[i]);
    CHECK(h.sink.messages[i].body ==
          "Subject: m" + std::to_string(i) + "\n\nmessage number " + std::to_string(i) + "\n");
  }
}

TEST_CASE("session: 100 messages pipelined in one buffer (BDAT)") {
  Harness h;
  std::string in = "EHLO c.test\r\n";
  for (int i = 0; i < 100; ++i) {
    std::string body = "Subject: b" + std::to_string(i) + "\r\n\r\nbody\r\n";
    in += "MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT " +
          std::to_string(body.size()) + " LAST\r\n" + body;
  }
  in += "QUIT\r\n";
  auto r = replies_of(h.send(in));
  REQUIRE(r.size() == 1 + 300 + 1);
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    CHECK(r[1 + 3 * i] == "250 2.1.0 Ok");
    CHECK(r[2 + 3 * i] == "250 2.1.5 Ok");
    ids.insert(queued_id(r[3 + 3 * i]));
  }
  CHECK(starts(r.back(), "221 "));
  CHECK(ids.size() == 100);
  REQUIRE(h.sink.messages.size() == 100);
  CHECK(h.sink.messages[42].body == "Subject: b42\n\nbody\n");
}
