// The milter client: one connection per worker, a per-session state machine
// over it (see milter.h), blocking I/O where every wait has a deadline.
#include "petrel/filter/milter.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"

namespace petrel::filter {

using std::chrono::milliseconds;

MilterTimeouts MilterTimeouts::from_config(const config::Filter& cfg) {
  MilterTimeouts t;
  if (cfg.timeout && *cfg.timeout > 0) {
    const milliseconds limit = std::chrono::seconds(*cfg.timeout);
    t.content = limit;
    t.connect = std::min(t.connect, limit);
    t.command = std::min(t.command, limit);
  }
  return t;
}

namespace {

using namespace milter;

constexpr std::size_t kMaxReplyData = 16u << 20;  // one reply packet
constexpr std::size_t kMaxNewBody = 512u << 20;   // all SMFIR_REPLBODY chunks together
constexpr const char* kDaemonName = "petrel";

class Deadline {
 public:
  explicit Deadline(milliseconds budget) : end_(std::chrono::steady_clock::now() + budget) {}
  int remaining_ms() const {
    const auto left = std::chrono::duration_cast<milliseconds>(
        end_ - std::chrono::steady_clock::now()).count();
    if (left <= 0) return 0;
    return left > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left);
  }

 private:
  std::chrono::steady_clock::time_point end_;
};

// A stream socket to the milter; a non-blocking fd behind blocking calls,
// so that each wait is bounded by poll().
class Connection {
 public:
  bool is_open() const { return fd_.valid(); }
  void close() { fd_.reset(); }

  Status open(const std::string& address, milliseconds timeout) {
    close();
    const Deadline deadline(timeout);
    std::string_view a = address;
    if (a.starts_with("unix:") || a.starts_with("local:")) {
      a.remove_prefix(a.find(':') + 1);
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      if (a.empty() || a.size() >= sizeof sun.sun_path) return Error{"bad socket path"};
      std::memcpy(sun.sun_path, a.data(), a.size());
      return connect_to(AF_UNIX, reinterpret_cast<sockaddr*>(&sun), sizeof sun, deadline);
    }
    std::string host, port;
    if (!split_inet(a, &host, &port)) return Error{"bad milter address " + address};
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
      return Error{host + ": " + ::gai_strerror(rc)};
    Status last = Error{host + ": no address"};
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      last = connect_to(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline);
      if (last.ok()) break;
    }
    ::freeaddrinfo(res);
    return last;
  }

