#include "petrel/delivery/lmtp.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "petrel/delivery/local.h"
#include "test_util.h"

namespace petrel::delivery {
namespace {

using namespace testing;

// A scripted LMTP server on one thread, for one connection. It records the
// commands and the raw DATA bytes; every wait is bounded, so a broken client
// fails the test instead of hanging it.
class FakeLmtp {
 public:
  enum class Mode { Normal, CloseAfterData, Silent, IgnoreQuit };
  // Reply to RCPT TO and, after DATA, the per-recipient reply, by address.
  std::function<std::string(const std::string&)> rcpt_reply = [](const std::string&) {
    return std::string("250 2.1.5 Ok");
  };
  std::function<std::string(const std::string&)> data_reply = [](const std::string& a) {
    return "250 2.0.0 <" + a + "> Saved";
  };
  Mode mode = Mode::Normal;

  // Listens on a unix socket in `dir`, or on 127.0.0.1 when dir is empty.
  explicit FakeLmtp(const std::string& dir) {
    if (!dir.empty()) {
      target_ = "unix:" + dir + "/lmtp.sock";
      listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      struct sockaddr_un sun {};
      sun.sun_family = AF_UNIX;
      std::strncpy(sun.sun_path, (dir + "/lmtp.sock").c_str(), sizeof sun.sun_path - 1);
      ok_ = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0;
    } else {
      listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      struct sockaddr_in sin {};
      sin.sin_family = AF_INET;
      sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof sin;
      ok_ = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0 &&
            ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&sin), &len) == 0;
      target_ = "127.0.0.1:" + std::to_string(ntohs(sin.sin_port));
    }
    ok_ = ok_ && ::listen(listen_.get(), 4) == 0;
  }
  ~FakeLmtp() { join(); }

