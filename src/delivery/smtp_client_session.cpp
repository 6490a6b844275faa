#include "petrel/delivery/smtp_client_session.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <utility>

#include "petrel/common/base64.h"
#include "petrel/common/log.h"

namespace petrel::delivery::smtp {

namespace {

constexpr std::size_t kMaxLine = 4096;
constexpr std::size_t kMaxLines = 256;

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool digit(char c) { return c >= '0' && c <= '9'; }

// An address we can put between <> on a command line.
bool safe_address(std::string_view a) {
  if (a.size() > 998) return false;
  for (char c : a) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '<' || c == '>') return false;
  }
  return true;
}

Outcome outcome_of(int cls) {
  return cls == 2 ? Outcome::Delivered : cls == 5 ? Outcome::Bounced : Outcome::Deferred;
}

// A deferral's status must be 4.x.x whatever the server wrote.
std::string as_temporary(std::string status) {
  if (!status.empty()) status[0] = '4';
  return status;
}

}  // namespace

std::string flatten(std::string_view s, std::size_t max_len) {
  std::string flat(s);
  for (char& c : flat)
    if (c == '\r' || c == '\n' || c == '\t') c = ' ';
  std::string out = log::sanitize(flat, max_len);
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// ---------------------------------------------------------------- replies

std::string Reply::status() const {
  if (lines.empty()) return std::to_string(cls()) + ".0.0";
  std::string_view t = lines.front();
  const std::size_t sp = t.find(' ');
  const std::string_view word = t.substr(0, sp);
  int dots = 0;
  std::size_t run = 0;
  bool ok = word.size() >= 5 && word[0] == static_cast<char>('0' + cls()) && word[1] == '.';
  for (char c : word) {
    if (c == '.') {
      if (run == 0) ok = false;
      ++dots;
      run = 0;
    } else if (!digit(c) || ++run > 3) {
      ok = false;
    }
  }
  if (ok && dots == 2 && run > 0) return std::string(word);
  return std::to_string(cls()) + ".0.0";
}

std::string Reply::text() const {
  std::string t = std::to_string(code);
  for (const std::string& l : lines) {
    t += ' ';
    t += l;
  }
  return flatten(t, 400);
}

void ReplyReader::feed(std::string_view bytes) {
  if (!failed()) buf_.append(bytes);
}

void ReplyReader::clear() {
  buf_.clear();
  pos_ = 0;
  partial_ = Reply{};
}

std::optional<Reply> ReplyReader::next() {
  while (!failed()) {
    const std::size_t eol = buf_.find('\n', pos_);
    if (eol == std::string::npos) {
      if (buf_.size() - pos_ > kMaxLine) error_ = "reply line too long";
      buf_.erase(0, pos_);
      pos_ = 0;
      return std::nullopt;
    }
    std::string_view line(buf_.data() + pos_, eol - pos_);
    pos_ = eol + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > kMaxLine) {
      error_ = "reply line too long";
      break;
    }
    const bool shape = line.size() >= 3 && line[0] >= '1' && line[0] <= '5' && digit(line[1]) &&
                       digit(line[2]) && (line.size() == 3 || line[3] == ' ' || line[3] == '-');
    if (!shape) {
      error_ = "malformed reply: " + flatten(line, 100);
      break;
    }
    const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (!partial_.lines.empty() && code != partial_.code) {
      error_ = "inconsistent multi-line reply: " + flatten(line, 100);
      break;
    }
    partial_.code = code;
    partial_.lines.emplace_back(line.size() > 4 ? line.substr(4) : std::string_view());
    if (partial_.lines.size() > kMaxLines) {
      error_ = "reply too long";
      break;
    }
    if (line.size() == 3 || line[3] == ' ') {
      Reply r = std::move(partial_);
      partial_ = Reply{};
      if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
      }
      return r;
    }
  }
  return std::nullopt;
}