  // Writes all of `bytes` within `timeout`.
  Status send(std::string_view bytes, milliseconds timeout) {
    const Deadline deadline(timeout);
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n >= 0) {
        bytes.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Error{"write: " + errno_string(errno)};
      if (Status st = wait(fd_.get(), POLLOUT, deadline, "write"); !st) return st;
    }
    return Status::Ok();
  }

  // Reads one packet, which must arrive whole within `timeout`.
  Result<Packet> receive(milliseconds timeout) {
    const Deadline deadline(timeout);
    char head[4];
    if (Status st = read_exact(head, 4, deadline); !st) return Error{st.error()};
    const std::uint32_t len = (std::uint32_t{static_cast<unsigned char>(head[0])} << 24) |
                              (std::uint32_t{static_cast<unsigned char>(head[1])} << 16) |
                              (std::uint32_t{static_cast<unsigned char>(head[2])} << 8) |
                              std::uint32_t{static_cast<unsigned char>(head[3])};
    if (len == 0 || len - 1 > kMaxReplyData)
      return Error{"bad packet length " + std::to_string(len)};
    std::string body(len, '\0');
    if (Status st = read_exact(body.data(), len, deadline); !st) return Error{st.error()};
    Packet p;
    p.code = body[0];
    p.data = body.substr(1);
    return p;
  }

 private:
  // "inet:host:port", "inet:[v6]:port", "inet:port@host" (sendmail's form).
  static bool split_inet(std::string_view a, std::string* host, std::string* port) {
    if (a.starts_with("inet:")) a.remove_prefix(5);
    else if (a.starts_with("inet6:")) a.remove_prefix(6);
    else return false;
    if (const std::size_t at = a.find('@'); at != std::string_view::npos) {
      *port = a.substr(0, at);
      *host = a.substr(at + 1);
    } else if (a.starts_with("[")) {
      const std::size_t close = a.find(']');
      if (close == std::string_view::npos || a.substr(close + 1, 1) != ":") return false;
      *host = a.substr(1, close - 1);
      *port = a.substr(close + 2);
    } else {
      const std::size_t colon = a.rfind(':');
      if (colon == std::string_view::npos) return false;
      *host = a.substr(0, colon);
      *port = a.substr(colon + 1);
    }
    if (host->size() > 2 && host->front() == '[' && host->back() == ']')
      *host = host->substr(1, host->size() - 2);
    return !host->empty() && !port->empty();
  }

  Status connect_to(int family, const sockaddr* sa, socklen_t len, const Deadline& deadline) {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return Error{"socket: " + errno_string(errno)};
    if (::connect(fd.get(), sa, len) != 0) {
      if (errno != EINPROGRESS && errno != EINTR) return Error{"connect: " + errno_string(errno)};
      if (Status st = wait(fd.get(), POLLOUT, deadline, "connect"); !st) return st;
      int err = 0;
      socklen_t elen = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen) != 0) err = errno;
      if (err != 0) return Error{"connect: " + errno_string(err)};
    }
    if (family != AF_UNIX) {
      // Each command waits for its reply; Nagle would hold the next one back.
      const int one = 1;
      (void)::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    fd_ = std::move(fd);
    return Status::Ok();
  }

  static Status wait(int fd, short events, const Deadline& deadline, const char* what) {
    for (;;) {
      pollfd p{fd, events, 0};
      const int ms = deadline.remaining_ms();
      if (ms == 0) return Error{std::string(what) + " timed out"};
      const int rc = ::poll(&p, 1, ms);
      if (rc > 0) return Status::Ok();  // ready, or an error the next call reports
      if (rc < 0 && errno != EINTR) return Error{std::string("poll: ") + errno_string(errno)};
    }
  }

  Status read_exact(char* buf, std::size_t n, const Deadline& deadline) {
    std::size_t got = 0;
    while (got < n) {
      const ssize_t r = ::recv(fd_.get(), buf + got, n - got, 0);
      if (r > 0) {
        got += static_cast<std::size_t>(r);
        continue;
      }
      if (r == 0) return Error{"connection closed by the milter"};
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Error{"read: " + errno_string(errno)};
      if (Status st = wait(fd_.get(), POLLIN, deadline, "read"); !st) return st;
    }
    return Status::Ok();
  }

  UniqueFd fd_;
};

// "<a@b>" and " a@b " alike to "a@b"; "<>" to "".
std::string bare_address(std::string_view a) {
  while (!a.empty() && (a.front() == ' ' || a.front() == '\t')) a.remove_prefix(1);
  while (!a.empty() && (a.back() == ' ' || a.back() == '\t')) a.remove_suffix(1);
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  return std::string(a);
}

// The address as a milter's CONNECT and `_` macro want it; an IPv4-mapped
// IPv6 address is reported as the IPv4 one.
std::string plain_ip(const std::string& ip) {
  if (ip.starts_with("::ffff:") && ip.find('.') != std::string::npos) return ip.substr(7);
  return ip;
}

class MilterFilter final : public Filter {
 public:
  MilterFilter(const config::Filter& cfg, const MilterTimeouts& t)
      : name_(cfg.name), address_(cfg.milter), on_error_(cfg.on_error), timeouts_(t) {}
  ~MilterFilter() override { close(); }

  const std::string& name() const override { return name_; }

