#include "petrel/queue/runner.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include <dirent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/common/strings.h"
#include "petrel/delivery/local.h"
#include "petrel/delivery/mbox.h"
#include "petrel/delivery/pipe.h"
#include "petrel/delivery/nexthop.h"
#include "petrel/queue/dsn.h"
#include "petrel/queue/relay.h"
#include "petrel/queue/resolver.h"
#include "petrel/queue/spool.h"
#include "petrel/queue/state.h"
#include "petrel/smtpd/address.h"

namespace petrel::queue {
namespace {

constexpr int kMaxJobs = 16;             // local delivery children at once
constexpr int kScanSeconds = 30;         // periodic spool rescan
constexpr std::int64_t kFar = 1LL << 62;
constexpr double kStopSeconds = 20;     // wait for connections at stop

double now_precise() {
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}
std::int64_t now_sec() { return static_cast<std::int64_t>(::time(nullptr)); }
double arrival_time(const Envelope& env) {
  return static_cast<double>(env.arrival_sec) + static_cast<double>(env.arrival_usec) / 1e6;
}

struct Entry {
  Envelope env;
  std::optional<MessageState> st;
  std::int64_t due = 0;
  std::uint64_t body_offset = 0;  // where the message starts in its spool file
  // Deliveries in flight: a local agent child and relay transactions. The
  // message is rescheduled (and its state written) when the last one ends.
  int busy = 0;
};

struct Job {
  std::string id;
  std::vector<size_t> targets;  // indexes into the state's targets
  UniqueFd out;                 // read end of the child's result pipe
  struct event* ev = nullptr;
  std::string buf;
  bool exited = false;
  bool eof = false;
  int status = 0;
};

// Splits a local address into the parts agents use, by the resolver's rule:
// "alice+tag" is user alice with extension tag, unless the domain lists
// "alice+tag" itself as a user.
delivery::Recipient make_recipient(const config::Config& cfg, const std::string& address,
                                   const std::string& original) {
  delivery::Recipient r;
  r.address = address;
  r.original = original;
  size_t at = address.rfind('@');
  std::string local = smtpd::unquote_local(address.substr(0, at));
  r.domain = at == std::string::npos ? "" : to_lower(address.substr(at + 1));
  std::string user = to_lower(local);
  const std::string& delimiters = cfg.recipient_delimiter;
  size_t d = delimiters.empty() ? std::string::npos : user.find_first_of(delimiters);
  const config::Domain* dom = cfg.find_domain(r.domain);
  bool listed = dom && dom->users &&
                std::any_of(dom->users->begin(), dom->users->end(),
                            [&](const std::string& u) { return to_lower(u) == user; });
  if (d != std::string::npos && d > 0 && !listed) {
    r.extension = local.substr(d + 1);
    user = user.substr(0, d);
  }
  r.user = user;
  return r;
}

class Runner {
 public:
  Runner(const config::Config& cfg, Spool spool, int notify_fd)
      : cfg_(cfg), spool_(std::move(spool)), notify_fd_(notify_fd),
        resolver_(std::make_unique<Resolver>(cfg_)),
        rng_(std::random_device{}()) {}
  ~Runner();
  int run();

 private:
  static void cb_notify(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->on_notify(); }
  static void cb_control(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->on_control(); }
  static void cb_scan(evutil_socket_t, short, void* self) {
    static_cast<Runner*>(self)->sweep_leftovers(false);
    static_cast<Runner*>(self)->scan();
  }
  static void cb_tick(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->schedule(); }
  static void cb_child(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->on_sigchld(); }
  static void cb_term(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->on_term(); }
  static void cb_hup(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->reload(); }
  static void cb_job_out(evutil_socket_t fd, short, void* self) {
    static_cast<Runner*>(self)->on_job_output(fd);
  }

  void on_notify();
  void on_control();
  // Picks up messages not yet known; `then_schedule` runs what is due.
  void scan(bool then_schedule = true);
  void schedule();
  void on_sigchld();
  void on_term();
  void reload();
  void on_job_output(int fd);

  void add(const std::string& id, bool due_now);
  void set_due(const std::string& id, Entry& e, std::int64_t due);
  void flush(const std::vector<std::string>& ids);
  std::vector<TargetState> resolve_recipient(const Entry& e, int rcpt);
  void note_resolved(const std::string& id, const Entry& e, TargetState& t, std::int64_t now);
  bool prepare_state(const std::string& id, Entry& e);
  void retry_unresolved(const std::string& id, Entry& e, std::int64_t now);
  void dispatch(const std::string& id, Entry& e);
  bool is_discard(const std::string& target) const;
  [[noreturn]] void run_child(const std::string& id, const Entry& e, const std::vector<size_t>& idx,
                              int out_fd);
  void complete(pid_t pid, Job& job);
  struct Via {
    std::string relay;  // "host[ip]:port"
    std::string tls;    // "TLSv1.3", "" for plaintext
  };
  void apply(const std::string& id, const Entry& e, TargetState& t, const delivery::Verdict& v,
             std::int64_t now, double delay, bool expired, const Via* via);
  void end_delivery(const std::string& id, Entry& e);
  void on_relay(const RelayOutcome& out);
  void submit_remote(const std::string& id, Entry& e, const std::vector<size_t>& remote);
  void maybe_exit();
  static void cb_exit_check(evutil_socket_t, short, void* self) { static_cast<Runner*>(self)->maybe_exit(); }
  void finish_message(const std::string& id, Entry& e);
  void maybe_warn(const std::string& id, Entry& e);
  // False when the DSN could not be queued (logged).
  bool send_dsn(const std::string& id, const Entry& e, bool delay, const std::vector<size_t>& which);
  std::int64_t backoff(int attempts);
  std::string relay_name(const std::string& target) const;
  void log_result(const std::string& id, const Entry& e, const TargetState& t, const char* status,
                  double delay, const Via* via = nullptr);
  void arm_tick();
  void sweep_leftovers(bool at_start);

