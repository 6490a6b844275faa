// The libevent driver end to end: a scripted SMTP server on a loopback port
// (a thread, blocking I/O with bounded waits, TLS through OpenSSL), and
// Postfix's smtp-sink when it is installed.
#include "petrel/delivery/smtp_client.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include <doctest/doctest.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "../dns/test_peers.h"
#include "test_util.h"

namespace petrel::delivery::smtp {
namespace {

using namespace std::chrono_literals;
using config::TlsPolicy;

// ---------------------------------------------------------------- TLS material

// A self-signed certificate for "localhost" and a server context using it.
struct TestCert {
  std::string cert_path;
  SSL_CTX* server = nullptr;

  explicit TestCert(const std::string& dir) {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"),
                               -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:localhost");
    X509_add_ext(x, san, -1);
    X509_EXTENSION_free(san);
    X509_sign(x, key, EVP_sha256());

    cert_path = dir + "/cert.pem";
    FILE* f = std::fopen(cert_path.c_str(), "w");
    PEM_write_X509(f, x);
    std::fclose(f);

    server = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(server, x);
    SSL_CTX_use_PrivateKey(server, key);
    X509_free(x);
    EVP_PKEY_free(key);
  }
  ~TestCert() { SSL_CTX_free(server); }
};

// ---------------------------------------------------------------- fake server

class FakeServer {
 public:
  struct Script {
    bool pipelining = true;
    bool starttls = false;
    bool tls_garbage = false;       // answer STARTTLS with 220, then junk instead of a handshake
    bool silent = false;            // accept, never greet
    bool stall_after_data = false;  // never answer the final dot
    // A reply for a command line ("RCPT TO:<x>", "DATA", "<END>" for the
    // final dot); "" = the default. A reply starting with 421 closes.
    std::function<std::string(const std::string&)> reply;
  };

  explicit FakeServer(Script script, SSL_CTX* tls = nullptr) : script_(std::move(script)), tls_(tls) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 16);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }

  std::uint16_t port() const { return port_; }
  int connections() const { return connections_; }
  std::vector<std::string> commands() const {
    std::lock_guard<std::mutex> g(mu_);
    return commands_;
  }
  std::vector<std::string> bodies() const {
    std::lock_guard<std::mutex> g(mu_);
    return bodies_;
  }
  bool saw(const std::string& prefix) const {
    for (const std::string& c : commands())
      if (c.starts_with(prefix)) return true;
    return false;
  }

 private:
  struct Conn {
    int fd;
    SSL* ssl = nullptr;
    std::string buf;
    const std::atomic<bool>* stop;

    ~Conn() {
      if (ssl) SSL_free(ssl);
      ::close(fd);
    }
    bool fill() {
      char tmp[16384];
      for (int waited = 0; waited < 100 && !*stop; ++waited) {  // at most 5 s
        if (!ssl || SSL_pending(ssl) == 0) {
          pollfd p{fd, POLLIN, 0};
          if (::poll(&p, 1, 50) == 0) continue;
        }
        const int n = ssl ? SSL_read(ssl, tmp, sizeof tmp) : static_cast<int>(::recv(fd, tmp, sizeof tmp, 0));
        if (n <= 0) return false;
        buf.append(tmp, static_cast<std::size_t>(n));
        return true;
      }
      return false;
    }
    std::optional<std::string> line() {
      for (;;) {
        const std::size_t eol = buf.find("\r\n");
        if (eol != std::string::npos) {
          std::string l = buf.substr(0, eol);
          buf.erase(0, eol + 2);
          return l;
        }
        if (!fill()) return std::nullopt;
      }
    }
    // Raw DATA bytes up to the final dot (not included).
    std::optional<std::string> data() {
      for (;;) {
        if (buf.starts_with(".\r\n")) {
          buf.erase(0, 3);
          return std::string();
        }
        const std::size_t end = buf.find("\r\n.\r\n");
        if (end != std::string::npos) {
          std::string d = buf.substr(0, end + 2);
          buf.erase(0, end + 5);
          return d;
        }
        if (!fill()) return std::nullopt;
      }
    }
    void write(const std::string& s) {
      if (ssl) SSL_write(ssl, s.data(), static_cast<int>(s.size()));
      else (void)!::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    }
  };

