#include "petrel/delivery/smtp_client_session.h"

#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "petrel/common/base64.h"

namespace petrel::delivery::smtp {
namespace {

using config::TlsPolicy;
using Kind = Event::Kind;

const char* kEhlo =
    "250-mx.test greets you\r\n"
    "250-PIPELINING\r\n"
    "250-SIZE 1000\r\n"
    "250-8BITMIME\r\n"
    "250-ENHANCEDSTATUSCODES\r\n"
    "250 CHUNKING\r\n";

// Plays the server: feed it replies, read what the client wrote.
struct Client {
  Session s;
  std::vector<Event> events;

  explicit Client(SessionOptions o) : s(std::move(o)) {}

  std::string server(std::string_view bytes) {
    s.feed(bytes);
    return collect();
  }
  std::string collect() {
    for (Event& e : s.take_events()) events.push_back(std::move(e));
    return s.take_output();
  }
  std::vector<Kind> kinds() const {
    std::vector<Kind> k;
    for (const Event& e : events) k.push_back(e.kind);
    return k;
  }
  const Event* last(Kind k) const {
    for (auto it = events.rbegin(); it != events.rend(); ++it)
      if (it->kind == k) return &*it;
    return nullptr;
  }
  const MessageResult& result() const {
    const Event* e = last(Kind::MessageDone);
    REQUIRE(e != nullptr);
    return e->result;
  }
};

SessionOptions options(TlsPolicy tls = TlsPolicy::Opportunistic) {
  SessionOptions o;
  o.helo_name = "client.test";
  o.tls = tls;
  o.peer = "mx.test[127.0.0.1]";
  return o;
}

// Greeting and EHLO with `ehlo` capabilities: a ready client.
void greet(Client& c, const std::string& ehlo = kEhlo) {
  CHECK(c.s.waiting() == Wait::Greeting);
  CHECK(c.server("220 mx.test ESMTP\r\n") == "EHLO client.test\r\n");
  CHECK(c.s.waiting() == Wait::Helo);
  CHECK(c.server(ehlo).empty());
  REQUIRE(c.s.ready());
  CHECK(c.kinds().back() == Kind::Ready);
}

Envelope envelope(std::vector<std::string> rcpts, std::uint64_t size = 100) {
  Envelope e;
  e.sender = "alice@petrel.test";
  e.recipients = std::move(rcpts);
  e.size = size;
  return e;
}

// ---------------------------------------------------------------- replies

TEST_CASE("ReplyReader: single, multi-line, split and bad replies") {
  ReplyReader r;
  r.feed("250-first\r\n25");
  CHECK_FALSE(r.next());
  r.feed("0-second\r\n250 last\r\n220 next\n");
  auto a = r.next();
  REQUIRE(a);
  CHECK(a->code == 250);
  CHECK(a->lines == std::vector<std::string>{"first", "second", "last"});
  CHECK(a->text() == "250 first second last");
  auto b = r.next();
  REQUIRE(b);
  CHECK(b->code == 220);
  CHECK_FALSE(r.next());

  ReplyReader bare;
  bare.feed("250\r\n");
  auto c = bare.next();
  REQUIRE(c);
  CHECK(c->lines == std::vector<std::string>{""});

  ReplyReader mixed;
  mixed.feed("250-a\r\n251 b\r\n");
  CHECK_FALSE(mixed.next());
  CHECK(mixed.failed());

  ReplyReader junk;
  junk.feed("HTTP/1.1 400 Bad\r\n");
  CHECK_FALSE(junk.next());
  CHECK(junk.failed());

  ReplyReader huge;
  huge.feed(std::string(5000, '2'));
  CHECK_FALSE(huge.next());
  CHECK(huge.failed());
}

TEST_CASE("Reply::status uses the enhanced code only when it matches the class") {
  CHECK(Reply{250, {"2.1.5 Ok"}}.status() == "2.1.5");
  CHECK(Reply{550, {"5.1.10 null MX"}}.status() == "5.1.10");
  CHECK(Reply{550, {"4.1.1 odd"}}.status() == "5.0.0");
  CHECK(Reply{451, {"try later"}}.status() == "4.0.0");
  CHECK(Reply{250, {"2.0 short"}}.status() == "2.0.0");
  CHECK(Reply{250, {}}.status() == "2.0.0");
  CHECK(Reply{550, {"a\tb\x01"}}.text() == "550 a b?");
}

TEST_CASE("Capabilities from EHLO") {
  Reply r{250, {"mx", "pipelining", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "AUTH=LOGIN",
                "AUTH PLAIN login CRAM-MD5", "STARTTLS", "X-UNKNOWN stuff"}};
  Capabilities c = Capabilities::from_ehlo(r);
  CHECK(c.esmtp);
  CHECK(c.pipelining);
  CHECK(c.size);
  CHECK(c.size_limit == 52428800);
  CHECK(c.eightbitmime);
  CHECK(c.smtputf8);
  CHECK(c.starttls);
  CHECK(c.auth == std::vector<std::string>{"LOGIN", "PLAIN", "CRAM-MD5"});
  Capabilities nolimit = Capabilities::from_ehlo(Reply{250, {"mx", "SIZE"}});
  CHECK(nolimit.size);
  CHECK(nolimit.size_limit == 0);
}

// ---------------------------------------------------------------- setup

TEST_CASE("greeting, EHLO, Ready; replies may arrive byte by byte") {
  Client c(options());
  std::string out;
  for (char ch : std::string("220-mx.test\r\n220 ESMTP\r\n")) out += c.server(std::string(1, ch));
  CHECK(out == "EHLO client.test\r\n");
  for (char ch : std::string(kEhlo)) out += c.server(std::string(1, ch));
  CHECK(c.s.ready());
  CHECK(c.s.capabilities().pipelining);
  CHECK(c.s.capabilities().size_limit == 1000);
  CHECK(c.s.waiting() == Wait::None);
}

TEST_CASE("EHLO refused with 5xx falls back to HELO") {
  Client c(options());
  CHECK(c.server("220 old.test SMTP\r\n") == "EHLO client.test\r\n");
  CHECK(c.server("502 5.5.2 what?\r\n") == "HELO client.test\r\n");
  CHECK(c.server("250 old.test\r\n").empty());
  CHECK(c.s.ready());
  CHECK_FALSE(c.s.capabilities().esmtp);
  CHECK_FALSE(c.s.capabilities().pipelining);
  // Without PIPELINING: one command per reply.
  REQUIRE(c.s.begin(envelope({"b@x.test", "c@x.test"})));
  CHECK(c.collect() == "MAIL FROM:<alice@petrel.test>\r\n");
  CHECK(c.server("250 ok\r\n") == "RCPT TO:<b@x.test>\r\n");
  CHECK(c.server("250 ok\r\n") == "RCPT TO:<c@x.test>\r\n");
  CHECK(c.server("250 ok\r\n") == "DATA\r\n");
}

TEST_CASE("refused greeting, refused HELO, 421: setup fails and is deferred") {
  {
    Client c(options());
    CHECK(c.server("554 5.7.1 go away\r\n") == "QUIT\r\n");
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.outcome == Outcome::Deferred);
    CHECK(e->failure.verdict.status == "4.7.1");
    CHECK(e->failure.code == 554);
    CHECK(e->failure.verdict.detail.find("refused to talk to me: 554 5.7.1 go away") != std::string::npos);
    CHECK(c.s.closed());
    CHECK_FALSE(c.s.begin(envelope({"b@x.test"})));
  }
  {
    Client c(options());
    c.server("220 hi\r\n");
    CHECK(c.server("550 no\r\n") == "HELO client.test\r\n");
    c.server("550 still no\r\n");
    REQUIRE(c.last(Kind::SetupFailed));
  }
  {
    Client c(options());
    c.server("220 hi\r\n");
    CHECK(c.server("421 4.3.2 shutting down\r\n").empty());  // no QUIT after a 421
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.status == "4.3.2");
  }
}