  // Our own copy: SIGHUP (or a "reload" datagram) replaces it in place, so
  // deliveries in flight never hold up a reload.
  config::Config cfg_;
  Spool spool_;
  int notify_fd_;
  std::unique_ptr<Resolver> resolver_;  // refers to cfg_: rebuilt on reload
  std::unique_ptr<Relay> relay_;        // outbound SMTP; null when it could not be set up
  std::string relay_error_;             // why relay_ is null
  struct event* exit_check_ = nullptr;
  std::mt19937_64 rng_;
  struct event_base* base_ = nullptr;
  std::vector<struct event*> events_;
  struct event* tick_ = nullptr;
  UniqueFd control_;
  std::string control_path_;
  std::map<std::string, Entry> entries_;
  std::set<std::pair<std::int64_t, std::string>> due_;
  std::unordered_map<pid_t, Job> jobs_;
  std::string notify_buf_;
  std::set<std::string> unreadable_;  // queue files already reported as bad
  bool stopping_ = false;
  double stop_deadline_ = 0;
};

Runner::~Runner() {
  relay_.reset();  // its connections and lookups use base_
  if (exit_check_) event_free(exit_check_);
  for (auto* ev : events_) event_free(ev);
  if (tick_) event_free(tick_);
  for (auto& [pid, job] : jobs_)
    if (job.ev) event_free(job.ev);
  if (base_) event_base_free(base_);
  if (!control_path_.empty()) ::unlink(control_path_.c_str());
}

void Runner::set_due(const std::string& id, Entry& e, std::int64_t due) {
  due_.erase({e.due, id});
  e.due = due;
  if (!e.busy && due < kFar) due_.insert({due, id});
}

void Runner::add(const std::string& id, bool due_now) {
  auto it = entries_.find(id);
  if (it != entries_.end()) {
    if (due_now && !it->second.busy) set_due(id, it->second, 0);
    return;
  }
  auto pm = spool_.read_envelope(id);
  if (!pm) {
    // Gone already (delivered by a previous runner, or deleted) is normal; a
    // file we cannot read or parse needs the admin: say so, once.
    if (message_exists(spool_, id) && unreadable_.insert(id).second)
      log::error(id + ": cannot read queue file, left in place: " + pm.error());
    return;
  }
  Entry e;
  e.env = std::move(pm->envelope);
  e.body_offset = pm->body_offset;
  auto [ins, ok] = entries_.emplace(id, std::move(e));
  (void)ok;
  // The state file, if any, says when the next attempt is due.
  auto st = read_state(spool_, id);
  std::int64_t due = 0;
  if (st && st->has_value()) {
    ins->second.st = std::move(**st);
    due = kFar;
    for (const auto& t : ins->second.st->targets)
      if (!t.final()) due = std::min(due, t.next_attempt);
    if (due == kFar) due = 0;  // all final: finish it (a crash before removal)
  }
  ins->second.due = kFar;
  set_due(id, ins->second, due_now ? 0 : due);
}

void Runner::on_notify() {
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(notify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    notify_buf_.append(buf, static_cast<size_t>(n));
  }
  size_t pos = 0, nl;
  while ((nl = notify_buf_.find('\n', pos)) != std::string::npos) {
    // A runner killed mid-read leaves half an id for its successor: skip it
    // (the scan at start found that message).
    std::string id = notify_buf_.substr(pos, nl - pos);
    if (is_queue_id(id)) add(id, true);
    pos = nl + 1;
  }
  notify_buf_.erase(0, pos);
  schedule();
}

void Runner::flush(const std::vector<std::string>& ids) {
  if (ids.empty()) {
    std::vector<std::string> all;
    for (auto& [id, e] : entries_) all.push_back(id);
    for (auto& id : all) set_due(id, entries_[id], 0);
    // Also pick up anything not yet known (scheduled below, once the
    // deferred targets are due too).
    scan(false);
    for (auto& [id, e] : entries_) set_due(id, e, 0);
  } else {
    for (const auto& id : ids) {
      auto it = entries_.find(id);
      if (it == entries_.end()) add(id, true);
      else set_due(id, it->second, 0);
    }
  }
  // A flush means "now": due deferred targets too.
  for (auto& [id, e] : entries_) {
    if (e.due != 0 || !e.st) continue;
    for (auto& t : e.st->targets)
      if (t.status == TargetStatus::Deferred) t.next_attempt = 0;
  }
  schedule();
}

void Runner::on_control() {
  char buf[8192];
  for (;;) {
    ssize_t n = ::recv(control_.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    std::string msg(buf, static_cast<size_t>(n));
    std::vector<std::string> words;
    size_t pos = 0;
    while (pos < msg.size()) {
      size_t end = msg.find_first_of(" \n", pos);
      if (end == std::string::npos) end = msg.size();
      if (end > pos) words.push_back(msg.substr(pos, end - pos));
      pos = end + 1;
    }
    if (words.empty()) continue;
    // Ids come from whoever can write to the socket: never let one name a
    // path outside the queue.
    auto bad = std::find_if(words.begin() + 1, words.end(),
                            [](const std::string& w) { return !is_queue_id(w); });
    if (bad != words.end()) {
      log::warn("control: ignoring \"" + log::sanitize(msg, 100) + "\": not a queue id");
      continue;
    }
    if (words[0] == "reload") {
      reload();
    } else if (words[0] == "flush") {
      log::info("flush requested");
      flush(std::vector<std::string>(words.begin() + 1, words.end()));
    } else if (words[0] == "forget") {
      // A message deleted by `petrel queue delete`: drop it unless in flight.
      for (size_t i = 1; i < words.size(); ++i) {
        auto it = entries_.find(words[i]);
        if (it != entries_.end() && !it->second.busy) {
          due_.erase({it->second.due, it->first});
          entries_.erase(it);
        }
      }
    }
  }
}

void Runner::scan(bool then_schedule) {
  auto ids = spool_.list();
  if (!ids) {
    log::error("scan: " + ids.error());
    return;
  }
  std::set<std::string> present(ids->begin(), ids->end());
  for (const auto& id : *ids)
    if (!entries_.count(id)) add(id, false);
  // Forget messages removed behind our back (petrel queue delete).
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (!it->second.busy && !present.count(it->first)) {
      due_.erase({it->second.due, it->first});
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  if (then_schedule) schedule();
}

std::int64_t Runner::backoff(int attempts) {
  double d = static_cast<double>(cfg_.queue.retry.min);
  for (int i = 1; i < attempts && d < static_cast<double>(cfg_.queue.retry.max); ++i) d *= 2;
  d = std::min(d, static_cast<double>(cfg_.queue.retry.max));
  // Jitter: 80-100% of the interval, so retries of a burst spread out.
  std::uniform_real_distribution<double> jitter(0.8, 1.0);
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(d * jitter(rng_)));
}

std::vector<TargetState> Runner::resolve_recipient(const Entry& e, int rcpt) {
  std::vector<TargetState> out;
  const std::string& address = e.env.recipients[static_cast<size_t>(rcpt)];
  for (const Target& t : resolver_->resolve(address)) {
    TargetState ts;
    ts.rcpt = rcpt;
    switch (t.kind) {
      case Target::Kind::Local:
      case Target::Kind::Remote: ts.target = t.address; break;
      case Target::Kind::Command: ts.target = "|" + t.command; break;
      case Target::Kind::File: ts.target = t.path; break;
      case Target::Kind::Error:
        ts.code = t.status;
        ts.error = t.error;
        if (t.is_temporary_error()) {
          // A config problem (a missing :include: file...): the mail waits
          // for the admin and the recipient is resolved again when due.
          ts.target = std::string(1, kUnresolved) + address;
          ts.status = TargetStatus::Deferred;
        } else {
          ts.target = address;
          ts.status = TargetStatus::Bounced;
        }
        break;
    }
    out.push_back(std::move(ts));
  }
  return out;
}

// Logs a freshly resolved target that is already decided, and schedules the
// retry of an unresolved one.
void Runner::note_resolved(const std::string& id, const Entry& e, TargetState& t, std::int64_t now) {
  if (t.status == TargetStatus::Bounced) {
    log_result(id, e, t, "bounced", now_precise() - arrival_time(e.env));
  } else if (t.unresolved()) {
    t.attempts++;
    t.next_attempt = now + backoff(t.attempts);
    log_result(id, e, t, "deferred", now_precise() - arrival_time(e.env));
  }
}

bool Runner::prepare_state(const std::string& id, Entry& e) {
  if (e.st) return true;
  MessageState st;
  std::set<std::string> seen;
  std::int64_t now = now_sec();
  for (size_t i = 0; i < e.env.recipients.size(); ++i) {
    for (TargetState& ts : resolve_recipient(e, static_cast<int>(i))) {
      if (!seen.insert(ts.target).second) continue;
      st.targets.push_back(std::move(ts));
    }
  }
  e.st = std::move(st);
  for (auto& t : e.st->targets) note_resolved(id, e, t, now);
  // Not written yet: a message delivered at the first attempt never needs a
  // state file (finish_message() writes one when something is left to do).
  // A crash before that resolves the recipients again: at least once.
  return true;
}

// Resolves due unresolved targets again: what now resolves replaces them
// (targets the message already has are not added twice, so nothing is
// delivered twice); what still fails stays deferred.
void Runner::retry_unresolved(const std::string& id, Entry& e, std::int64_t now) {
  auto due = [&](const TargetState& t) { return t.unresolved() && !t.final() && t.next_attempt <= now; };
  if (std::none_of(e.st->targets.begin(), e.st->targets.end(), due)) return;
  std::set<std::string> seen;
  for (const auto& t : e.st->targets) seen.insert(t.target);
  std::vector<TargetState> next;
  for (TargetState& t : e.st->targets) {
    if (!due(t)) {
      next.push_back(std::move(t));
      continue;
    }
    bool kept = false;
    for (TargetState& f : resolve_recipient(e, t.rcpt)) {
      if (f.target == t.target) {
        if (kept) continue;  // one entry however many errors
        kept = true;
        t.code = f.code;
        t.error = f.error;
        note_resolved(id, e, t, now);
        next.push_back(t);
      } else if (seen.insert(f.target).second) {
        note_resolved(id, e, f, now);
        next.push_back(std::move(f));
      }
    }
  }
  e.st->targets = std::move(next);
  if (Status s = write_state(spool_, id, *e.st); !s) log::error(id + ": cannot write state: " + s.error());
}

std::string Runner::relay_name(const std::string& target) const {
  if (!target.empty() && target[0] == '|') return "pipe";
  if (!target.empty() && target[0] == '/') return "local";
  size_t at = target.rfind('@');
  const config::Domain* d = at == std::string::npos ? nullptr : cfg_.find_domain(target.substr(at + 1));
  if (!d) return "none";  // remote: no relay was contacted
  if (d->deliver.empty()) return "local";
  const std::string& spec = d->deliver.front();
  if (spec.rfind("pipe:", 0) == 0) return "pipe";
  if (spec.rfind("lmtp:", 0) == 0) return "lmtp";
  if (spec == "discard") return "discard";
  return "local";
}

void Runner::log_result(const std::string& id, const Entry& e, const TargetState& t,
                        const char* status, double delay, const Via* via) {
  const std::string& orig = e.env.recipients[static_cast<size_t>(t.rcpt)];
  std::string shown(t.shown());
  std::string line = id + ": to=<" + log::sanitize(shown) + ">";
  if (orig != shown) line += ", orig_to=<" + log::sanitize(orig) + ">";
  char d[32];
  std::snprintf(d, sizeof d, "%.2f", std::max(0.0, delay));
  std::string relay = via ? via->relay : t.unresolved() ? std::string("none") : relay_name(t.target);
  line += ", relay=" + log::sanitize(relay) + ", delay=" + d;
  if (via && !via->tls.empty()) line += ", tls=" + via->tls;
  if (!t.code.empty()) line += ", dsn=" + log::sanitize(t.code, 20);
  line += std::string(", status=") + status + " (" + log::sanitize(t.error, 300) + ")";
  log::info(line);
}

bool Runner::is_discard(const std::string& target) const {
  size_t at = target.rfind('@');
  if (target.empty() || target[0] == '|' || target[0] == '/' || at == std::string::npos) return false;
  const config::Domain* d = cfg_.find_domain(target.substr(at + 1));
  return d && d->deliver.size() == 1 && d->deliver.front() == "discard";
}

void Runner::dispatch(const std::string& id, Entry& e) {
  if (!message_exists(spool_, id)) {
    due_.erase({e.due, id});
    entries_.erase(id);
    return;
  }
  if (is_held(spool_, id)) {
    set_due(id, e, kFar);  // a release flushes it
    return;
  }
  if (!prepare_state(id, e)) {
    set_due(id, e, now_sec() + 60);
    return;
  }
  std::int64_t now = now_sec();
  retry_unresolved(id, e, now);
  std::vector<size_t> idx, remote;
  for (size_t i = 0; i < e.st->targets.size(); ++i) {
    auto& t = e.st->targets[i];
    if (t.final() || t.next_attempt > now || t.unresolved()) continue;
    size_t at = t.target.rfind('@');
    bool local = t.target[0] == '|' || t.target[0] == '/' ||
                 (at != std::string::npos && cfg_.find_domain(t.target.substr(at + 1)));
    if (!local) {
      if (relay_) {
        remote.push_back(i);
        continue;
      }
      // No outbound SMTP (the resolver could not be set up): keep the mail queued.
      t.status = TargetStatus::Deferred;
      t.attempts++;
      t.code = "4.4.3";
      t.error = "remote delivery is not available: " + relay_error_;
      t.next_attempt = now + backoff(t.attempts);
      if (now < e.env.arrival_sec + cfg_.queue.retry.lifetime)
        log_result(id, e, t, "deferred", now_precise() - arrival_time(e.env));
      continue;
    }
    if (is_discard(t.target)) {
      // A black hole needs no agent process.
      t.status = TargetStatus::Delivered;
      t.attempts++;
      t.code = "2.0.0";
      t.error = "discarded";
      log_result(id, e, t, "sent", now_precise() - arrival_time(e.env));
      continue;
    }
    idx.push_back(i);
  }
  if (!remote.empty()) submit_remote(id, e, remote);
  if (idx.empty()) {
    if (e.busy == 0) finish_message(id, e);
    return;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    log::error("pipe: " + errno_string(errno));
    set_due(id, e, now + 10);
    return;
  }
  UniqueFd rd(fds[0]), wr(fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) {
    log::error("fork: " + errno_string(errno));
    set_due(id, e, now + 10);
    return;
  }
  if (pid == 0) {
    rd.reset();
    run_child(id, e, idx, wr.get());
  }
  wr.reset();
  ::fcntl(rd.get(), F_SETFL, O_NONBLOCK);
  Job job;
  job.id = id;
  job.targets = std::move(idx);
  job.ev = event_new(base_, rd.get(), EV_READ | EV_PERSIST, cb_job_out, this);
  event_add(job.ev, nullptr);
  job.out = std::move(rd);
  due_.erase({e.due, id});
  e.busy++;
  jobs_.emplace(pid, std::move(job));
}

// Hands the message's due remote targets to the relay: one transaction per
// destination (route key), split at max_recipients_per_transaction.
void Runner::submit_remote(const std::string& id, Entry& e, const std::vector<size_t>& remote) {
  std::map<std::string, std::pair<delivery::Route, std::vector<size_t>>> groups;
  for (size_t i : remote) {
    const std::string& target = e.st->targets[i].target;
    size_t at = target.rfind('@');
    std::string domain = at == std::string::npos ? std::string() : target.substr(at + 1);
    delivery::Route route = delivery::select_route(cfg_, domain);
    auto& g = groups[route.key()];
    if (g.second.empty()) g.first = route;
    g.second.push_back(i);
  }
  const size_t per_tx = static_cast<size_t>(std::max(1, cfg_.queue.max_recipients_per_transaction));
  for (auto& [key, g] : groups) {
    for (size_t from = 0; from < g.second.size(); from += per_tx) {
      RelayTransaction tx;
      tx.id = id;
      tx.message.sender = e.env.sender;
      tx.message.spool_path = spool_.message_path(id);
      tx.message.body_offset = e.body_offset;
      tx.message.size = e.env.size;
      tx.message.body_8bit = e.env.body_8bit;
      tx.message.smtputf8 = e.env.smtputf8;
      for (size_t k = from; k < std::min(g.second.size(), from + per_tx); ++k) {
        tx.targets.push_back(g.second[k]);
        tx.message.recipients.push_back(e.st->targets[g.second[k]].target);
      }
      e.busy++;
      relay_->submit(g.first, std::move(tx));
    }
  }
  due_.erase({e.due, id});
}

void Runner::run_child(const std::string& id, const Entry& e, const std::vector<size_t>& idx,
                       int out_fd) {
  for (int sig : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGPIPE}) ::signal(sig, SIG_DFL);
  log::set_program("petrel/local");
  auto data = read_file(spool_.message_path(id));
  auto fail_all = [&](const std::string& why) {
    for (size_t i : idx) {
      std::string line = std::to_string(i) + " " +
                         delivery::encode(delivery::deferred("4.3.0", why)) + "\n";
      (void)write_all(out_fd, line);
    }
    ::_exit(0);
  };
  if (!data) fail_all("cannot read queue file: " + data.error());
  auto pm = parse_envelope(*data);
  if (!pm) fail_all("bad queue file: " + pm.error());
  delivery::Message msg;
  msg.queue_id = id;
  msg.sender = e.env.sender;
  msg.body = std::string_view(*data).substr(pm->body_offset);
  delivery::LocalSettings settings;
  settings.lhlo_name = cfg_.hostname;
  for (size_t i : idx) {
    const TargetState& t = e.st->targets[i];
    const std::string& orig = e.env.recipients[static_cast<size_t>(t.rcpt)];
    delivery::Verdict v;
    if (t.target[0] == '|') {
      delivery::Recipient r = make_recipient(cfg_, orig, orig);
      delivery::PipeOptions po;
      po.argv = {"/bin/sh", "-c", t.target.substr(1)};
      v = delivery::deliver_pipe(po, r, msg);
    } else if (t.target[0] == '/') {
      delivery::Recipient r = make_recipient(cfg_, orig, orig);
      v = delivery::deliver_mbox(t.target, r, msg);
    } else {
      delivery::Recipient r = make_recipient(cfg_, t.target, orig);
      const config::Domain* d = cfg_.find_domain(r.domain);
      if (!d) v = delivery::deferred("4.3.5", "domain is no longer local");
      else if (d->deliver.empty()) v = delivery::deferred("4.3.5", "no deliver setting for domain");
      else v = delivery::deliver_local(d->deliver, r, msg, settings);
    }
    std::string line = std::to_string(i) + " " + delivery::encode(v) + "\n";
    (void)write_all(out_fd, line);
  }
  ::_exit(0);
}

void Runner::on_job_output(int fd) {
  for (auto& [pid, job] : jobs_) {
    if (job.out.get() != fd) continue;
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        job.buf.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        job.eof = true;
        event_del(job.ev);
      }
      break;
    }
    if (job.eof && job.exited) {
      pid_t p = pid;
      complete(p, job);
      if (stopping_) maybe_exit();
    }
    return;
  }
}

