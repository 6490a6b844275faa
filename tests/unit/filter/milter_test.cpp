// The milter client against a scripted milter on a unix (or TCP) socket in a
// thread. The fake records every packet; each test asserts the conversation
// on the wire and the verdict the chain would get.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/filter/milter.h"

#include "../common/temp_files.h"

namespace petrel::filter {
namespace {

using namespace milter;
using namespace std::string_literals;
using std::chrono::milliseconds;

using petrel::testing::TempDir;

std::string u32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// A scripted milter. Unless `handler` answers a packet itself (returns
// true), it answers every step that wants a reply with 'c' and the end of
// the message with `eom` then `eom_final`. Every wait is bounded, so a
// broken client fails the test instead of hanging it.
class FakeMilter {
 public:
  using Handler = std::function<bool(FakeMilter&, const Packet&)>;

  std::uint32_t version = 6;
  std::uint32_t actions = kAllActions;
  std::uint32_t protocol = 0;
  std::string optneg_extra;  // raw bytes after the three words (macro lists)
  std::vector<Packet> eom;
  Packet eom_final{kContinue, ""};
  Handler handler;
  int max_connections = 1;

  // On a unix socket in `dir`, or on 127.0.0.1 when dir is empty.
  explicit FakeMilter(const std::string& dir) {
    if (!dir.empty()) {
      address_ = "unix:" + dir + "/milter.sock";
      listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      std::strncpy(sun.sun_path, (dir + "/milter.sock").c_str(), sizeof sun.sun_path - 1);
      ok_ = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0;
    } else {
      listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in sin{};
      sin.sin_family = AF_INET;
      sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof sin;
      ok_ = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0 &&
            ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&sin), &len) == 0;
      address_ = "inet:127.0.0.1:" + std::to_string(ntohs(sin.sin_port));
    }
    ok_ = ok_ && ::listen(listen_.get(), 4) == 0;
  }
  ~FakeMilter() { join(); }

  bool ok() const { return ok_; }
  const std::string& address() const { return address_; }
  void start() { thread_ = std::thread([this] { serve(); }); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  // For handlers.
  void send(char code, std::string_view data = {}) { send_raw(encode_packet(code, data)); }
  void send_raw(std::string_view bytes) { (void)write_all(conn_.get(), bytes); }
  void hang() { hanging_ = true; }       // answer nothing more; wait for the client to leave
  void hang_up() { hung_up_ = true; }    // close the connection now
  static void pause(int ms) { std::this_thread::sleep_for(milliseconds(ms)); }

  // Valid after join().
  std::vector<Packet> received;  // every packet of every connection
  std::vector<std::string> offers;  // the OPTNEG data of each connection
  int connections = 0;

  // The commands, without macros and negotiation: "CHMRTLNBEAQ".
  std::string codes() const {
    std::string s;
    for (const Packet& p : received)
      if (p.code != kMacro && p.code != kOptNeg) s += p.code;
    return s;
  }
  std::vector<Packet> all(char code) const {
    std::vector<Packet> out;
    for (const Packet& p : received)
      if (p.code == code) out.push_back(p);
    return out;
  }
  // The macros of the last SMFIC_MACRO packet for a stage command.
  std::map<std::string, std::string> macros(char stage) const {
    std::map<std::string, std::string> out;
    for (const Packet& p : received) {
      if (p.code != kMacro || p.data.empty() || p.data[0] != stage) continue;
      out.clear();
      std::size_t pos = 1;
      while (pos < p.data.size()) {
        const std::size_t a = p.data.find('\0', pos);
        const std::size_t b = p.data.find('\0', a + 1);
        if (a == std::string::npos || b == std::string::npos) break;
        out[p.data.substr(pos, a - pos)] = p.data.substr(a + 1, b - a - 1);
        pos = b + 1;
      }
    }
    return out;
  }

 private:
  static constexpr int kWaitMs = 10'000;

  void serve() {
    for (int i = 0; i < max_connections; ++i) {
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, kWaitMs) != 1) return;
      conn_.reset(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn_) return;
      ++connections;
      in_.clear();
      hanging_ = hung_up_ = false;
      converse();
      conn_.reset();
    }
  }

  void converse() {
    Packet p;
    while (read_packet(&p)) {
      received.push_back(p);
      if (hanging_) continue;
      if (p.code == kOptNeg) {
        offers.push_back(p.data);
        send(kOptNeg, u32(version) + u32(actions) + u32(protocol) + optneg_extra);
        continue;
      }
      if (p.code == kQuit) return;
      if (!(handler && handler(*this, p))) answer(p);
      if (hung_up_) return;
    }
  }

  void answer(const Packet& p) {
    auto reply_unless = [&](std::uint32_t nr) {
      if ((protocol & nr) == 0) send(kContinue);
    };
    switch (p.code) {
      case kConnect: reply_unless(kNrConnect); break;
      case kHelo: reply_unless(kNrHelo); break;
      case kMail: reply_unless(kNrMail); break;
      case kRcpt: reply_unless(kNrRcpt); break;
      case kData: reply_unless(kNrData); break;
      case kHeader: reply_unless(kNrHeader); break;
      case kEndOfHeaders: reply_unless(kNrEndOfHeaders); break;
      case kBody: reply_unless(kNrBody); break;
      case kEndOfBody:
        for (const Packet& r : eom) send(r.code, r.data);
        send(eom_final.code, eom_final.data);
        break;
      default: break;  // macros, abort: no reply
    }
  }

  bool read_packet(Packet* p) {
    for (;;) {
      std::size_t used = 0;
      const DecodeStatus st = decode_packet(in_, 1u << 20, p, &used);
      if (st == DecodeStatus::Ok) {
        in_.erase(0, used);
        return true;
      }
      if (st == DecodeStatus::Bad) return false;
      pollfd pf{conn_.get(), POLLIN, 0};
      if (::poll(&pf, 1, kWaitMs) != 1) return false;
      char buf[65536];
      const ssize_t n = ::read(conn_.get(), buf, sizeof buf);
      if (n <= 0) return false;
      in_.append(buf, static_cast<std::size_t>(n));
    }
  }

  UniqueFd listen_, conn_;
  std::string address_;
  bool ok_ = false;
  std::string in_;
  bool hanging_ = false;
  bool hung_up_ = false;
  std::thread thread_;
};