TEST_CASE("garbage, timeouts and lost connections during setup") {
  {
    Client c(options());
    c.server("hello there\r\n");
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.status == "4.5.0");
    CHECK(e->failure.verdict.detail.find("protocol error") != std::string::npos);
  }
  {
    Client c(options());
    c.s.timed_out();
    c.collect();
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.status == "4.4.2");
    CHECK(e->failure.verdict.detail ==
          "conversation with host mx.test[127.0.0.1] timed out while receiving the initial server greeting");
  }
  {
    Client c(options());
    c.server("220 hi\r\n");
    c.s.connection_lost("");
    c.collect();
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.detail ==
          "lost connection with host mx.test[127.0.0.1] while performing the EHLO handshake");
  }
}

// ---------------------------------------------------------------- STARTTLS

TEST_CASE("STARTTLS: plaintext after 220 is dropped, EHLO again inside TLS") {
  Client c(options());
  c.server("220 mx.test\r\n");
  CHECK(c.server("250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n") == "STARTTLS\r\n");
  CHECK(c.s.waiting() == Wait::StartTls);
  // An attacker's "250" after the 220 must never be taken as a reply.
  CHECK(c.server("220 2.0.0 go ahead\r\n250-injected\r\n250 STARTTLS\r\n").empty());
  CHECK(c.kinds().back() == Kind::StartTls);
  CHECK(c.s.waiting() == Wait::TlsHandshake);
  CHECK_FALSE(c.s.ready());
  c.s.tls_established("TLSv1.3");
  CHECK(c.collect() == "EHLO client.test\r\n");
  CHECK(c.server("250-mx.test\r\n250 SIZE 0\r\n").empty());
  CHECK(c.s.ready());
  CHECK(c.s.tls_active());
  CHECK(c.s.tls_version() == "TLSv1.3");
  CHECK_FALSE(c.s.capabilities().pipelining);  // forgotten: only the new EHLO counts
}