  void record(const std::string& c) {
    std::lock_guard<std::mutex> g(mu_);
    commands_.push_back(c);
  }

  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) != 1) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++connections_;
      handle(c);
    }
  }

  void handle(int fd) {
    Conn c{fd, nullptr, {}, &stop_};
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (script_.silent) {
      while (c.fill()) {
      }
      return;
    }
    c.write("220 fake.test ESMTP\r\n");
    while (auto l = c.line()) {
      record(*l);
      std::string verb = l->substr(0, l->find(' '));
      for (char& ch : verb) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      std::string custom = script_.reply ? script_.reply(*l) : std::string();
      if (!custom.empty() && verb != "DATA") {
        c.write(custom);
        if (custom.starts_with("421")) return;
        continue;
      }
      if (verb == "EHLO") {
        std::string r = "250-fake.test\r\n";
        if (script_.pipelining) r += "250-PIPELINING\r\n";
        if (script_.starttls && !c.ssl) r += "250-STARTTLS\r\n";
        r += "250-SIZE 100000000\r\n250 8BITMIME\r\n";
        c.write(r);
      } else if (verb == "STARTTLS") {
        c.write("220 2.0.0 ready\r\n");
        if (script_.tls_garbage || !tls_) {
          c.write("this is not a TLS handshake\r\n");
          return;
        }
        c.ssl = SSL_new(tls_);
        SSL_set_fd(c.ssl, fd);
        if (SSL_accept(c.ssl) != 1) return;
        c.buf.clear();
        record("<TLS " + std::string(SSL_get_version(c.ssl)) + ">");
      } else if (verb == "DATA") {
        if (!custom.empty()) {
          c.write(custom);
          if (custom.starts_with("421")) return;
          continue;
        }
        c.write("354 go ahead\r\n");
        auto d = c.data();
        if (!d) return;
        {
          std::lock_guard<std::mutex> g(mu_);
          bodies_.push_back(*d);
        }
        if (script_.stall_after_data) {
          while (c.fill()) {
          }
          return;
        }
        const std::string end = script_.reply ? script_.reply("<END>") : std::string();
        c.write(end.empty() ? "250 2.0.0 Ok: queued as FAKE\r\n" : end);
      } else if (verb == "QUIT") {
        c.write("221 2.0.0 bye\r\n");
        return;
      } else if (verb == "HELO" || verb == "MAIL" || verb == "RCPT" || verb == "RSET" || verb == "NOOP") {
        c.write("250 2.0.0 ok\r\n");
      } else {
        c.write("500 5.5.2 what\r\n");
      }
    }
  }

  Script script_;
  SSL_CTX* tls_;
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  mutable std::mutex mu_;
  std::vector<std::string> commands_;
  std::vector<std::string> bodies_;
};

// ---------------------------------------------------------------- fixture

struct Fixture {
  testing::TempDir dir;
  event_base* base = event_base_new();
  std::string spool;
  std::uint64_t offset = 0;

  Fixture() {
    ::signal(SIGPIPE, SIG_IGN);
    set_body("Subject: test\n\n.leading dot\n..two dots\nlast line\n");
  }
  ~Fixture() {
    petrel::testing::drain(base);
    event_base_free(base);
  }

  // A spool-like file: an envelope block we must skip, then the body.
  void set_body(const std::string& body, const std::string& name = "msg") {
    spool = dir / name;
    const std::string head = "PETREL1\nI FAKE\n.\n";
    std::ofstream(spool, std::ios::binary) << head << body;
    offset = head.size();
  }

  Message message(std::vector<std::string> rcpts) const {
    Message m;
    m.sender = "alice@petrel.test";
    m.recipients = std::move(rcpts);
    m.spool_path = spool;
    m.body_offset = offset;
    m.size = std::filesystem::file_size(spool) - offset;
    return m;
  }

  ConnectionOptions options(TlsPolicy tls = TlsPolicy::Opportunistic) const {
    ConnectionOptions o;
    o.helo_name = "client.test";
    o.tls = tls;
    Timeouts t;
    for (auto* p : {&t.connect, &t.greeting, &t.helo, &t.starttls, &t.auth, &t.rset, &t.mail, &t.rcpt,
                    &t.data, &t.data_block, &t.data_end, &t.quit})
      *p = 3s;
    o.timeouts = t;
    return o;
  }