Capabilities Capabilities::from_ehlo(const Reply& ehlo) {
  Capabilities c;
  c.esmtp = true;
  for (std::size_t i = 1; i < ehlo.lines.size(); ++i) {
    std::string_view l = ehlo.lines[i];
    const std::size_t sp = l.find_first_of(" =");
    const std::string key = upper(l.substr(0, sp));
    const std::string_view params = sp == std::string_view::npos ? std::string_view() : l.substr(sp + 1);
    if (key == "PIPELINING") c.pipelining = true;
    else if (key == "STARTTLS") c.starttls = true;
    else if (key == "8BITMIME") c.eightbitmime = true;
    else if (key == "SMTPUTF8") c.smtputf8 = true;
    else if (key == "ENHANCEDSTATUSCODES") c.enhanced_status_codes = true;
    else if (key == "CHUNKING") c.chunking = true;
    else if (key == "SIZE") {
      c.size = true;
      std::uint64_t n = 0;
      const auto [p, ec] = std::from_chars(params.data(), params.data() + params.size(), n);
      if (ec == std::errc() && p == params.data() + params.size()) c.size_limit = n;
    } else if (key == "AUTH") {
      std::string_view rest = params;
      while (!rest.empty()) {
        const std::size_t s = rest.find(' ');
        const std::string mech = upper(rest.substr(0, s));
        if (!mech.empty() && std::find(c.auth.begin(), c.auth.end(), mech) == c.auth.end())
          c.auth.push_back(mech);
        if (s == std::string_view::npos) break;
        rest.remove_prefix(s + 1);
      }
    }
  }
  return c;
}

// ---------------------------------------------------------------- session

Session::Session(SessionOptions options) : opt_(std::move(options)) {
  expect_.push_back(Cmd::Greeting);
}

std::string Session::take_output() { return std::exchange(out_, std::string()); }

std::vector<Event> Session::take_events() { return std::exchange(events_, {}); }

Wait Session::waiting() const {
  if (closed_) return Wait::None;
  if (handshaking_) return Wait::TlsHandshake;
  if (txn_ && txn_->in_body) return Wait::Body;
  if (expect_.empty()) return Wait::None;
  switch (expect_.front()) {
    case Cmd::Greeting: return Wait::Greeting;
    case Cmd::Ehlo:
    case Cmd::Helo: return Wait::Helo;
    case Cmd::StartTls: return Wait::StartTls;
    case Cmd::Auth: return Wait::Auth;
    case Cmd::Rset: return Wait::Rset;
    case Cmd::Mail: return Wait::Mail;
    case Cmd::Rcpt: return Wait::Rcpt;
    case Cmd::Data: return Wait::Data;
    case Cmd::DataEnd: return Wait::DataEnd;
    case Cmd::Quit: return Wait::Quit;
  }
  return Wait::None;
}

std::string Session::stage_text() const {
  switch (waiting()) {
    case Wait::Greeting: return "receiving the initial server greeting";
    case Wait::Helo: return "performing the EHLO handshake";
    case Wait::StartTls:
    case Wait::TlsHandshake: return "performing the TLS handshake";
    case Wait::Auth: return "authenticating";
    case Wait::Rset: return "sending RSET";
    case Wait::Mail: return "sending MAIL FROM";
    case Wait::Rcpt: return "sending RCPT TO";
    case Wait::Data: return "sending DATA command";
    case Wait::Body: return "sending message body";
    case Wait::DataEnd: return "sending end of data -- message may be sent more than once";
    case Wait::Quit: return "sending QUIT";
    case Wait::None: break;
  }
  return "idle";
}

std::string Session::said(const Reply& r, std::string_view in_reply_to) const {
  std::string s = "host " + opt_.peer + " said: " + r.text();
  if (!in_reply_to.empty()) s += " (in reply to " + std::string(in_reply_to) + ")";
  return s;
}

void Session::send(std::string_view line, Cmd cmd) {
  out_.append(line);
  out_.append("\r\n");
  expect_.push_back(cmd);
}

void Session::feed(std::string_view bytes) {
  if (closed_) return;
  reader_.feed(bytes);
  while (!closed_) {
    // During the handshake the socket belongs to TLS; plaintext after the
    // 220 was dropped by clear() and nothing is read until EHLO again.
    if (handshaking_) return;
    std::optional<Reply> r = reader_.next();
    if (!r) break;
    on_reply(*r);
  }
  if (reader_.failed() && !closed_) {
    const std::string detail = "protocol error with host " + opt_.peer + " while " + stage_text() +
                               ": " + reader_.error();
    if (!setup_done_) setup_failed(nullptr, "4.5.0", detail);
    else end_session(nullptr, "4.5.0", detail);
  }
}

