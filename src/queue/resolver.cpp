// Recipient resolution over domains, users, catch_all and aliases (see
// resolver.h for the rules). resolve() is const and keeps its state in a
// Walk, so one Resolver serves the RCPT check and the queue runner alike.
#include "petrel/queue/resolver.h"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <unordered_set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/strings.h"

namespace petrel::queue {
namespace {

constexpr std::size_t kMaxIncludeSize = 1u << 20;       // one :include: list
constexpr std::size_t kMaxAliasesFileSize = 64u << 20;  // aliases.file
// Lookups per resolve(): bounds the work of fan-outs that dedupe away
// (a: b,b,b  b: c,c,c ...) as kMaxTargets bounds the result.
constexpr std::size_t kMaxSteps = 10 * Resolver::kMaxTargets;
constexpr std::size_t kMaxReportedErrors = 20;

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }
bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

// "<a@b>" -> "a@b", blanks around either removed.
std::string_view strip_path(std::string_view s) {
  s = trim(s);
  if (s.size() >= 2 && s.front() == '<' && s.back() == '>') s = trim(s.substr(1, s.size() - 2));
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && to_lower(a) == to_lower(b);
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// Index just past the quote closing the one at 0; npos when never closed.
std::size_t quoted_end(std::string_view s) {
  for (std::size_t i = 1; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

std::string unquote(std::string_view quoted) {
  std::string out;
  for (std::size_t i = 1; i + 1 < quoted.size(); ++i) {
    if (quoted[i] == '\\' && i + 2 < quoted.size()) ++i;
    out += quoted[i];
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (const std::string& p : parts) {
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

// A regular file of at most `max` bytes. Opened non-blocking so a FIFO
// swapped in after the stat() cannot hang a session.
Result<std::string> read_bounded(const std::string& path, std::size_t max) {
  struct stat st {};
  // Checked before open() too: opening some devices has side effects.
  if (::stat(path.c_str(), &st) != 0) return Error{path + ": " + errno_string(errno)};
  if (!S_ISREG(st.st_mode)) return Error{path + ": not a regular file"};
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) return Error{path + ": " + errno_string(errno)};
  if (::fstat(fd.get(), &st) != 0) return Error{path + ": " + errno_string(errno)};
  if (!S_ISREG(st.st_mode)) return Error{path + ": not a regular file"};
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{path + ": " + errno_string(errno)};
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > max) return Error{path + ": larger than " + std::to_string(max) + " bytes"};
  }
  return out;
}

}  // namespace

// One address, split the ways lookups need it.
struct Resolver::Addr {
  std::string written;    // local part as written, quotes kept
  std::string local;      // unquoted, lower-cased
  std::string user;       // `local` without extension
  std::string extension;  // unquoted, case kept
  std::string domain;     // lower-cased, no trailing dot

  std::string key() const { return local + "@" + domain; }
  std::string stripped_key() const { return user + "@" + domain; }
  std::string display() const { return written + "@" + domain; }

  // "local@domain", or a bare local part in `default_domain` (when that is
  // not empty). Nullopt for anything that is not an address.
  static std::optional<Addr> parse(std::string_view s, std::string_view default_domain,
                                   std::string_view delimiters) {
    s = strip_path(s);
    if (s.empty()) return std::nullopt;
    std::size_t local_end = s.find('@');
    if (s.front() == '"') {
      local_end = quoted_end(s);
      if (local_end == std::string_view::npos) return std::nullopt;
      if (local_end < s.size() && s[local_end] != '@') return std::nullopt;
    }
    Addr a;
    std::string_view written = s.substr(0, local_end);
    std::string_view domain =
        local_end >= s.size() ? default_domain : s.substr(local_end + 1);
    if (written.empty() || domain.empty()) return std::nullopt;
    for (char c : s)
      if (is_control(c)) return std::nullopt;
    std::string plain;
    if (written.front() == '"') {
      plain = unquote(written);
      if (plain.empty()) return std::nullopt;
    } else {
      for (char c : written)
        if (is_blank(c) || c == '"') return std::nullopt;
      plain = std::string(written);
    }
    for (char c : domain)
      if (is_blank(c) || c == '"' || c == '@' || c == '<' || c == '>' || c == ',')
        return std::nullopt;
    if (domain.back() == '.') domain.remove_suffix(1);
    if (domain.empty()) return std::nullopt;

    a.written = std::string(written);
    a.local = to_lower(plain);
    a.domain = to_lower(domain);
    a.user = a.local;
    const std::size_t d = plain.find_first_of(delimiters);
    if (!delimiters.empty() && d != std::string::npos && d > 0) {
      a.user = to_lower(plain.substr(0, d));
      a.extension = plain.substr(d + 1);
    }
    return a;
  }
};

// The state of one resolve().
struct Resolver::Walk {
  std::vector<Target> out;
  std::unordered_set<std::string> seen;  // dedupe keys of `out`
  std::vector<std::string> chain;        // alias keys being expanded, outermost first
  std::vector<std::string> includes;     // :include: files being read
  std::size_t steps = 0;
  bool overflow = false;
  bool no_catch_all = false;  // inside a catch_all's own resolution

  // False once the walk must stop (too many targets or lookups).
  bool step() {
    if (!overflow && ++steps > kMaxSteps) overflow = true;
    return !overflow;
  }

  void add(Target t) {
    std::string key;
    switch (t.kind) {
      case Target::Kind::Local: key = "L" + to_lower(t.address); break;
      case Target::Kind::Remote: key = "R" + t.address; break;
      case Target::Kind::Command: key = "C" + t.command; break;
      case Target::Kind::File: key = "F" + t.path; break;
      case Target::Kind::Error: key = "E" + t.status + t.error; break;
    }
    if (!seen.insert(std::move(key)).second) return;
    out.push_back(std::move(t));
    if (out.size() > kMaxTargets) overflow = true;
  }

  // A target produced on behalf of local address `ctx` (may be null).
  static Target made_for(Target::Kind kind, const Addr* ctx) {
    Target t;
    t.kind = kind;
    if (ctx) {
      t.address = ctx->display();
      t.user = ctx->user;
      t.extension = ctx->extension;
      t.domain = ctx->domain;
    }
    return t;
  }

  void error(const Addr* ctx, std::string status, std::string text) {
    Target t = made_for(Target::Kind::Error, ctx);
    t.status = std::move(status);
    t.error = std::move(text);
    add(std::move(t));
  }
};

Resolver::Resolver(const config::Config& cfg) : cfg_(cfg) {
  for (const auto& [key, targets] : cfg_.aliases.map) aliases_.emplace_back(to_lower(key), targets);
  map_entries_ = aliases_.size();
  reindex();
}

void Resolver::reindex() {
  index_.clear();
  for (std::size_t i = 0; i < aliases_.size(); ++i) index_.emplace(aliases_[i].first, i);
}

Status Resolver::load_aliases_file() {
  aliases_.resize(map_entries_);
  const std::string& path = cfg_.aliases.file;
  if (path.empty()) {
    reindex();
    return Status::Ok();
  }
  auto text = read_bounded(path, kMaxAliasesFileSize);
  if (!text) {
    reindex();
    return Error{"aliases.file: " + text.error()};
  }
  std::vector<AliasParseError> errors;
  for (AliasEntry& e : parse_aliases(*text, &errors))
    aliases_.emplace_back(std::move(e.name), std::move(e.targets));
  reindex();
  if (errors.empty()) return Status::Ok();

  std::vector<std::string> lines;
  for (std::size_t i = 0; i < errors.size() && i < kMaxReportedErrors; ++i)
    lines.push_back(path + ":" + std::to_string(errors[i].line) + ": " + errors[i].reason);
  std::string msg = join(lines, "; ");
  if (errors.size() > kMaxReportedErrors)
    msg += " (and " + std::to_string(errors.size() - kMaxReportedErrors) + " more)";
  return Error{msg};
}

bool Resolver::is_local_domain(std::string_view domain) const {
  return cfg_.find_domain(domain) != nullptr;
}

const std::vector<std::string>* Resolver::find_alias(const Addr& a, std::string* key) const {
  auto try_key = [&](const std::string& k) -> const std::vector<std::string>* {
    auto it = index_.find(k);
    if (it == index_.end()) return nullptr;
    *key = k.find('@') == std::string::npos ? k + "@" + a.domain : k;
    return &aliases_[it->second].second;
  };
  if (auto* t = try_key(a.key())) return t;
  if (auto* t = try_key(a.local)) return t;
  if (a.user == a.local) return nullptr;
  if (auto* t = try_key(a.stripped_key())) return t;
  return try_key(a.user);
}

void Resolver::expand_address(const Addr& a, int depth, bool use_alias, Walk& w) const {
  if (!w.step()) return;
  if (!is_local_domain(a.domain)) {
    Target t;
    t.kind = Target::Kind::Remote;
    t.address = a.display();
    t.domain = a.domain;
    w.add(std::move(t));
    return;
  }
  std::string key;
  const std::vector<std::string>* targets = use_alias ? find_alias(a, &key) : nullptr;
  if (!targets) return deliver_mailbox(a, depth, w);

  if (std::find(w.chain.begin(), w.chain.end(), key) != w.chain.end())
    return w.error(&a, "5.4.6", "alias loop: " + join(w.chain, " -> ") + " -> " + key);
  if (depth >= kMaxDepth)
    return w.error(&a, "5.4.6", "aliases nested deeper than " + std::to_string(kMaxDepth) +
                                    " levels at " + key);
  w.chain.push_back(key);
  for (const std::string& t : *targets) expand_target(t, a, depth + 1, false, w);
  w.chain.pop_back();
}

// The mailbox of a local address, aliases no longer considered.
void Resolver::deliver_mailbox(const Addr& a, int depth, Walk& w) const {
  const config::Domain* d = cfg_.find_domain(a.domain);
  if (!d) return w.error(&a, "4.3.0", "no local domain " + a.domain + " for " + a.display());

  auto local = [&](const std::string& user, const std::string& extension) {
    Target t = Walk::made_for(Target::Kind::Local, &a);
    t.user = user;
    t.extension = extension;
    w.add(std::move(t));
  };
  auto listed = [&](const std::string& user) {
    return std::any_of(d->users->begin(), d->users->end(),
                       [&](const std::string& u) { return iequals(u, user); });
  };
  if (!d->users || a.user == "postmaster" || a.local == "postmaster") return local(a.user, a.extension);
  if (a.user != a.local && listed(a.local)) return local(a.local, "");
  if (listed(a.user)) return local(a.user, a.extension);
  if (!d->catch_all.empty() && !w.no_catch_all) {
    w.no_catch_all = true;
    expand_target(d->catch_all, a, depth + 1, false, w);
    w.no_catch_all = false;
    return;
  }
  w.error(&a, "5.1.1", "unknown user " + a.display());
}

void Resolver::expand_target(std::string_view t, const Addr& ctx, int depth, bool from_include,
                             Walk& w) const {
  if (!w.step()) return;
  t = trim(t);
  if (t.empty()) return;
  if (t.front() == '|' || t.front() == '/') {
    if (from_include)
      return w.error(&ctx, "5.7.1",
                     "commands and files are not allowed in :include: lists: " + std::string(t));
    if (t.front() == '/') {
      Target f = Walk::made_for(Target::Kind::File, &ctx);
      f.path = std::string(t);
      return w.add(std::move(f));
    }
    std::string_view cmd = trim(t.substr(1));
    if (cmd.empty()) return w.error(&ctx, "4.3.0", "empty command in the aliases of " + ctx.display());
    Target c = Walk::made_for(Target::Kind::Command, &ctx);
    c.command = std::string(cmd);
    return w.add(std::move(c));
  }
  if (istarts_with(t, ":include:")) return expand_include(trim(t.substr(9)), ctx, depth, w);

  bool use_alias = true;
  if (t.front() == '\\') {
    t.remove_prefix(1);
    use_alias = false;
  }
  auto a = Addr::parse(t, ctx.domain, cfg_.recipient_delimiter);
  if (!a) {
    return w.error(&ctx, "4.3.0",
                   "bad alias target \"" + std::string(t) + "\" for " + ctx.display());
  }
  // Naming oneself means "my own mailbox too", not a loop.
  if (a->key() == ctx.key() || a->key() == ctx.stripped_key()) return deliver_mailbox(ctx, depth, w);
  expand_address(*a, depth, use_alias, w);
}

void Resolver::expand_include(std::string_view path_view, const Addr& ctx, int depth,
                              Walk& w) const {
  const std::string path(path_view);
  if (path.empty() || path.front() != '/')
    return w.error(&ctx, "4.3.0", ":include: needs an absolute path, got \"" + path + "\"");
  if (std::find(w.includes.begin(), w.includes.end(), path) != w.includes.end())
    return w.error(&ctx, "5.4.6", ":include: loop: " + join(w.includes, " -> ") + " -> " + path);
  if (depth >= kMaxDepth)
    return w.error(&ctx, "5.4.6", "aliases nested deeper than " + std::to_string(kMaxDepth) +
                                      " levels at :include:" + path);
  auto text = read_bounded(path, kMaxIncludeSize);
  if (!text) return w.error(&ctx, "4.3.0", ":include: " + text.error());

  w.includes.push_back(path);
  for (const std::string& t : parse_include_list(*text)) expand_target(t, ctx, depth + 1, true, w);
  w.includes.pop_back();
}

std::vector<Target> Resolver::resolve(std::string_view address) const {
  Walk w;
  const std::string_view s = strip_path(address);
  std::string shown(s);
  if (iequals(s, "postmaster")) {
    if (!cfg_.domains.empty()) {
      shown = "postmaster@" + cfg_.domains.front().name;
      if (auto a = Addr::parse(shown, "", cfg_.recipient_delimiter)) expand_address(*a, 0, true, w);
    } else if (auto a = Addr::parse("postmaster", cfg_.hostname, "")) {
      // No local domain: only an alias can take it (targets without '@'
      // land at hostname, which is not local, so they go out as Remote).
      std::string key;
      if (const auto* targets = find_alias(*a, &key)) {
        w.chain.push_back(key);
        for (const std::string& t : *targets) expand_target(t, *a, 1, false, w);
      }
    }
    if (w.out.empty() && cfg_.domains.empty())
      w.error(nullptr, "4.3.0",
              "no local domain for <postmaster>: add one to domains or alias postmaster");
  } else if (auto a = Addr::parse(s, "", cfg_.recipient_delimiter)) {
    expand_address(*a, 0, true, w);
  } else {
    w.error(nullptr, "5.1.3", "bad recipient address \"" + shown + "\"");
  }

  if (w.overflow) {
    Target t;
    t.kind = Target::Kind::Error;
    t.status = "5.3.0";
    t.error = "alias expansion of " + shown + " exceeds " + std::to_string(kMaxTargets) + " targets";
    return {t};
  }
  if (w.out.empty()) w.error(nullptr, "5.1.1", shown + " expands to no recipients");
  return std::move(w.out);
}

bool Resolver::local_exists(std::string_view address) const {
  const std::string_view s = strip_path(address);
  if (!iequals(s, "postmaster")) {
    auto a = Addr::parse(s, "", cfg_.recipient_delimiter);
    if (!a || !is_local_domain(a->domain)) return false;
  }
  const std::vector<Target> targets = resolve(s);
  return std::any_of(targets.begin(), targets.end(),
                     [](const Target& t) { return !t.is_error() || t.is_temporary_error(); });
}

}  // namespace petrel::queue