  bool run(const std::function<bool()>& done, std::chrono::milliseconds budget = 10s) {
    return petrel::testing::run_until(base, done, budget);
  }

  // Open descriptors of this process that refer to the spool file.
  int spool_fds() const {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      if (std::filesystem::read_symlink(e.path(), ec) == spool) ++n;
    }
    return n;
  }
};

Endpoint local(std::uint16_t port, const std::string& host = "localhost", const std::string& ip = "127.0.0.1") {
  return Endpoint{host, *dns::IpAddress::parse(ip), port};
}

const RecipientResult& rcpt(const Report& r, std::size_t i) {
  REQUIRE(i < r.result.recipients.size());
  return r.result.recipients[i];
}

// ---------------------------------------------------------------- tests

TEST_CASE("two messages on one connection: pipelining, partial success, RSET, dot-stuffing") {
  Fixture f;
  FakeServer server({.reply = [](const std::string& c) -> std::string {
    if (c == "RCPT TO:<bad@x.test>") return "550 5.1.1 <bad@x.test>: no such user\r\n";
    if (c == "RCPT TO:<later@x.test>") return "452 4.2.2 mailbox full\r\n";
    return "";
  }});
  Connection conn(f.base, {local(server.port())}, f.options());
  std::vector<Report> reports;
  bool closed = false;
  int idles = 0;
  CloseReport close;
  int fds_in_callbacks = 0;
  conn.on_idle = [&] { ++idles; };
  conn.on_closed = [&](const CloseReport& r) {
    closed = true;
    close = r;
  };
  auto cb = [&](const Report& r) {
    reports.push_back(r);
    fds_in_callbacks += f.spool_fds();
  };
  REQUIRE(conn.send(f.message({"good@x.test", "bad@x.test", "later@x.test"}), cb));
  REQUIRE(conn.send(f.message({"other@x.test"}), cb));
  conn.start();
  CHECK(reports.empty());  // nothing happens inside the calls
  REQUIRE(f.run([&] { return reports.size() == 2; }));
  CHECK(idles == 1);
  CHECK(conn.established());
  conn.quit();
  CHECK_FALSE(conn.send(f.message({"late@x.test"}), cb));
  REQUIRE(f.run([&] { return closed; }));

  const Report& a = reports[0];
  CHECK(a.relay == "localhost[127.0.0.1]:" + std::to_string(server.port()));
  CHECK(a.tls.empty());
  CHECK(rcpt(a, 0).verdict.outcome == Outcome::Delivered);
  CHECK(rcpt(a, 0).reply == "250 2.0.0 Ok: queued as FAKE");
  CHECK(rcpt(a, 1).verdict.outcome == Outcome::Bounced);
  CHECK(rcpt(a, 1).verdict.status == "5.1.1");
  CHECK(rcpt(a, 2).verdict.outcome == Outcome::Deferred);
  CHECK(rcpt(a, 2).verdict.status == "4.2.2");
  CHECK(rcpt(reports[1], 0).verdict.outcome == Outcome::Delivered);

  CHECK(server.connections() == 1);
  const std::vector<std::string> expect = {
      "EHLO client.test",
      "MAIL FROM:<alice@petrel.test> SIZE=" + std::to_string(f.message({}).size),
      "RCPT TO:<good@x.test>", "RCPT TO:<bad@x.test>", "RCPT TO:<later@x.test>", "DATA",
      "RSET", "MAIL FROM:<alice@petrel.test> SIZE=" + std::to_string(f.message({}).size),
      "RCPT TO:<other@x.test>", "DATA", "QUIT"};
  CHECK(server.commands() == expect);
  REQUIRE(server.bodies().size() == 2);
  CHECK(server.bodies()[0] == "Subject: test\r\n\r\n..leading dot\r\n...two dots\r\nlast line\r\n");
  CHECK(close.established);
  CHECK(close.failure.verdict.outcome == Outcome::Delivered);
  CHECK(fds_in_callbacks == 0);  // the message file is closed once sent
  CHECK(f.spool_fds() == 0);
}

