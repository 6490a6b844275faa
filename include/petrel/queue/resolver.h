// Address resolution (SPEC §3 `domains`, `recipient_delimiter`, `aliases`;
// §7 "Aliases"): turns one envelope recipient into the final targets the
// queue runner delivers to, and answers "does this recipient exist?" for RCPT
// verification in the SMTP session. Both use this one resolver, so what is
// accepted at RCPT is what gets delivered.
//
// Rules:
// - Domains match case-insensitively (a trailing dot is ignored); local parts
//   are compared lower-cased and unquoted ("\"a b\"@dom" looks up "a b").
// - recipient_delimiter is a set of characters: the first of them found in
//   the local part (not at its start) splits "alice+tag" into user "alice"
//   and extension "tag".
// - Aliases apply to local domains only. Keys without '@' match that local
//   part in every local domain; keys with '@' match the full address. A
//   target without '@' stays in the domain of the address being resolved.
//   Lookup order for "user+ext@dom": the full address, "user+ext", then
//   (extension stripped) "user@dom", "user". When a key appears more than
//   once, the first wins: aliases.map before aliases.file, then file order.
//   The extension is not carried over to alias targets.
// - Targets: addresses (resolved again, recursively), "|command" (run by
//   /bin/sh -c, as in /etc/aliases), "/path" (appended in mbox format),
//   ":include:/path" (one target per line/comma, comments allowed),
//   "\user" (that mailbox, without alias lookup, as in sendmail).
// - An alias that names itself (alice: alice, alice@elsewhere) delivers to
//   the user itself, as sendmail and Postfix do. A longer loop (a: b, b: a),
//   an :include: file that includes itself, or more than 20 levels is an
//   error (5.4.6).
// - A local address with no alias: its user must be in the domain's `users`
//   (when given; compared case-insensitively), else `catch_all` (a local part
//   or address, itself resolved with aliases but never falling back to a
//   catch_all again) receives it, else it is unknown (5.1.1). "postmaster"
//   always exists.
// - The bare recipient "postmaster" (RFC 5321 <postmaster>) is postmaster in
//   the first local domain. With no local domain, only an alias for
//   "postmaster" (or "postmaster@HOSTNAME") can take it; without one it is a
//   4.3.0 Error (accepted, deferred, visible in the log).
// - Remote addresses resolve to themselves (kind Remote).
// - Configuration problems found while resolving are 4.3.0 Errors, so the
//   mail waits for the admin instead of bouncing: an unreadable, missing,
//   non-regular or too large (> 1 MiB) :include: file, a relative include
//   path, a malformed target ("bob@", "|"). "|command" and "/file" inside an
//   :include: file are refused with 5.7.1 (Postfix's default: list files are
//   often edited by people who may not run commands as petrel). An expansion
//   beyond 1000 targets yields a single 5.3.0 Error (nothing half-delivered).
//   An alias that expands to nothing (empty :include:) is 5.1.1.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/config/config.h"

namespace petrel::queue {

struct Target {
  enum class Kind { Local, Remote, Command, File, Error };
  Kind kind = Kind::Local;
  // Local/Remote: final address (local part as written, domain lower-case).
  // Command/File/Error: the local address whose alias produced the target
  // (for the pipe's environment and for logs); "" when there is none.
  std::string address;
  std::string user;       // Local: local part without extension, lower-cased, unquoted
  std::string extension;  // Local: the extension ("tag" of alice+tag) as written, "" when none
  std::string domain;     // lower-cased domain of `address`
  std::string command;    // Command: the shell command line (after '|')
  std::string path;       // File: absolute path
  std::string status;     // Error: enhanced status: "5.1.1", "5.4.6", "4.3.0", ...
  std::string error;      // Error: human text, one line

  bool is_error() const { return kind == Kind::Error; }
  // An Error that may go away by itself or by a config fix (4.x.x).
  bool is_temporary_error() const { return kind == Kind::Error && !status.empty() && status[0] == '4'; }
};

// One entry of an aliases file: "name: target, target".
struct AliasEntry {
  std::string name;                  // lower-cased key, unquoted
  std::vector<std::string> targets;  // as written, unquoted when wholly quoted; never empty
  int line = 0;                      // first line of the entry, 1-based
};

struct AliasParseError {
  int line = 0;
  std::string reason;
};

// Parses the classic aliases(5) format: "name: t1, t2". A line starting with
// a blank continues the entry above; lines whose first non-blank character
// is '#' and blank lines are skipped (also between continuation lines); CRLF
// line ends are accepted. A wholly "quoted" name or target may hold commas,
// colons and blanks ("|/usr/bin/x --y"; \" and \\ inside). Entries with no
// ':', an empty or unquoted-blank name, no targets or an unterminated quote
// are reported in *errors (may be null) and skipped. Pure, never fails on any
// input: fuzzable.
std::vector<AliasEntry> parse_aliases(std::string_view text, std::vector<AliasParseError>* errors);

// Parses an :include: file: targets separated by commas and/or newlines,
// '#' comment lines, blank lines, quotes as in parse_aliases. Pure.
std::vector<std::string> parse_include_list(std::string_view text);

class Resolver {
 public:
  // Takes aliases.map now; `cfg` must outlive the resolver. Call
  // load_aliases_file() after construction (and again on SIGHUP) to add
  // aliases.file: until then only the map is used.
  explicit Resolver(const config::Config& cfg);

  // Reads aliases.file (and nothing else) now, replacing what an earlier
  // call read; no file configured is Ok. A missing, unreadable or too large
  // (> 64 MiB) file is reported and leaves the map-only aliases. Bad lines
  // are skipped: the other entries are used and the returned error names
  // each bad line as "path:line: reason".
  Status load_aliases_file();

  // Final targets of one recipient ("local@domain", or the bare
  // "postmaster"; surrounding <> are ignored), in alias order, duplicates
  // removed. Never empty: an unknown user gives one Error target.
  std::vector<Target> resolve(std::string_view address) const;

  // RCPT verification: true when the address is local (or the bare
  // "postmaster") and resolve() gives at least one target that is not a
  // permanent (5.x.x) Error. Temporary errors (a missing :include: file)
  // count as existing, so the mail is accepted and deferred at delivery
  // rather than refused for good. Remote addresses: false, check
  // is_local_domain() first.
  bool local_exists(std::string_view address) const;
  bool is_local_domain(std::string_view domain) const;

  static constexpr int kMaxDepth = 20;
  static constexpr std::size_t kMaxTargets = 1000;

 private:
  struct Walk;
  struct Addr;

  const std::vector<std::string>* find_alias(const Addr& a, std::string* key) const;
  void expand_address(const Addr& a, int depth, bool use_alias, Walk& w) const;
  void expand_target(std::string_view t, const Addr& ctx, int depth, bool from_include,
                     Walk& w) const;
  void expand_include(std::string_view path, const Addr& ctx, int depth, Walk& w) const;
  void deliver_mailbox(const Addr& a, int depth, Walk& w) const;
  void reindex();

  const config::Config& cfg_;
  // key (lower-case local part or address) -> targets, file entries after map entries.
  std::vector<std::pair<std::string, std::vector<std::string>>> aliases_;
  std::size_t map_entries_ = 0;                        // how many of aliases_ came from the map
  std::unordered_map<std::string, std::size_t> index_;  // key -> first entry in aliases_
};

}  // namespace petrel::queue
