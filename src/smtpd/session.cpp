#include "petrel/smtpd/session.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>

#include "petrel/common/base64.h"
#include "petrel/common/log.h"
#include "petrel/queue/spool.h"

namespace petrel::smtpd {
namespace {

constexpr size_t kMaxCommandLine = 512;  // octets including CRLF (RFC 5321 §4.5.3.1.4)
constexpr size_t kMaxTextLine = 1000;    // octets including CRLF (§4.5.3.1.6)

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && strncasecmp(s.data(), prefix.data(), prefix.size()) == 0;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool parse_u64(std::string_view s, std::uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

// HELO names go into a header comment and logs: keep only what a host name
// or address literal can hold.
std::string sanitize_helo(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 255)) {
    bool ok = std::isalnum(c) || c == '.' || c == '-' || c == '_' || c == ':' || c == '[' ||
              c == ']';
    out += ok ? static_cast<char>(c) : '?';
  }
  return out;
}

std::string rfc5322_date() {
  std::time_t now = std::time(nullptr);
  struct tm tm {};
  ::gmtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

// Received: headers in the header section of an LF message.
int count_received(std::string_view msg) {
  int n = 0;
  size_t pos = 0;
  while (pos < msg.size()) {
    size_t nl = msg.find('\n', pos);
    std::string_view line = msg.substr(pos, nl == std::string_view::npos ? std::string_view::npos
                                                                         : nl - pos);
    if (line.empty()) break;
    if (istarts_with(line, "received:")) ++n;
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return n;
}

}  // namespace

std::string ClientInfo::display() const {
  if (is_unix) return "unix:";
  return "[" + ip + "]:" + std::to_string(port);
}

SessionSettings SessionSettings::from(const config::Config& cfg) {
  SessionSettings s;
  s.hostname = cfg.hostname;
  s.max_message_size = cfg.limits.max_message_size;
  s.max_recipients = cfg.limits.max_recipients;
  s.max_errors = cfg.limits.max_errors;
  s.max_hops = cfg.limits.max_hops;
  s.auth_require_tls = cfg.auth.require_tls;
  return s;
}

Session::Session(SessionSettings settings, ClientInfo client, Policy& policy, MessageSink& sink,
                 Authenticator* auth, StageHooks* hooks)
    : s_(std::move(settings)),
      client_(std::move(client)),
      policy_(policy),
      sink_(sink),
      auth_(auth),
      hooks_(hooks) {}

void Session::greeting() {
  if (hooks_) {
    if (auto r = hooks_->on_connect(client_)) {
      // Refused at connect: say why and end the session (a 554 greeting
      // leaves the client nothing useful to do but QUIT).
      log_reject("CONNECT", r->code, r->text);
      return close_with(r->code, r->text);
    }
  }
  reply(220, s_.hostname + " ESMTP petrel");
}

std::string Session::take_output() {
  std::string out;
  out.swap(out_);
  return out;
}

void Session::reply(int code, std::string_view text) {
  size_t start = 0;
  for (;;) {
    size_t nl = text.find('\n', start);
    bool last = nl == std::string_view::npos;
    out_ += std::to_string(code);
    out_ += last ? ' ' : '-';
    out_.append(text.substr(start, last ? std::string_view::npos : nl - start));
    out_ += "\r\n";
    if (last) break;
    start = nl + 1;
  }
}

void Session::error_reply(int code, std::string_view text) {
  if (++errors_ >= s_.max_errors) {
    log::info("too many errors from " + client_desc());
    close_with(421, "4.7.0 " + s_.hostname + " Error: too many errors");
    return;
  }
  reply(code, text);
}

void Session::close_with(int code, std::string_view text) {
  reply(code, text);
  state_ = State::Closed;
}

void Session::timeout() {
  if (state_ == State::Closed) return;
  log::info("timeout after " + (last_verb_.empty() ? std::string("CONNECT") : last_verb_) +
            " from " + client_desc());
  close_with(421, "4.4.2 " + s_.hostname + " Error: timeout exceeded");
}

std::string Session::client_desc() const { return client_.display(); }

void Session::log_reject(std::string_view verb, int code, std::string_view text,
                         std::string_view extra) {
  std::string line = "NOQUEUE: reject: ";
  line += verb;
  line += " from " + client_desc() + ": " + std::to_string(code) + " ";
  line += log::sanitize(text, 200);
  line += "; from=<" + log::sanitize(sender_.str()) + ">";
  if (!extra.empty()) line += " " + log::sanitize(extra);
  line += " helo=<" + helo_ + ">";
  log::info(line);
}

void Session::reset_transaction() {
  sender_ = Address{};
  rcpts_.clear();
  body_8bit_ = false;
  smtputf8_ = false;
  declared_size_ = 0;
  msg_.clear();
  wire_size_ = 0;
  too_big_ = bad_newline_ = line_too_long_ = false;
  prev_crlf_ = true;
  cur_line_len_ = 0;
  bdat_active_ = false;
  bdat_raw_.clear();
  if (state_ == State::Mail || state_ == State::Data) state_ = State::Ready;
}

void Session::feed(std::string_view bytes) {
  if (state_ == State::Closed) return;
  in_.append(bytes);
  process();
}

void Session::process() {
  while (state_ != State::Closed && !tls_pending_) {
    bool progressed;
    if (bdat_remaining_ > 0) progressed = process_bdat();
    else if (state_ == State::Data) progressed = process_data();
    else progressed = process_command_line();
    if (!progressed) break;
  }
  if (in_pos_ > 0) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
}

bool Session::process_command_line() {
  size_t nl = in_.find('\n', in_pos_);
  if (skipping_long_line_) {
    if (nl == std::string::npos) {
      in_pos_ = in_.size();
      return false;
    }
    in_pos_ = nl + 1;
    skipping_long_line_ = false;
    auth_step_ = AuthStep::None;  // a too-long line also ends an AUTH exchange
    last_verb_ = "?";
    log_reject("CONNECT", 500, "5.5.2 Error: line too long");
    error_reply(500, "5.5.2 Error: line too long");
    return true;
  }
  if (nl == std::string::npos) {
    if (in_.size() - in_pos_ > kMaxCommandLine) {
      skipping_long_line_ = true;
      in_pos_ = in_.size();
    }
    return false;
  }
  std::string_view line(in_.data() + in_pos_, nl - in_pos_ + 1);
  in_pos_ = nl + 1;
  bool crlf = line.size() >= 2 && line[line.size() - 2] == '\r';
  if (line.size() + (crlf ? 0 : 1) > kMaxCommandLine) {
    auth_step_ = AuthStep::None;
    error_reply(500, "5.5.2 Error: line too long");
    return true;
  }
  line.remove_suffix(crlf ? 2 : 1);
  if (auth_step_ != AuthStep::None) auth_continue(line);
  else handle_command(line);
  return true;
}

void Session::handle_command(std::string_view line) {
  size_t sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  std::string_view arg = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  last_verb_.assign(verb.substr(0, 16));
  for (char& c : last_verb_) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));