void Runner::on_sigchld() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto it = jobs_.find(pid);
    if (it == jobs_.end()) continue;
    it->second.exited = true;
    it->second.status = status;
    // Drain what is left; the child has exited, so this cannot block.
    on_job_output(it->second.out.get());
  }
}

void Runner::complete(pid_t pid, Job& job) {
  auto it = entries_.find(job.id);
  if (job.ev) {
    event_free(job.ev);
    job.ev = nullptr;
  }
  if (it == entries_.end()) {
    jobs_.erase(pid);
    return;
  }
  Entry& e = it->second;
  const std::string id = job.id;
  std::map<size_t, delivery::Verdict> results;
  size_t pos = 0, nl;
  while ((nl = job.buf.find('\n', pos)) != std::string::npos) {
    std::string_view line(job.buf.data() + pos, nl - pos);
    pos = nl + 1;
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) continue;
    auto v = delivery::decode(line.substr(sp + 1));
    if (!v) continue;
    results[static_cast<size_t>(std::atoi(std::string(line.substr(0, sp)).c_str()))] = *v;
  }
  if (WIFSIGNALED(job.status))
    log::warn(id + ": delivery agent killed by signal " + std::to_string(WTERMSIG(job.status)));
  std::int64_t now = now_sec();
  double delay = now_precise() - arrival_time(e.env);
  bool expired = now >= e.env.arrival_sec + cfg_.queue.retry.lifetime;
  for (size_t i : job.targets) {
    if (i >= e.st->targets.size()) continue;
    auto r = results.find(i);
    delivery::Verdict v = r != results.end() ? r->second
                                             : delivery::deferred("4.3.0", "delivery agent crashed");
    apply(id, e, e.st->targets[i], v, now, delay, expired, nullptr);
  }
  jobs_.erase(pid);
  end_delivery(id, e);
}