constexpr const char* kMessage =
    "Received: from client.example ([192.0.2.7])\n\tby mx.example.org with ESMTP id Q123\n"
    "From: Alice <alice@example.org>\n"
    "Subject: hello\n"
    "\n"
    "Hi Bob,\n.\nbye\n";

Envelope envelope() {
  Envelope e;
  e.queue_id = "Q123";
  e.sender = "alice@example.org";
  e.recipients = {"bob@example.net"};
  e.client_ip = "192.0.2.7";
  e.client_port = 40000;
  e.helo = "client.example";
  e.hostname = "mx.example.org";
  return e;
}

config::Filter filter_config(const FakeMilter& m, config::OnError on_error = config::OnError::Tempfail) {
  config::Filter f;
  f.name = "test-milter";
  f.kind = config::FilterKind::Milter;
  f.milter = m.address();
  f.on_error = on_error;
  return f;
}

MilterTimeouts quick(int command_ms = 3000, int content_ms = 3000) {
  MilterTimeouts t;
  t.connect = milliseconds(3000);
  t.command = milliseconds(command_ms);
  t.content = milliseconds(content_ms);
  return t;
}

struct Fixture {
  TempDir dir;
  FakeMilter milter{dir.path()};
};

// Runs one scan against the fake and returns its verdict; the fake's record
// is complete afterwards (the filter said QUIT).
Verdict scan_once(FakeMilter& m, const Envelope& env = envelope(),
                  std::string_view message = kMessage, MilterTimeouts t = quick(),
                  config::OnError on_error = config::OnError::Tempfail) {
  REQUIRE(m.ok());
  m.start();
  auto f = make_milter_filter(filter_config(m, on_error), t);
  Verdict v = f->scan(env, message);
  f->close();
  m.join();
  return v;
}