  if (iequals(verb, "EHLO")) return cmd_helo(arg, true);
  if (iequals(verb, "HELO")) return cmd_helo(arg, false);
  if (iequals(verb, "MAIL")) return cmd_mail(arg);
  if (iequals(verb, "RCPT")) return cmd_rcpt(arg);
  if (iequals(verb, "DATA")) return cmd_data(arg);
  if (iequals(verb, "BDAT")) return cmd_bdat(arg);
  if (iequals(verb, "RSET")) return cmd_rset(arg);
  if (iequals(verb, "VRFY")) return cmd_vrfy(arg);
  if (iequals(verb, "NOOP")) return reply(250, "2.0.0 Ok");
  if (iequals(verb, "HELP"))
    return reply(214, "2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP");
  if (iequals(verb, "QUIT")) return close_with(221, "2.0.0 Bye");
  if (iequals(verb, "STARTTLS")) return cmd_starttls(arg);
  if (iequals(verb, "AUTH")) return cmd_auth(arg);
  if (iequals(verb, "EXPN") || iequals(verb, "ETRN") || iequals(verb, "TURN"))
    return error_reply(502, "5.5.1 Error: command not implemented");
  last_verb_ = "UNKNOWN";
  error_reply(500, "5.5.2 Error: command not recognized");
}