// Records one attempt's verdict for a target and logs it. A deferral after
// retry.lifetime is a bounce.
void Runner::apply(const std::string& id, const Entry& e, TargetState& t, const delivery::Verdict& v,
                   std::int64_t now, double delay, bool expired, const Via* via) {
  t.code = v.status;
  t.error = v.detail;
  t.attempts++;
  switch (v.outcome) {
    case delivery::Outcome::Delivered:
      t.status = TargetStatus::Delivered;
      log_result(id, e, t, "sent", delay, via);
      break;
    case delivery::Outcome::Bounced:
      t.status = TargetStatus::Bounced;
      log_result(id, e, t, "bounced", delay, via);
      break;
    case delivery::Outcome::Deferred:
      if (expired) {
        t.status = TargetStatus::Bounced;
        t.error = "message expired in the queue: " + t.error;
        log_result(id, e, t, "bounced", delay, via);
      } else {
        t.status = TargetStatus::Deferred;
        t.next_attempt = now + backoff(t.attempts);
        log_result(id, e, t, "deferred", delay, via);
      }
      break;
  }
}

// One delivery of the message (a local agent child or a relay transaction)
// has ended: when it was the last in flight, write the state or remove the
// message, and reschedule.
void Runner::end_delivery(const std::string& id, Entry& e) {
  if (e.busy > 0) e.busy--;
  if (e.busy == 0) {
    e.due = kFar;
    finish_message(id, e);
  }
  if (stopping_) maybe_exit();
  else schedule();
}

