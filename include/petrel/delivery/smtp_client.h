// Outbound SMTP over libevent (SPEC §7 "Remote", "Batching"): the driver of
// the pure state machine in petrel/delivery/smtp_client_session.h, for the
// queue runner's event loop.
//
// A Connection is made for one destination: the endpoints from
// NextHopLookup (petrel/delivery/nexthop.h), in order. It connects to each
// endpoint in turn until a session is set up (greeting, EHLO/HELO,
// STARTTLS per policy, AUTH), so the next MX and the next address (IPv4 and
// IPv6) are tried before giving up. An opportunistic STARTTLS whose
// handshake fails is retried once on the same address without STARTTLS.
// Then it sends the queued messages one after another (RSET between) and,
// after quit(), says QUIT.
//
// Message files are opened when the server says 354 and closed as soon as
// the last block is written, read in 64 KiB blocks and never held whole in
// memory: file descriptors stay bounded by the number of connections.
//
// Callbacks run on the event loop, never inside start(), send() or quit().
// Each queued message's callback runs exactly once unless the Connection
// is destroyed first. Any callback may call send() or quit(), or destroy
// the Connection. The process must ignore SIGPIPE (the master does).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "petrel/common/fd.h"
#include "petrel/common/result.h"
#include "petrel/config/config.h"
#include "petrel/delivery/nexthop.h"
#include "petrel/delivery/smtp_client_session.h"

struct event_base;
struct event;
struct bufferevent;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace petrel::delivery::smtp {

// Per-stage limits (RFC 5321 §4.5.3.2 where it names one). Each bounds one
// wait: connect, a reply, the TLS handshake, or (data_block) progress in
// writing the message. Tests shorten them.
struct Timeouts {
  std::chrono::milliseconds connect = std::chrono::seconds(30);
  std::chrono::milliseconds greeting = std::chrono::minutes(5);
  std::chrono::milliseconds helo = std::chrono::minutes(5);      // EHLO/HELO reply
  std::chrono::milliseconds starttls = std::chrono::minutes(5);  // STARTTLS reply, then the handshake
  std::chrono::milliseconds auth = std::chrono::minutes(5);
  std::chrono::milliseconds rset = std::chrono::minutes(5);
  std::chrono::milliseconds mail = std::chrono::minutes(5);
  std::chrono::milliseconds rcpt = std::chrono::minutes(5);
  std::chrono::milliseconds data = std::chrono::minutes(2);        // DATA initiation (the 354)
  std::chrono::milliseconds data_block = std::chrono::minutes(3);  // no progress writing the message
  std::chrono::milliseconds data_end = std::chrono::minutes(10);   // the reply after the final dot
  std::chrono::milliseconds quit = std::chrono::minutes(5);
};

// The client-side TLS context, made once by the runner and shared by its
// connections: the system CA store (for `verify`), OpenSSL's defaults.
class TlsClientContext {
 public:
  // `extra_ca_file`: also trust these PEM certificates (tests); "" for none.
  static Result<std::shared_ptr<TlsClientContext>> create(const std::string& extra_ca_file = "");
  ~TlsClientContext();
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsClientContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};

struct ConnectionOptions {
  std::string helo_name;  // our host name, for EHLO/HELO
  config::TlsPolicy tls = config::TlsPolicy::Opportunistic;
  std::string auth_user;  // empty: no AUTH
  std::string auth_password;
  Timeouts timeouts;
  // Needed for any STARTTLS. Without it `opportunistic` stays in
  // plaintext, and `required` and `verify` fail every endpoint (4.7.5).
  std::shared_ptr<TlsClientContext> tls_context;
};

// One message to send: its envelope for this destination and where its
// body lies in the spool (petrel/queue/spool.h: LF line ends, from
// body_offset to the end of the file).
struct Message {
  std::string sender;  // "" = <>
  std::vector<std::string> recipients;
  std::string spool_path;
  std::uint64_t body_offset = 0;
  std::uint64_t size = 0;   // octets on the wire (the spool's Z), for SIZE
  bool body_8bit = false;   // the spool's B 8BITMIME
  bool smtputf8 = false;    // needs SMTPUTF8 (see Envelope)
};

struct Report {
  MessageResult result;  // per recipient, in Message order
  std::string relay;     // "mx1.example.org[192.0.2.1]:25": the server that answered, or the
                         // last endpoint tried; "none" when there was no endpoint
  std::string tls;       // negotiated version ("TLSv1.3"); "" for plaintext
};

struct CloseReport {
  bool established = false;         // a session was set up at some point
  Failure failure;                   // why it ended; verdict Delivered after a clean QUIT
  std::vector<std::string> errors;   // one line per failed endpoint attempt, for logs
};

class Connection {
 public:
  using MessageCallback = std::function<void(const Report&)>;