  std::optional<StageReply> on_connect(const Envelope& env) override {
    if (connect_done_ || failed_ || conn_.is_open()) close();  // a new session
    std::optional<StageReply> out;
    session_ready(env, /*with_helo=*/false, &out);
    return out;
  }

  std::optional<StageReply> on_helo(const Envelope& env) override {
    std::optional<StageReply> out;
    if (!session_ready(env, /*with_helo=*/false, &out)) return out;
    if (mail_sent_ || txn_end_ != TxnEnd::None) reset();  // EHLO ends a transaction
    helo_done_ = true;
    return session_answer(send_helo(env));
  }

  std::optional<StageReply> on_mail(const Envelope& env) override {
    std::optional<StageReply> out;
    if (!session_ready(env, /*with_helo=*/true, &out)) return out;
    if (mail_sent_ || txn_end_ != TxnEnd::None) reset();
    return mail_answer(send_mail(env));
  }

  std::optional<StageReply> on_rcpt(const Envelope& env, std::string_view rcpt) override {
    std::optional<StageReply> out;
    if (!session_ready(env, /*with_helo=*/true, &out)) return out;
    if (txn_end_ == TxnEnd::Done || txn_end_ == TxnEnd::Refused) reset();  // stale
    if (!mail_sent_) {
      if (auto r = mail_answer(send_mail(env))) return r;
    }
    if (failed_) return error_stage();
    if (txn_end_ != TxnEnd::None) return std::nullopt;  // accepted or discarded: no more events
    rcpts_sent_.emplace_back(rcpt);
    return rcpt_answer(send_rcpt(env, rcpt));
  }

  Verdict scan(const Envelope& env, std::string_view message) override {
    // A finished or refused transaction the chain did not reset() is the
    // previous message; an accepted or discarded one is this message's.
    if (txn_end_ == TxnEnd::Done || txn_end_ == TxnEnd::Refused) reset();
    Verdict v;
    const Step last = converse(env, message, &v);
    txn_end_ = TxnEnd::Done;
    if (failed_ || last.answer == Answer::Failed) return error_verdict();
    switch (last.answer) {
      case Answer::Discard:
        v = Verdict{};
        v.action = Action::Discard;
        v.detail = "milter discard";
        return v;
      case Answer::Reject:
      case Answer::Tempfail: {
        Verdict r;
        r.action = last.answer == Answer::Reject ? Action::Reject : Action::Tempfail;
        r.reply = last.reply;
        r.detail = last.reply.empty() ? (last.answer == Answer::Reject ? "milter reject"
                                                                        : "milter tempfail")
                                      : "milter: " + last.reply;
        return r;
      }
      default:
        break;
    }
    // SMFIR_ACCEPT ends this milter's interest in the message, as in sendmail
    // and Postfix; it does not vouch for the message to the other filters.
    v.action = Action::Continue;
    if (last.answer == Answer::Accept) v.detail = "milter accept";
    if (quarantine_) {
      v.quarantine = true;
      v.quarantine_reason = quarantine_reason_;
      if (v.detail.empty()) v.detail = "milter quarantine: " + quarantine_reason_;
    }
    return v;
  }

  void reset() override {
    // ABORT after every transaction that reached the milter, finished or
    // not, as Postfix does: the milter drops its message state either way
    // (libmilter ignores an ABORT it does not need).
    if (conn_.is_open() && !failed_ && mail_sent_) {
      if (Status st = conn_.send(encode_packet(kAbort), timeouts_.command); !st)
        fail("ABORT: " + st.error());
    }
    mail_sent_ = false;
    rcpts_sent_.clear();
    txn_end_ = TxnEnd::None;
    quarantine_ = false;
    quarantine_reason_.clear();
  }

  void close() override {
    reset();  // ABORT a transaction the chain did not end
    if (conn_.is_open())
      (void)conn_.send(encode_packet(kQuit), std::min(timeouts_.command, milliseconds(1000)));
    conn_.close();
    neg_ = Negotiated{};
    failed_ = false;
    failure_.clear();
    connect_done_ = helo_done_ = false;
    session_accepted_ = false;
    session_refused_.reset();
  }