void Runner::on_relay(const RelayOutcome& out) {
  auto it = entries_.find(out.id);
  if (it == entries_.end() || !it->second.st) return;
  Entry& e = it->second;
  std::int64_t now = now_sec();
  double delay = now_precise() - arrival_time(e.env);
  bool expired = now >= e.env.arrival_sec + cfg_.queue.retry.lifetime;
  Via via{out.relay, out.tls};
  for (size_t k = 0; k < out.targets.size() && k < out.results.size(); ++k) {
    size_t i = out.targets[k];
    if (i >= e.st->targets.size()) continue;
    delivery::Verdict v = out.results[k].verdict;
    // "sent (250 2.0.0 Ok: queued as X)": the remote reply, as admins grep for.
    if (v.outcome == delivery::Outcome::Delivered && !out.results[k].reply.empty())
      v.detail = out.results[k].reply;
    apply(out.id, e, e.st->targets[i], v, now, delay, expired, &via);
  }
  end_delivery(out.id, e);
}

void Runner::finish_message(const std::string& id, Entry& e) {
  if (!e.st) return;
  if (!message_exists(spool_, id)) {
    // Deleted (petrel queue delete) while it was being delivered: no bounce,
    // and no state file left behind for a message that is gone.
    log::info(id + ": deleted while in delivery");
    (void)remove_message(spool_, id);
    due_.erase({e.due, id});
    entries_.erase(id);
    return;
  }
  std::int64_t now = now_sec();
  bool expired = now >= e.env.arrival_sec + cfg_.queue.retry.lifetime;
  if (expired) {
    for (auto& t : e.st->targets) {
      if (t.final()) continue;
      t.status = TargetStatus::Bounced;
      t.error = "message expired in the queue: " + t.error;
      log_result(id, e, t, "bounced", now_precise() - arrival_time(e.env));
    }
  }
  // Bounces are reported as they happen, all of one attempt in one DSN,
  // even while other recipients are still deferred.
  std::vector<size_t> bounced;
  for (size_t i = 0; i < e.st->targets.size(); ++i)
    if (e.st->targets[i].status == TargetStatus::Bounced && !e.st->targets[i].notified)
      bounced.push_back(i);
  if (!bounced.empty()) {
    bool told = true;
    if (e.env.sender.empty()) log::info(id + ": sender is <>, no bounce sent");
    else told = send_dsn(id, e, false, bounced);
    // Not queued (disk full...): tried again at the next attempt or removal.
    if (told)
      for (size_t i : bounced) e.st->targets[i].notified = true;
  }
  bool untold = std::any_of(e.st->targets.begin(), e.st->targets.end(), [](const TargetState& t) {
    return t.status == TargetStatus::Bounced && !t.notified;
  });
  if (e.st->all_final() && !untold) {
    // Not synced: see remove_message().
    if (Status s = remove_message(spool_, id, false); !s) {
      log::error(id + ": cannot remove: " + s.error());
      (void)write_state(spool_, id, *e.st);
      set_due(id, e, now + 60);
      return;
    }
    log::info(id + ": removed");
    due_.erase({e.due, id});
    entries_.erase(id);
    return;
  }
  maybe_warn(id, e);
  if (Status s = write_state(spool_, id, *e.st); !s) log::error(id + ": cannot write state: " + s.error());
  std::int64_t due = untold ? now + 60 : kFar;  // a bounce that could not be queued: again soon
  for (const auto& t : e.st->targets)
    if (!t.final()) due = std::min(due, t.next_attempt);
  set_due(id, e, due);
}