TEST_CASE("a large message is streamed in blocks and arrives intact") {
  Fixture f;
  std::string body = "Subject: big\n\n";
  std::string line;
  for (int i = 0; i < 80000; ++i) {
    line = (i % 7 == 0 ? "." : "") + std::to_string(i) + " the quick brown fox jumps over the lazy dog\n";
    body += line;
  }
  f.set_body(body);
  FakeServer server({});
  Connection conn(f.base, {local(server.port())}, f.options());
  std::optional<Report> rep;
  conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
  conn.quit();
  conn.start();
  REQUIRE(f.run([&] { return rep.has_value(); }, 30s));
  CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
  REQUIRE(server.bodies().size() == 1);
  DotStuffer d;
  std::string expect;
  d.add(body, &expect);
  d.finish(&expect);
  CHECK(server.bodies()[0] + ".\r\n" == expect);
}

TEST_CASE("endpoints are tried in order until one answers") {
  Fixture f;
  FakeServer server({});
  const std::uint16_t closed_port = petrel::testing::free_port();
  Connection conn(f.base,
                  {local(closed_port, "mx1.test"), local(closed_port, "mx1.test", "::1"),
                   local(server.port(), "mx2.test")},
                  f.options());
  std::optional<Report> rep;
  std::optional<CloseReport> close;
  conn.on_closed = [&](const CloseReport& r) { close = r; };
  conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
  conn.quit();
  conn.start();
  REQUIRE(f.run([&] { return close.has_value(); }));
  REQUIRE(rep);
  CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
  CHECK(rep->relay == "mx2.test[127.0.0.1]:" + std::to_string(server.port()));
  REQUIRE(close->errors.size() == 2);
  CHECK(close->errors[0].starts_with("connect to mx1.test[127.0.0.1]:"));
  CHECK(close->errors[1].starts_with("connect to mx1.test[::1]:"));
}

TEST_CASE("every endpoint failing defers the queued messages") {
  Fixture f;
  const std::uint16_t closed_port = petrel::testing::free_port();
  Connection conn(f.base, {local(closed_port, "mx1.test")}, f.options());
  std::vector<Report> reps;
  bool closed = false;
  conn.on_closed = [&](const CloseReport& r) {
    closed = true;
    CHECK_FALSE(r.established);
  };
  conn.send(f.message({"b@x.test", "c@x.test"}), [&](const Report& r) { reps.push_back(r); });
  conn.send(f.message({"d@x.test"}), [&](const Report& r) { reps.push_back(r); });
  conn.start();
  REQUIRE(f.run([&] { return closed; }));
  REQUIRE(reps.size() == 2);
  for (const Report& r : reps) {
    CHECK_FALSE(r.result.attempted);
    for (const RecipientResult& x : r.result.recipients) {
      CHECK(x.verdict.outcome == Outcome::Deferred);
      CHECK(x.verdict.status == "4.4.1");
      CHECK(x.verdict.detail.find("Connection refused") != std::string::npos);
    }
  }

  Connection none(f.base, {}, f.options());
  std::optional<Report> rep;
  none.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
  none.start();
  REQUIRE(f.run([&] { return rep.has_value(); }));
  CHECK(rep->relay == "none");
}