void Session::on_reply(const Reply& r) {
  if (expect_.empty()) {
    if (txn_ && txn_->in_body) {
      // The server answered in the middle of the message (often 421 or
      // 552): it applies to the accepted recipients, and the stream is
      // unusable.
      for (std::size_t i : txn_->accepted)
        if (!txn_->decided[i]) decide(i, r, "message body");
      end_session(&r, as_temporary(r.status()), said(r, "message body"));
      return;
    }
    // Unsolicited: usually "421 timeout" on an idle connection.
    end_session(&r, as_temporary(r.status()), said(r, ""));
    return;
  }
  const Cmd cmd = expect_.front();
  expect_.pop_front();

  if (r.code == 421 && cmd != Cmd::Quit) {
    const char* what = cmd == Cmd::Greeting ? "" : "a command";
    if (!setup_done_) setup_failed(&r, as_temporary(r.status()), said(r, what));
    else end_session(&r, as_temporary(r.status()), said(r, what));
    return;
  }

  switch (cmd) {
    case Cmd::Greeting:
      if (r.cls() == 2) {
        send("EHLO " + opt_.helo_name, Cmd::Ehlo);
      } else {
        setup_failed(&r, as_temporary(r.status()),
                     "host " + opt_.peer + " refused to talk to me: " + r.text());
      }
      return;
    case Cmd::Ehlo:
      if (r.cls() == 2) {
        caps_ = Capabilities::from_ehlo(r);
        after_hello();
      } else if (r.cls() == 5 && !helo_tried_ && !tls_active_) {
        helo_tried_ = true;
        send("HELO " + opt_.helo_name, Cmd::Helo);
      } else {
        setup_failed(&r, as_temporary(r.status()), said(r, "EHLO command"));
      }
      return;
    case Cmd::Helo:
      if (r.cls() == 2) {
        caps_ = Capabilities{};
        after_hello();
      } else {
        setup_failed(&r, as_temporary(r.status()), said(r, "HELO command"));
      }
      return;
    case Cmd::StartTls:
      if (r.code == 220) {
        reader_.clear();
        handshaking_ = true;
        events_.push_back(Event{Event::Kind::StartTls, {}, {}});
      } else if (opt_.tls == config::TlsPolicy::Required || opt_.tls == config::TlsPolicy::Verify) {
        setup_failed(&r, "4.7.4", said(r, "STARTTLS command"));
      } else {
        auth_step();  // opportunistic: go on in plaintext
      }
      return;
    case Cmd::Auth:
      on_auth_reply(r);
      return;
    case Cmd::Rset:
      // Only a 421 (handled above) matters; MAIL's reply tells the rest.
      if (txn_ && !caps_.pipelining) send_mail();
      return;
    case Cmd::Mail:
      if (!txn_) return;
      if (r.cls() == 2) {
        txn_->mail_ok = true;
      } else {
        txn_->mail_refused = r;
      }
      if (!caps_.pipelining) {
        if (txn_->mail_ok) send_rcpt(0);
        else after_rcpts();
      }
      return;
    case Cmd::Rcpt: {
      if (!txn_) return;
      const std::size_t k = txn_->rcpt_replies++;
      if (txn_->mail_ok && k < txn_->rcpt_order.size()) {
        const std::size_t i = txn_->rcpt_order[k];
        if (r.cls() == 2) txn_->accepted.push_back(i);
        else decide(i, r, "RCPT TO command");
      }
      if (txn_->rcpt_replies < txn_->rcpt_order.size()) {
        if (!caps_.pipelining) send_rcpt(txn_->rcpt_replies);
      } else {
        after_rcpts();
      }
      return;
    }
    case Cmd::Data:
      if (!txn_) return;
      if (r.code == 354) {
        txn_->in_body = true;
        events_.push_back(Event{Event::Kind::SendBody, {}, {}});
        return;
      }
      txn_->result.code = r.code;
      txn_->result.reply = r.text();
      for (std::size_t i : txn_->accepted) {
        if (r.cls() == 4 || r.cls() == 5) decide(i, r, "DATA command");
        else decide_local(i, Outcome::Deferred, "4.5.0", said(r, "DATA command"));
      }
      finish_txn();
      return;
    case Cmd::DataEnd:
      if (!txn_) return;
      txn_->result.code = r.code;
      txn_->result.reply = r.text();
      for (std::size_t i : txn_->accepted) {
        if (r.cls() == 2 || r.cls() == 4 || r.cls() == 5) decide(i, r, "end of DATA command");
        else decide_local(i, Outcome::Deferred, "4.5.0", said(r, "end of DATA command"));
      }
      finish_txn();
      return;
    case Cmd::Quit: {
      closed_ = true;
      Event e{Event::Kind::Closed, {}, {}};
      e.failure.verdict = Verdict{Outcome::Delivered, "", "closed after QUIT"};
      e.failure.code = r.code;
      e.failure.reply = r.text();
      events_.push_back(std::move(e));
      return;
    }
  }
}