void Runner::maybe_warn(const std::string& id, Entry& e) {
  if (cfg_.queue.retry.warn_after <= 0 || e.st->warned || e.env.sender.empty()) return;
  if (now_sec() < e.env.arrival_sec + cfg_.queue.retry.warn_after) return;
  std::vector<size_t> deferred;
  for (size_t i = 0; i < e.st->targets.size(); ++i)
    if (e.st->targets[i].status == TargetStatus::Deferred) deferred.push_back(i);
  if (deferred.empty()) return;
  if (send_dsn(id, e, true, deferred)) e.st->warned = true;
}

bool Runner::send_dsn(const std::string& id, const Entry& e, bool delay,
                      const std::vector<size_t>& which) {
  auto data = read_file(spool_.message_path(id));
  std::string_view body;
  std::optional<ParsedMessage> pm;
  if (data) {
    auto p = parse_envelope(*data);
    if (p) {
      pm = std::move(*p);
      body = std::string_view(*data).substr(pm->body_offset);
    }
  }
  DsnInput in;
  in.hostname = cfg_.hostname;
  in.queue_id = id;
  in.original_sender = e.env.sender;
  in.arrival = e.env.arrival_sec;
  in.now = now_sec();
  in.delay_warning = delay;
  in.original_message = body;
  for (size_t i : which) {
    const TargetState& t = e.st->targets[i];
    DsnRecipient r;
    r.original_recipient = e.env.recipients[static_cast<size_t>(t.rcpt)];
    // Final-Recipient must be an address (RFC 3464 2.3.2): a command or file
    // an alias expanded to is reported under the recipient that led to it.
    bool address = !t.target.empty() && t.target[0] != '|' && t.target[0] != '/';
    r.final_recipient = address ? std::string(t.shown()) : r.original_recipient;
    r.action = delay ? "delayed" : "failed";
    r.status = t.code.empty() ? (delay ? "4.0.0" : "5.0.0") : t.code;
    if (!delay && !r.status.empty() && r.status[0] == '4') r.status[0] = '5';
    r.diagnostic = address ? t.error : t.target + ": " + t.error;
    in.recipients.push_back(std::move(r));
  }
  std::string text = build_dsn(in);
  Envelope env;
  env.id = new_queue_id();
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  env.arrival_sec = tv.tv_sec;
  env.arrival_usec = tv.tv_usec;
  env.sender = "";
  env.size = text.size();
  env.body_8bit = true;
  env.client = "local";
  env.helo = cfg_.hostname;
  env.recipients = {e.env.sender};
  if (Status s = spool_.commit(env, {text}); !s) {
    log::error(id + ": cannot queue " + (delay ? "delay warning" : "bounce") + ": " + s.error());
    return false;
  }
  log::info(id + ": sender " + (delay ? "delay notification: " : "non-delivery notification: ") +
            env.id);
  log::info(env.id + ": from=<>, size=" + std::to_string(env.size) + ", nrcpt=1");
  add(env.id, true);
  return true;
}

