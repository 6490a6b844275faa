// STARTTLS and AUTH in the SMTP session (SPEC §5, RFC 3207, 4954, 4616),
// driven with strings and a fake Authenticator; the TLS handshake itself is
// the worker's, so tests call tls_started() where the worker would.
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/base64.h"
#include "petrel/smtpd/session.h"

using namespace petrel::smtpd;
using petrel::base64_encode;

namespace {

// local.test is ours; other domains are relayed for authenticated clients only.
class RelayPolicy : public Policy {
 public:
  RcptVerdict check_recipient(const Address& rcpt, const ClientInfo&, bool authenticated) override {
    last_authenticated = authenticated;
    if (rcpt.is_postmaster_only() || rcpt.domain == "local.test") return RcptVerdict::Ok;
    return authenticated ? RcptVerdict::Ok : RcptVerdict::RelayDenied;
  }
  bool last_authenticated = false;
};

class FakeSink : public MessageSink {
 public:
  Reply accept_message(const MessageInfo& info, std::string_view received,
                       std::string_view body) override {
    auth_users.push_back(info.auth_user);
    receiveds.emplace_back(received);
    bodies.emplace_back(body);
    return Reply{250, "2.0.0 Ok: queued as " + info.queue_id};
  }
  std::vector<std::string> auth_users, receiveds, bodies;
};

class FakeAuth : public Authenticator {
 public:
  bool enabled() const override { return !users.empty(); }
  bool verify(std::string_view user, std::string_view password) override {
    calls.emplace_back(user, password);
    auto it = users.find(std::string(user));
    return it != users.end() && it->second == password;
  }
  std::map<std::string, std::string> users{{"alice", "s3cret pw"}, {"bob", "hunter2"}};
  std::vector<std::pair<std::string, std::string>> calls;
};

SessionSettings settings(bool starttls = true, bool require_tls = true) {
  SessionSettings s;
  s.hostname = "mx.test";
  s.starttls_available = starttls;
  s.auth_require_tls = require_tls;
  s.max_errors = 20;
  return s;
}

ClientInfo client(petrel::config::ListenMode mode = petrel::config::ListenMode::Smtp,
                  bool tls = false) {
  ClientInfo c;
  c.ip = "192.0.2.7";
  c.port = 41000;
  c.mode = mode;
  if (tls) {
    c.tls = true;
    c.tls_version = "TLSv1.3";
    c.tls_cipher = "TLS_AES_256_GCM_SHA384";
  }
  return c;
}

struct Harness {
  explicit Harness(SessionSettings st = settings(), ClientInfo c = client())
      : session(std::move(st), std::move(c), policy, sink, &auth) {
    session.greeting();
    session.take_output();
  }
  std::string send(std::string_view bytes) {
    session.feed(bytes);
    return session.take_output();
  }
  // STARTTLS accepted and the (pretend) handshake done.
  void starttls() {
    REQUIRE(send("STARTTLS\r\n") == "220 2.0.0 Ready to start TLS\r\n");
    REQUIRE(session.wants_tls());
    session.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256");
    REQUIRE_FALSE(session.wants_tls());
  }
  std::set<std::string> ehlo_keywords() {
    std::set<std::string> kw;
    std::string out = send("EHLO client.test\r\n");
    size_t pos = 0;
    while (pos < out.size()) {
      size_t e = out.find("\r\n", pos);
      REQUIRE(e != std::string::npos);
      REQUIRE(out.compare(pos, 3, "250") == 0);
      kw.insert(out.substr(pos + 4, e - pos - 4));
      pos = e + 2;
    }
    return kw;
  }

