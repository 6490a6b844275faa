// Content filters inside petrel (SPEC §8): the interface every kind of filter
// (exec, milter, plugin) implements, and what a verdict may carry. The
// worker's filter chain (chain.h) runs them in order after DATA and before
// the 250, applying each filter's changes before the next one runs.
//
// This is petrel's internal C++ interface. The public C ABI for plugins is
// include/petrel/filter.h; the plugin host adapts it to this one.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace petrel::filter {

// What a filter knows about the session and the transaction.
struct Envelope {
  std::string queue_id;
  std::string sender;                   // "" = <>
  std::vector<std::string> recipients;
  std::string client_ip;                // "" for unix sockets
  std::uint16_t client_port = 0;
  std::string helo;
  std::string auth_user;                // "" when not authenticated
  bool tls = false;
  std::string tls_version;              // "TLSv1.3"
  std::string tls_cipher;
  std::string hostname;                 // ours (milter macro j)
};

enum class Action {
  Continue,  // no objection: the next filter runs
  Accept,    // accept now: later filters are skipped (milter SMFIR_ACCEPT)
  Reject,    // 5xx: the chain stops, pending changes are dropped
  Tempfail,  // 4xx: the chain stops, pending changes are dropped
  Discard,   // answer 250, store nothing (logged)
};

struct HeaderOp {
  enum class Kind { Add, Insert, Change };  // Change with empty value deletes
  Kind kind = Kind::Add;
  std::string name;
  std::string value;  // may contain folded lines ("\n\t...")
  int index = 0;      // Insert: position (0 = first); Change: 1-based occurrence of `name`
};

struct Verdict {
  Action action = Action::Continue;
  // Reply for Reject/Tempfail: "550 5.7.1 text" (code, enhanced code, text);
  // empty = the chain's default for the action.
  std::string reply;
  std::vector<HeaderOp> headers;
  std::optional<std::string> new_body;     // replaces everything after the header
  std::optional<std::string> new_message;  // replaces the whole message (exec rewrite)
  std::vector<std::string> add_recipients;
  std::vector<std::string> delete_recipients;
  std::optional<std::string> new_sender;
  bool quarantine = false;                 // hold the message in the queue
  std::string quarantine_reason;
  std::string detail;                      // for the log: why (e.g. "score=12.3")
};

// Answer of a per-stage hook (before DATA): nullopt = no objection.
struct StageReply {
  Action action = Action::Reject;  // Reject, Tempfail or Accept
  std::string reply;               // "554 5.7.1 text"; empty = default
};

class Filter {
 public:
  virtual ~Filter() = default;
  virtual const std::string& name() const = 0;
  // `message` has LF line ends and starts with our Received: header.
  // Errors and timeouts are reported as Verdict{Tempfail/Reject/Continue}
  // according to the filter's on_error; a filter never throws.
  virtual Verdict scan(const Envelope& env, std::string_view message) = 0;

  // Per-stage hooks; the default is "not interested".
  virtual std::optional<StageReply> on_connect(const Envelope&) { return std::nullopt; }
  virtual std::optional<StageReply> on_helo(const Envelope&) { return std::nullopt; }
  virtual std::optional<StageReply> on_mail(const Envelope&) { return std::nullopt; }
  virtual std::optional<StageReply> on_rcpt(const Envelope&, std::string_view rcpt) {
    (void)rcpt;
    return std::nullopt;
  }
  // Called between transactions of one session (milter ABORT) and at its end.
  virtual void reset() {}
  virtual void close() {}

  // Lifecycle around the master's fork (SPEC §8): worker_init() runs once in
  // each worker before any other call; fini() runs in the master on reload or
  // shutdown, never in a worker. The chain calls close() when the worker's
  // session ends (a plugin's worker_exit).
  virtual void worker_init() {}
  virtual void fini() {}
};

}  // namespace petrel::filter