// Removes what crashed writers left: .tmp- message files older than ten
// minutes (a worker writes its file within milliseconds of the final dot);
// .new- state files, which only a runner writes (or `petrel queue` when
// none runs): at start every one is a crashed predecessor's, later only
// old ones are swept; and ID.state / ID.hold files whose message is gone (a
// crash inside remove_message, which unlinks the message first).
void Runner::sweep_leftovers(bool at_start) {
  int dfd = ::dup(spool_.dir_fd());
  if (dfd < 0) return;
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    ::close(dfd);
    return;
  }
  ::rewinddir(d);
  std::int64_t now = now_sec();
  while (struct dirent* ent = ::readdir(d)) {
    bool tmp = std::strncmp(ent->d_name, ".tmp-", 5) == 0;
    bool state = std::strncmp(ent->d_name, ".new-", 5) == 0;
    if (!tmp && !state) {
      std::string_view name(ent->d_name);
      size_t dot = name.find('.');
      if (dot == 0 || dot == std::string_view::npos) continue;
      std::string_view suffix = name.substr(dot);
      if ((suffix == ".state" || suffix == ".hold") &&
          !message_exists(spool_, name.substr(0, dot)) && ::unlinkat(spool_.dir_fd(), ent->d_name, 0) == 0)
        log::info(std::string("removed orphan ") + ent->d_name);
      continue;
    }
    struct stat st {};
    if (::fstatat(spool_.dir_fd(), ent->d_name, &st, 0) != 0) continue;
    std::int64_t age = now - st.st_mtime;
    if (tmp ? age > 600 : (at_start || age > 60)) {
      ::unlinkat(spool_.dir_fd(), ent->d_name, 0);
      log::info(std::string("removed stale ") + ent->d_name);
    }
  }
  ::closedir(d);
}

void Runner::arm_tick() {
  if (due_.empty() || stopping_) {
    evtimer_del(tick_);
    return;
  }
  std::int64_t wait = std::max<std::int64_t>(0, due_.begin()->first - now_sec());
  struct timeval tv = {static_cast<time_t>(std::min<std::int64_t>(wait, kScanSeconds)), 0};
  if (wait == 0) tv.tv_usec = 0;
  evtimer_add(tick_, &tv);
}

void Runner::schedule() {
  if (stopping_) return;
  std::int64_t now = now_sec();
  while (!due_.empty() && static_cast<int>(jobs_.size()) < kMaxJobs) {
    auto first = *due_.begin();
    if (first.first > now) break;
    due_.erase(due_.begin());
    auto it = entries_.find(first.second);
    if (it == entries_.end() || it->second.busy) continue;
    it->second.due = kFar;
    dispatch(first.second, it->second);
  }
  arm_tick();
}