TEST_CASE("STARTTLS: opportunistic gets TLS; required without STARTTLS never sends MAIL") {
  Fixture f;
  TestCert cert(f.dir.path());
  auto ctx = TlsClientContext::create(cert.cert_path);
  REQUIRE(ctx.ok());
  SUBCASE("opportunistic") {
    FakeServer server({.starttls = true, .reply = {}}, cert.server);
    ConnectionOptions o = f.options(TlsPolicy::Opportunistic);
    o.tls_context = *ctx;
    Connection conn(f.base, {local(server.port())}, o);
    std::optional<Report> rep;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    conn.quit();
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
    CHECK(rep->tls.starts_with("TLSv1."));
    CHECK(conn.tls_version() == rep->tls);
    const auto cmds = server.commands();
    REQUIRE(cmds.size() >= 4);
    CHECK(cmds[0] == "EHLO client.test");
    CHECK(cmds[1] == "STARTTLS");
    CHECK(cmds[2].starts_with("<TLS"));
    CHECK(cmds[3] == "EHLO client.test");
    REQUIRE(server.bodies().size() == 1);
  }
  SUBCASE("verify: the certificate must chain to a trusted CA and name the host") {
    FakeServer server({.starttls = true, .reply = {}}, cert.server);
    ConnectionOptions o = f.options(TlsPolicy::Verify);
    o.tls_context = *ctx;
    Connection good(f.base, {local(server.port(), "localhost")}, o);
    std::optional<Report> rep;
    good.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    good.quit();
    good.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);

    Connection wrong(f.base, {local(server.port(), "mx.elsewhere.test")}, o);
    rep.reset();
    wrong.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    wrong.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Deferred);
    CHECK(rcpt(*rep, 0).verdict.status == "4.7.5");
    CHECK(rcpt(*rep, 0).verdict.detail.find("certificate verification failed") != std::string::npos);
    CHECK(server.bodies().size() == 1);
  }
  SUBCASE("required, not offered") {
    FakeServer server({.starttls = false, .reply = {}});
    ConnectionOptions o = f.options(TlsPolicy::Required);
    o.tls_context = *ctx;
    Connection conn(f.base, {local(server.port())}, o);
    std::optional<Report> rep;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Deferred);
    CHECK(rcpt(*rep, 0).verdict.status == "4.7.4");
    CHECK_FALSE(server.saw("MAIL"));
    CHECK(server.bodies().empty());
  }
  SUBCASE("opportunistic, broken handshake: the same address again in plaintext") {
    FakeServer server({.starttls = true, .tls_garbage = true, .reply = {}});
    ConnectionOptions o = f.options(TlsPolicy::Opportunistic);
    o.tls_context = *ctx;
    Connection conn(f.base, {local(server.port())}, o);
    std::optional<Report> rep;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    conn.quit();
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
    CHECK(rep->tls.empty());
    CHECK(server.connections() == 2);
    REQUIRE(server.bodies().size() == 1);
  }
  SUBCASE("required, broken handshake: deferred, no plaintext retry") {
    FakeServer server({.starttls = true, .tls_garbage = true, .reply = {}});
    ConnectionOptions o = f.options(TlsPolicy::Required);
    o.tls_context = *ctx;
    Connection conn(f.base, {local(server.port())}, o);
    std::optional<Report> rep;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Deferred);
    CHECK(server.connections() == 1);
    CHECK(server.bodies().empty());
  }
}

TEST_CASE("AUTH to a smarthost inside TLS") {
  Fixture f;
  TestCert cert(f.dir.path());
  auto ctx = TlsClientContext::create();
  REQUIRE(ctx.ok());
  FakeServer server({.starttls = true, .reply = [](const std::string& c) -> std::string {
    if (c.starts_with("EHLO")) return "250-fake.test\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 PIPELINING\r\n";
    if (c.starts_with("AUTH PLAIN ")) return "235 2.7.0 ok\r\n";
    return "";
  }}, cert.server);
  ConnectionOptions o = f.options(TlsPolicy::Opportunistic);
  o.tls_context = *ctx;
  o.auth_user = "me";
  o.auth_password = "pw";
  Connection conn(f.base, {local(server.port())}, o);
  std::optional<Report> rep;
  conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
  conn.quit();
  conn.start();
  REQUIRE(f.run([&] { return rep.has_value(); }));
  CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
  const auto cmds = server.commands();
  const auto tls_at = std::find_if(cmds.begin(), cmds.end(), [](const std::string& c) { return c.starts_with("<TLS"); });
  const auto auth_at = std::find_if(cmds.begin(), cmds.end(), [](const std::string& c) { return c.starts_with("AUTH"); });
  REQUIRE(auth_at != cmds.end());
  CHECK(tls_at < auth_at);
}