  RelayPolicy policy;
  FakeSink sink;
  FakeAuth auth;
  Session session;
};

bool starts(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string plain(std::string_view authz, std::string_view user, std::string_view pw) {
  std::string raw(authz);
  raw += '\0';
  raw.append(user);
  raw += '\0';
  raw.append(pw);
  return base64_encode(raw);
}

const std::string kMsg = "From: alice@local.test\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nHi.\r\n.\r\n";

}  // namespace

TEST_CASE("auth: EHLO offers STARTTLS outside TLS and AUTH only inside it") {
  Harness h;
  auto kw = h.ehlo_keywords();
  CHECK(kw.count("STARTTLS") == 1);
  CHECK(kw.count("AUTH PLAIN LOGIN") == 0);
  h.starttls();
  kw = h.ehlo_keywords();
  CHECK(kw.count("STARTTLS") == 0);
  CHECK(kw.count("AUTH PLAIN LOGIN") == 1);

  SUBCASE("auth.require_tls false offers AUTH in plaintext") {
    Harness p(settings(true, false));
    CHECK(p.ehlo_keywords().count("AUTH PLAIN LOGIN") == 1);
  }
  SUBCASE("no TLS context: no STARTTLS, and the command is refused") {
    Harness n(settings(false));
    CHECK(n.ehlo_keywords().count("STARTTLS") == 0);
    CHECK(starts(n.send("STARTTLS\r\n"), "502 5.5.1"));
    CHECK_FALSE(n.session.wants_tls());
  }
  SUBCASE("no users configured: no AUTH, and AUTH is refused") {
    Harness n(settings(true, false));
    n.auth.users.clear();
    CHECK(n.ehlo_keywords().count("AUTH PLAIN LOGIN") == 0);
    CHECK(starts(n.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "503 5.5.1"));
  }
  SUBCASE("implicit TLS (submissions) offers AUTH and no STARTTLS") {
    Harness s(settings(false), client(petrel::config::ListenMode::Submissions, true));
    auto k = s.ehlo_keywords();
    CHECK(k.count("STARTTLS") == 0);
    CHECK(k.count("AUTH PLAIN LOGIN") == 1);
  }
}

TEST_CASE("auth: STARTTLS discards plaintext pipelined after it (CVE-2011-0411)") {
  Harness h;
  h.send("EHLO client.test\r\n");
  std::string out = h.send(
      "STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n");
  CHECK(out == "220 2.0.0 Ready to start TLS\r\n");
  REQUIRE(h.session.wants_tls());
  h.session.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256");
  CHECK(h.session.take_output().empty());
  // The pipelined MAIL was never executed: there is no transaction.
  CHECK(starts(h.send("EHLO client.test\r\n"), "250-mx.test"));
  CHECK(starts(h.send("RCPT TO:<alice@local.test>\r\n"), "503 5.5.1"));
  CHECK(h.sink.bodies.empty());
}

TEST_CASE("auth: STARTTLS refused inside TLS, during a transaction, and with an argument") {
  Harness h;
  h.send("EHLO client.test\r\n");
  CHECK(starts(h.send("STARTTLS now\r\n"), "501 5.5.4"));
  CHECK(h.send("MAIL FROM:<a@local.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(starts(h.send("STARTTLS\r\n"), "503 5.5.1"));
  CHECK_FALSE(h.session.wants_tls());
  h.send("RSET\r\n");
  h.starttls();
  h.send("EHLO client.test\r\n");
  CHECK(starts(h.send("STARTTLS\r\n"), "503 5.5.1"));
}

TEST_CASE("auth: tls_started resets the session (RFC 3207 4.2)") {
  Harness h(settings(true, false));
  h.send("EHLO client.test\r\n");
  // A plaintext AUTH (allowed here) is forgotten by the handshake too.
  CHECK(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n") ==
        "235 2.7.0 Authentication successful\r\n");
  h.starttls();
  CHECK(h.session.auth_user().empty());
  CHECK(starts(h.send("MAIL FROM:<a@local.test>\r\n"), "503 5.5.1"));
  h.send("EHLO client.test\r\n");
  CHECK(h.send("MAIL FROM:<a@local.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<x@remote.test>\r\n").rfind("554 5.7.1", 0) == 0);
  CHECK(h.session.client().tls);
  CHECK(h.session.client().tls_version == "TLSv1.3");
}

TEST_CASE("auth: AUTH before STARTTLS is 538 5.7.11 and not checked") {
  Harness h;
  h.send("EHLO client.test\r\n");
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "538 5.7.11"));
  CHECK(starts(h.send("AUTH LOGIN\r\n"), "538 5.7.11"));
  CHECK(h.auth.calls.empty());
  CHECK(h.session.auth_user().empty());
}

TEST_CASE("auth: AUTH needs EHLO and happens once, outside a transaction") {
  Harness h(settings(true, false));
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "503 5.5.1"));
  h.send("HELO client.test\r\n");
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "503 5.5.1"));
  h.send("EHLO client.test\r\n");
  h.send("MAIL FROM:<a@local.test>\r\n");
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "503 5.5.1"));
  h.send("RSET\r\n");
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "235 2.7.0"));
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "bob", "hunter2") + "\r\n"), "503 5.5.1"));
  CHECK(h.session.auth_user() == "alice");
  CHECK(starts(h.send("AUTH CRAM-MD5\r\n"), "503 5.5.1"));
}