// Re-reads the configuration file the master started us with, and aliases.file.
// An invalid file keeps the configuration we have. state_dir stays (the
// master keeps it too). Deliveries in flight finish with the old settings.
void Runner::reload() {
  if (cfg_.file.empty()) return;
  auto loaded = config::load_file(cfg_.file);
  if (!loaded.ok()) {
    for (const auto& err : loaded.errors) log::error("reload failed: " + err.str());
    return;
  }
  loaded.config.state_dir = cfg_.state_dir;
  cfg_ = std::move(loaded.config);
  resolver_ = std::make_unique<Resolver>(cfg_);
  if (Status s = resolver_->load_aliases_file(); !s) log::warn("aliases: " + s.error());
  if (relay_) {
    if (Status s = relay_->reload(cfg_); !s) log::error("reload: " + s.error() + " (old DNS settings kept)");
  }
  log::info("queue runner reloaded " + cfg_.file);
  // New domains or retry settings may make deferred work due now.
  schedule();
}

void Runner::on_term() {
  if (stopping_) return;
  stopping_ = true;
  stop_deadline_ = now_precise() + kStopSeconds;
  log::info("queue runner stopping, " + std::to_string(jobs_.size()) + " local delivery(ies), " +
            std::to_string(relay_ ? relay_->connections() : 0) + " connection(s) running");
  // Connections finish the message they send and say QUIT; what waits for
  // one stays queued for the next runner.
  if (relay_) relay_->stop();
  maybe_exit();
}

// While stopping: leave the loop once the local agents are done and every
// connection has closed, or at the deadline (a relay transaction cut short
// then is sent again by the next runner: at least once, never lost).
void Runner::maybe_exit() {
  bool relay_idle = !relay_ || relay_->idle();
  if (jobs_.empty() && (relay_idle || now_precise() > stop_deadline_)) {
    event_base_loopexit(base_, nullptr);
    return;
  }
  if (!exit_check_) exit_check_ = evtimer_new(base_, cb_exit_check, this);
  struct timeval tv = {0, 100 * 1000};
  evtimer_add(exit_check_, &tv);
}

int Runner::run() {
  base_ = event_base_new();
  if (!base_) {
    log::error("event_base_new failed");
    return 71;
  }
  if (Status s = resolver_->load_aliases_file(); !s) log::warn("aliases: " + s.error());

  // Control socket.
  control_path_ = control_socket_path(cfg_);
  control_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  struct sockaddr_un sun {};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", control_path_.c_str());
  ::unlink(control_path_.c_str());
  if (!control_ || ::bind(control_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    log::error(control_path_ + ": " + errno_string(errno));
    control_.reset();
  } else {
    ::chmod(control_path_.c_str(), 0660);
    auto* ev = event_new(base_, control_.get(), EV_READ | EV_PERSIST, cb_control, this);
    event_add(ev, nullptr);
    events_.push_back(ev);
  }

  auto* nev = event_new(base_, notify_fd_, EV_READ | EV_PERSIST, cb_notify, this);
  event_add(nev, nullptr);
  events_.push_back(nev);
  auto* chld = evsignal_new(base_, SIGCHLD, cb_child, this);
  event_add(chld, nullptr);
  events_.push_back(chld);
  for (int sig : {SIGTERM, SIGINT}) {
    auto* t = evsignal_new(base_, sig, cb_term, this);
    event_add(t, nullptr);
    events_.push_back(t);
  }
  auto* hup = evsignal_new(base_, SIGHUP, cb_hup, this);
  event_add(hup, nullptr);
  events_.push_back(hup);
  auto* scan_ev = event_new(base_, -1, EV_PERSIST, cb_scan, this);
  struct timeval every = {kScanSeconds, 0};
  event_add(scan_ev, &every);
  events_.push_back(scan_ev);
  tick_ = evtimer_new(base_, cb_tick, this);

  auto relay = Relay::create(base_, cfg_, [this](const RelayOutcome& out) { on_relay(out); });
  if (relay) {
    relay_ = std::move(*relay);
  } else {
    relay_error_ = relay.error();
    log::error("remote delivery disabled: " + relay_error_);
  }

  sweep_leftovers(true);
  log::info("queue runner started");
  scan();
  while (true) {
    event_base_dispatch(base_);
    if (!stopping_ || jobs_.empty()) break;
  }
  relay_.reset();
  log::info("queue runner stopped");
  return 0;
}

}  // namespace

std::string control_socket_path(const config::Config& cfg) { return cfg.state_dir + "/runner.sock"; }

bool send_control(const config::Config& cfg, const std::string& message) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  struct sockaddr_un sun {};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", control_socket_path(cfg).c_str());
  return ::sendto(fd.get(), message.data(), message.size(), 0, reinterpret_cast<sockaddr*>(&sun),
                  sizeof sun) == static_cast<ssize_t>(message.size());
}

int run_queue_runner(const config::Config& cfg, int notify_fd) {
  auto spool = Spool::open(cfg.state_dir);
  if (!spool) {
    log::error("spool: " + spool.error());
    return 73;
  }
  Runner r(cfg, std::move(*spool), notify_fd);
  return r.run();
}

}  // namespace petrel::queue
