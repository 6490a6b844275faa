// The outbound SMTP client as a pure state machine (RFC 5321, 3207 STARTTLS,
// 4954 AUTH, 2920 PIPELINING, 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8): bytes
// from the server in, commands and events out. It never touches a socket, a
// timer or a file; petrel/delivery/smtp_client.h drives it with libevent,
// and unit tests drive it with strings.
//
// Driving it: after every call, write take_output() to the server, handle
// take_events() in order, and (re)arm one timer for waiting() (see Timeouts
// in smtp_client.h). Events:
//   Ready       greeting, EHLO (HELO when EHLO is refused with 5xx),
//               STARTTLS and AUTH are done: begin() may be called.
//   StartTls    the server said 220 to STARTTLS: run the TLS handshake on
//               the socket, then call tls_established() or tls_failed().
//               Bytes the server sent after its 220 have been discarded
//               (they were not protected by TLS).
//   SendBody    the server said 354: stream the message through a
//               DotStuffer (finish() included), then call body_sent().
//   MessageDone the result of the message begin() started, per recipient.
//   SetupFailed the session could not be set up on this connection
//               (refused greeting, EHLO/HELO refused, TLS required but not
//               offered or failed, AUTH failed, lost connection, timeout):
//               close it and try the next endpoint. Never after Ready.
//   Closed      the session ended after Ready (QUIT answered, 421, lost
//               connection, timeout, garbage): close the socket.
//
// Policy decisions it makes:
//   - TLS none: never STARTTLS. opportunistic: STARTTLS when offered; a
//     refused STARTTLS (4xx/5xx) continues in plaintext; a failed handshake
//     is SetupFailed with retry_plaintext set, and the driver reconnects to
//     the same address with skip_starttls (as Postfix does for `may`).
//     required/verify: no STARTTLS offered, STARTTLS refused or a failed
//     handshake is SetupFailed (4.7.4 / 4.7.5): mail is never sent in
//     plaintext. (Certificate checks are the driver's: verify needs a valid
//     chain and the host name.)
//   - AUTH (when auth_user is set): PLAIN with an initial response, else
//     LOGIN. Credentials are only sent inside TLS unless the policy is
//     none. AUTH not offered, refused, or no TLS: SetupFailed (4.7.x,
//     deferred: a smarthost that wants AUTH would otherwise bounce mail).
//   - begin() refuses locally, without a command: a message needing
//     SMTPUTF8 when the server lacks it (5.6.7), a message larger than the
//     server's SIZE (5.3.4). BODY=8BITMIME is sent when the message is 8-bit
//     and the server offers it; an 8-bit message to a server without
//     8BITMIME is sent as is (as Postfix does with MIME conversion off).
//   - PIPELINING (when offered): RSET, MAIL and every RCPT in one write;
//     DATA only after the RCPT replies, so a transaction with no accepted
//     recipient never sends DATA. Without it, one command per reply.
//   - The second and later messages on a connection are preceded by RSET.
//   - Results per recipient: 2xx Delivered, 4xx Deferred, 5xx Bounced.
//     A refused MAIL applies to every recipient; a refused RCPT to that
//     recipient; DATA and end-of-data replies to the accepted ones. Setup
//     failures, lost connections, timeouts and garbage are Deferred (4.4.1
//     connect, 4.4.2 lost/timeout, 4.5.0 protocol), and so is anything a
//     server answers outside its reply class. A 421 anywhere ends the
//     session: recipients still undecided are deferred with its text.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/config/config.h"
#include "petrel/delivery/agent.h"

namespace petrel::delivery::smtp {

// Text from a server (or ours) made fit for Verdict::detail and logs, as
// delivery::one_line does: CR, LF and tabs become spaces, other control
// bytes '?', at most max_len bytes. (Kept here so the client links without
// the local delivery agents.)
std::string flatten(std::string_view s, std::size_t max_len = 400);

// One (possibly multi-line) server reply.
struct Reply {
  int code = 0;
  std::vector<std::string> lines;  // text after "NNN-" / "NNN ", one per line