void Session::cmd_helo(std::string_view arg, bool extended) {
  arg = trim(arg);
  if (arg.empty()) {
    return error_reply(501, extended ? "5.5.4 Syntax: EHLO hostname" : "5.5.4 Syntax: HELO hostname");
  }
  if (hooks_) {
    if (auto r = hooks_->on_helo(client_, sanitize_helo(arg))) {
      log_reject(extended ? "EHLO" : "HELO", r->code, r->text);
      return error_reply(r->code, r->text);
    }
  }
  reset_transaction();
  helo_ = sanitize_helo(arg);
  esmtp_ = extended;
  state_ = State::Ready;
  if (!extended) return reply(250, s_.hostname);
  std::string text = s_.hostname;
  text += "\nPIPELINING";
  text += "\nSIZE " + std::to_string(s_.max_message_size);
  text += "\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING";
  if (s_.starttls_available && !client_.tls) text += "\nSTARTTLS";
  if (auth_ && auth_->enabled() && (client_.tls || !s_.auth_require_tls))
    text += "\nAUTH PLAIN LOGIN";
  reply(250, text);
}

void Session::cmd_mail(std::string_view arg) {
  if (state_ == State::Fresh) return error_reply(503, "5.5.1 Error: send HELO/EHLO first");
  if (state_ != State::Ready) return error_reply(503, "5.5.1 Error: nested MAIL command");
  if (!istarts_with(arg, "FROM:")) return error_reply(501, "5.5.4 Syntax: MAIL FROM:<address>");
  if (submission() && auth_user_.empty()) {
    log_reject("MAIL", 530, "5.7.0 Authentication required");
    return error_reply(530, "5.7.0 Authentication required");
  }
  std::string_view path = trim(arg.substr(5));
  std::string_view rest;
  auto addr = parse_path(path, PathKind::ReversePath, true, &rest);
  if (!addr) {
    log_reject("MAIL", 501, "5.1.7 Bad sender address syntax");
    return error_reply(501, "5.1.7 Bad sender address syntax");
  }
  bool utf8 = false, body8 = false;
  std::uint64_t size = 0;
  rest = trim(rest);
  while (!rest.empty()) {
    size_t sp = rest.find(' ');
    std::string_view param = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view{} : trim(rest.substr(sp + 1));
    size_t eq = param.find('=');
    std::string_view key = param.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view{} : param.substr(eq + 1);
    if (!esmtp_) return error_reply(555, "5.5.4 Error: parameters need EHLO");
    if (iequals(key, "SIZE")) {
      if (!parse_u64(value, &size)) return error_reply(501, "5.5.4 Bad SIZE parameter");
    } else if (iequals(key, "BODY")) {
      if (iequals(value, "8BITMIME")) body8 = true;
      else if (iequals(value, "7BIT")) body8 = false;
      else return error_reply(501, "5.5.4 Unsupported BODY parameter");
    } else if (iequals(key, "SMTPUTF8") && eq == std::string_view::npos) {
      utf8 = true;
    } else if (iequals(key, "AUTH") && eq != std::string_view::npos) {
      // RFC 4954 §5: the original submitter; accepted and not relied upon.
    } else {
      return error_reply(555, "5.5.4 Unsupported option: " + log::sanitize(key, 32));
    }
  }
  if (addr->utf8 && !utf8) {
    log_reject("MAIL", 553, "5.6.7 SMTPUTF8 is required for this address");
    return error_reply(553, "5.6.7 Error: SMTPUTF8 is required for this address");
  }
  if (size > s_.max_message_size) {
    log_reject("MAIL", 552, "5.3.4 Message size exceeds fixed limit");
    return reply(552, "5.3.4 Error: message size exceeds fixed limit");
  }
  if (hooks_) {
    if (auto r = hooks_->on_mail(client_, helo_, *addr, auth_user_)) {
      log_reject("MAIL", r->code, r->text);
      return error_reply(r->code, r->text);
    }
  }
  sender_ = std::move(*addr);
  smtputf8_ = utf8;
  body_8bit_ = body8;
  declared_size_ = size;
  state_ = State::Mail;
  reply(250, "2.1.0 Ok");
}

