#include "petrel/delivery/lmtp.h"

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/strings.h"
#include "io.h"

namespace petrel::delivery {

namespace {

constexpr std::size_t kMaxLine = 4096;
constexpr int kMaxReplyLines = 100;
constexpr std::size_t kChunk = 64 * 1024;

struct Reply {
  int code = 0;
  std::string text;  // all lines, codes included, joined by spaces
  std::vector<std::string> lines;

  int cls() const { return code / 100; }
  // The RFC 3463 code the server gave, or X.0.0 from the reply class.
  std::string status() const {
    std::string_view t = lines.empty() ? std::string_view() : std::string_view(lines.back());
    if (t.size() > 4) {
      t.remove_prefix(4);
      const std::size_t sp = t.find(' ');
      const std::string_view code_part = t.substr(0, sp);
      int dots = 0;
      bool ok = code_part.size() >= 5 && code_part[0] == static_cast<char>('0' + cls());
      for (char c : code_part) {
        if (c == '.') ++dots;
        else if (c < '0' || c > '9') ok = false;
      }
      if (ok && dots == 2) return std::string(code_part);
    }
    return std::to_string(cls()) + ".0.0";
  }
};

Verdict from_reply(const Reply& r) {
  const std::string detail = one_line(r.text, 400);
  if (r.cls() == 2) return {Outcome::Delivered, r.status(), detail};
  if (r.cls() == 5) return bounced(r.status(), detail);
  // 4xx, and anything odd (a 3xx where it makes no sense) is safest retried.
  std::string st = r.status();
  st[0] = '4';
  return deferred(st, detail);
}

class Connection {
 public:
  explicit Connection(const Deadline& deadline) : deadline_(&deadline) {}
  // Waits from now on end at `deadline` (which must outlive its use).
  void bound_by(const Deadline& deadline) { deadline_ = &deadline; }

  // An error text, or "" when connected.
  std::string connect(const std::string& target) {
    if (target.starts_with("unix:")) return connect_unix(target.substr(5));
    std::string host, port;
    if (target.starts_with("[")) {
      const std::size_t close = target.find(']');
      if (close == std::string::npos || target.compare(close + 1, 1, ":") != 0)
        return "bad LMTP target " + target;
      host = target.substr(1, close - 1);
      port = target.substr(close + 2);
    } else {
      const std::size_t colon = target.rfind(':');
      if (colon == std::string::npos) return "bad LMTP target " + target;
      host = target.substr(0, colon);
      port = target.substr(colon + 1);
    }
    struct addrinfo hints {};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    struct addrinfo* res = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
      return "cannot resolve " + host + ": " + ::gai_strerror(rc);
    std::string err = "no address for " + host;
    for (auto* ai = res; ai && !fd_; ai = ai->ai_next) {
      err = connect_one(ai->ai_family, ai->ai_addr, ai->ai_addrlen);
      if (!err.empty()) fd_.reset();
    }
    ::freeaddrinfo(res);
    return fd_ ? "" : err;
  }

