// The filter chain (SPEC §8): the configured filters in order, then the
// filter_dir drop-ins in name order, run in the worker after DATA and before
// the reply. Each filter's changes are applied to the message and envelope
// before the next filter runs; the caller sees them only when the message is
// to be stored.
//
// Process model: load() runs in the master before any fork (it opens plugins
// and runs their init, so compiled rules are shared copy-on-write). Each
// worker then calls worker_init() once, the per-stage hooks and run() during
// its session, and worker_exit() at its end. The master calls fini() when it
// replaces the chain (reload: load the new one first, fini the old one once
// the new one loaded) or shuts down.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/config/config.h"
#include "petrel/filter/filter.h"
#include "petrel/filter/verdict.h"

namespace petrel::filter {

// What one filter did to one message.
struct Step {
  std::string filter;
  Action action = Action::Continue;
  std::chrono::milliseconds latency{0};
  bool error = false;  // the filter (or what it asked for) failed: on_error applied
  std::string detail;
  // "ID: filter=NAME verdict=continue latency=12ms[ detail]", ready to log.
  std::string log_line;
};

// The chain's answer for one message.
struct Outcome {
  // Continue: every filter ran, store the message. Accept: a filter accepted
  // early, store it. Reject / Tempfail: answer `reply`, store nothing.
  // Discard: answer the usual 250, store nothing, log it.
  Action action = Action::Continue;
  std::string filter;       // who decided a Reject, Tempfail, Discard or Accept
  Reply reply;              // Reject / Tempfail only
  bool quarantine = false;  // store, but held in the queue
  std::string quarantine_reason;
  std::vector<Step> steps;  // in order, one per filter that ran

  bool store() const { return action == Action::Continue || action == Action::Accept; }
};

// A per-stage hook's objection (Reject or Tempfail), with its reply.
struct StageResult {
  Action action = Action::Reject;
  std::string filter;
  Reply reply;
  std::string log_line;  // "filter=NAME stage=rcpt verdict=reject latency=3ms"
};

class Chain {
 public:
  explicit Chain(std::uint64_t max_message_size = 25ull * 1024 * 1024)
      : max_message_size_(max_message_size) {}
  Chain(Chain&&) = default;
  Chain& operator=(Chain&&) = default;
  Chain(const Chain&) = delete;
  Chain& operator=(const Chain&) = delete;
  // Does not call fini(): in a worker the destructor must not touch plugin
  // state the master owns.
  ~Chain() = default;

  // Builds cfg.filters then the executables in cfg.filter_dir (a missing
  // folder is no error). Opens plugins and runs their init; an error names
  // the filter. Milter filters need make_milter_filter() linked in.
  static Result<Chain> load(const config::Config& cfg);

  // What `petrel check-config` reports: everything load() checks (plugins
  // opened and initialised, then finalised) plus exec programs that cannot be
  // executed. One message per problem, each naming the filter.
  static std::vector<std::string> check(const config::Config& cfg);

  // Appends a filter (load() uses it; so do tests with fakes).
  void add(std::unique_ptr<Filter> filter, config::Filter settings);

  void worker_init();
  // Runs the chain over `message` (LF line ends, our Received: first). On
  // Continue or Accept, `message` and `env` hold every change the filters
  // asked for; otherwise they are left as they were.
  Outcome run(Envelope& env, std::string& message);

  // Per-stage fan-out: every filter's hook in order; the first Reject or
  // Tempfail is returned, an Accept stops the fan-out with no objection.
  std::optional<StageResult> on_connect(const Envelope& env);
  std::optional<StageResult> on_helo(const Envelope& env);
  std::optional<StageResult> on_mail(const Envelope& env);
  std::optional<StageResult> on_rcpt(const Envelope& env, std::string_view rcpt);

  // Between two transactions of one session (after each message, RSET).
  void reset();
  // At the end of the worker's session.
  void worker_exit();
  // In the master, on reload or shutdown. Idempotent.
  void fini();

  std::size_t size() const { return entries_.size(); }
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::unique_ptr<Filter> filter;
    config::Filter settings;
  };
  template <typename Hook>
  std::optional<StageResult> fan_out(std::string_view stage, const Hook& hook);

  std::vector<Entry> entries_;
  std::uint64_t max_message_size_;
  bool finished_ = false;
};

// The exec filters filter_dir contributes: every executable regular file
// (symlinks followed), in name order, skipping names that start with '.' or
// end in '~' or a dpkg/ucf leftover suffix. Each gets the defaults (mode
// headers, timeout 30s, on_error tempfail) and its file name as its name.
Result<std::vector<config::Filter>> filter_dir_entries(const std::string& dir);

}  // namespace petrel::filter
