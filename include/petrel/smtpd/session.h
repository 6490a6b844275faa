// The SMTP server session as a pure state machine: bytes in, replies out.
// It never touches a socket or the disk: relay rules and recipient lookup
// come through Policy, the accepted message leaves through MessageSink.
// The worker drives it with blocking I/O; unit tests drive it with strings.
//
// Usage: send greeting(), then for every chunk read from the client call
// feed(chunk) and write take_output() to the client. Replies to pipelined
// commands are batched until the input is exhausted (RFC 2920). Stop once
// closed() is true (QUIT, 421, synchronisation error).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/config/config.h"
#include "petrel/smtpd/address.h"

namespace petrel::smtpd {

struct ClientInfo {
  std::string ip;        // "192.0.2.1", "2001:db8::1"; empty for unix sockets
  std::uint16_t port = 0;
  bool is_unix = false;
  config::ListenMode mode = config::ListenMode::Smtp;
  bool tls = false;
  std::string tls_version;  // "TLSv1.3" when tls
  std::string tls_cipher;

  // "[ip]:port" or "unix:" — the form used in logs and the spool.
  std::string display() const;
};

enum class RcptVerdict { Ok, RelayDenied, UnknownUser };

// Who may send where. Implemented by the worker over the config (and later
// the alias resolver); faked in tests.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual RcptVerdict check_recipient(const Address& rcpt, const ClientInfo& client,
                                      bool authenticated) = 0;
};

struct Reply {
  int code = 250;
  std::string text;  // "2.0.0 Ok: queued as X" — enhanced code first, may hold '\n' for multiline
};

// Checks AUTH credentials. The worker's implementation verifies crypt(3)
// hashes and delays failures; tests fake it.
class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // True when any user is configured (AUTH is offered only then).
  virtual bool enabled() const = 0;
  virtual bool verify(std::string_view user, std::string_view password) = 0;
};

// Everything known about a message at the end of DATA.
struct MessageInfo {
  std::string queue_id;
  Address sender;
  std::vector<Address> recipients;
  bool body_8bit = false;
  bool smtputf8 = false;
  std::uint64_t size = 0;  // on the wire, CRLF line ends, after un-stuffing
  std::string helo;        // sanitised
  std::string auth_user;
  const ClientInfo* client = nullptr;
};

// Receives a complete, validated message and makes it durable (or refuses
// it). `received` is our Received: header, `body` the message; both use LF
// line ends. The reply goes to the client as is.
class MessageSink {
 public:
  virtual ~MessageSink() = default;
  virtual Reply accept_message(const MessageInfo& info, std::string_view received,
                               std::string_view body) = 0;
};

// Per-stage policy hooks (filters' on_connect/on_helo/on_mail/on_rcpt): each
// may object with its own reply before DATA. nullopt = no objection.
class StageHooks {
 public:
  virtual ~StageHooks() = default;
  virtual std::optional<Reply> on_connect(const ClientInfo& client) = 0;
  virtual std::optional<Reply> on_helo(const ClientInfo& client, std::string_view helo) = 0;
  virtual std::optional<Reply> on_mail(const ClientInfo& client, std::string_view helo,
                                       const Address& sender, std::string_view auth_user) = 0;
  virtual std::optional<Reply> on_rcpt(const ClientInfo& client, std::string_view helo,
                                       const Address& sender, const Address& rcpt,
                                       std::string_view auth_user) = 0;
};

struct SessionSettings {
  std::string hostname;
  bool starttls_available = false;  // a TLS context exists (not for implicit TLS)
  bool auth_require_tls = true;
  std::uint64_t max_message_size = 25ull * 1024 * 1024;
  int max_recipients = 100;
  int max_errors = 10;
  int max_hops = 50;

  static SessionSettings from(const config::Config& cfg);
};

class Session {
 public:
  Session(SessionSettings settings, ClientInfo client, Policy& policy, MessageSink& sink,
          Authenticator* auth = nullptr, StageHooks* hooks = nullptr);