  // An error text, or "" when all was sent.
  std::string send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN) return errno_string(errno);
      if (!wait(POLLOUT)) return "timed out";
    }
    return {};
  }

  // A reply, or nullopt with *error set.
  std::optional<Reply> read_reply(std::string* error) {
    Reply r;
    for (int i = 0; i < kMaxReplyLines; ++i) {
      std::optional<std::string> line = read_line(error);
      if (!line) return std::nullopt;
      const std::string& l = *line;
      const auto digit = [&](std::size_t k) { return l.size() > k && l[k] >= '0' && l[k] <= '9'; };
      const bool digits = digit(0) && digit(1) && digit(2);
      if (!digits || (l.size() > 3 && l[3] != ' ' && l[3] != '-')) {
        *error = "malformed reply: " + one_line(l, 100);
        return std::nullopt;
      }
      const int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
      if (i > 0 && code != r.code) {
        *error = "inconsistent multi-line reply: " + one_line(l, 100);
        return std::nullopt;
      }
      r.code = code;
      r.text += (r.text.empty() ? "" : " ") + l;
      r.lines.push_back(l);
      if (l.size() == 3 || l[3] == ' ') return r;
    }
    *error = "reply too long";
    return std::nullopt;
  }

 private:
  std::string connect_unix(const std::string& path) {
    struct sockaddr_un sun {};
    sun.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof sun.sun_path) return "bad socket path " + path;
    std::memcpy(sun.sun_path, path.data(), path.size());
    for (;;) {
      std::string err = connect_one(AF_UNIX, reinterpret_cast<sockaddr*>(&sun), sizeof sun);
      // A unix socket whose backlog is full says EAGAIN instead of blocking.
      if (err != "again") return err;
      fd_.reset();
      if (deadline_->expired()) return "timed out";
      ::poll(nullptr, 0, std::min(50, deadline_->remaining_ms()));
    }
  }

  std::string connect_one(int family, const sockaddr* sa, socklen_t len) {
    fd_.reset(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd_) return errno_string(errno);
    if (::connect(fd_.get(), sa, len) == 0) return {};
    if (errno == EAGAIN && family == AF_UNIX) return "again";
    if (errno != EINPROGRESS && errno != EINTR) return errno_string(errno);
    if (!wait(POLLOUT)) return "timed out";
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
    return soerr ? errno_string(soerr) : std::string();
  }

  bool wait(short events) {
    for (;;) {
      const int left = deadline_->remaining_ms();
      if (left == 0) return false;
      struct pollfd p {fd_.get(), events, 0};
      const int n = ::poll(&p, 1, left);
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  }

  std::optional<std::string> read_line(std::string* error) {
    for (;;) {
      if (const std::size_t eol = in_.find('\n'); eol != std::string::npos) {
        std::string line = in_.substr(0, eol);
        in_.erase(0, eol + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return line;
      }
      if (in_.size() > kMaxLine) {
        *error = "reply line too long";
        return std::nullopt;
      }
      char buf[4096];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n > 0) {
        in_.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0) {
        *error = "connection closed by server";
        return std::nullopt;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        *error = errno_string(errno);
        return std::nullopt;
      }
      if (!wait(POLLIN)) {
        *error = "timed out";
        return std::nullopt;
      }
    }
  }

  const Deadline* deadline_;
  UniqueFd fd_;
  std::string in_;
};

// Sends headers + body as DATA content: CRLF line ends, a '.' doubled at the
// start of a line, a final CRLF if missing, and the closing ".".
std::string send_data(Connection& c, std::string_view headers, std::string_view body) {
  std::string out;
  out.reserve(kChunk + 1024);
  for (std::string_view part : {headers, body}) {
    std::size_t pos = 0;
    while (pos < part.size()) {
      const std::size_t eol = part.find('\n', pos);
      std::string_view line = part.substr(pos, eol == std::string_view::npos ? part.npos : eol - pos);
      pos = eol == std::string_view::npos ? part.size() : eol + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.starts_with('.')) out += '.';
      out.append(line);
      out += "\r\n";
      if (out.size() >= kChunk) {
        if (std::string err = c.send(out); !err.empty()) return err;
        out.clear();
      }
    }
  }
  out += ".\r\n";
  return c.send(out);
}

// Envelope addresses were checked at RCPT; this only makes sure no CR/LF can
// ever smuggle a command onto the wire.
std::string clean(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != '\r' && c != '\n') out += c;
  return out;
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

std::string local_hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

class Session {
 public:
  Session(const LmtpOptions& o, const std::vector<Recipient>& rcpts, const Message& m)
      : opts_(o), rcpts_(rcpts), msg_(m), deadline_(std::chrono::seconds(o.timeout_sec)),
        conn_(deadline_), verdicts_(rcpts.size()), decided_(rcpts.size(), false) {}

  std::vector<Verdict> run() {
    converse();
    return std::move(verdicts_);
  }

 private:
  void converse() {
    if (std::string err = conn_.connect(opts_.target); !err.empty())
      return fail_rest("4.4.1", "cannot connect to " + opts_.target + ": " + err);
    std::string err;
    auto greeting = conn_.read_reply(&err);
    if (!greeting) return (void)lost("reading the greeting", err);
    if (greeting->code != 220) return refused("greeting", *greeting);
    const std::string name = opts_.lhlo_name.empty() ? local_hostname() : opts_.lhlo_name;
    auto lhlo = command("LHLO " + name, &err);
    if (!lhlo) return (void)lost("after LHLO", err);
    if (lhlo->cls() != 2) return refused("LHLO", *lhlo);
    for (const auto& l : lhlo->lines) {
      const std::string kw = to_lower(std::string_view(l).substr(std::min<std::size_t>(4, l.size())));
      if (kw == "8bitmime") eightbit_ = true;
      if (kw == "smtputf8") smtputf8_ = true;
    }

    std::vector<bool> grouped(rcpts_.size(), false);
    for (std::size_t i = 0; i < rcpts_.size(); ++i) {
      if (grouped[i]) continue;
      const std::string headers = opts_.add_headers ? delivery_headers(rcpts_[i], msg_) : "";
      std::vector<std::size_t> group;
      for (std::size_t j = i; j < rcpts_.size(); ++j) {
        if (grouped[j]) continue;
        if (opts_.add_headers && delivery_headers(rcpts_[j], msg_) != headers) continue;
        grouped[j] = true;
        group.push_back(j);
      }
      if (!transaction(group, headers)) return;
    }
    // Every verdict is in; a server slow to say goodbye must not hold us.
    const Deadline quit{std::chrono::milliseconds(std::min(2000, deadline_.remaining_ms()))};
    conn_.bound_by(quit);
    (void)command("QUIT", &err);
    conn_.bound_by(deadline_);
  }