void Session::after_hello() {
  using config::TlsPolicy;
  const bool wants_tls = opt_.tls != TlsPolicy::None && !opt_.skip_starttls;
  if (!tls_active_ && wants_tls && caps_.starttls) {
    send("STARTTLS", Cmd::StartTls);
    return;
  }
  if (!tls_active_ && (opt_.tls == TlsPolicy::Required || opt_.tls == TlsPolicy::Verify)) {
    setup_failed(nullptr, "4.7.4", "TLS is required, but was not offered by host " + opt_.peer);
    return;
  }
  auth_step();
}

void Session::auth_step() {
  if (opt_.auth_user.empty()) {
    become_ready();
    return;
  }
  if (!tls_active_ && opt_.tls != config::TlsPolicy::None) {
    setup_failed(nullptr, "4.7.0",
                 "refusing to send AUTH credentials to host " + opt_.peer + " without TLS");
    return;
  }
  const auto has = [&](const char* m) {
    return std::find(caps_.auth.begin(), caps_.auth.end(), m) != caps_.auth.end();
  };
  auth_step_ = 0;
  if (has("PLAIN")) {
    auth_plain_ = true;
    const std::string token = std::string(1, '\0') + opt_.auth_user + '\0' + opt_.auth_password;
    send("AUTH PLAIN " + base64_encode(token), Cmd::Auth);
  } else if (has("LOGIN")) {
    auth_plain_ = false;
    send("AUTH LOGIN", Cmd::Auth);
  } else {
    setup_failed(nullptr, "4.7.0",
                 "AUTH is configured, but host " + opt_.peer + " offers no PLAIN or LOGIN");
  }
}

void Session::on_auth_reply(const Reply& r) {
  if (r.code == 235) {
    become_ready();
    return;
  }
  if (r.code == 334 && auth_step_ < 2) {
    // PLAIN: a server that ignored the initial response asks again.
    // LOGIN: user name, then password.
    const int step = auth_step_++;
    std::string token;
    if (auth_plain_) {
      if (step > 0) {
        out_.append("*\r\n");  // cancel (RFC 4954 §4)
        expect_.push_back(Cmd::Auth);
        return;
      }
      token = std::string(1, '\0') + opt_.auth_user + '\0' + opt_.auth_password;
    } else {
      token = step == 0 ? opt_.auth_user : opt_.auth_password;
    }
    send(base64_encode(token), Cmd::Auth);
    return;
  }
  if (r.code == 334) {
    out_.append("*\r\n");
    expect_.push_back(Cmd::Auth);
    return;
  }
  setup_failed(&r, r.cls() == 5 ? as_temporary(r.status()) : "4.7.0", said(r, "AUTH command"));
}

void Session::become_ready() {
  setup_done_ = true;
  events_.push_back(Event{Event::Kind::Ready, {}, {}});
}

bool Session::begin(const Envelope& env) {
  if (!ready()) return false;
  Txn t;
  t.env = env;
  t.decided.assign(env.recipients.size(), false);
  for (const std::string& rcpt : env.recipients) t.result.recipients.push_back({rcpt, {}, 0, ""});
  txn_ = std::move(t);

  auto refuse_all = [&](std::string status, std::string detail) {
    for (std::size_t i = 0; i < env.recipients.size(); ++i)
      decide_local(i, Outcome::Bounced, status, detail);
    finish_txn();
  };
  if (env.recipients.empty()) {
    finish_txn();
    return true;
  }
  if (env.smtputf8 && !caps_.smtputf8) {
    refuse_all("5.6.7", "SMTPUTF8 is required, but was not offered by host " + opt_.peer);
    return true;
  }
  if (caps_.size && caps_.size_limit > 0 && env.size > caps_.size_limit) {
    refuse_all("5.3.4", "message size " + std::to_string(env.size) + " exceeds size limit " +
                            std::to_string(caps_.size_limit) + " of server " + opt_.peer);
    return true;
  }
  if (!safe_address(env.sender)) {
    refuse_all("5.1.7", "bad sender address syntax");
    return true;
  }
  // A recipient that cannot go on a command line is refused here; the
  // others still go.
  for (std::size_t i = 0; i < env.recipients.size(); ++i) {
    if (safe_address(env.recipients[i])) txn_->rcpt_order.push_back(i);
    else decide_local(i, Outcome::Bounced, "5.1.3", "bad recipient address syntax");
  }
  if (txn_->rcpt_order.empty()) {
    finish_txn();
    return true;
  }

  txn_->result.attempted = true;
  const bool rset = need_rset_;
  need_rset_ = true;
  if (rset) send("RSET", Cmd::Rset);
  // Without PIPELINING, MAIL waits for the RSET reply.
  if (caps_.pipelining || !rset) send_mail();
  return true;
}