TEST_CASE("milter: timeouts follow SPEC §8 and the filter's timeout") {
  config::Filter f;
  MilterTimeouts t = MilterTimeouts::from_config(f);
  CHECK(t.connect == milliseconds(30'000));
  CHECK(t.command == milliseconds(30'000));
  CHECK(t.content == milliseconds(300'000));
  f.timeout = 600;
  t = MilterTimeouts::from_config(f);
  CHECK(t.command == milliseconds(30'000));
  CHECK(t.content == milliseconds(600'000));
  f.timeout = 5;
  t = MilterTimeouts::from_config(f);
  CHECK(t.connect == milliseconds(5'000));
  CHECK(t.command == milliseconds(5'000));
  CHECK(t.content == milliseconds(5'000));
}

TEST_CASE("milter: a scan is the whole conversation, with macros, then QUIT") {
  Fixture fx;
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Continue);
  FakeMilter& m = fx.milter;
  CHECK(m.codes() == "CHMRTLLLNBEAQ");
  REQUIRE(m.offers.size() == 1);
  CHECK(m.offers[0] == u32(6) + u32(0x1FF) + u32(0x1FFFFF));

  CHECK(m.all(kConnect)[0].data == "[192.0.2.7]\0" "4\x9c\x40" "192.0.2.7\0"s);
  CHECK(m.all(kHelo)[0].data == "client.example\0"s);
  CHECK(m.all(kMail)[0].data == "<alice@example.org>\0"s);
  CHECK(m.all(kRcpt)[0].data == "<bob@example.net>\0"s);

  const auto headers = m.all(kHeader);
  REQUIRE(headers.size() == 3);
  // Value as in the message minus "Name:" and one space; folding kept as LF.
  CHECK(headers[0].data ==
        "Received\0from client.example ([192.0.2.7])\n\tby mx.example.org with ESMTP id Q123\0"s);
  CHECK(headers[1].data == "From\0Alice <alice@example.org>\0"s);
  CHECK(headers[2].data == "Subject\0hello\0"s);
  CHECK(m.all(kBody)[0].data == "Hi Bob,\r\n.\r\nbye\r\n");
  CHECK(m.all(kEndOfBody)[0].data.empty());

  const auto conn = m.macros(kConnect);
  CHECK(conn.at("j") == "mx.example.org");
  CHECK(conn.at("{daemon_name}") == "petrel");
  CHECK(conn.at("_") == "unknown [192.0.2.7]");
  CHECK(conn.at("{client_addr}") == "192.0.2.7");
  CHECK(conn.at("{client_port}") == "40000");
  CHECK(m.macros(kMail).at("i") == "Q123");
  CHECK(m.macros(kMail).at("{mail_addr}") == "alice@example.org");
  CHECK(m.macros(kMail).count("{auth_authen}") == 0);  // not authenticated: not defined
  CHECK(m.macros(kRcpt).at("{rcpt_addr}") == "bob@example.net");
  CHECK(m.macros(kData).at("i") == "Q123");
  CHECK(m.macros(kEndOfHeaders).at("i") == "Q123");
  CHECK(m.macros(kEndOfBody).at("i") == "Q123");
  CHECK(m.macros(kHelo).empty());  // no TLS: no TLS macros, no packet
}

TEST_CASE("milter: TLS and AUTH macros; a unix-socket client is family 'U'") {
  Fixture fx;
  Envelope e = envelope();
  e.client_ip.clear();
  e.client_port = 0;
  e.tls = true;
  e.tls_version = "TLSv1.3";
  e.tls_cipher = "TLS_AES_256_GCM_SHA384";
  e.auth_user = "alice";
  scan_once(fx.milter, e);
  CHECK(fx.milter.all(kConnect)[0].data == "localhost\0U"s);
  CHECK(fx.milter.macros(kConnect).count("{client_addr}") == 0);
  CHECK(fx.milter.macros(kHelo).at("{tls_version}") == "TLSv1.3");
  CHECK(fx.milter.macros(kHelo).at("{cipher}") == "TLS_AES_256_GCM_SHA384");
  CHECK(fx.milter.macros(kMail).at("{auth_authen}") == "alice");
}

TEST_CASE("milter: NO* steps are not sent, their macros still are") {
  Fixture fx;
  fx.milter.protocol = kNoConnect | kNoHelo | kNoMail | kNoRcpt | kNoData | kNoHeaders |
                       kNoEndOfHeaders | kNoBody;
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Continue);
  CHECK(fx.milter.codes() == "EAQ");
  CHECK(fx.milter.macros(kConnect).at("j") == "mx.example.org");
  CHECK(fx.milter.macros(kRcpt).at("{rcpt_addr}") == "bob@example.net");
}

TEST_CASE("milter: NR* steps are not waited for") {
  Fixture fx;
  fx.milter.protocol = kNrConnect | kNrHelo | kNrMail | kNrRcpt | kNrData | kNrHeader |
                       kNrEndOfHeaders | kNrBody;
  // The fake sends nothing for those; a client that waited would time out.
  const Verdict v = scan_once(fx.milter, envelope(), kMessage, quick(500, 500));
  CHECK(v.action == Action::Continue);
  CHECK(v.detail.empty());
  CHECK(fx.milter.codes() == "CHMRTLLLNBEAQ");
}

TEST_CASE("milter: a version 2 milter gets no DATA and no DATA/EOH macros") {
  Fixture fx;
  fx.milter.version = 2;
  fx.milter.actions = 0x3F;
  scan_once(fx.milter);
  CHECK(fx.milter.codes() == "CHMRLLLNBEAQ");
  CHECK(fx.milter.macros(kData).empty());
  CHECK(fx.milter.macros(kEndOfHeaders).empty());
  CHECK(fx.milter.macros(kEndOfBody).at("i") == "Q123");
}

TEST_CASE("milter: the macro lists a milter asks for are honoured") {
  Fixture fx;
  fx.milter.optneg_extra = u32(0) + "{client_addr} j {unknown}\0"s + u32(3) + "{rcpt_addr} i j\0"s;
  scan_once(fx.milter);
  const auto conn = fx.milter.macros(kConnect);
  CHECK(conn.size() == 2);
  CHECK(conn.at("{client_addr}") == "192.0.2.7");
  CHECK(conn.at("j") == "mx.example.org");
  CHECK(fx.milter.macros(kRcpt).size() == 3);
  CHECK(fx.milter.macros(kMail).at("i") == "Q123");  // stages it did not name keep ours
}

TEST_CASE("milter: HDR_LEADSPC sends values with their leading space and expects them back") {
  Fixture fx;
  fx.milter.protocol = kHeaderLeadingSpace;
  fx.milter.eom = {{kAddHeader, "X-Test\0 spaced value\0"s}};
  const Verdict v = scan_once(fx.milter);
  CHECK(fx.milter.all(kHeader)[2].data == "Subject\0 hello\0"s);
  REQUIRE(v.headers.size() == 1);
  CHECK(v.headers[0].value == " spaced value");  // the chain writes "Name:" + value
}

TEST_CASE("milter: the per-stage hooks send their stage once; scan goes on from DATA") {
  Fixture fx;
  FakeMilter& m = fx.milter;
  m.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code == kRcpt && p.data.starts_with("<carol")) {
      f.send(kReplyCode, "550 5.7.1 not carol\0"s);
      return true;
    }
    if (p.code == kRcpt && p.data.starts_with("<dave")) {
      f.send(kTempfail);
      return true;
    }
    return false;
  };
  m.start();
  auto f = make_milter_filter(filter_config(m), quick());
  Envelope e = envelope();
  CHECK_FALSE(f->on_connect(e));
  CHECK_FALSE(f->on_helo(e));
  CHECK_FALSE(f->on_mail(e));
  CHECK_FALSE(f->on_rcpt(e, "bob@example.net"));
  const auto carol = f->on_rcpt(e, "carol@example.net");
  REQUIRE(carol);
  CHECK(carol->action == Action::Reject);
  CHECK(carol->reply == "550 5.7.1 not carol");
  const auto dave = f->on_rcpt(e, "dave@example.net");
  REQUIRE(dave);
  CHECK(dave->action == Action::Tempfail);
  CHECK(dave->reply.empty());
  const Verdict v = f->scan(e, kMessage);
  f->close();
  m.join();
  CHECK(v.action == Action::Continue);
  CHECK(m.codes() == "CHMRRRTLLLNBEAQ");
}

TEST_CASE("milter: scan without the RCPT hook sends the recipients; refusals drop them") {
  Fixture fx;
  fx.milter.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code == kRcpt && p.data.starts_with("<carol")) {
      f.send(kReject);
      return true;
    }
    return false;
  };
  Envelope e = envelope();
  e.recipients = {"bob@example.net", "carol@example.net"};
  const Verdict v = scan_once(fx.milter, e);
  CHECK(v.action == Action::Continue);
  CHECK(v.delete_recipients == std::vector<std::string>{"carol@example.net"});
  CHECK(fx.milter.codes() == "CHMRRTLLLNBEAQ");
}

TEST_CASE("milter: every recipient refused refuses the message") {
  Fixture fx;
  fx.milter.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code != kRcpt) return false;
    f.send(kReplyCode, "550 5.1.1 no such user\0"s);
    return true;
  };
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Reject);
  CHECK(v.reply == "550 5.1.1 no such user");
  CHECK(v.delete_recipients.empty());
  CHECK(fx.milter.codes() == "CHMRAQ");
}

TEST_CASE("milter: end-of-message decisions") {
  struct Case {
    Packet final;
    Action action;
    std::string reply;
  };
  const std::vector<Case> cases = {
      {{kReject, ""}, Action::Reject, ""},
      {{kTempfail, ""}, Action::Tempfail, ""},
      {{kDiscard, ""}, Action::Discard, ""},
      {{kAccept, ""}, Action::Continue, ""},
      {{kReplyCode, "554 5.7.1 Spam detected\0"s}, Action::Reject, "554 5.7.1 Spam detected"},
      {{kReplyCode, "451 4.7.1 Greylisted\0"s}, Action::Tempfail, "451 4.7.1 Greylisted"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.final.code);
    Fixture fx;
    fx.milter.eom_final = c.final;
    const Verdict v = scan_once(fx.milter);
    CHECK(v.action == c.action);
    CHECK(v.reply == c.reply);
    CHECK(fx.milter.codes() == "CHMRTLLLNBEAQ");
  }
}

TEST_CASE("milter: after an accept or a discard nothing more is sent for the message") {
  for (char stage : {kData, kHeader, kEndOfHeaders, kBody}) {
    for (char answer : {kAccept, kDiscard}) {
      CAPTURE(stage);
      CAPTURE(answer);
      Fixture fx;
      fx.milter.handler = [&](FakeMilter& f, const Packet& p) {
        if (p.code != stage) return false;
        f.send(answer);
        return true;
      };
      const Verdict v = scan_once(fx.milter);
      CHECK(v.action == (answer == kAccept ? Action::Continue : Action::Discard));
      const std::string codes = fx.milter.codes();
      // The stage answered, then only ABORT and QUIT.
      CHECK(codes.substr(codes.find(stage == kHeader ? 'L' : stage)) ==
            std::string(1, stage) + "AQ");
    }
  }
}

TEST_CASE("milter: accept or discard at RCPT: scan sends no DATA") {
  for (char answer : {kAccept, kDiscard}) {
    CAPTURE(answer);
    Fixture fx;
    fx.milter.handler = [&](FakeMilter& f, const Packet& p) {
      if (p.code != kRcpt) return false;
      f.send(answer);
      return true;
    };
    fx.milter.start();
    auto f = make_milter_filter(filter_config(fx.milter), quick());
    Envelope e = envelope();
    CHECK_FALSE(f->on_mail(e));
    CHECK_FALSE(f->on_rcpt(e, "bob@example.net"));
    const Verdict v = f->scan(e, kMessage);
    f->close();
    fx.milter.join();
    CHECK(v.action == (answer == kAccept ? Action::Continue : Action::Discard));
    CHECK(fx.milter.codes() == "CHMRAQ");
  }
}

TEST_CASE("milter: reject at CONNECT refuses the session; accept at CONNECT silences it") {
  {
    Fixture fx;
    fx.milter.handler = [](FakeMilter& f, const Packet& p) {
      if (p.code != kConnect) return false;
      f.send(kReplyCode, "554 5.7.1 go away\0"s);
      return true;
    };
    fx.milter.start();
    auto f = make_milter_filter(filter_config(fx.milter), quick());
    const auto c = f->on_connect(envelope());
    REQUIRE(c);
    CHECK(c->action == Action::Reject);
    const auto h = f->on_helo(envelope());
    REQUIRE(h);
    CHECK(h->reply == "554 5.7.1 go away");
    const Verdict v = f->scan(envelope(), kMessage);
    CHECK(v.action == Action::Reject);
    f->close();
    fx.milter.join();
    CHECK(fx.milter.codes() == "CQ");
  }
  {
    Fixture fx;
    fx.milter.handler = [](FakeMilter& f, const Packet& p) {
      if (p.code != kConnect) return false;
      f.send(kAccept);
      return true;
    };
    fx.milter.start();
    auto f = make_milter_filter(filter_config(fx.milter), quick());
    CHECK_FALSE(f->on_connect(envelope()));
    CHECK_FALSE(f->on_mail(envelope()));
    CHECK(f->scan(envelope(), kMessage).action == Action::Continue);
    f->close();
    fx.milter.join();
    CHECK(fx.milter.codes() == "CQ");
  }
}

TEST_CASE("milter: SKIP stops the body; a 200 KiB body goes in chunks of at most 65535") {
  std::string big = "Subject: big\n\n";
  std::string body;
  for (int i = 0; body.size() < 200 * 1024; ++i) body += "line " + std::to_string(i) + "\n";
  big += body;
  std::string crlf;
  for (char c : body) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  {
    Fixture fx;
    scan_once(fx.milter, envelope(), big);
    const auto chunks = fx.milter.all(kBody);
    CHECK(chunks.size() == 4);
    std::string joined;
    for (const Packet& c : chunks) {
      CHECK(c.data.size() <= 65535);
      joined += c.data;
    }
    CHECK(joined == crlf);
  }
  {
    Fixture fx;
    fx.milter.handler = [](FakeMilter& f, const Packet& p) {
      if (p.code != kBody) return false;
      f.send(kSkip);
      return true;
    };
    const Verdict v = scan_once(fx.milter, envelope(), big);
    CHECK(v.action == Action::Continue);
    CHECK(fx.milter.codes() == "CHMRTLNBEAQ");
  }
}

TEST_CASE("milter: PROGRESS keeps the client waiting past the content timeout") {
  Fixture fx;
  fx.milter.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code != kEndOfBody) return false;
    for (int i = 0; i < 3; ++i) {
      FakeMilter::pause(250);
      f.send(kProgress);
    }
    FakeMilter::pause(250);
    f.send(kAddHeader, "X-Slow\0yes\0"s);
    f.send(kContinue);
    return true;
  };
  const Verdict v = scan_once(fx.milter, envelope(), kMessage, quick(3000, 600));
  CHECK(v.action == Action::Continue);
  REQUIRE(v.headers.size() == 1);
  CHECK(v.headers[0].name == "X-Slow");
}

TEST_CASE("milter: header changes") {
  Fixture fx;
  fx.milter.eom = {
      {kAddHeader, "X-Spam-Flag\0NO\0"s},
      {kAddHeader, "DKIM-Signature\0v=1; a=rsa-sha256;\r\n\tb=abc\0"s},
      {kInsertHeader, u32(0) + "Authentication-Results\0mx; dkim=pass\0"s},
      {kChangeHeader, u32(2) + "Subject\0[SPAM] hello\0"s},
      {kChangeHeader, u32(0) + "X-Old\0\0"s},
  };
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Continue);
  REQUIRE(v.headers.size() == 5);
  CHECK(v.headers[0].kind == HeaderOp::Kind::Add);
  CHECK(v.headers[0].name == "X-Spam-Flag");
  CHECK(v.headers[0].value == "NO");
  CHECK(v.headers[1].value == "v=1; a=rsa-sha256;\n\tb=abc");
  CHECK(v.headers[2].kind == HeaderOp::Kind::Insert);
  CHECK(v.headers[2].index == 0);
  CHECK(v.headers[3].kind == HeaderOp::Kind::Change);
  CHECK(v.headers[3].index == 2);
  CHECK(v.headers[3].value == "[SPAM] hello");
  CHECK(v.headers[4].kind == HeaderOp::Kind::Change);
  CHECK(v.headers[4].index == 1);  // sendmail reads index 0 as 1
  CHECK(v.headers[4].value.empty());  // = delete
}

TEST_CASE("milter: body replacement, recipients, sender, quarantine") {
  Fixture fx;
  fx.milter.eom = {
      {kReplaceBody, "new body\r\nline"s},
      {kReplaceBody, " two\r\n"s},
      {kAddRcpt, "<carol@example.net>\0"s},
      {kAddRcptPar, "<dave@example.net>\0NOTIFY=NEVER\0"s},
      {kDelRcpt, "<bob@example.net>\0"s},
      {kChangeFrom, "<bounces@example.org>\0"s},
      {kQuarantine, "looks like malware\0"s},
  };
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Continue);
  REQUIRE(v.new_body);
  CHECK(*v.new_body == "new body\nline two\n");
  CHECK(v.add_recipients == std::vector<std::string>{"carol@example.net", "dave@example.net"});
  CHECK(v.delete_recipients == std::vector<std::string>{"bob@example.net"});
  REQUIRE(v.new_sender);
  CHECK(*v.new_sender == "bounces@example.org");
  CHECK(v.quarantine);
  CHECK(v.quarantine_reason == "looks like malware");
}

TEST_CASE("milter: changes the milter did not negotiate are ignored") {
  Fixture fx;
  fx.milter.actions = kActAddHeaders;
  fx.milter.eom = {{kAddHeader, "X-A\0a\0"s}, {kDelRcpt, "<bob@example.net>\0"s},
                   {kReplaceBody, "x"s}};
  const Verdict v = scan_once(fx.milter);
  CHECK(v.action == Action::Continue);
  CHECK(v.headers.size() == 1);
  CHECK(v.delete_recipients.empty());
  CHECK_FALSE(v.new_body);
}

TEST_CASE("milter: anomalies close the socket and apply on_error for the session") {
  struct Case {
    const char* what;
    FakeMilter::Handler handler;
  };
  const std::vector<Case> cases = {
      {"zero length", [](FakeMilter& f, const Packet& p) {
         if (p.code != kRcpt) return false;
         f.send_raw("\0\0\0\0"s);
         return true;
       }},
      {"huge length", [](FakeMilter& f, const Packet& p) {
         if (p.code != kRcpt) return false;
         f.send_raw("\x7f\0\0\0c"s);
         return true;
       }},
      {"unknown reply", [](FakeMilter& f, const Packet& p) {
         if (p.code != kRcpt) return false;
         f.send('Z');
         return true;
       }},
      {"change before end of message", [](FakeMilter& f, const Packet& p) {
         if (p.code != kRcpt) return false;
         f.send(kAddHeader, "X-A\0b\0"s);
         return true;
       }},
      {"bad reply code", [](FakeMilter& f, const Packet& p) {
         if (p.code != kRcpt) return false;
         f.send(kReplyCode, "250 ok\0"s);
         return true;
       }},
      {"EOF mid-message", [](FakeMilter& f, const Packet& p) {
         if (p.code != kHeader) return false;
         f.hang_up();
         return true;
       }},
      {"bad negotiation", [](FakeMilter& f, const Packet& p) {
         (void)f;
         (void)p;
         return false;
       }},
  };
  for (const Case& c : cases) {
    for (auto on_error : {config::OnError::Tempfail, config::OnError::Accept,
                          config::OnError::Reject}) {
      CAPTURE(c.what);
      CAPTURE(static_cast<int>(on_error));
      Fixture fx;
      fx.milter.handler = c.handler;
      if (std::string(c.what) == "bad negotiation") fx.milter.version = 9;
      fx.milter.start();
      auto f = make_milter_filter(filter_config(fx.milter, on_error), quick());
      const Verdict v = f->scan(envelope(), kMessage);
      const Action expected = on_error == config::OnError::Tempfail ? Action::Tempfail
                              : on_error == config::OnError::Reject ? Action::Reject
                                                                    : Action::Continue;
      CHECK(v.action == expected);
      CHECK(v.detail.starts_with("milter error: "));
      // The rest of the session answers on_error without a new connection.
      f->reset();
      const auto r = f->on_rcpt(envelope(), "x@example.net");
      CHECK(r.has_value() == (on_error != config::OnError::Accept));
      CHECK(f->scan(envelope(), kMessage).action == expected);
      f->close();
      fx.milter.join();
      CHECK(fx.milter.connections == 1);
      CHECK(fx.milter.codes().find('Q') == std::string::npos);  // no QUIT on a broken socket
    }
  }
}

TEST_CASE("milter: a milter that hangs times out into on_error") {
  Fixture fx;
  fx.milter.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code != kRcpt) return false;
    f.hang();
    return true;
  };
  const auto start = std::chrono::steady_clock::now();
  const Verdict v = scan_once(fx.milter, envelope(), kMessage, quick(300, 3000));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail.find("timed out") != std::string::npos);
  CHECK(took < std::chrono::seconds(3));
}