TEST_CASE("auth: PLAIN") {
  Harness h;
  h.starttls();
  h.send("EHLO client.test\r\n");

  SUBCASE("initial response") {
    CHECK(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n") ==
          "235 2.7.0 Authentication successful\r\n");
  }
  SUBCASE("challenge, then response; mechanism name in any case") {
    CHECK(h.send("auth plain\r\n") == "334 \r\n");
    CHECK(h.send(plain("", "alice", "s3cret pw") + "\r\n") ==
          "235 2.7.0 Authentication successful\r\n");
  }
  SUBCASE("authzid equal to the user is accepted") {
    CHECK(starts(h.send("AUTH PLAIN " + plain("alice", "alice", "s3cret pw") + "\r\n"), "235"));
  }
  REQUIRE(h.session.auth_user() == "alice");
  REQUIRE(h.auth.calls.size() == 1);
  CHECK(h.auth.calls[0] == std::make_pair(std::string("alice"), std::string("s3cret pw")));

  // Authenticated: relay allowed, Received: says so and never shows the password.
  CHECK(h.send("MAIL FROM:<alice@local.test>\r\n") == "250 2.1.0 Ok\r\n");
  CHECK(h.send("RCPT TO:<x@remote.test>\r\n") == "250 2.1.5 Ok\r\n");
  CHECK(h.policy.last_authenticated);
  CHECK(starts(h.send("DATA\r\n"), "354"));
  CHECK(starts(h.send(kMsg), "250 2.0.0 Ok: queued as "));
  REQUIRE(h.sink.receiveds.size() == 1);
  const std::string& rcv = h.sink.receiveds[0];
  CHECK(rcv.find("(authenticated)") != std::string::npos);
  CHECK(rcv.find("ESMTPSA") != std::string::npos);
  CHECK(rcv.find("TLSv1.3") != std::string::npos);
  CHECK(rcv.find("TLS_AES_128_GCM_SHA256") != std::string::npos);
  CHECK(rcv.find("s3cret") == std::string::npos);
  CHECK(h.sink.bodies[0].find("s3cret") == std::string::npos);
  CHECK(h.sink.auth_users[0] == "alice");
}