TEST_CASE("STARTTLS required but not offered: deferred, no MAIL ever sent") {
  for (TlsPolicy p : {TlsPolicy::Required, TlsPolicy::Verify}) {
    Client c(options(p));
    c.server("220 mx.test\r\n");
    CHECK(c.server(kEhlo) == "");
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.outcome == Outcome::Deferred);
    CHECK(e->failure.verdict.status == "4.7.4");
    CHECK(e->failure.verdict.detail == "TLS is required, but was not offered by host mx.test[127.0.0.1]");
    CHECK_FALSE(e->failure.retry_plaintext);
    CHECK_FALSE(c.s.begin(envelope({"b@x.test"})));
    CHECK(c.collect().find("MAIL") == std::string::npos);
  }
}

TEST_CASE("STARTTLS refused: opportunistic goes on in plaintext, required fails") {
  {
    Client c(options());
    c.server("220 mx\r\n");
    c.server("250-mx\r\n250 STARTTLS\r\n");
    CHECK(c.server("454 4.7.0 TLS not available\r\n").empty());
    CHECK(c.s.ready());
    CHECK_FALSE(c.s.tls_active());
  }
  {
    Client c(options(TlsPolicy::Required));
    c.server("220 mx\r\n");
    c.server("250-mx\r\n250 STARTTLS\r\n");
    CHECK(c.server("454 4.7.0 TLS not available\r\n") == "QUIT\r\n");
    REQUIRE(c.last(Kind::SetupFailed));
  }
}

TEST_CASE("TLS handshake failure: opportunistic may retry in plaintext, others may not") {
  {
    Client c(options());
    c.server("220 mx\r\n");
    c.server("250-mx\r\n250 STARTTLS\r\n");
    c.server("220 go\r\n");
    c.s.tls_failed("wrong version number");
    c.collect();
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.retry_plaintext);
    CHECK(e->failure.verdict.status == "4.7.5");
  }
  {
    Client c(options(TlsPolicy::Verify));
    c.server("220 mx\r\n");
    c.server("250-mx\r\n250 STARTTLS\r\n");
    c.server("220 go\r\n");
    c.s.tls_failed("certificate verify failed");
    c.collect();
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK_FALSE(e->failure.retry_plaintext);
  }
  {
    SessionOptions o = options();
    o.skip_starttls = true;  // the plaintext retry
    Client c(o);
    c.server("220 mx\r\n");
    CHECK(c.server("250-mx\r\n250 STARTTLS\r\n").empty());
    CHECK(c.s.ready());
  }
  {
    Client c(options(TlsPolicy::None));
    c.server("220 mx\r\n");
    CHECK(c.server("250-mx\r\n250 STARTTLS\r\n").empty());
    CHECK(c.s.ready());
  }
}