 private:
  // How the milter answered one step.
  enum class Answer { Continue, Skip, Accept, Discard, Reject, Tempfail, Failed };
  struct Step {
    Answer answer = Answer::Continue;
    std::string reply;  // Reject/Tempfail: the SMFIR_REPLYCODE text, if any
  };
  static bool is_final(Answer a) { return a != Answer::Continue && a != Answer::Skip; }

  // How the current transaction ended before its EOM, if it did.
  enum class TxnEnd { None, Accepted, Discarded, Refused, Done };

  // ---- errors

  Step fail(const std::string& why) {
    if (!failed_)
      log::warn("milter " + log::sanitize(name_) + " (" + log::sanitize(address_) +
                "): " + log::sanitize(why) + "; on_error applies for this session");
    conn_.close();
    failed_ = true;
    failure_ = why;
    return Step{Answer::Failed, {}};
  }

  std::optional<StageReply> error_stage() const {
    switch (on_error_) {
      case config::OnError::Accept: return std::nullopt;
      case config::OnError::Reject: return StageReply{Action::Reject, {}};
      case config::OnError::Tempfail: break;
    }
    return StageReply{Action::Tempfail, {}};
  }

  Verdict error_verdict() const {
    Verdict v;
    switch (on_error_) {
      case config::OnError::Accept: v.action = Action::Continue; break;
      case config::OnError::Reject: v.action = Action::Reject; break;
      case config::OnError::Tempfail: v.action = Action::Tempfail; break;
    }
    v.detail = "milter error: " + failure_;
    return v;
  }

  // ---- connection

  bool ensure_open() {
    if (failed_) return false;
    if (conn_.is_open()) return true;
    if (Status st = conn_.open(address_, timeouts_.connect); !st) {
      fail("connect: " + st.error());
      return false;
    }
    const std::string offer = optneg_data(kVersion, kAllActions, kAllProtocol);
    if (Status st = conn_.send(encode_packet(kOptNeg, offer), timeouts_.command); !st) {
      fail("negotiation: " + st.error());
      return false;
    }
    auto p = conn_.receive(timeouts_.command);
    if (!p) {
      fail("negotiation: " + p.error());
      return false;
    }
    if (p->code != kOptNeg) {
      fail(std::string("negotiation: unexpected reply '") + p->code + "'");
      return false;
    }
    auto n = parse_optneg(p->data);
    if (!n) {
      fail("negotiation: " + n.error());
      return false;
    }
    neg_ = *n;
    return true;
  }

  // Brings the session up to the point a hook needs: connected, CONNECT
  // sent and (with_helo) the HELO the envelope names. false: the hook is
  // answered already, by *out.
  bool session_ready(const Envelope& env, bool with_helo, std::optional<StageReply>* out) {
    auto stopped = [&](std::optional<StageReply> r) {
      if (r || failed_ || session_accepted_) {
        *out = failed_ ? error_stage() : r;
        return true;
      }
      return false;
    };
    if (failed_ || session_refused_ || session_accepted_) {
      *out = failed_ ? error_stage() : session_refused_;
      return false;
    }
    if (!ensure_open()) {
      *out = error_stage();
      return false;
    }
    if (!connect_done_) {
      connect_done_ = true;
      if (stopped(session_answer(send_connect(env)))) return false;
    }
    if (with_helo && !helo_done_ && !env.helo.empty()) {
      helo_done_ = true;
      if (stopped(session_answer(send_helo(env)))) return false;
    }
    return true;
  }

  // ---- steps

  bool has(std::uint32_t protocol_flag) const { return (neg_.protocol & protocol_flag) != 0; }