TEST_CASE("timeouts are per stage and bounded") {
  Fixture f;
  SUBCASE("no greeting") {
    FakeServer server({.silent = true, .reply = {}});
    ConnectionOptions o = f.options();
    o.timeouts.greeting = 300ms;
    Connection conn(f.base, {local(server.port())}, o);
    std::optional<Report> rep;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { rep = r; });
    const auto t0 = std::chrono::steady_clock::now();
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= 250ms);
    CHECK(took < 3s);
    CHECK(rcpt(*rep, 0).verdict.status == "4.4.2");
    CHECK(rcpt(*rep, 0).verdict.detail.find("timed out while receiving the initial server greeting") !=
          std::string::npos);
  }
  SUBCASE("no reply to the final dot") {
    FakeServer server({.stall_after_data = true, .reply = {}});
    ConnectionOptions o = f.options();
    o.timeouts.data_end = 300ms;
    Connection conn(f.base, {local(server.port())}, o);
    std::vector<Report> reps;
    bool closed = false;
    conn.on_closed = [&](const CloseReport&) { closed = true; };
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { reps.push_back(r); });
    conn.send(f.message({"c@x.test"}), [&](const Report& r) { reps.push_back(r); });
    conn.start();
    REQUIRE(f.run([&] { return closed; }));
    REQUIRE(reps.size() == 2);
    CHECK(rcpt(reps[0], 0).verdict.outcome == Outcome::Deferred);
    CHECK(rcpt(reps[0], 0).verdict.detail.find("may be sent more than once") != std::string::npos);
    CHECK(reps[0].result.attempted);
    CHECK_FALSE(reps[1].result.attempted);  // never started: the runner may retry it at once
    CHECK(f.spool_fds() == 0);
  }
}

TEST_CASE("421 in the middle, a missing queue file, destruction inside a callback") {
  Fixture f;
  SUBCASE("421") {
    FakeServer server({.reply = [](const std::string& c) -> std::string {
      return c.starts_with("RCPT") ? "421 4.3.2 going down\r\n" : "";
    }});
    Connection conn(f.base, {local(server.port())}, f.options());
    std::vector<Report> reps;
    conn.send(f.message({"b@x.test"}), [&](const Report& r) { reps.push_back(r); });
    conn.send(f.message({"c@x.test"}), [&](const Report& r) { reps.push_back(r); });
    conn.start();
    REQUIRE(f.run([&] { return reps.size() == 2; }));
    CHECK(rcpt(reps[0], 0).verdict.status == "4.3.2");
    CHECK(rcpt(reps[0], 0).code == 421);
    CHECK(rcpt(reps[1], 0).verdict.outcome == Outcome::Deferred);
  }
  SUBCASE("missing queue file") {
    FakeServer server({});
    Connection conn(f.base, {local(server.port())}, f.options());
    Message m = f.message({"b@x.test"});
    m.spool_path = f.dir / "gone";
    std::optional<Report> rep;
    conn.send(m, [&](const Report& r) { rep = r; });
    conn.start();
    REQUIRE(f.run([&] { return rep.has_value(); }));
    CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Deferred);
    CHECK(rcpt(*rep, 0).verdict.status == "4.3.0");
    CHECK(server.bodies().empty());
  }
  SUBCASE("destroyed in its own callbacks") {
    FakeServer server({});
    auto conn = std::make_unique<Connection>(f.base, std::vector<Endpoint>{local(server.port())}, f.options());
    int calls = 0;
    conn->send(f.message({"b@x.test"}), [&](const Report&) {
      ++calls;
      conn.reset();
    });
    conn->send(f.message({"c@x.test"}), [&](const Report&) { ++calls; });
    conn->start();
    REQUIRE(f.run([&] { return conn == nullptr; }));
    f.run([] { return false; }, 200ms);
    CHECK(calls == 1);

    auto idle = std::make_unique<Connection>(f.base, std::vector<Endpoint>{local(server.port())}, f.options());
    idle->on_idle = [&] { idle.reset(); };
    idle->start();
    REQUIRE(f.run([&] { return idle == nullptr; }));
  }
  SUBCASE("on_idle feeds the next message") {
    FakeServer server({});
    Connection conn(f.base, {local(server.port())}, f.options());
    int sent = 0;
    bool closed = false;
    conn.on_idle = [&] {
      if (sent < 3) {
        conn.send(f.message({"n" + std::to_string(sent) + "@x.test"}), [&](const Report&) {});
        ++sent;
      } else {
        conn.quit();
      }
    };
    conn.on_closed = [&](const CloseReport&) { closed = true; };
    conn.start();
    REQUIRE(f.run([&] { return closed; }));
    CHECK(server.bodies().size() == 3);
    CHECK(server.connections() == 1);
  }
}