// ---------------------------------------------------------------- AUTH

Client tls_client(SessionOptions o, const std::string& ehlo_after_tls) {
  Client c(std::move(o));
  c.server("220 mx\r\n");
  c.server("250-mx\r\n250 STARTTLS\r\n");
  c.server("220 go\r\n");
  c.s.tls_established("TLSv1.3");
  c.collect();
  c.s.feed(ehlo_after_tls);
  return c;
}

TEST_CASE("AUTH PLAIN and LOGIN inside TLS") {
  SessionOptions o = options();
  o.auth_user = "me";
  o.auth_password = "s3cret";
  {
    Client c = tls_client(o, "250-mx\r\n250 AUTH LOGIN PLAIN\r\n");
    CHECK(c.collect() == "AUTH PLAIN " + base64_encode(std::string("\0me\0s3cret", 10)) + "\r\n");
    CHECK(c.s.waiting() == Wait::Auth);
    CHECK(c.server("235 2.7.0 ok\r\n").empty());
    CHECK(c.s.ready());
  }
  {
    Client c = tls_client(o, "250-mx\r\n250 AUTH LOGIN\r\n");
    CHECK(c.collect() == "AUTH LOGIN\r\n");
    CHECK(c.server("334 VXNlcm5hbWU6\r\n") == base64_encode("me") + "\r\n");
    CHECK(c.server("334 UGFzc3dvcmQ6\r\n") == base64_encode("s3cret") + "\r\n");
    CHECK(c.server("235 ok\r\n").empty());
    CHECK(c.s.ready());
  }
  {
    Client c = tls_client(o, "250-mx\r\n250 AUTH PLAIN\r\n");
    c.collect();
    CHECK(c.server("535 5.7.8 bad credentials\r\n") == "QUIT\r\n");
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.outcome == Outcome::Deferred);
    CHECK(e->failure.verdict.status == "4.7.8");
  }
  {
    Client c = tls_client(o, "250-mx\r\n250 AUTH CRAM-MD5\r\n");
    c.collect();
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.detail.find("offers no PLAIN or LOGIN") != std::string::npos);
  }
}

TEST_CASE("AUTH credentials never go out in plaintext unless TLS is off by policy") {
  SessionOptions o = options();
  o.auth_user = "me";
  o.auth_password = "s3cret";
  {
    Client c(o);
    c.server("220 mx\r\n");
    const std::string out = c.server("250-mx\r\n250 AUTH PLAIN LOGIN\r\n");  // no STARTTLS
    CHECK(out.find("AUTH") == std::string::npos);
    const Event* e = c.last(Kind::SetupFailed);
    REQUIRE(e);
    CHECK(e->failure.verdict.status == "4.7.0");
  }
  {
    o.tls = TlsPolicy::None;
    Client c(o);
    c.server("220 mx\r\n");
    CHECK(c.server("250-mx\r\n250 AUTH PLAIN\r\n").starts_with("AUTH PLAIN "));
  }
}

// ---------------------------------------------------------------- transactions