  // Sends the stage's macros (even when the step itself is not wanted, so
  // they are known later, as Postfix does), the command unless the milter
  // opted out of it (no_flag), and reads the answer unless it said it sends
  // none (nr_flag). One write, so Nagle never splits macros from command.
  Step step(std::optional<MacroStage> stage, char command, std::string_view data,
            std::uint32_t no_flag, std::uint32_t nr_flag, const Envelope& env,
            std::string_view rcpt = {}) {
    std::string out;
    if (stage && macros_exist(*stage)) {
      const auto macros = macros_for(*stage, env, rcpt);
      if (!macros.empty())
        out += encode_packet(kMacro, macro_data(macro_stage_command(*stage), macros));
    }
    const bool skipped = no_flag != 0 && has(no_flag);
    if (!skipped) out += encode_packet(command, data);
    if (!out.empty()) {
      if (Status st = conn_.send(out, timeouts_.command); !st)
        return fail(std::string("sending '") + command + "': " + st.error());
    }
    if (skipped || (nr_flag != 0 && has(nr_flag))) return Step{};
    return read_answer(command, timeouts_.command, nullptr);
  }

  Step send_connect(const Envelope& env) {
    const std::string ip = plain_ip(env.client_ip);
    std::string data;
    if (ip.empty()) {
      data = connect_data("localhost", 'U', 0, {});
    } else {
      const char family = ip.find(':') != std::string::npos ? '6' : '4';
      data = connect_data("[" + ip + "]", family, env.client_port, ip);
    }
    return step(MacroStage::Connect, kConnect, data, kNoConnect, kNrConnect, env);
  }

  Step send_helo(const Envelope& env) {
    return step(MacroStage::Helo, kHelo, strings_data({env.helo}), kNoHelo, kNrHelo, env);
  }

  Step send_mail(const Envelope& env) {
    mail_sent_ = true;
    const std::string arg = "<" + env.sender + ">";
    return step(MacroStage::Mail, kMail, strings_data({arg}), kNoMail, kNrMail, env);
  }

  Step send_rcpt(const Envelope& env, std::string_view rcpt) {
    const std::string arg = "<" + std::string(rcpt) + ">";
    return step(MacroStage::Rcpt, kRcpt, strings_data({arg}), kNoRcpt, kNrRcpt, env, rcpt);
  }

  // Reads replies until a decision. Progress and quarantine are not one;
  // changes are only welcome at the end of the message (mods != nullptr).
  Step read_answer(char command, milliseconds timeout, Verdict* mods) {
    std::string new_body;
    bool body_replaced = false;
    for (;;) {
      auto p = conn_.receive(timeout);
      if (!p) return fail(std::string("reply to '") + command + "': " + p.error());
      auto r = parse_reply(*p);
      if (!r) return fail(std::string("reply to '") + command + "': " + r.error());
      Step s;
      switch (r->code) {
        case kProgress: continue;
        case kContinue: s.answer = Answer::Continue; break;
        case kSkip: s.answer = Answer::Skip; break;
        case kAccept: s.answer = Answer::Accept; break;
        case kDiscard: s.answer = Answer::Discard; break;
        case kReject: s.answer = Answer::Reject; break;
        case kTempfail: s.answer = Answer::Tempfail; break;
        case kReplyCode:
          s.answer = r->text[0] == '5' ? Answer::Reject : Answer::Tempfail;
          s.reply = r->text;
          break;
        case kShutdown:
        case kConnFail:
          // The milter wants this SMTP session gone: refuse everything else.
          s.answer = Answer::Tempfail;
          s.reply = "421 4.7.0 Service unavailable, closing transmission channel";
          session_refused_ = StageReply{Action::Tempfail, s.reply};
          conn_.close();
          break;
        case kQuarantine:
          quarantine_ = true;
          quarantine_reason_ = r->text;
          continue;
        default:
          if (!mods)
            return fail(std::string("unexpected '") + r->code + "' reply to '" + command + "'");
          if (r->code == kReplaceBody) {
            if (allowed(kActChangeBody, *r)) {
              if (new_body.size() + r->body.size() > kMaxNewBody)
                return fail("replacement body too large");
              new_body += r->body;
              body_replaced = true;
            }
          } else {
            apply_change(*r, mods);
          }
          continue;
      }
      if (body_replaced && mods) mods->new_body = crlf_to_lf(new_body);
      return s;
    }
  }

