#include "petrel/filter/chain.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/common/strings.h"
#include "petrel/filter/exec.h"
#include "petrel/filter/message.h"
#include "petrel/filter/plugin.h"

// The milter client is built separately; the chain uses it when it is there.
#if __has_include("petrel/filter/milter.h")
#include "petrel/filter/milter.h"
namespace petrel::filter {
namespace {
std::unique_ptr<Filter> new_milter(const config::Filter& f) { return make_milter_filter(f); }
}  // namespace
}  // namespace petrel::filter
#else
namespace petrel::filter {
// Weak: resolves to null until the milter client is linked in.
__attribute__((weak)) std::unique_ptr<Filter> make_milter_filter(const config::Filter& f);
namespace {
std::unique_ptr<Filter> new_milter(const config::Filter& f) {
  if (!make_milter_filter) return nullptr;
  return make_milter_filter(f);
}
}  // namespace
}  // namespace petrel::filter
#endif

namespace petrel::filter {

namespace {

using Clock = std::chrono::steady_clock;

bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 32 || u == 127;
}

// "<a@b>" -> "a@b"; "<>" -> "".
std::string bare_address(std::string_view a) {
  while (!a.empty() && (a.front() == ' ' || a.front() == '\t')) a.remove_prefix(1);
  while (!a.empty() && (a.back() == ' ' || a.back() == '\t')) a.remove_suffix(1);
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  return std::string(a);
}

bool valid_address(std::string_view a) {
  return std::none_of(a.begin(), a.end(), [](char c) { return is_control(c) || c == ' '; }) &&
         a.size() <= 512;
}

std::string queue_label(const Envelope& env) {
  return env.queue_id.empty() ? "NOQUEUE" : env.queue_id;
}

std::string step_line(const Envelope& env, const Step& s) {
  std::string line = queue_label(env) + ": filter=" + log::sanitize(s.filter) +
                     " verdict=" + std::string(action_name(s.action)) +
                     " latency=" + std::to_string(s.latency.count()) + "ms";
  if (!s.detail.empty()) line += " " + log::sanitize(s.detail, 512);
  return line;
}

std::unique_ptr<Filter> make_filter(const config::Filter& f, const config::Config& cfg,
                                    std::string* error) {
  switch (f.kind) {
    case config::FilterKind::Exec:
      return make_exec_filter(f, cfg.limits.max_message_size);
    case config::FilterKind::Plugin: {
      auto p = make_plugin_filter(f, cfg.dir);
      if (!p) {
        *error = p.error();
        return nullptr;
      }
      return std::move(*p);
    }
    case config::FilterKind::Milter: {
      auto m = new_milter(f);
      if (!m) *error = "milter filters are not available in this build";
      return m;
    }
  }
  *error = "unknown filter kind";
  return nullptr;
}

bool leftover_name(std::string_view n) {
  if (n.empty() || n.front() == '.' || n.back() == '~') return true;
  for (std::string_view suffix : {".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".ucf-old",
                                  ".ucf-new", ".ucf-dist", ".rpmnew", ".rpmsave"}) {
    if (n.ends_with(suffix)) return true;
  }
  return false;
}

}  // namespace

Result<std::vector<config::Filter>> filter_dir_entries(const std::string& dir) {
  std::vector<config::Filter> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return Error{"filter_dir " + dir + ": " + errno_string(errno)};
  }
  std::vector<std::string> names;
  while (dirent* de = ::readdir(d)) {
    const std::string name = de->d_name;
    if (leftover_name(name)) continue;
    const std::string path = dir + "/" + name;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (::access(path.c_str(), X_OK) != 0) continue;
    names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    config::Filter f;
    f.name = name;
    f.kind = config::FilterKind::Exec;
    f.exec = {dir + "/" + name};
    out.push_back(std::move(f));
  }
  return out;
}

Result<Chain> Chain::load(const config::Config& cfg) {
  Chain chain(cfg.limits.max_message_size);
  for (const config::Filter& f : cfg.filters) {
    std::string error;
    auto filter = make_filter(f, cfg, &error);
    if (!filter) {
      chain.fini();
      return Error{"filter " + f.name + ": " + error};
    }
    chain.add(std::move(filter), f);
  }
  if (!cfg.filter_dir.empty()) {
    auto extra = filter_dir_entries(cfg.filter_dir);
    if (!extra) {
      chain.fini();
      return Error{extra.error()};
    }
    for (const config::Filter& f : *extra)
      chain.add(make_exec_filter(f, cfg.limits.max_message_size), f);
  }
  return Result<Chain>(std::move(chain));
}