TEST_CASE("PIPELINING: MAIL and every RCPT in one write; a 250/452/550 mix") {
  Client c(options());
  greet(c);
  REQUIRE(c.s.begin(envelope({"b@x.test", "c@x.test", "d@x.test"}, 123)));
  CHECK(c.collect() ==
        "MAIL FROM:<alice@petrel.test> SIZE=123\r\n"
        "RCPT TO:<b@x.test>\r\n"
        "RCPT TO:<c@x.test>\r\n"
        "RCPT TO:<d@x.test>\r\n");
  CHECK(c.s.waiting() == Wait::Mail);
  CHECK(c.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n").empty());
  CHECK(c.s.waiting() == Wait::Rcpt);
  CHECK(c.server("452 4.5.3 too many recipients\r\n550 5.1.1 <d@x.test>: no such user\r\n") == "DATA\r\n");
  CHECK(c.s.waiting() == Wait::Data);
  CHECK(c.server("354 go ahead\r\n").empty());
  CHECK(c.kinds().back() == Kind::SendBody);
  CHECK(c.s.waiting() == Wait::Body);
  c.s.body_sent();
  CHECK(c.collect().empty());
  CHECK(c.s.waiting() == Wait::DataEnd);
  CHECK(c.server("250 2.0.0 Ok: queued as ABC\r\n").empty());

  const MessageResult& r = c.result();
  CHECK(r.attempted);
  CHECK(r.code == 250);
  CHECK(r.reply == "250 2.0.0 Ok: queued as ABC");
  REQUIRE(r.recipients.size() == 3);
  CHECK(r.recipients[0].recipient == "b@x.test");
  CHECK(r.recipients[0].verdict.outcome == Outcome::Delivered);
  CHECK(r.recipients[0].verdict.status == "2.0.0");
  CHECK(r.recipients[0].reply == "250 2.0.0 Ok: queued as ABC");
  CHECK(r.recipients[1].verdict.outcome == Outcome::Deferred);
  CHECK(r.recipients[1].verdict.status == "4.5.3");
  CHECK(r.recipients[1].code == 452);
  CHECK(r.recipients[2].verdict.outcome == Outcome::Bounced);
  CHECK(r.recipients[2].verdict.status == "5.1.1");
  CHECK(r.recipients[2].verdict.detail ==
        "host mx.test[127.0.0.1] said: 550 5.1.1 <d@x.test>: no such user (in reply to RCPT TO command)");
  CHECK(c.s.ready());
}

TEST_CASE("a refused MAIL applies to every recipient, whatever the RCPT replies") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test", "c@x.test"}));
  c.collect();
  CHECK(c.server("553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n").empty());
  const MessageResult& r = c.result();
  for (const RecipientResult& rr : r.recipients) {
    CHECK(rr.verdict.outcome == Outcome::Bounced);
    CHECK(rr.verdict.status == "5.7.1");
    CHECK(rr.verdict.detail.find("(in reply to MAIL FROM command)") != std::string::npos);
  }
  CHECK(c.s.ready());

  c.s.begin(envelope({"b@x.test"}));
  CHECK(c.collect().starts_with("RSET\r\nMAIL FROM:"));
  c.server("250 ok\r\n451 4.3.0 try later\r\n503 need MAIL\r\n");
  CHECK(c.result().recipients[0].verdict.outcome == Outcome::Deferred);
  CHECK(c.result().recipients[0].verdict.status == "4.3.0");
}

TEST_CASE("no accepted recipient: no DATA; the next message starts with RSET") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test"}));
  c.collect();
  CHECK(c.server("250 ok\r\n550 5.1.1 unknown\r\n").empty());
  CHECK(c.result().recipients[0].verdict.outcome == Outcome::Bounced);
  CHECK(c.s.ready());

  c.s.begin(envelope({"e@x.test"}));
  CHECK(c.collect() == "RSET\r\nMAIL FROM:<alice@petrel.test> SIZE=100\r\nRCPT TO:<e@x.test>\r\n");
  CHECK(c.s.waiting() == Wait::Rset);
  CHECK(c.server("250 2.0.0 ok\r\n250 ok\r\n250 ok\r\n") == "DATA\r\n");
}

TEST_CASE("RSET between two messages without PIPELINING waits for its reply") {
  Client c(options());
  greet(c, "250-mx\r\n250 8BITMIME\r\n");
  c.s.begin(envelope({"b@x.test"}));
  CHECK(c.collect() == "MAIL FROM:<alice@petrel.test>\r\n");
  c.server("250 ok\r\n");
  c.server("250 ok\r\n");
  c.server("354 go\r\n");
  c.s.body_sent();
  c.server("250 queued\r\n");
  CHECK(c.result().recipients[0].verdict.outcome == Outcome::Delivered);

  Envelope e = envelope({"c@x.test"});
  e.body_8bit = true;
  c.s.begin(e);
  CHECK(c.collect() == "RSET\r\n");
  CHECK(c.server("250 ok\r\n") == "MAIL FROM:<alice@petrel.test> BODY=8BITMIME\r\n");
}