TEST_CASE("auth: PLAIN refusals") {
  Harness h;
  h.starttls();
  h.send("EHLO client.test\r\n");
  SUBCASE("wrong password") {
    CHECK(h.send("AUTH PLAIN " + plain("", "alice", "wrong") + "\r\n") ==
          "535 5.7.8 Error: authentication failed\r\n");
  }
  SUBCASE("unknown user") {
    CHECK(starts(h.send("AUTH PLAIN " + plain("", "mallory", "s3cret pw") + "\r\n"), "535 5.7.8"));
  }
  SUBCASE("authzid naming someone else") {
    CHECK(starts(h.send("AUTH PLAIN " + plain("bob", "alice", "s3cret pw") + "\r\n"), "535 5.7.8"));
  }
  SUBCASE("empty user") {
    CHECK(starts(h.send("AUTH PLAIN " + plain("", "", "s3cret pw") + "\r\n"), "535 5.7.8"));
  }
  SUBCASE("bad base64") {
    CHECK(starts(h.send("AUTH PLAIN !!notbase64!!\r\n"), "501 5.5.2"));
    CHECK(starts(h.send("AUTH PLAIN\r\n"), "334"));
    CHECK(starts(h.send("####\r\n"), "501 5.5.2"));
  }
  SUBCASE("no NUL separators") {
    CHECK(starts(h.send("AUTH PLAIN " + base64_encode("alice s3cret pw") + "\r\n"), "501 5.5.2"));
  }
  SUBCASE("'*' cancels the exchange") {
    CHECK(h.send("AUTH PLAIN\r\n") == "334 \r\n");
    CHECK(starts(h.send("*\r\n"), "501 5.7.0"));
    CHECK(h.auth.calls.empty());
    // The session goes on and a later AUTH still works.
    CHECK(starts(h.send("NOOP\r\n"), "250"));
    CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "235"));
    return;
  }
  CHECK(h.session.auth_user().empty());
  CHECK_FALSE(h.session.closed());
  // Nothing authenticated, so no relaying.
  h.send("MAIL FROM:<alice@local.test>\r\n");
  CHECK(starts(h.send("RCPT TO:<x@remote.test>\r\n"), "554 5.7.1"));
}

TEST_CASE("auth: LOGIN") {
  Harness h;
  h.starttls();
  h.send("EHLO client.test\r\n");
  SUBCASE("two challenges") {
    CHECK(h.send("AUTH LOGIN\r\n") == "334 VXNlcm5hbWU6\r\n");
    CHECK(h.send(base64_encode("bob") + "\r\n") == "334 UGFzc3dvcmQ6\r\n");
    CHECK(h.send(base64_encode("hunter2") + "\r\n") == "235 2.7.0 Authentication successful\r\n");
    CHECK(h.session.auth_user() == "bob");
  }
  SUBCASE("initial response carries the user name") {
    CHECK(h.send("AUTH LOGIN " + base64_encode("bob") + "\r\n") == "334 UGFzc3dvcmQ6\r\n");
    CHECK(h.send(base64_encode("hunter2") + "\r\n") == "235 2.7.0 Authentication successful\r\n");
    CHECK(h.session.auth_user() == "bob");
  }
  SUBCASE("pipelined exchange in one write") {
    std::string out = h.send("AUTH LOGIN\r\n" + base64_encode("bob") + "\r\n" +
                             base64_encode("hunter2") + "\r\n");
    CHECK(out == "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n");
  }
  SUBCASE("wrong password") {
    h.send("AUTH LOGIN\r\n");
    h.send(base64_encode("bob") + "\r\n");
    CHECK(starts(h.send(base64_encode("hunter3") + "\r\n"), "535 5.7.8"));
    CHECK(h.session.auth_user().empty());
  }
  SUBCASE("'*' at the user or the password prompt") {
    h.send("AUTH LOGIN\r\n");
    CHECK(starts(h.send("*\r\n"), "501 5.7.0"));
    h.send("AUTH LOGIN\r\n");
    h.send(base64_encode("bob") + "\r\n");
    CHECK(starts(h.send("*\r\n"), "501 5.7.0"));
    CHECK(h.auth.calls.empty());
    CHECK(h.session.auth_user().empty());
  }
  SUBCASE("bad base64 at the password prompt") {
    h.send("AUTH LOGIN\r\n");
    h.send(base64_encode("bob") + "\r\n");
    CHECK(starts(h.send("a=b=\r\n"), "501 5.5.2"));
    CHECK(h.auth.calls.empty());
  }
  // After any exchange, commands are commands again.
  CHECK(starts(h.send("NOOP\r\n"), "250"));
}