void Session::send_mail() {
  const Envelope& env = txn_->env;
  std::string cmd = "MAIL FROM:<" + env.sender + ">";
  if (caps_.size) cmd += " SIZE=" + std::to_string(env.size);
  if (env.body_8bit && caps_.eightbitmime) cmd += " BODY=8BITMIME";
  if (env.smtputf8 && caps_.smtputf8) cmd += " SMTPUTF8";
  send(cmd, Cmd::Mail);
  if (caps_.pipelining) {
    for (std::size_t k = 0; k < txn_->rcpt_order.size(); ++k) send_rcpt(k);
  }
}

void Session::send_rcpt(std::size_t k) {
  send("RCPT TO:<" + txn_->env.recipients[txn_->rcpt_order[k]] + ">", Cmd::Rcpt);
}

void Session::after_rcpts() {
  Txn& t = *txn_;
  if (!t.mail_ok) {
    const Reply& r = *t.mail_refused;
    t.result.code = r.code;
    t.result.reply = r.text();
    for (std::size_t i = 0; i < t.env.recipients.size(); ++i)
      if (!t.decided[i]) decide(i, r, "MAIL FROM command");
    finish_txn();
    return;
  }
  if (t.accepted.empty()) {
    finish_txn();
    return;
  }
  send("DATA", Cmd::Data);
}

void Session::body_sent() {
  if (!txn_ || !txn_->in_body || closed_) return;
  txn_->in_body = false;
  expect_.push_back(Cmd::DataEnd);
}

void Session::decide(std::size_t i, const Reply& r, std::string_view in_reply_to) {
  if (!txn_ || i >= txn_->decided.size() || txn_->decided[i]) return;
  RecipientResult& rr = txn_->result.recipients[i];
  const Outcome o = outcome_of(r.cls());
  rr.verdict = Verdict{o, o == Outcome::Deferred ? as_temporary(r.status()) : r.status(),
                       o == Outcome::Delivered ? r.text() : said(r, in_reply_to)};
  rr.code = r.code;
  rr.reply = r.text();
  txn_->decided[i] = true;
}

void Session::decide_local(std::size_t i, Outcome o, std::string status, std::string detail) {
  if (!txn_ || i >= txn_->decided.size() || txn_->decided[i]) return;
  RecipientResult& rr = txn_->result.recipients[i];
  rr.verdict = Verdict{o, std::move(status), flatten(detail, 400)};
  txn_->decided[i] = true;
}

void Session::finish_txn() {
  if (!txn_) return;
  for (std::size_t i = 0; i < txn_->decided.size(); ++i)
    if (!txn_->decided[i])
      decide_local(i, Outcome::Deferred, "4.5.0", "no result from host " + opt_.peer);
  Event e{Event::Kind::MessageDone, std::move(txn_->result), {}};
  txn_.reset();
  events_.push_back(std::move(e));
}

void Session::setup_failed(const Reply* r, std::string status, std::string detail,
                           bool retry_plaintext) {
  if (closed_) return;
  closed_ = true;
  handshaking_ = false;
  Event e{Event::Kind::SetupFailed, {}, {}};
  e.failure.verdict = Verdict{Outcome::Deferred, as_temporary(std::move(status)), flatten(detail, 400)};
  if (r) {
    e.failure.code = r->code;
    e.failure.reply = r->text();
    // Polite end when the server is still talking to us.
    if (r->code != 421) out_.append("QUIT\r\n");
  }
  e.failure.retry_plaintext = retry_plaintext;
  events_.push_back(std::move(e));
}