TEST_CASE("DATA and end-of-data refusals apply to the accepted recipients only") {
  {
    Client c(options());
    greet(c);
    c.s.begin(envelope({"b@x.test", "c@x.test"}));
    c.collect();
    c.server("250 ok\r\n250 ok\r\n550 5.1.1 nope\r\n");
    CHECK(c.server("451 4.3.0 not now\r\n").empty());
    const MessageResult& r = c.result();
    CHECK(r.recipients[0].verdict.outcome == Outcome::Deferred);
    CHECK(r.recipients[0].verdict.detail.find("(in reply to DATA command)") != std::string::npos);
    CHECK(r.recipients[1].verdict.outcome == Outcome::Bounced);
    CHECK(r.recipients[1].verdict.status == "5.1.1");
  }
  {
    Client c(options());
    greet(c);
    c.s.begin(envelope({"b@x.test"}));
    c.collect();
    c.server("250 ok\r\n250 ok\r\n");
    c.server("554 5.5.1 no valid recipients\r\n");
    CHECK(c.result().recipients[0].verdict.outcome == Outcome::Bounced);
  }
  {
    Client c(options());
    greet(c);
    c.s.begin(envelope({"b@x.test", "c@x.test"}));
    c.collect();
    c.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    c.s.body_sent();
    c.server("552 5.3.4 message too big\r\n");
    const MessageResult& r = c.result();
    for (const RecipientResult& rr : r.recipients) {
      CHECK(rr.verdict.outcome == Outcome::Bounced);
      CHECK(rr.verdict.status == "5.3.4");
      CHECK(rr.verdict.detail.find("(in reply to end of DATA command)") != std::string::npos);
    }
  }
}

TEST_CASE("SIZE too big and SMTPUTF8 missing are refused before any command") {
  Client c(options());
  greet(c);  // SIZE 1000, no SMTPUTF8
  REQUIRE(c.s.begin(envelope({"b@x.test", "c@x.test"}, 5000)));
  CHECK(c.collect().empty());
  const MessageResult& r = c.result();
  CHECK_FALSE(r.attempted);
  for (const RecipientResult& rr : r.recipients) {
    CHECK(rr.verdict.outcome == Outcome::Bounced);
    CHECK(rr.verdict.status == "5.3.4");
    CHECK(rr.code == 0);
  }
  CHECK(c.s.ready());

  Envelope u = envelope({"b@x.test"});
  u.smtputf8 = true;
  REQUIRE(c.s.begin(u));
  CHECK(c.collect().empty());
  CHECK(c.result().recipients[0].verdict.status == "5.6.7");
  CHECK(c.result().recipients[0].verdict.detail ==
        "SMTPUTF8 is required, but was not offered by host mx.test[127.0.0.1]");

  // The next real message needs no RSET: nothing was started.
  c.s.begin(envelope({"b@x.test"}));
  CHECK(c.collect().starts_with("MAIL FROM:"));
}

TEST_CASE("SMTPUTF8 and 8BITMIME parameters when offered") {
  Client c(options());
  greet(c, "250-mx\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 PIPELINING\r\n");
  Envelope e = envelope({"b@x.test"});
  e.smtputf8 = true;
  e.body_8bit = true;
  e.sender = "";
  c.s.begin(e);
  CHECK(c.collect() == "MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<b@x.test>\r\n");
}

TEST_CASE("addresses unfit for a command line are refused locally") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test\r\nDATA", "c@x.test"}));
  CHECK(c.collect() == "MAIL FROM:<alice@petrel.test> SIZE=100\r\nRCPT TO:<c@x.test>\r\n");
  c.server("250 ok\r\n250 ok\r\n354 go\r\n");
  c.s.body_sent();
  c.server("250 ok\r\n");
  const MessageResult& r = c.result();
  CHECK(r.recipients[0].verdict.outcome == Outcome::Bounced);
  CHECK(r.recipients[0].verdict.status == "5.1.3");
  CHECK(r.recipients[1].verdict.outcome == Outcome::Delivered);
}

TEST_CASE("a 421 in the middle defers the undecided recipients and ends the session") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test", "c@x.test"}));
  c.collect();
  CHECK(c.server("250 ok\r\n550 5.1.1 no\r\n421 4.4.2 bye\r\n").empty());
  CHECK(c.kinds().back() == Kind::Closed);
  const MessageResult& r = c.result();
  CHECK(r.recipients[0].verdict.outcome == Outcome::Bounced);
  CHECK(r.recipients[1].verdict.outcome == Outcome::Deferred);
  CHECK(r.recipients[1].code == 421);
  CHECK(c.s.closed());
}