  void start() {
    thread_ = std::thread([this] {
      serve();
      conn_.reset();  // the client sees the close at once
    });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  bool ok() const { return ok_; }
  const std::string& target() const { return target_; }
  // Valid after join().
  std::vector<std::string> commands;
  std::vector<std::string> data;  // raw bytes after each 354, final dot included

 private:
  static constexpr int kWaitMs = 10'000;

  void serve() {
    struct pollfd p {listen_.get(), POLLIN, 0};
    if (::poll(&p, 1, kWaitMs) != 1) return;
    conn_.reset(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn_) return;
    if (mode == Mode::Silent) {
      // Never greet; wait for the client to give up and close.
      std::string ignored;
      read_line(&ignored);
      return;
    }
    say("220 fake LMTP ready");
    std::vector<std::string> accepted;
    std::string line;
    while (read_line(&line)) {
      commands.push_back(line);
      const std::string verb = line.substr(0, line.find_first_of(" :"));
      if (verb == "LHLO") {
        say("250-fake\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME");
      } else if (verb == "MAIL") {
        accepted.clear();
        say("250 2.1.0 Ok");
      } else if (verb == "RCPT") {
        const std::string addr = line.substr(line.find('<') + 1, line.rfind('>') - line.find('<') - 1);
        const std::string reply = rcpt_reply(addr);
        if (reply[0] == '2') accepted.push_back(addr);
        say(reply);
      } else if (verb == "DATA") {
        say("354 go ahead");
        std::string block;
        if (!read_data(&block)) return;
        data.push_back(block);
        if (mode == Mode::CloseAfterData) return;
        for (const auto& a : accepted) say(data_reply(a));
        accepted.clear();
      } else if (verb == "RSET") {
        accepted.clear();
        say("250 2.0.0 Ok");
      } else if (verb == "QUIT") {
        if (mode == Mode::IgnoreQuit) {
          read_line(&line);  // until the client closes
          return;
        }
        say("221 2.0.0 Bye");
        return;
      } else {
        say("500 5.5.2 what?");
      }
    }
  }

  void say(const std::string& s) { (void)write_all(conn_.get(), s + "\r\n"); }

  bool fill() {
    struct pollfd p {conn_.get(), POLLIN, 0};
    if (::poll(&p, 1, kWaitMs) != 1) return false;
    char buf[65536];
    const ssize_t n = ::read(conn_.get(), buf, sizeof buf);
    if (n <= 0) return false;
    in_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  bool read_line(std::string* line) {
    for (;;) {
      if (const std::size_t eol = in_.find("\r\n"); eol != std::string::npos) {
        *line = in_.substr(0, eol);
        in_.erase(0, eol + 2);
        return true;
      }
      if (!fill()) return false;
    }
  }

  bool read_data(std::string* block) {
    for (;;) {
      const std::size_t end = in_.find("\r\n.\r\n");
      if (end != std::string::npos) {
        *block = in_.substr(0, end + 5);
        in_.erase(0, end + 5);
        return true;
      }
      if (!fill()) return false;
    }
  }

  UniqueFd listen_, conn_;
  std::string target_;
  bool ok_ = false;
  std::string in_;
  std::thread thread_;
};

Recipient rcpt(const std::string& user) {
  Recipient r;
  r.user = user;
  r.domain = "example.org";
  r.address = user + "@example.org";
  return r;
}

LmtpOptions options(const FakeLmtp& server, int timeout_sec = 10) {
  LmtpOptions o;
  o.target = server.target();
  o.lhlo_name = "mx.example.org";
  o.timeout_sec = timeout_sec;
  return o;
}

TEST_CASE("lmtp: per-recipient RCPT replies 250/452/550 map to the three outcomes") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.rcpt_reply = [](const std::string& a) -> std::string {
    if (a.starts_with("full")) return "452 4.2.2 Mailbox full";
    if (a.starts_with("nobody")) return "550 5.1.1 User unknown";
    return "250 2.1.5 Ok";
  };
  server.start();
  const auto v = deliver_lmtp(options(server), {rcpt("alice"), rcpt("full"), rcpt("nobody")}, message());
  server.join();
  REQUIRE(v.size() == 3);
  CHECK(v[0].outcome == Outcome::Delivered);
  CHECK(v[0].status == "2.0.0");
  CHECK(v[0].detail == "250 2.0.0 <alice@example.org> Saved");
  CHECK(v[1].outcome == Outcome::Deferred);
  CHECK(v[1].status == "4.2.2");
  CHECK(v[1].detail == "452 4.2.2 Mailbox full");
  CHECK(v[2].outcome == Outcome::Bounced);
  CHECK(v[2].status == "5.1.1");
  // One transaction per recipient (their Delivered-To differs): only alice's has DATA.
  CHECK(server.commands == std::vector<std::string>{
                               "LHLO mx.example.org",
                               "MAIL FROM:<bob@example.net>", "RCPT TO:<alice@example.org>", "DATA",
                               "MAIL FROM:<bob@example.net>", "RCPT TO:<full@example.org>", "RSET",
                               "MAIL FROM:<bob@example.net>", "RCPT TO:<nobody@example.org>", "RSET",
                               "QUIT"});
  REQUIRE(server.data.size() == 1);
  CHECK(server.data[0].starts_with(
      "Return-Path: <bob@example.net>\r\nDelivered-To: alice@example.org\r\n"
      "X-Original-To: alice@example.org\r\nReceived: from client.example"));
}

TEST_CASE("lmtp: one reply per recipient after the final dot (RFC 2033)") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.data_reply = [](const std::string& a) -> std::string {
    if (a.starts_with("full")) return "452 4.2.2 <" + a + "> Quota exceeded";
    if (a.starts_with("gone")) return "550 5.2.1 <" + a + "> Mailbox disabled";
    return "250 2.0.0 <" + a + "> Saved";
  };
  server.start();
  LmtpOptions o = options(server);
  o.add_headers = false;  // lets all three share one transaction
  const auto v = deliver_lmtp(o, {rcpt("alice"), rcpt("full"), rcpt("gone")}, message());
  server.join();
  REQUIRE(v.size() == 3);
  CHECK(v[0].outcome == Outcome::Delivered);
  CHECK(v[1].outcome == Outcome::Deferred);
  CHECK(v[1].status == "4.2.2");
  CHECK(v[2].outcome == Outcome::Bounced);
  CHECK(v[2].status == "5.2.1");
  CHECK(v[2].detail == "550 5.2.1 <gone@example.org> Mailbox disabled");
  CHECK(server.data.size() == 1);
  CHECK(server.data[0].starts_with("Received: "));
}