void Session::end_session(const Reply* r, std::string status, std::string detail) {
  if (closed_) return;
  if (txn_) {
    for (std::size_t i = 0; i < txn_->decided.size(); ++i) {
      if (txn_->decided[i]) continue;
      decide_local(i, Outcome::Deferred, as_temporary(status), detail);
      if (r) {
        txn_->result.recipients[i].code = r->code;
        txn_->result.recipients[i].reply = r->text();
      }
    }
    if (r) {
      txn_->result.code = r->code;
      txn_->result.reply = r->text();
    }
    finish_txn();
  }
  closed_ = true;
  Event e{Event::Kind::Closed, {}, {}};
  e.failure.verdict = Verdict{Outcome::Deferred, as_temporary(std::move(status)), flatten(detail, 400)};
  if (r) {
    e.failure.code = r->code;
    e.failure.reply = r->text();
  }
  events_.push_back(std::move(e));
}

void Session::tls_established(std::string version) {
  if (!handshaking_ || closed_) return;
  handshaking_ = false;
  tls_active_ = true;
  tls_version_ = std::move(version);
  caps_ = Capabilities{};
  reader_.clear();
  send("EHLO " + opt_.helo_name, Cmd::Ehlo);  // RFC 3207 §4.2: forget what was learnt before
}

void Session::tls_failed(std::string reason) {
  if (closed_) return;
  const bool opportunistic = opt_.tls == config::TlsPolicy::Opportunistic;
  setup_failed(nullptr, "4.7.5", "TLS handshake with host " + opt_.peer + " failed: " + reason,
               opportunistic);
}

void Session::connection_lost(std::string reason) {
  if (closed_) return;
  std::string detail = "lost connection with host " + opt_.peer + " while " + stage_text();
  if (!reason.empty()) detail += " (" + reason + ")";
  if (!setup_done_) setup_failed(nullptr, "4.4.2", detail);
  else end_session(nullptr, "4.4.2", detail);
}

void Session::timed_out() {
  if (closed_) return;
  const std::string detail = "conversation with host " + opt_.peer + " timed out while " + stage_text();
  if (!setup_done_) setup_failed(nullptr, "4.4.2", detail);
  else end_session(nullptr, "4.4.2", detail);
}

void Session::abort(std::string status, std::string detail) {
  if (closed_) return;
  if (txn_) txn_->in_body = false;
  if (!setup_done_) setup_failed(nullptr, std::move(status), std::move(detail));
  else end_session(nullptr, std::move(status), std::move(detail));
}

void Session::quit() {
  if (closed_) return;
  if (ready()) {
    quitting_ = true;
    send("QUIT", Cmd::Quit);
    return;
  }
  if (!setup_done_) {
    closed_ = true;
    Event e{Event::Kind::Closed, {}, {}};
    e.failure.verdict = Verdict{Outcome::Deferred, "4.4.2", "session with host " + opt_.peer + " abandoned"};
    events_.push_back(std::move(e));
    return;
  }
  end_session(nullptr, "4.4.2", "delivery to host " + opt_.peer + " aborted while " + stage_text());
}

// ---------------------------------------------------------------- data

void DotStuffer::add(std::string_view in, std::string* out) {
  out->reserve(out->size() + in.size() + in.size() / 32 + 8);
  std::size_t i = 0;
  while (i < in.size()) {
    if (pending_cr_) {
      pending_cr_ = false;
      if (in[i] == '\n') {
        out->append("\r\n");
        line_start_ = true;
        ++i;
        continue;
      }
      out->push_back('\r');  // a lone CR is not a line end
      line_start_ = false;
    }
    if (line_start_ && in[i] == '.') out->push_back('.');
    const std::size_t j = in.find_first_of("\r\n", i);
    if (j == std::string_view::npos) {
      out->append(in.substr(i));
      line_start_ = false;
      return;
    }
    out->append(in.substr(i, j - i));
    if (j > i) line_start_ = false;
    if (in[j] == '\n') {
      out->append("\r\n");
      line_start_ = true;
    } else {
      pending_cr_ = true;
    }
    i = j + 1;
  }
}

void DotStuffer::finish(std::string* out) {
  if (pending_cr_) {
    out->append("\r\n");
    pending_cr_ = false;
    line_start_ = true;
  }
  if (!line_start_) out->append("\r\n");
  out->append(".\r\n");
  line_start_ = true;
}

}  // namespace petrel::delivery::smtp