void Session::cmd_rcpt(std::string_view arg) {
  if (state_ != State::Mail) return error_reply(503, "5.5.1 Error: need MAIL command");
  if (!istarts_with(arg, "TO:")) return error_reply(501, "5.5.4 Syntax: RCPT TO:<address>");
  std::string_view path = trim(arg.substr(3));
  std::string_view rest;
  auto addr = parse_path(path, PathKind::ForwardPath, true, &rest);
  if (!addr) {
    log_reject("RCPT", 501, "5.1.3 Bad recipient address syntax");
    return error_reply(501, "5.1.3 Bad recipient address syntax");
  }
  if (!trim(rest).empty()) return error_reply(555, "5.5.4 Unsupported option in RCPT");
  if (addr->utf8 && !smtputf8_) {
    log_reject("RCPT", 553, "5.6.7 SMTPUTF8 is required for this address");
    return error_reply(553, "5.6.7 Error: SMTPUTF8 is required for this address");
  }
  std::string shown = "<" + log::sanitize(addr->str()) + ">";
  if (static_cast<int>(rcpts_.size()) >= s_.max_recipients)
    return reply(452, "4.5.3 Error: too many recipients");
  switch (policy_.check_recipient(*addr, client_, !auth_user_.empty())) {
    case RcptVerdict::Ok:
      if (hooks_) {
        if (auto r = hooks_->on_rcpt(client_, helo_, sender_, *addr, auth_user_)) {
          log_reject("RCPT", r->code, r->text, "to=" + shown);
          return error_reply(r->code, r->text);
        }
      }
      rcpts_.push_back(std::move(*addr));
      return reply(250, "2.1.5 Ok");
    case RcptVerdict::RelayDenied: {
      std::string text = "5.7.1 " + shown + ": Relay access denied";
      log_reject("RCPT", 554, text, "to=" + shown);
      return error_reply(554, text);
    }
    case RcptVerdict::UnknownUser: {
      std::string text = "5.1.1 " + shown + ": Recipient address rejected: User unknown";
      log_reject("RCPT", 550, text, "to=" + shown);
      return error_reply(550, text);
    }
  }
}

void Session::cmd_data(std::string_view arg) {
  if (!trim(arg).empty()) return error_reply(501, "5.5.4 Syntax: DATA");
  if (state_ != State::Mail) return error_reply(503, "5.5.1 Error: need MAIL command");
  if (bdat_active_) return error_reply(503, "5.5.1 Error: DATA after BDAT");
  if (rcpts_.empty()) return error_reply(554, "5.5.1 Error: no valid recipients");
  if (in_pos_ < in_.size()) {
    // The client sent content before it could have seen our 354: a
    // pipelining violation (RFC 2920 §3.1) and the shape of smuggling attacks.
    log::info("improper command pipelining after DATA from " + client_desc());
    return close_with(554, "5.5.0 Error: SMTP protocol synchronization");
  }
  msg_.clear();
  wire_size_ = 0;
  too_big_ = bad_newline_ = line_too_long_ = false;
  prev_crlf_ = true;
  cur_line_len_ = 0;
  state_ = State::Data;
  reply(354, "End data with <CR><LF>.<CR><LF>");
}

bool Session::process_data() {
  size_t nl = in_.find('\n', in_pos_);
  if (nl == std::string::npos) {
    // Keep partial lines buffered, but never more than one text line: a
    // longer one is already refused, so it is counted and dropped. A final
    // CR stays buffered in case the LF completes a CRLF.
    size_t avail = in_.size() - in_pos_;
    if (cur_line_len_ + avail > kMaxTextLine) {
      size_t take = avail;
      if (take > 0 && in_.back() == '\r') --take;
      std::string_view part(in_.data() + in_pos_, take);
      if (part.find('\r') != std::string_view::npos) bad_newline_ = true;
      line_too_long_ = true;
      cur_line_len_ += take;
      wire_size_ += take;
      in_pos_ += take;
    }
    return false;
  }
  std::string_view line(in_.data() + in_pos_, nl - in_pos_ + 1);
  in_pos_ = nl + 1;
  if (cur_line_len_ > 0) {
    // The tail of a too-long line.
    bool crlf = line.size() >= 2 && line[line.size() - 2] == '\r';
    if (line.substr(0, line.size() - (crlf ? 2 : 1)).find('\r') != std::string_view::npos ||
        !crlf)
      bad_newline_ = true;
    prev_crlf_ = crlf;
    wire_size_ += line.size();
    cur_line_len_ = 0;
    return true;
  }
  data_line(line);
  return true;
}