  // Queues the 220 greeting.
  void greeting();
  // Consumes client bytes, queueing replies.
  void feed(std::string_view bytes);
  // Called when a read timed out: queues 421 and closes.
  void timeout();
  // Replies queued since the last call.
  std::string take_output();

  bool closed() const { return state_ == State::Closed; }
  // True while reading message content (DATA or a BDAT chunk): the worker
  // uses the data_block timeout then, the command timeout otherwise.
  bool in_data() const { return state_ == State::Data || bdat_remaining_ > 0; }
  // The last command verb seen (for "lost connection after X" logs).
  const std::string& last_command() const { return last_verb_; }
  int messages_accepted() const { return accepted_; }

  // After STARTTLS was accepted: the worker flushes the 220, runs the TLS
  // handshake and calls tls_started() (or ends the session when it fails).
  // Input that arrived after the STARTTLS line was discarded (CVE-2011-0411).
  bool wants_tls() const { return tls_pending_; }
  void tls_started(std::string version, std::string cipher);
  const std::string& auth_user() const { return auth_user_; }
  const ClientInfo& client() const { return client_; }

 private:
  enum class State { Fresh, Ready, Mail, Data, Closed };

  void process();
  bool process_command_line();
  void handle_command(std::string_view line);
  void cmd_helo(std::string_view arg, bool extended);
  void cmd_mail(std::string_view arg);
  void cmd_rcpt(std::string_view arg);
  void cmd_data(std::string_view arg);
  void cmd_bdat(std::string_view arg);
  void cmd_rset(std::string_view arg);
  void cmd_vrfy(std::string_view arg);
  void cmd_starttls(std::string_view arg);
  void cmd_auth(std::string_view arg);
  void auth_continue(std::string_view line);
  void auth_finish(std::string_view user, std::string_view password);
  bool submission() const { return client_.mode != config::ListenMode::Smtp; }

  bool process_data();
  bool process_bdat();
  void bdat_chunk_done();
  void data_line(std::string_view line);  // one line incl. its terminator
  void finish_message(bool from_bdat);
  void check_bdat_content();

  void reply(int code, std::string_view text);
  void error_reply(int code, std::string_view text);  // counts towards max_errors
  void close_with(int code, std::string_view text);
  void reset_transaction();
  std::string received_header(const std::string& id) const;
  void add_submission_headers(const std::string& id);
  std::string client_desc() const;
  void log_reject(std::string_view verb, int code, std::string_view text,
                  std::string_view extra = {});

  SessionSettings s_;
  ClientInfo client_;
  Policy& policy_;
  MessageSink& sink_;
  Authenticator* auth_;
  StageHooks* hooks_;

  State state_ = State::Fresh;
  std::string in_;
  size_t in_pos_ = 0;
  std::string out_;
  bool skipping_long_line_ = false;
  int errors_ = 0;
  int accepted_ = 0;
  std::string last_verb_;

  // Session identity.
  std::string helo_;
  bool esmtp_ = false;
  std::string auth_user_;
  bool tls_pending_ = false;
  int auth_failures_ = 0;
  enum class AuthStep { None, PlainResponse, LoginUser, LoginPassword };
  AuthStep auth_step_ = AuthStep::None;
  std::string auth_login_user_;

  // Transaction.
  Address sender_;
  bool body_8bit_ = false;
  bool smtputf8_ = false;
  std::vector<Address> rcpts_;
  std::uint64_t declared_size_ = 0;

  // Message content (DATA or BDAT), LF line ends, un-stuffed.
  std::string msg_;
  std::uint64_t wire_size_ = 0;
  bool too_big_ = false;
  bool bad_newline_ = false;
  bool line_too_long_ = false;
  bool prev_crlf_ = true;
  size_t cur_line_len_ = 0;  // octets of a too-long line being skipped

  // BDAT.
  std::uint64_t bdat_remaining_ = 0;
  bool bdat_last_ = false;
  bool bdat_active_ = false;   // a BDAT sequence is under way in this transaction
  bool bdat_discard_ = false;  // chunk refused: consume and drop
  std::string bdat_raw_;       // raw chunk bytes (CRLF) of the whole message
};

}  // namespace petrel::smtpd