std::vector<std::string> Chain::check(const config::Config& cfg) {
  std::vector<std::string> problems;
  for (const config::Filter& f : cfg.filters) {
    const std::string who = "filter " + f.name + ": ";
    switch (f.kind) {
      case config::FilterKind::Exec: {
        const std::string prog = f.exec.empty() ? std::string() : find_program(f.exec[0]);
        const int err = prog.empty() ? ENOENT : ::access(prog.c_str(), X_OK) == 0 ? 0 : errno;
        if (err != 0)
          problems.push_back(who + "cannot execute " + (prog.empty() ? "(nothing)" : prog) + ": " +
                             errno_string(err));
        break;
      }
      case config::FilterKind::Plugin: {
        if (Status st = check_plugin(f.plugin); !st) {
          problems.push_back(who + st.error());
          break;
        }
        auto p = make_plugin_filter(f, cfg.dir);
        if (!p) {
          problems.push_back(who + p.error());
        } else {
          (*p)->fini();
        }
        break;
      }
      case config::FilterKind::Milter: {
        std::string error;
        if (!make_filter(f, cfg, &error)) problems.push_back(who + error);
        break;
      }
    }
  }
  if (!cfg.filter_dir.empty()) {
    if (auto extra = filter_dir_entries(cfg.filter_dir); !extra) problems.push_back(extra.error());
  }
  return problems;
}

void Chain::add(std::unique_ptr<Filter> filter, config::Filter settings) {
  entries_.push_back({std::move(filter), std::move(settings)});
}

std::vector<std::string> Chain::names() const {
  std::vector<std::string> out;
  for (const Entry& e : entries_) out.push_back(e.filter->name());
  return out;
}

void Chain::worker_init() {
  for (Entry& e : entries_) e.filter->worker_init();
}

void Chain::reset() {
  for (Entry& e : entries_) e.filter->reset();
}

void Chain::worker_exit() {
  for (Entry& e : entries_) e.filter->close();
}

void Chain::fini() {
  if (finished_) return;
  finished_ = true;
  for (Entry& e : entries_) e.filter->fini();
}

namespace {

// Applies one verdict's changes: the envelope in place, the message into
// *next (left empty when the verdict does not touch it). On error nothing of
// this verdict is applied.
Status apply(Verdict& v, Envelope& env, std::string_view current, std::optional<std::string>* next,
             std::uint64_t max_size) {
  Envelope e = env;  // all or nothing
  for (const std::string& d : v.delete_recipients) {
    const std::string gone = to_lower(bare_address(d));
    std::erase_if(e.recipients, [&](const std::string& r) { return to_lower(r) == gone; });
  }
  for (const std::string& a : v.add_recipients) {
    const std::string rcpt = bare_address(a);
    if (rcpt.empty() || !valid_address(rcpt)) return Error{"invalid recipient to add"};
    const std::string low = to_lower(rcpt);
    if (std::none_of(e.recipients.begin(), e.recipients.end(),
                     [&](const std::string& r) { return to_lower(r) == low; }))
      e.recipients.push_back(rcpt);
  }
  if (v.new_sender) {
    const std::string s = bare_address(*v.new_sender);
    if (!valid_address(s)) return Error{"invalid new sender"};
    e.sender = s;
  }

  if (!v.headers.empty() || v.new_body || v.new_message) {
    for (const HeaderOp& op : v.headers) {
      if (!valid_header_name(op.name) || !valid_header_value(op.value) || op.index < 0)
        return Error{"invalid header change for " + op.name};
    }
    std::string candidate = v.new_message ? std::move(*v.new_message) : std::string(current);
    if (v.new_body) replace_body(candidate, *v.new_body);
    // Header values are validated above; only a new body or message can
    // bring a CR or blow the size limit.
    if (v.new_message || v.new_body) {
      if (candidate.find('\r') != std::string::npos) return Error{"bare CR in the new message"};
      if (candidate.size() > max_size) return Error{"new message larger than the size limit"};
      if (candidate.empty()) return Error{"empty new message"};
    }
    for (const HeaderOp& op : v.headers) {
      if (Status st = apply_header_op(candidate, op); !st) return st;
    }
    *next = std::move(candidate);
  }
  env = std::move(e);
  return {};
}

}  // namespace