TEST_CASE("lost connection after the final dot: deferred, may be sent twice") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test"}));
  c.collect();
  c.server("250 ok\r\n250 ok\r\n354 go\r\n");
  c.s.body_sent();
  c.s.connection_lost("Connection reset by peer");
  c.collect();
  const MessageResult& r = c.result();
  CHECK(r.recipients[0].verdict.outcome == Outcome::Deferred);
  CHECK(r.recipients[0].verdict.status == "4.4.2");
  CHECK(r.recipients[0].verdict.detail.find("may be sent more than once") != std::string::npos);
  CHECK(c.kinds().back() == Kind::Closed);
}

TEST_CASE("a reply in the middle of the body ends the message and the session") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test"}));
  c.collect();
  c.server("250 ok\r\n250 ok\r\n354 go\r\n");
  c.server("552 5.3.4 too much\r\n");
  CHECK(c.result().recipients[0].verdict.outcome == Outcome::Bounced);
  CHECK(c.kinds().back() == Kind::Closed);
}

TEST_CASE("abort during the body defers with the local reason") {
  Client c(options());
  greet(c);
  c.s.begin(envelope({"b@x.test"}));
  c.collect();
  c.server("250 ok\r\n250 ok\r\n354 go\r\n");
  c.s.abort("4.3.0", "cannot read queue file");
  c.collect();
  CHECK(c.result().recipients[0].verdict.status == "4.3.0");
  CHECK(c.result().recipients[0].verdict.detail == "cannot read queue file");
  CHECK(c.kinds().back() == Kind::Closed);
}

TEST_CASE("QUIT, and a server that drops an idle connection") {
  {
    Client c(options());
    greet(c);
    c.s.quit();
    CHECK(c.collect() == "QUIT\r\n");
    CHECK(c.s.waiting() == Wait::Quit);
    CHECK_FALSE(c.s.begin(envelope({"b@x.test"})));
    c.server("221 2.0.0 bye\r\n");
    const Event* e = c.last(Kind::Closed);
    REQUIRE(e);
    CHECK(e->failure.verdict.outcome == Outcome::Delivered);
    CHECK(c.s.closed());
  }
  {
    Client c(options());
    greet(c);
    c.server("421 4.4.2 idle timeout\r\n");
    const Event* e = c.last(Kind::Closed);
    REQUIRE(e);
    CHECK(e->failure.code == 421);
  }
}

// ---------------------------------------------------------------- data

std::string stuff(const std::vector<std::string>& chunks) {
  DotStuffer d;
  std::string out;
  for (const std::string& c : chunks) d.add(c, &out);
  d.finish(&out);
  return out;
}

TEST_CASE("DotStuffer: CRLF, dot-stuffing, across chunk boundaries") {
  CHECK(stuff({"a\n.b\n..c\nd.e\n"}) == "a\r\n..b\r\n...c\r\nd.e\r\n.\r\n");
  CHECK(stuff({".\n"}) == "..\r\n.\r\n");
  CHECK(stuff({"a\n", ".", "b\n"}) == "a\r\n..b\r\n.\r\n");
  CHECK(stuff({"a", "\n", ".b", "\n"}) == "a\r\n..b\r\n.\r\n");
  CHECK(stuff({"no final newline"}) == "no final newline\r\n.\r\n");
  CHECK(stuff({}) == ".\r\n");
  CHECK(stuff({"a\r\n.b\r", "\n"}) == "a\r\n..b\r\n.\r\n");  // CRLF taken as one line end
  CHECK(stuff({"a\rb\n"}) == "a\rb\r\n.\r\n");                 // a lone CR is kept
  CHECK(stuff({"end\r"}) == "end\r\n.\r\n");
  // Any chunking gives the same bytes.
  const std::string msg = "Subject: x\n\n.line\n..two\nmid.dot\n.\nlast";
  const std::string whole = stuff({msg});
  for (std::size_t cut = 0; cut <= msg.size(); ++cut)
    CHECK(stuff({msg.substr(0, cut), msg.substr(cut)}) == whole);
  std::vector<std::string> bytes;
  for (char ch : msg) bytes.emplace_back(1, ch);
  CHECK(stuff(bytes) == whole);
}

}  // namespace
}  // namespace petrel::delivery::smtp