void Session::data_line(std::string_view line) {
  bool crlf = line.size() >= 2 && line[line.size() - 2] == '\r';
  std::string_view content = line.substr(0, line.size() - (crlf ? 2 : 1));
  if (crlf && prev_crlf_ && content == ".") {
    finish_message(false);
    return;
  }
  prev_crlf_ = crlf;
  if (!crlf || content.find('\r') != std::string_view::npos) bad_newline_ = true;
  if (line.size() + (crlf ? 0 : 1) > kMaxTextLine) line_too_long_ = true;
  if (!content.empty() && content.front() == '.') content.remove_prefix(1);
  wire_size_ += content.size() + 2;
  if (wire_size_ > s_.max_message_size) too_big_ = true;
  if (!too_big_ && !bad_newline_ && !line_too_long_) {
    msg_.append(content);
    msg_ += '\n';
  }
}

void Session::cmd_bdat(std::string_view arg) {
  arg = trim(arg);
  size_t sp = arg.find(' ');
  std::uint64_t size = 0;
  std::string_view flag = sp == std::string_view::npos ? std::string_view{} : trim(arg.substr(sp + 1));
  if (!parse_u64(arg.substr(0, sp), &size) || (!flag.empty() && !iequals(flag, "LAST"))) {
    // Without a size the chunk cannot be skipped: end the session.
    log::info("malformed BDAT from " + client_desc());
    return close_with(421, "4.5.4 " + s_.hostname + " Error: malformed BDAT command");
  }
  bdat_remaining_ = size;
  bdat_last_ = !flag.empty();
  bdat_discard_ = true;
  if (state_ != State::Mail) {
    error_reply(503, "5.5.1 Error: need MAIL command");
  } else if (rcpts_.empty()) {
    error_reply(554, "5.5.1 Error: no valid recipients");
  } else {
    if (!bdat_active_) {
      bdat_active_ = true;
      bdat_raw_.clear();
    }
    bdat_discard_ = false;
  }
  if (size == 0) bdat_chunk_done();
}

bool Session::process_bdat() {
  size_t avail = in_.size() - in_pos_;
  if (avail == 0) return false;
  size_t take = static_cast<size_t>(std::min<std::uint64_t>(avail, bdat_remaining_));
  if (!bdat_discard_) {
    if (bdat_raw_.size() + take > s_.max_message_size) too_big_ = true;
    if (!too_big_) bdat_raw_.append(in_, in_pos_, take);
  }
  in_pos_ += take;
  bdat_remaining_ -= take;
  if (bdat_remaining_ > 0) return false;
  bdat_chunk_done();
  return true;
}

void Session::bdat_chunk_done() {
  if (bdat_discard_) return;  // the error was already answered
  if (too_big_) {
    reply(552, "5.3.4 Error: message size exceeds fixed limit");
    reset_transaction();
    return;
  }
  if (!bdat_last_) {
    reply(250, "2.0.0 " + std::to_string(bdat_raw_.size()) + " octets received");
    return;
  }
  check_bdat_content();
  finish_message(true);
}

void Session::check_bdat_content() {
  std::string_view raw = bdat_raw_;
  msg_.clear();
  wire_size_ = raw.size();
  size_t pos = 0;
  while (pos < raw.size()) {
    size_t nl = raw.find('\n', pos);
    std::string_view line = raw.substr(pos, nl == std::string_view::npos ? std::string_view::npos
                                                                         : nl - pos + 1);
    pos = nl == std::string_view::npos ? raw.size() : nl + 1;
    bool has_lf = !line.empty() && line.back() == '\n';
    bool crlf = has_lf && line.size() >= 2 && line[line.size() - 2] == '\r';
    if (has_lf && !crlf) bad_newline_ = true;
    std::string_view content = line.substr(0, line.size() - (crlf ? 2 : has_lf ? 1 : 0));
    if (content.find('\r') != std::string_view::npos) bad_newline_ = true;
    if (content.size() + 2 > kMaxTextLine) line_too_long_ = true;
    msg_.append(content);
    msg_ += '\n';
  }
  bdat_raw_.clear();
}