  std::optional<Reply> command(const std::string& line, std::string* err) {
    if (std::string e = conn_.send(line + "\r\n"); !e.empty()) {
      *err = e;
      return std::nullopt;
    }
    return conn_.read_reply(err);
  }

  // False when the connection is unusable; undecided recipients are deferred.
  bool transaction(const std::vector<std::size_t>& group, const std::string& headers) {
    std::string err;
    std::string mail = "MAIL FROM:<" + clean(msg_.sender) + ">";
    if (eightbit_ && !is_ascii(msg_.body)) mail += " BODY=8BITMIME";
    bool utf8 = !is_ascii(msg_.sender);
    for (std::size_t i : group) utf8 = utf8 || !is_ascii(rcpts_[i].address);
    if (smtputf8_ && utf8) mail += " SMTPUTF8";
    auto r = command(mail, &err);
    if (!r) return lost("after MAIL FROM", err);
    if (r->cls() != 2) {
      for (std::size_t i : group) decide(i, from_reply(*r));
      return reset();
    }
    std::vector<std::size_t> accepted;
    for (std::size_t i : group) {
      r = command("RCPT TO:<" + clean(rcpts_[i].address) + ">", &err);
      if (!r) return lost("after RCPT TO", err);
      if (r->cls() == 2) accepted.push_back(i);
      else decide(i, from_reply(*r));
    }
    if (accepted.empty()) return reset();
    r = command("DATA", &err);
    if (!r) return lost("after DATA", err);
    if (r->code != 354) {
      for (std::size_t i : accepted) decide(i, from_reply(*r));
      return reset();
    }
    if (std::string e = send_data(conn_, headers, msg_.body); !e.empty())
      return lost("sending the message", e);
    // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
    for (std::size_t i : accepted) {
      r = conn_.read_reply(&err);
      if (!r) return lost("after end of data", err);
      decide(i, from_reply(*r));
    }
    return true;
  }

  bool reset() {
    std::string err;
    auto r = command("RSET", &err);
    if (!r) return lost("after RSET", err);
    return true;
  }

  void decide(std::size_t i, Verdict v) {
    verdicts_[i] = std::move(v);
    decided_[i] = true;
  }

  void fail_rest(const std::string& status, const std::string& detail) {
    for (std::size_t i = 0; i < rcpts_.size(); ++i)
      if (!decided_[i]) decide(i, deferred(status, one_line(detail, 400)));
  }

  // Always false: the connection is unusable after this.
  bool lost(const std::string& when, const std::string& err) {
    const bool protocol = err.starts_with("malformed") || err.starts_with("inconsistent") ||
                          err.starts_with("reply");
    fail_rest(protocol ? "4.5.0" : "4.4.2",
              (protocol ? "protocol error with " : "lost connection with ") + opts_.target + " " +
                  when + ": " + err);
    return false;
  }

  // A server that refuses the session is retried, whatever its reply class:
  // a misconfigured LMTP server must not bounce every message.
  void refused(const std::string& what, const Reply& r) {
    std::string st = r.status();
    st[0] = '4';
    fail_rest(st, opts_.target + " refused " + what + ": " + r.text);
  }

  const LmtpOptions& opts_;
  const std::vector<Recipient>& rcpts_;
  const Message& msg_;
  Deadline deadline_;
  Connection conn_;
  std::vector<Verdict> verdicts_;
  std::vector<bool> decided_;
  bool eightbit_ = false;
  bool smtputf8_ = false;
};

}  // namespace

std::vector<Verdict> deliver_lmtp(const LmtpOptions& options, const std::vector<Recipient>& recipients,
                                  const Message& msg) {
  if (recipients.empty()) return {};
  return Session(options, recipients, msg).run();
}

}  // namespace petrel::delivery
