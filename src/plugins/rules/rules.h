// The rules plugin's engine: a rules file parsed and compiled into PCRE2
// (JIT) patterns once, in the master, and a scorer that runs them over one
// message in a worker. The file format is documented in petrel-filters(7)
// and etc/rules.conf.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mime.h"

namespace petrel::rules {

enum class RuleKind { Header, Body, Uri, Phrase, Full };

struct Rule {
  RuleKind kind = RuleKind::Body;
  std::string name;
  double score = 0;
  std::string header;   // Header: the field name, or "ALL" for the whole header
  bool negate = false;  // Header: !~ (hits when no occurrence matches)
  std::string source;   // the pattern or phrase as written, for messages
  pcre2_code* code = nullptr;
};

// A compiled rule set. Immutable after parse(); shared copy-on-write by the
// workers.
class RuleSet {
 public:
  RuleSet() = default;
  RuleSet(const RuleSet&) = delete;
  RuleSet& operator=(const RuleSet&) = delete;
  ~RuleSet();

  // Parses and compiles `text`; `origin` names it in errors ("file:line: ...").
  // Returns false with *error set on the first problem.
  bool parse(std::string_view text, const std::string& origin, std::string* error);

  const std::vector<Rule>& rules() const { return rules_; }

 private:
  bool add_line(std::string_view line, const std::string& where, std::string* error);
  std::vector<Rule> rules_;
};

// Per-worker matching resources (PCRE2 match data, JIT stack, limits).
class Matcher {
 public:
  Matcher();
  Matcher(const Matcher&) = delete;
  Matcher& operator=(const Matcher&) = delete;
  ~Matcher();
  bool ok() const { return md_ && mctx_; }
  bool match(const pcre2_code* code, std::string_view subject);

 private:
  pcre2_match_data* md_ = nullptr;
  pcre2_match_context* mctx_ = nullptr;
  pcre2_jit_stack* stack_ = nullptr;
};

struct Score {
  double total = 0;
  std::vector<std::string> hits;  // rule names, in file order
};

// Scores a parsed message: every rule counts at most once.
Score score(const RuleSet& rules, const ParsedMessage& message, Matcher& matcher);

// The ruleset compiled into the plugin (also shipped as etc/rules.conf).
extern const char* const kDefaultRules;

}  // namespace petrel::rules