  bool allowed(std::uint32_t action, const Reply& r) const {
    if ((neg_.actions & action) != 0) return true;
    log::warn("milter " + log::sanitize(name_) + ": ignoring '" + std::string(1, r.code) +
              "', an action it did not negotiate");
    return false;
  }

  void apply_change(const Reply& r, Verdict* v) {
    auto header = [&](HeaderOp::Kind kind, int index) {
      v->headers.push_back(HeaderOp{kind, r.name, header_value_from_milter(r.value), index});
    };
    const int index = static_cast<int>(std::min<std::uint32_t>(r.index, 1'000'000));
    switch (r.code) {
      case kAddHeader:
        if (allowed(kActAddHeaders, r)) header(HeaderOp::Kind::Add, 0);
        break;
      case kInsertHeader:  // index 0 = before the first field
        if (allowed(kActAddHeaders, r)) header(HeaderOp::Kind::Insert, index);
        break;
      case kChangeHeader:  // 1-based occurrence; sendmail takes 0 as 1; empty value deletes
        if (allowed(kActChangeHeaders, r)) header(HeaderOp::Kind::Change, std::max(index, 1));
        break;
      case kAddRcpt:
        if (allowed(kActAddRcpt, r)) v->add_recipients.push_back(bare_address(r.addr));
        break;
      case kAddRcptPar:  // ESMTP parameters are not kept
        if (allowed(kActAddRcptPar | kActAddRcpt, r))
          v->add_recipients.push_back(bare_address(r.addr));
        break;
      case kDelRcpt:
        if (allowed(kActDelRcpt, r)) v->delete_recipients.push_back(bare_address(r.addr));
        break;
      case kChangeFrom:  // ESMTP parameters are not kept
        if (allowed(kActChangeFrom, r)) v->new_sender = bare_address(r.addr);
        break;
      default:
        break;
    }
  }

  // ---- answers of the envelope stages, as the hooks report them

  std::optional<StageReply> session_answer(const Step& s) {
    switch (s.answer) {
      case Answer::Failed: return error_stage();
      case Answer::Accept: session_accepted_ = true; return std::nullopt;
      case Answer::Reject:
      case Answer::Tempfail:
        session_refused_ = StageReply{
            s.answer == Answer::Reject ? Action::Reject : Action::Tempfail, s.reply};
        return session_refused_;
      default: return std::nullopt;  // continue, skip; discard means nothing here
    }
  }

  std::optional<StageReply> mail_answer(const Step& s) {
    switch (s.answer) {
      case Answer::Failed: return error_stage();
      case Answer::Accept: txn_end_ = TxnEnd::Accepted; return std::nullopt;
      case Answer::Discard: txn_end_ = TxnEnd::Discarded; return std::nullopt;
      case Answer::Reject:
      case Answer::Tempfail:
        txn_end_ = TxnEnd::Refused;
        return StageReply{s.answer == Answer::Reject ? Action::Reject : Action::Tempfail, s.reply};
      default: return std::nullopt;
    }
  }

  std::optional<StageReply> rcpt_answer(const Step& s) {
    switch (s.answer) {
      case Answer::Failed: return error_stage();
      case Answer::Accept: txn_end_ = TxnEnd::Accepted; return std::nullopt;
      case Answer::Discard: txn_end_ = TxnEnd::Discarded; return std::nullopt;
      case Answer::Reject:
      case Answer::Tempfail:  // this recipient only
        return StageReply{s.answer == Answer::Reject ? Action::Reject : Action::Tempfail, s.reply};
      default: return std::nullopt;
    }
  }

  // ---- the message