void Session::finish_message(bool from_bdat) {
  state_ = State::Ready;
  std::string_view verb = from_bdat ? "BDAT" : "DATA";
  auto refuse = [&](int code, const std::string& text) {
    log_reject(std::string(verb) + " end", code, text, "nrcpt=" + std::to_string(rcpts_.size()));
    reply(code, text);
    reset_transaction();
  };
  if (too_big_) return refuse(552, "5.3.4 Error: message size exceeds fixed limit");
  if (bad_newline_) return refuse(550, "5.5.2 Error: bare <CR> or <LF> in message text");
  if (line_too_long_) return refuse(500, "5.5.2 Error: text line too long");
  if (count_received(msg_) > s_.max_hops) return refuse(554, "5.4.6 Error: too many hops");

  MessageInfo info;
  info.queue_id = queue::new_queue_id();
  if (submission()) add_submission_headers(info.queue_id);
  info.sender = sender_;
  info.recipients = rcpts_;
  info.body_8bit = body_8bit_;
  info.smtputf8 = smtputf8_;
  info.size = wire_size_;
  info.helo = helo_;
  info.auth_user = auth_user_;
  info.client = &client_;
  std::string received = received_header(info.queue_id);
  Reply r = sink_.accept_message(info, received, msg_);
  if (r.code >= 200 && r.code < 300) ++accepted_;
  reply(r.code, r.text);
  reset_transaction();
}

// RFC 6409 §8.1, 8.3: a submission server completes Date: and Message-ID:.
void Session::add_submission_headers(const std::string& id) {
  std::string_view head(msg_);
  size_t end = head.find("\n\n");
  head = head.substr(0, end == std::string_view::npos ? head.size() : end + 1);
  auto has = [&](std::string_view name) {
    size_t pos = 0;
    while (pos < head.size()) {
      if (istarts_with(head.substr(pos), name)) return true;
      size_t nl = head.find('\n', pos);
      if (nl == std::string_view::npos) break;
      pos = nl + 1;
    }
    return false;
  };
  std::string add;
  if (!has("date:")) add += "Date: " + rfc5322_date() + "\n";
  if (!has("message-id:")) add += "Message-ID: <" + id + "@" + s_.hostname + ">\n";
  if (!add.empty()) msg_.insert(0, add);
}

std::string Session::received_header(const std::string& id) const {
  std::string h = "Received: from " + (helo_.empty() ? std::string("unknown") : helo_);
  h += client_.is_unix ? " (unix socket)" : " ([" + client_.ip + "])";
  h += "\n\tby " + s_.hostname + " (petrel) with ";
  std::string proto = smtputf8_ ? "UTF8SMTP" : esmtp_ ? "ESMTP" : "SMTP";
  if (smtputf8_ && !esmtp_) proto = "UTF8SMTP";
  if (client_.tls) proto += "S";
  if (!auth_user_.empty()) proto += "A";
  h += proto + " id " + id;
  if (client_.tls)
    h += "\n\t(using " + client_.tls_version + " with cipher " + client_.tls_cipher + ")";
  if (!auth_user_.empty()) h += "\n\t(authenticated)";
  if (rcpts_.size() == 1) h += "\n\tfor <" + log::sanitize(rcpts_.front().str()) + ">";
  h += "; " + rfc5322_date() + "\n";
  return h;
}

void Session::cmd_starttls(std::string_view arg) {
  if (!trim(arg).empty()) return error_reply(501, "5.5.4 Syntax: STARTTLS");
  if (client_.tls) return error_reply(503, "5.5.1 Error: TLS already active");
  if (!s_.starttls_available) return error_reply(502, "5.5.1 Error: command not implemented");
  if (state_ == State::Mail) return error_reply(503, "5.5.1 Error: MAIL transaction in progress");
  reply(220, "2.0.0 Ready to start TLS");
  // Anything the client pipelined after STARTTLS was sent in plaintext and
  // must never be read as if it came through TLS (CVE-2011-0411).
  if (in_pos_ < in_.size()) {
    log::info("discarding " + std::to_string(in_.size() - in_pos_) +
              " octets pipelined after STARTTLS from " + client_desc());
    in_pos_ = in_.size();
  }
  tls_pending_ = true;
}

void Session::tls_started(std::string version, std::string cipher) {
  tls_pending_ = false;
  client_.tls = true;
  client_.tls_version = std::move(version);
  client_.tls_cipher = std::move(cipher);
  // RFC 3207 §4.2: forget everything learned before the handshake,
  // including a plaintext AUTH (possible with auth.require_tls: false).
  reset_transaction();
  helo_.clear();
  esmtp_ = false;
  auth_user_.clear();
  auth_step_ = AuthStep::None;
  state_ = State::Fresh;
}