  int cls() const { return code / 100; }
  // The RFC 3463 code at the start of the first line when it has the
  // reply's class ("5.1.1"), else "C.0.0" from the reply code.
  std::string status() const;
  // The whole reply on one line for logs and DSNs: "550 5.1.1 <a@b>: no such user",
  // lines joined with spaces, control characters replaced, at most 400 bytes.
  std::string text() const;
};

// Splits the server's byte stream into replies. Lines end in CRLF (a bare
// LF is accepted). A line that is not "NNN", "NNN text" or "NNN-text", a
// continuation with another code, a line over 4096 octets or a reply over
// 256 lines is an error: the connection must be dropped.
class ReplyReader {
 public:
  void feed(std::string_view bytes);
  // The next complete reply; nullopt when more bytes are needed or failed().
  std::optional<Reply> next();
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  // Drops everything buffered (plaintext after the 220 to STARTTLS).
  void clear();

 private:
  std::string buf_;
  std::size_t pos_ = 0;
  Reply partial_;
  std::string error_;
};

// What EHLO advertised.
struct Capabilities {
  bool esmtp = false;  // EHLO was accepted (not HELO)
  bool pipelining = false;
  bool starttls = false;
  bool eightbitmime = false;
  bool smtputf8 = false;
  bool enhanced_status_codes = false;
  bool chunking = false;
  bool size = false;
  std::uint64_t size_limit = 0;    // 0: SIZE without a limit
  std::vector<std::string> auth;   // mechanisms, upper case

  static Capabilities from_ehlo(const Reply& ehlo);
};

// One message as the state machine sees it.
struct Envelope {
  std::string sender;  // "" = the null sender <>
  std::vector<std::string> recipients;
  std::uint64_t size = 0;   // octets on the wire, for SIZE= and the SIZE check
  bool body_8bit = false;   // ask for BODY=8BITMIME
  bool smtputf8 = false;    // needs SMTPUTF8 (else 5.6.7)
};

struct RecipientResult {
  std::string recipient;
  Verdict verdict;    // outcome, RFC 3463 status, detail ("host X said: ... (in reply to RCPT TO command)")
  int code = 0;       // the server's reply code; 0 when decided locally
  std::string reply;  // the server's reply on one line ("250 2.0.0 Ok: queued as X"); "" when none
};

struct MessageResult {
  std::vector<RecipientResult> recipients;  // in Envelope order
  bool attempted = false;  // MAIL FROM was sent for this message
  // The reply that ended the transaction (end of DATA, else the last
  // refusal), for logs; code 0 when it ended locally.
  int code = 0;
  std::string reply;
};

struct Failure {
  Verdict verdict;   // always Deferred
  int code = 0;      // the server's reply code; 0 when local (timeout, lost connection)
  std::string reply;
  bool retry_plaintext = false;  // opportunistic STARTTLS handshake failed
};

struct Event {
  enum class Kind { Ready, StartTls, SendBody, MessageDone, SetupFailed, Closed };
  Kind kind = Kind::Ready;
  MessageResult result;  // MessageDone
  Failure failure;       // SetupFailed; Closed (verdict Delivered with "" status on a clean QUIT)
};

// What the session waits for: the driver arms the matching timeout.
enum class Wait {
  None,          // idle (or closed): no timer
  Greeting,
  Helo,          // EHLO or HELO reply
  StartTls,      // the reply to STARTTLS
  TlsHandshake,  // the driver's handshake
  Auth,
  Rset,
  Mail,
  Rcpt,
  Data,          // the reply to DATA (354)
  Body,          // the driver is writing the message
  DataEnd,       // the reply after the final dot
  Quit,
};

struct SessionOptions {
  std::string helo_name;
  config::TlsPolicy tls = config::TlsPolicy::Opportunistic;
  bool skip_starttls = false;  // plaintext retry after a failed opportunistic handshake
  std::string auth_user;       // empty: no AUTH
  std::string auth_password;
  std::string peer = "server";  // "mx.example.org[192.0.2.1]", for texts ("host PEER said: ...")
};

class Session {
 public:
  explicit Session(SessionOptions options);