  Connection(event_base* base, std::vector<Endpoint> endpoints, ConnectionOptions options);
  // Closes at once (no QUIT); callbacks of unfinished messages are not called.
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Called when the session is set up and no message is queued (again
  // after each batch): send() more or quit(). Optional.
  std::function<void()> on_idle;
  // Called once when the connection is gone: after QUIT, after every
  // endpoint failed, or when the server closed it. Messages still queued
  // then were answered first (Deferred, attempted = false). Optional.
  std::function<void(const CloseReport&)> on_closed;

  // Starts connecting to the first endpoint.
  void start();
  // Queues a message behind the others. False (and the callback dropped)
  // once the connection takes no more messages (quit() called, closed).
  // When every endpoint fails, queued messages are Deferred with the last
  // failure; when a session ends early, the message in progress gets its
  // results (undecided recipients Deferred) and later ones are Deferred
  // with attempted = false.
  bool send(Message message, MessageCallback cb);
  // QUIT once the queued messages are done (at once when none is queued).
  void quit();

  bool accepting() const { return !quit_requested_ && !closed_; }
  bool established() const { return established_; }
  std::size_t queued() const { return queue_.size() + (current_ ? 1 : 0); }
  const std::string& relay() const { return relay_; }
  const std::string& tls_version() const { return tls_version_; }

 private:
  struct Pending {
    Message message;
    MessageCallback cb;
  };
  enum class State { Idle, Connecting, Session, Closed };

  void connect_current();
  void process();
  void flush_output();
  void arm_timer();
  void begin_next();
  void start_tls();
  void start_body();
  void pump_body();
  void finish_message(MessageResult result);
  void setup_failed(const Failure& f);
  void finish_closed(const Failure& f);
  // Answers every queued message with `f`; false when a callback destroyed us.
  bool fail_queue(const Failure& f);
  void teardown();
  void kick();
  std::string tls_error() const;

  static void on_read(bufferevent* bev, void* arg);
  static void on_write(bufferevent* bev, void* arg);
  static void on_event(bufferevent* bev, short what, void* arg);
  static void on_timer(int fd, short what, void* arg);
  static void on_kick(int fd, short what, void* arg);

  event_base* base_;
  std::vector<Endpoint> endpoints_;
  ConnectionOptions options_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  State state_ = State::Idle;
  bool started_ = false;
  std::size_t index_ = 0;         // current endpoint
  bool plaintext_retry_ = false;  // connecting again without STARTTLS
  bufferevent* bev_ = nullptr;
  SSL* ssl_ = nullptr;            // owned by bev_ once TLS starts
  event* timer_ = nullptr;
  event* kick_ = nullptr;
  std::unique_ptr<Session> session_;

  std::deque<Pending> queue_;
  std::optional<Pending> current_;
  UniqueFd body_fd_;
  DotStuffer stuffer_;
  bool body_flushing_ = false;

  bool established_ = false;
  bool idle_notified_ = false;
  bool quit_requested_ = false;
  bool closed_ = false;
  std::string relay_;
  std::string tls_version_;
  std::vector<std::string> errors_;
  Failure last_failure_;
};

}  // namespace petrel::delivery::smtp