TEST_CASE("auth: three failures, then the next AUTH gets 421 and the session closes") {
  Harness h;
  h.starttls();
  h.send("EHLO client.test\r\n");
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "x1") + "\r\n"), "535 5.7.8"));
  h.send("AUTH LOGIN\r\n");
  h.send(base64_encode("alice") + "\r\n");
  CHECK(starts(h.send(base64_encode("x2") + "\r\n"), "535 5.7.8"));
  CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "x3") + "\r\n"), "535 5.7.8"));
  CHECK_FALSE(h.session.closed());
  // Even the right password is not tried any more.
  std::string out = h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n");
  CHECK(starts(out, "421 4.7.0"));
  CHECK(h.session.closed());
  CHECK(h.auth.calls.size() == 3);
  CHECK(h.send("NOOP\r\n").empty());
}

TEST_CASE("auth: MAIL needs AUTH on submission listeners (530 5.7.0)") {
  for (auto mode : {petrel::config::ListenMode::Submission, petrel::config::ListenMode::Submissions}) {
    bool implicit = mode == petrel::config::ListenMode::Submissions;
    Harness h(settings(!implicit), client(mode, implicit));
    if (!implicit) h.starttls();
    h.send("EHLO client.test\r\n");
    CHECK(starts(h.send("MAIL FROM:<alice@local.test>\r\n"), "530 5.7.0"));
    CHECK(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "235"));
    CHECK(h.send("MAIL FROM:<alice@local.test>\r\n") == "250 2.1.0 Ok\r\n");
  }
  // Not on smtp listeners.
  Harness s;
  s.send("EHLO client.test\r\n");
  CHECK(s.send("MAIL FROM:<alice@local.test>\r\n") == "250 2.1.0 Ok\r\n");
}

TEST_CASE("auth: submission adds missing Date: and Message-ID:, smtp does not") {
  const std::string bare = "From: alice@local.test\r\nSubject: s\r\n\r\nHi.\r\n.\r\n";
  const std::string full =
      "From: alice@local.test\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
      "Message-ID: <x@client.test>\r\n\r\nHi.\r\n.\r\n";
  auto deliver = [&](Harness& h, const std::string& msg) {
    h.send("EHLO client.test\r\n");
    if (h.session.client().mode != petrel::config::ListenMode::Smtp) {
      if (!h.session.client().tls) {
        h.starttls();
        h.send("EHLO client.test\r\n");
      }
      REQUIRE(starts(h.send("AUTH PLAIN " + plain("", "alice", "s3cret pw") + "\r\n"), "235"));
    }
    REQUIRE(h.send("MAIL FROM:<alice@local.test>\r\n") == "250 2.1.0 Ok\r\n");
    REQUIRE(h.send("RCPT TO:<bob@local.test>\r\n") == "250 2.1.5 Ok\r\n");
    REQUIRE(starts(h.send("DATA\r\n"), "354"));
    REQUIRE(starts(h.send(msg), "250 2.0.0"));
    return h.sink.bodies.back();
  };
  Harness sub(settings(), client(petrel::config::ListenMode::Submission));
  std::string body = deliver(sub, bare);
  CHECK(starts(body, "Date: "));
  CHECK(body.find("\nMessage-ID: <") != std::string::npos);
  CHECK(body.find("@mx.test>\n") != std::string::npos);
  CHECK(body.find("\n\nHi.\n") != std::string::npos);

  Harness sub2(settings(), client(petrel::config::ListenMode::Submission));
  body = deliver(sub2, full);
  CHECK(body == "From: alice@local.test\nDate: Mon, 01 Jan 2024 00:00:00 +0000\n"
                "Message-ID: <x@client.test>\n\nHi.\n");

  Harness smtp;
  body = deliver(smtp, bare);
  CHECK(body == "From: alice@local.test\nSubject: s\n\nHi.\n");
}