void Session::cmd_auth(std::string_view arg) {
  if (auth_failures_ >= 3) {
    log::info("too many AUTH failures from " + client_desc());
    return close_with(421, "4.7.0 " + s_.hostname + " Error: too many authentication failures");
  }
  if (!auth_ || !auth_->enabled() || !esmtp_)
    return error_reply(503, "5.5.1 Error: authentication not enabled");
  if (!auth_user_.empty()) return error_reply(503, "5.5.1 Error: already authenticated");
  if (state_ == State::Mail) return error_reply(503, "5.5.1 Error: MAIL transaction in progress");
  if (s_.auth_require_tls && !client_.tls)
    return error_reply(538, "5.7.11 Encryption required for requested authentication mechanism");
  arg = trim(arg);
  size_t sp = arg.find(' ');
  std::string_view mech = arg.substr(0, sp);
  std::string_view initial = sp == std::string_view::npos ? std::string_view{} : trim(arg.substr(sp + 1));
  if (iequals(mech, "PLAIN")) {
    if (initial.empty()) {
      auth_step_ = AuthStep::PlainResponse;
      return reply(334, "");
    }
    auth_step_ = AuthStep::PlainResponse;
    return auth_continue(initial);
  }
  if (iequals(mech, "LOGIN")) {
    if (initial.empty()) {
      auth_step_ = AuthStep::LoginUser;
      return reply(334, "VXNlcm5hbWU6");  // "Username:"
    }
    auth_step_ = AuthStep::LoginUser;
    return auth_continue(initial);
  }
  error_reply(504, "5.5.4 Error: unsupported authentication mechanism");
}

void Session::auth_continue(std::string_view line) {
  AuthStep step = auth_step_;
  auth_step_ = AuthStep::None;
  if (trim(line) == "*") return error_reply(501, "5.7.0 Authentication aborted");
  std::optional<std::string> decoded = line == "=" ? std::optional<std::string>("") : base64_decode(trim(line));
  if (!decoded) return error_reply(501, "5.5.2 Error: invalid base64 data");
  switch (step) {
    case AuthStep::PlainResponse: {
      // authzid NUL authcid NUL passwd (RFC 4616)
      const std::string& d = *decoded;
      size_t a = d.find('\0');
      size_t b = a == std::string::npos ? std::string::npos : d.find('\0', a + 1);
      if (b == std::string::npos) return error_reply(501, "5.5.2 Error: malformed PLAIN response");
      std::string_view authz(d.data(), a), user(d.data() + a + 1, b - a - 1);
      if (!authz.empty() && authz != user) {
        ++auth_failures_;
        return reply(535, "5.7.8 Error: authentication failed");
      }
      return auth_finish(user, std::string_view(d).substr(b + 1));
    }
    case AuthStep::LoginUser:
      auth_login_user_ = *decoded;
      auth_step_ = AuthStep::LoginPassword;
      return reply(334, "UGFzc3dvcmQ6");  // "Password:"
    case AuthStep::LoginPassword:
      return auth_finish(auth_login_user_, *decoded);
    case AuthStep::None:
      break;
  }
}

void Session::auth_finish(std::string_view user, std::string_view password) {
  if (!user.empty() && user.size() <= 256 && auth_->verify(user, password)) {
    auth_user_ = log::sanitize(user, 256);
    log::info(client_desc() + ": sasl_username=" + auth_user_);
    return reply(235, "2.7.0 Authentication successful");
  }
  ++auth_failures_;
  log::info(client_desc() + ": authentication failed for " + log::sanitize(user, 64));
  reply(535, "5.7.8 Error: authentication failed");
}

void Session::cmd_rset(std::string_view arg) {
  if (!trim(arg).empty()) return error_reply(501, "5.5.4 Syntax: RSET");
  reset_transaction();
  reply(250, "2.0.0 Ok");
}

void Session::cmd_vrfy(std::string_view arg) {
  if (trim(arg).empty()) return error_reply(501, "5.5.4 Syntax: VRFY address");
  reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

}  // namespace petrel::smtpd