  // The whole conversation for scan(), from wherever the hooks left it.
  // Returns the decisive step (Continue when the milter let EOM pass).
  Step converse(const Envelope& env, std::string_view message, Verdict* v) {
    std::optional<StageReply> stage;
    if (!session_ready(env, /*with_helo=*/true, &stage)) {
      if (failed_) return Step{Answer::Failed, {}};
      if (session_accepted_) return Step{Answer::Accept, {}};
      const StageReply r = stage ? *stage : session_refused_.value_or(StageReply{});
      return Step{r.action == Action::Tempfail ? Answer::Tempfail : Answer::Reject, r.reply};
    }
    if (txn_end_ == TxnEnd::Accepted) return Step{Answer::Accept, {}};
    if (txn_end_ == TxnEnd::Discarded) return Step{Answer::Discard, {}};

    if (!mail_sent_) {
      const Step s = send_mail(env);
      mail_answer(s);
      if (is_final(s.answer)) return s;
    }
    // Recipients the hooks did not send. One refused here is dropped from
    // the message; all of them refused refuses the message.
    std::size_t refused = 0;
    Step last_refusal;
    for (const std::string& rcpt : env.recipients) {
      if (std::find(rcpts_sent_.begin(), rcpts_sent_.end(), rcpt) != rcpts_sent_.end()) continue;
      rcpts_sent_.push_back(rcpt);
      const Step s = send_rcpt(env, rcpt);
      if (s.answer == Answer::Reject || s.answer == Answer::Tempfail) {
        ++refused;
        last_refusal = s;
        v->delete_recipients.push_back(rcpt);
        continue;
      }
      if (is_final(s.answer)) return s;
    }
    if (refused > 0 && refused == env.recipients.size()) {
      v->delete_recipients.clear();
      return last_refusal;
    }

    if (Step s = step(MacroStage::Data, kData, {}, kNoData, kNrData, env); is_final(s.answer))
      return s;

    const MessageParts parts = split_message(message);
    if (!has(kNoHeaders)) {
      const bool lead = has(kHeaderLeadingSpace);
      for (const Field& h : parts.headers) {
        const std::string data = header_data(h.name, header_value_for_milter(h.value, lead));
        if (data.size() > kChunkSize) {
          // libmilter drops a connection sent a packet over 64 KiB.
          log::warn("milter " + log::sanitize(name_) + ": header " + log::sanitize(h.name) +
                    " too long for the milter protocol, not sent");
          continue;
        }
        const Step s = step(std::nullopt, kHeader, data, 0, kNrHeader, env);
        if (s.answer == Answer::Skip) break;
        if (is_final(s.answer)) return s;
      }
    }

    if (Step s = step(MacroStage::EndOfHeaders, kEndOfHeaders, {}, kNoEndOfHeaders,
                      kNrEndOfHeaders, env);
        is_final(s.answer))
      return s;

    if (!has(kNoBody)) {
      BodyChunker chunks(parts.body);
      while (auto chunk = chunks.next()) {
        const Step s = step(std::nullopt, kBody, *chunk, 0, kNrBody, env);
        if (s.answer == Answer::Skip) break;
        if (is_final(s.answer)) return s;
      }
    }

    // End of message: always sent, always answered, within the content timeout.
    std::string out;
    const auto macros = macros_for(MacroStage::EndOfMessage, env, {});
    if (!macros.empty()) out += encode_packet(kMacro, macro_data(kEndOfBody, macros));
    out += encode_packet(kEndOfBody);
    if (Status st = conn_.send(out, timeouts_.command); !st) return fail("sending 'E': " + st.error());
    return read_answer(kEndOfBody, timeouts_.content, v);
  }

  // ---- macros

  // Macro packets for stages the milter's protocol version has: DATA came
  // with version 4, EOH with 6; older libmilters refuse unknown ones.
  bool macros_exist(MacroStage stage) const {
    if (stage == MacroStage::Data) return neg_.version >= 4;
    if (stage == MacroStage::EndOfHeaders) return neg_.version >= 6;
    return true;
  }