TEST_CASE("lmtp: CRLF and dot-stuffing on the wire") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.start();
  LmtpOptions o = options(server);
  o.add_headers = false;
  const auto v = deliver_lmtp(o, {rcpt("alice")}, message("Subject: dots\n\n.\n..two\n.x\nend"));
  server.join();
  REQUIRE(v.size() == 1);
  CHECK(v[0].outcome == Outcome::Delivered);
  REQUIRE(server.data.size() == 1);
  CHECK(server.data[0] == "Subject: dots\r\n\r\n..\r\n...two\r\n..x\r\nend\r\n.\r\n");
}

TEST_CASE("lmtp: TCP target, 8-bit body announced when offered") {
  FakeLmtp server("");
  REQUIRE(server.ok());
  server.start();
  const auto v = deliver_lmtp(options(server), {rcpt("alice")}, message("Subject: caf\xc3\xa9\n\nx\n"));
  server.join();
  REQUIRE(v.size() == 1);
  CHECK(v[0].outcome == Outcome::Delivered);
  REQUIRE(server.commands.size() >= 2);
  CHECK(server.commands[1] == "MAIL FROM:<bob@example.net> BODY=8BITMIME");
}

TEST_CASE("lmtp: nobody listening defers every recipient") {
  TempDir tmp;
  LmtpOptions o;
  o.target = "unix:" + tmp.path() + "/absent.sock";
  const auto v = deliver_lmtp(o, {rcpt("alice"), rcpt("bob")}, message());
  REQUIRE(v.size() == 2);
  for (const auto& x : v) {
    CHECK(x.outcome == Outcome::Deferred);
    CHECK(x.status == "4.4.1");
    CHECK(x.detail.find("cannot connect") != std::string::npos);
  }
}

TEST_CASE("lmtp: a connection lost after DATA defers (the message may not be stored)") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.mode = FakeLmtp::Mode::CloseAfterData;
  server.start();
  const auto v = deliver_lmtp(options(server), {rcpt("alice")}, message());
  server.join();
  REQUIRE(v.size() == 1);
  CHECK(v[0].outcome == Outcome::Deferred);
  CHECK(v[0].status == "4.4.2");
  CHECK(v[0].detail.find("after end of data: connection closed by server") != std::string::npos);
}

TEST_CASE("lmtp: a server that never answers is given up on at the timeout") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.mode = FakeLmtp::Mode::Silent;
  server.start();
  const auto start = std::chrono::steady_clock::now();
  const auto v = deliver_lmtp(options(server, 1), {rcpt("alice")}, message());
  const auto took = std::chrono::steady_clock::now() - start;
  server.join();
  REQUIRE(v.size() == 1);
  CHECK(v[0].outcome == Outcome::Deferred);
  CHECK(v[0].detail.find("timed out") != std::string::npos);
  CHECK(took >= std::chrono::milliseconds(900));
  CHECK(took < std::chrono::seconds(4));
}

TEST_CASE("lmtp: a server that never answers QUIT does not hold the verdicts") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.mode = FakeLmtp::Mode::IgnoreQuit;
  server.start();
  const auto start = std::chrono::steady_clock::now();
  const auto v = deliver_lmtp(options(server, 60), {rcpt("alice")}, message());
  const auto took = std::chrono::steady_clock::now() - start;
  server.join();
  REQUIRE(v.size() == 1);
  CHECK(v[0].outcome == Outcome::Delivered);
  CHECK(took < std::chrono::seconds(4));
}

TEST_CASE("lmtp via deliver_local") {
  TempDir tmp;
  FakeLmtp server(tmp.path());
  REQUIRE(server.ok());
  server.start();
  const Verdict v = deliver_local({"lmtp:" + server.target()}, alice(), message());
  server.join();
  CHECK(v.outcome == Outcome::Delivered);
  REQUIRE(server.data.size() == 1);
  CHECK(server.data[0].starts_with("Return-Path: <bob@example.net>\r\n"
                                   "Delivered-To: alice+news@example.org\r\n"
                                   "X-Original-To: Alice+News@Example.ORG\r\n"));
}

}  // namespace
}  // namespace petrel::delivery