Outcome Chain::run(Envelope& env, std::string& message) {
  Outcome out;
  Envelope work_env = env;
  std::optional<std::string> work;  // the message once a filter changed it
  bool quarantine = false;
  std::string quarantine_reason;

  for (Entry& entry : entries_) {
    const auto start = Clock::now();
    const std::string_view current = work ? std::string_view(*work) : std::string_view(message);
    Verdict v = entry.filter->scan(work_env, current);
    Step step;
    step.filter = entry.filter->name();
    step.action = v.action;
    step.detail = v.detail;
    step.error = v.detail.starts_with("error=");  // error_verdict()'s mark

    if (v.action == Action::Continue || v.action == Action::Accept) {
      std::optional<std::string> next;
      if (Status st = apply(v, work_env, current, &next, max_message_size_); !st) {
        // What the filter asked for is unusable: the filter failed.
        const Verdict err = error_verdict(entry.settings.on_error, st.error());
        v.action = err.action;
        v.quarantine = false;
        step.action = err.action;
        step.detail = err.detail;
        step.error = true;
      } else if (next) {
        work = std::move(next);
      }
      if (v.quarantine && (v.action == Action::Continue || v.action == Action::Accept)) {
        quarantine = true;
        if (quarantine_reason.empty()) quarantine_reason = v.quarantine_reason;
      }
    }
    step.latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    step.log_line = step_line(env, step);
    out.steps.push_back(std::move(step));

    if (v.action == Action::Continue) continue;
    out.action = v.action;
    out.filter = entry.filter->name();
    if (v.action == Action::Reject || v.action == Action::Tempfail) {
      out.reply = make_reply(v.action, v.reply, out.filter);
      return out;  // env and message untouched: pending changes dropped
    }
    if (v.action == Action::Discard) return out;
    break;  // Accept: the remaining filters are skipped
  }

  if (work_env.recipients.empty() && !env.recipients.empty()) {
    out.action = Action::Discard;  // the filters removed every recipient
    out.filter = out.steps.empty() ? std::string() : out.steps.back().filter;
    return out;
  }
  env = std::move(work_env);
  if (work) message = std::move(*work);
  out.quarantine = quarantine;
  out.quarantine_reason = std::move(quarantine_reason);
  return out;
}

template <typename Hook>
std::optional<StageResult> Chain::fan_out(std::string_view stage, const Hook& hook) {
  for (Entry& entry : entries_) {
    const auto start = Clock::now();
    std::optional<StageReply> r = hook(*entry.filter);
    if (!r) continue;
    if (r->action == Action::Accept) return std::nullopt;
    if (r->action != Action::Reject && r->action != Action::Tempfail) continue;
    StageResult res;
    res.action = r->action;
    res.filter = entry.filter->name();
    res.reply = make_reply(r->action, r->reply, res.filter, true);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    res.log_line = "filter=" + log::sanitize(res.filter) + " stage=" + std::string(stage) +
                   " verdict=" + std::string(action_name(r->action)) +
                   " latency=" + std::to_string(ms) + "ms";
    return res;
  }
  return std::nullopt;
}

std::optional<StageResult> Chain::on_connect(const Envelope& env) {
  return fan_out("connect", [&](Filter& f) { return f.on_connect(env); });
}
std::optional<StageResult> Chain::on_helo(const Envelope& env) {
  return fan_out("helo", [&](Filter& f) { return f.on_helo(env); });
}
std::optional<StageResult> Chain::on_mail(const Envelope& env) {
  return fan_out("mail", [&](Filter& f) { return f.on_mail(env); });
}
std::optional<StageResult> Chain::on_rcpt(const Envelope& env, std::string_view rcpt) {
  return fan_out("rcpt", [&](Filter& f) { return f.on_rcpt(env, rcpt); });
}

}  // namespace petrel::filter