  // The stage's macros: the milter's own list when it sent one in the
  // negotiation (SMFIC_SETSYMLIST-style, honoured for the names we know),
  // else ours. Empty values are left out, as sendmail leaves undefined
  // macros out.
  std::vector<std::pair<std::string, std::string>> macros_for(MacroStage stage,
                                                              const Envelope& env,
                                                              std::string_view rcpt) const {
    static constexpr const char* kDefaults[kMacroStages] = {
        "j {daemon_name} _ {client_addr} {client_port}",  // CONNECT
        "{tls_version} {cipher}",                          // HELO
        "i {auth_authen} {mail_addr}",                     // MAIL
        "i {rcpt_addr}",                                   // RCPT
        "i",                                               // DATA
        "i",                                               // end of message
        "i",                                               // end of headers
    };
    const auto index = static_cast<std::size_t>(stage);
    std::string_view list = kDefaults[index];
    if (neg_.macros[index]) list = *neg_.macros[index];
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t pos = 0;
    while (pos < list.size()) {
      const std::size_t end = std::min(list.find_first_of(" ,\t", pos), list.size());
      const std::string_view word = list.substr(pos, end - pos);
      pos = end + 1;
      if (word.empty()) continue;
      std::string_view key = word;
      if (key.size() > 2 && key.front() == '{' && key.back() == '}')
        key = key.substr(1, key.size() - 2);
      std::string value = macro_value(key, env, rcpt);
      if (value.empty()) continue;
      std::string wire = key.size() == 1 ? std::string(key) : "{" + std::string(key) + "}";
      out.emplace_back(std::move(wire), std::move(value));
    }
    return out;
  }

  static std::string macro_value(std::string_view key, const Envelope& env,
                                 std::string_view rcpt) {
    const std::string ip = plain_ip(env.client_ip);
    if (key == "j") return env.hostname;
    if (key == "daemon_name") return kDaemonName;
    if (key == "v") return kDaemonName;
    if (key == "_") return ip.empty() ? "localhost" : "unknown [" + ip + "]";
    if (key == "client_addr") return ip;
    if (key == "client_port") return ip.empty() ? std::string() : std::to_string(env.client_port);
    if (key == "client_name") return ip.empty() ? "localhost" : "unknown";
    if (key == "tls_version") return env.tls ? env.tls_version : std::string();
    if (key == "cipher") return env.tls ? env.tls_cipher : std::string();
    if (key == "i") return env.queue_id;
    if (key == "auth_authen") return env.auth_user;
    if (key == "mail_addr") return env.sender;
    if (key == "rcpt_addr") return std::string(rcpt);
    return {};
  }

  // ---- state

  std::string name_;
  std::string address_;
  config::OnError on_error_;
  MilterTimeouts timeouts_;

  Connection conn_;
  Negotiated neg_;
  bool failed_ = false;
  std::string failure_;

  // Session: stages done (sent, or skipped by the milter's choice).
  bool connect_done_ = false;
  bool helo_done_ = false;
  bool session_accepted_ = false;               // accepted at CONNECT/HELO: silent from now on
  std::optional<StageReply> session_refused_;   // refused at CONNECT/HELO: every later answer

  // Transaction.
  bool mail_sent_ = false;
  std::vector<std::string> rcpts_sent_;
  TxnEnd txn_end_ = TxnEnd::None;
  bool quarantine_ = false;
  std::string quarantine_reason_;
};

}  // namespace

std::unique_ptr<Filter> make_milter_filter(const config::Filter& cfg) {
  return make_milter_filter(cfg, MilterTimeouts::from_config(cfg));
}

std::unique_ptr<Filter> make_milter_filter(const config::Filter& cfg,
                                           const MilterTimeouts& timeouts) {
  return std::make_unique<MilterFilter>(cfg, timeouts);
}

}  // namespace petrel::filter