  // From the driver.
  void feed(std::string_view bytes);
  void tls_established(std::string version);  // after StartTls: EHLO again
  void tls_failed(std::string reason);
  void body_sent();
  void connection_lost(std::string reason);  // EOF or socket error
  void timed_out();                          // the timer for waiting() expired
  // A local failure that leaves the connection unusable (the queue file
  // cannot be read in the middle of DATA): like a lost connection, with
  // this status and text. The driver must then close the socket, never
  // end the DATA with a dot.
  void abort(std::string status, std::string detail);

  // Starts a message; only when ready() (returns false otherwise and does
  // nothing). A message refused locally gives its MessageDone at once.
  bool begin(const Envelope& env);
  // When ready(): QUIT, then Closed. Otherwise ends the session at once
  // (undecided recipients deferred), emitting Closed.
  void quit();

  // To the driver.
  std::string take_output();
  std::vector<Event> take_events();
  Wait waiting() const;
  bool ready() const { return setup_done_ && !txn_ && !closed_ && !quitting_; }
  bool closed() const { return closed_; }
  const Capabilities& capabilities() const { return caps_; }
  bool tls_active() const { return tls_active_; }
  const std::string& tls_version() const { return tls_version_; }

 private:
  enum class Cmd {
    Greeting, Ehlo, Helo, StartTls, Auth, Rset, Mail, Rcpt, Data, DataEnd, Quit
  };
  struct Txn {
    Envelope env;
    MessageResult result;
    std::vector<bool> decided;
    std::vector<std::size_t> rcpt_order;  // recipients sent, in RCPT order
    std::vector<std::size_t> accepted;
    bool mail_ok = false;
    std::optional<Reply> mail_refused;
    std::size_t rcpt_replies = 0;
    bool in_body = false;
  };

  void on_reply(const Reply& r);
  void send(std::string_view line, Cmd cmd);
  void after_hello();
  void auth_step();
  void become_ready();
  void send_mail();
  void send_rcpt(std::size_t i);
  void after_rcpts();
  void on_auth_reply(const Reply& r);
  void decide(std::size_t i, const Reply& r, std::string_view in_reply_to);
  void decide_local(std::size_t i, Outcome o, std::string status, std::string detail);
  void decide_all_undecided(const Reply* r, std::string_view in_reply_to, const std::string& status,
                            const std::string& detail);
  void finish_txn();
  void setup_failed(const Reply* r, std::string status, std::string detail, bool retry_plaintext = false);
  void end_session(const Reply* r, std::string status, std::string detail);
  std::string said(const Reply& r, std::string_view in_reply_to) const;
  std::string stage_text() const;

  SessionOptions opt_;
  ReplyReader reader_;
  std::string out_;
  std::vector<Event> events_;
  std::deque<Cmd> expect_;
  Capabilities caps_;
  bool helo_tried_ = false;
  bool handshaking_ = false;
  bool tls_active_ = false;
  std::string tls_version_;
  int auth_step_ = 0;
  bool auth_plain_ = false;
  bool setup_done_ = false;
  bool quitting_ = false;
  bool closed_ = false;
  bool need_rset_ = false;
  std::optional<Txn> txn_;
};

// Turns the spooled message (LF line ends; a CRLF is taken as one line
// end) into DATA form: CRLF line ends, a '.' at the start of a line doubled
// (RFC 5321 §4.5.2). Works on chunks of any size with state across them, so
// the driver streams a large message in blocks.
class DotStuffer {
 public:
  void add(std::string_view chunk, std::string* out);
  // A CRLF when the message did not end with a line end, then ".\r\n".
  void finish(std::string* out);

 private:
  bool line_start_ = true;
  bool pending_cr_ = false;
};

}  // namespace petrel::delivery::smtp