TEST_CASE("against Postfix smtp-sink: many messages and a large one over one connection") {
  const std::string sink = "/usr/sbin/smtp-sink";
  if (!petrel::testing::executable(sink)) {
    FAIL("smtp-sink missing (scripts/install-deps.sh installs postfix)");
  }
  Fixture f;
  const std::uint16_t port = petrel::testing::free_port();
  const std::string dump = f.dir / "dump";
  petrel::testing::Child child;
  REQUIRE(child.spawn({sink, "-u", "root", "-D", dump, "127.0.0.1:" + std::to_string(port), "100"},
                      f.dir / "sink.log"));
  REQUIRE(petrel::testing::wait_tcp(port));

  std::string big = "Subject: big\n\n";
  for (int i = 0; i < 40000; ++i) big += (i % 5 ? "" : ".") + std::string("line ") + std::to_string(i) + "\n";
  f.set_body(big, "big");
  const Message big_msg = f.message({"big@x.test"});
  f.set_body("Subject: small\n\nhello\n", "small");

  Connection conn(f.base, {local(port, "sink.test")}, f.options());
  int delivered = 0, done = 0;
  bool closed = false;
  conn.on_closed = [&](const CloseReport&) { closed = true; };
  auto cb = [&](const Report& r) {
    ++done;
    for (const RecipientResult& x : r.result.recipients)
      if (x.verdict.outcome == Outcome::Delivered) ++delivered;
  };
  for (int i = 0; i < 20; ++i) conn.send(f.message({"a" + std::to_string(i) + "@x.test", "b@x.test"}), cb);
  conn.send(big_msg, cb);
  conn.quit();
  conn.start();
  REQUIRE(f.run([&] { return closed; }, 30s));
  CHECK(done == 21);
  CHECK(delivered == 41);
  child.stop();

  std::ifstream in(dump, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::size_t mails = 0;
  for (std::size_t p = text.find("X-Mail-Args:"); p != std::string::npos; p = text.find("X-Mail-Args:", p + 1))
    ++mails;
  CHECK(mails == 21);
  CHECK(text.find(big.substr(big.size() - 2000)) != std::string::npos);  // the end of the big one, un-stuffed
}

}  // namespace
}  // namespace petrel::delivery::smtp

namespace petrel::delivery::smtp {
namespace {

TEST_CASE("DNS to delivery: MX preference, the first MX refusing, the next one delivering") {
  Fixture f;
  FakeServer server({});
  petrel::testing::DnsMasq dns({
      "--mx-host=relay.test,down.relay.test,10",
      "--mx-host=relay.test,up.relay.test,20",
      "--host-record=down.relay.test,127.0.0.2",
      "--host-record=up.relay.test,127.0.0.1",
  });
  if (!dns.ok()) {
    FAIL("dnsmasq did not start (scripts/install-deps.sh installs dnsmasq-base)");
  }
  dns::ResolverOptions ro;
  ro.nameservers = {dns.nameserver()};
  auto resolver = dns::Resolver::create(f.base, ro);
  REQUIRE(resolver.ok());

  Route route;
  route.host = "relay.test";
  route.port = server.port();  // as queue.port would be
  std::optional<Resolution> res;
  NextHopLookup lookup(**resolver, route, [&](const Resolution& r) { res = r; });
  REQUIRE(f.run([&] { return res.has_value(); }));
  REQUIRE(res->kind == Resolution::Kind::Ok);
  REQUIRE(res->endpoints.size() == 2);
  CHECK(res->endpoints[0].host == "down.relay.test");

  Connection conn(f.base, res->endpoints, f.options());
  std::optional<Report> rep;
  std::optional<CloseReport> close;
  conn.on_closed = [&](const CloseReport& r) { close = r; };
  conn.send(f.message({"b@relay.test"}), [&](const Report& r) { rep = r; });
  conn.quit();
  conn.start();
  REQUIRE(f.run([&] { return close.has_value(); }));
  REQUIRE(rep);
  CHECK(rcpt(*rep, 0).verdict.outcome == Outcome::Delivered);
  CHECK(rep->relay == "up.relay.test[127.0.0.1]:" + std::to_string(server.port()));
  REQUIRE(close->errors.size() == 1);
  CHECK(close->errors[0].find("down.relay.test[127.0.0.2]") != std::string::npos);
}

}  // namespace
}  // namespace petrel::delivery::smtp