TEST_CASE("milter: the end of message has the content timeout") {
  Fixture fx;
  fx.milter.handler = [](FakeMilter& f, const Packet& p) {
    if (p.code != kEndOfBody) return false;
    f.hang();
    return true;
  };
  const Verdict v = scan_once(fx.milter, envelope(), kMessage, quick(3000, 300),
                              config::OnError::Reject);
  CHECK(v.action == Action::Reject);
  CHECK(v.detail.find("timed out") != std::string::npos);
}

TEST_CASE("milter: nothing listening is a filter error") {
  TempDir dir;
  config::Filter cfg;
  cfg.name = "gone";
  cfg.milter = "unix:" + dir.path() + "/nothing.sock";
  auto f = make_milter_filter(cfg, quick());
  const auto c = f->on_connect(envelope());
  REQUIRE(c);
  CHECK(c->action == Action::Tempfail);
  const Verdict v = f->scan(envelope(), kMessage);
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail.find("connect") != std::string::npos);
}

TEST_CASE("milter: two transactions on one connection with ABORT between") {
  Fixture fx;
  int eoms = 0;
  fx.milter.handler = [&](FakeMilter& f, const Packet& p) {
    if (p.code != kEndOfBody) return false;
    if (++eoms == 1) f.send(kReplyCode, "550 5.7.1 first one is spam\0"s);
    else f.send(kAccept);
    return true;
  };
  fx.milter.start();
  auto f = make_milter_filter(filter_config(fx.milter), quick());
  Envelope e = envelope();
  CHECK(f->scan(e, kMessage).action == Action::Reject);
  f->reset();
  e.queue_id = "Q124";
  e.recipients = {"carol@example.net"};
  CHECK(f->scan(e, kMessage).action == Action::Continue);
  f->reset();
  f->close();
  fx.milter.join();
  CHECK(fx.milter.connections == 1);
  CHECK(fx.milter.codes() == "CHMRTLLLNBEAMRTLLLNBEAQ");
  CHECK(fx.milter.macros(kEndOfBody).at("i") == "Q124");
  CHECK(fx.milter.all(kRcpt)[1].data == "<carol@example.net>\0"s);
}

TEST_CASE("milter: a new session after close() connects again") {
  Fixture fx;
  fx.milter.max_connections = 2;
  fx.milter.start();
  auto f = make_milter_filter(filter_config(fx.milter), quick());
  CHECK(f->scan(envelope(), kMessage).action == Action::Continue);
  f->close();
  CHECK_FALSE(f->on_connect(envelope()));
  CHECK(f->scan(envelope(), kMessage).action == Action::Continue);
  f->close();
  fx.milter.join();
  CHECK(fx.milter.connections == 2);
  CHECK(fx.milter.codes() == "CHMRTLLLNBEAQCHMRTLLLNBEAQ");
}

TEST_CASE("milter: over TCP") {
  FakeMilter m("");
  m.eom = {{kAddHeader, "X-Over\0tcp\0"s}};
  const Verdict v = scan_once(m);
  REQUIRE(v.headers.size() == 1);
  CHECK(v.headers[0].value == "tcp");
  CHECK(m.address().starts_with("inet:127.0.0.1:"));
}

}  // namespace
}  // namespace petrel::filter
