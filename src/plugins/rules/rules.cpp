#include "rules.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

namespace petrel::rules {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Takes the next whitespace-separated word off the front of *s.
std::string_view word(std::string_view* s) {
  *s = trim(*s);
  std::size_t i = 0;
  while (i < s->size() && !std::isspace(static_cast<unsigned char>((*s)[i]))) ++i;
  const std::string_view w = s->substr(0, i);
  s->remove_prefix(i);
  return w;
}

bool valid_rule_name(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

bool valid_field_name(std::string_view n) {
  if (n.empty()) return false;
  for (char c : n)
    if (c <= 32 || c >= 127 || c == ':') return false;
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

// "/re/flags" at the front of *s: the pattern and PCRE2 options.
bool take_regex(std::string_view* s, std::string* pattern, uint32_t* options, std::string* error) {
  *s = trim(*s);
  if (s->empty() || s->front() != '/') {
    *error = "expected /regex/";
    return false;
  }
  std::size_t i = 1;
  pattern->clear();
  for (; i < s->size(); ++i) {
    const char c = (*s)[i];
    if (c == '\\' && i + 1 < s->size()) {
      // "\/" is a literal slash; every other escape is PCRE2's.
      if ((*s)[i + 1] != '/') *pattern += c;
      *pattern += (*s)[++i];
      continue;
    }
    if (c == '/') break;
    *pattern += c;
  }
  if (i >= s->size()) {
    *error = "unterminated /regex/";
    return false;
  }
  ++i;
  *options = 0;
  for (; i < s->size() && !std::isspace(static_cast<unsigned char>((*s)[i])); ++i) {
    switch ((*s)[i]) {
      case 'i':
        *options |= PCRE2_CASELESS;
        break;
      case 'm':
        *options |= PCRE2_MULTILINE;
        break;
      case 's':
        *options |= PCRE2_DOTALL;
        break;
      case 'x':
        *options |= PCRE2_EXTENDED;
        break;
      default:
        *error = std::string("unknown regex flag '") + (*s)[i] + "' (i, m, s and x are)";
        return false;
    }
  }
  s->remove_prefix(i);
  return true;
}

// "\"text\"" at the front of *s, with \" and \\ escapes.
bool take_quoted(std::string_view* s, std::string* out, std::string* error) {
  *s = trim(*s);
  if (s->empty() || s->front() != '"') {
    *error = "expected \"a phrase\"";
    return false;
  }
  out->clear();
  std::size_t i = 1;
  for (; i < s->size() && (*s)[i] != '"'; ++i) {
    if ((*s)[i] == '\\' && i + 1 < s->size()) ++i;
    *out += (*s)[i];
  }
  if (i >= s->size()) {
    *error = "unterminated \"phrase\"";
    return false;
  }
  s->remove_prefix(i + 1);
  return true;
}

bool take_score(std::string_view* s, double* score, std::string* error) {
  const std::string w(word(s));
  if (w.empty()) {
    *error = "missing score";
    return false;
  }
  char* end = nullptr;
  *score = std::strtod(w.c_str(), &end);
  if (end != w.c_str() + w.size() || !std::isfinite(*score)) {
    *error = "bad score \"" + w + "\"";
    return false;
  }
  return true;
}

// A phrase matches whatever whitespace separates its words.
std::string normalize_phrase(std::string_view p) {
  std::string out;
  bool space = true;
  for (char c : p) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!space) out += ' ';
      space = true;
    } else {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      space = false;
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

pcre2_code* compile(const std::string& pattern, uint32_t options, std::string* error) {
  int code = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* re =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    options | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &code, &offset, nullptr);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof msg);
    *error = "regex error at offset " + std::to_string(offset) + ": " +
             reinterpret_cast<const char*>(msg);
    return nullptr;
  }
  // Without JIT (unsupported CPU) the interpreter still works, only slower.
  (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  return re;
}

}  // namespace

RuleSet::~RuleSet() {
  for (Rule& r : rules_) pcre2_code_free(r.code);
}

bool RuleSet::parse(std::string_view text, const std::string& origin, std::string* error) {
  std::size_t pos = 0;
  int lineno = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string_view line = trim(text.substr(pos, nl - pos));
    pos = nl + 1;
    ++lineno;
    if (line.empty() || line.front() == '#') continue;
    if (!add_line(line, origin + ":" + std::to_string(lineno), error)) return false;
  }
  return true;
}

bool RuleSet::add_line(std::string_view line, const std::string& where, std::string* error) {
  std::string why;
  auto fail = [&](const std::string& what) {
    *error = where + ": " + what;
    return false;
  };
  const std::string_view kind = word(&line);
  Rule r;
  if (kind == "header")
    r.kind = RuleKind::Header;
  else if (kind == "body")
    r.kind = RuleKind::Body;
  else if (kind == "uri")
    r.kind = RuleKind::Uri;
  else if (kind == "phrase")
    r.kind = RuleKind::Phrase;
  else if (kind == "full")
    r.kind = RuleKind::Full;
  else
    return fail("unknown rule type \"" + std::string(kind) +
                "\" (header, body, uri, phrase, full)");

  r.name = std::string(word(&line));
  if (!valid_rule_name(r.name))
    return fail("bad rule name \"" + r.name + "\" (letters, digits, _)");
  for (const Rule& other : rules_)
    if (other.name == r.name) return fail("duplicate rule name " + r.name);

  std::string pattern;
  uint32_t options = 0;
  if (r.kind == RuleKind::Header) {
    r.header = std::string(word(&line));
    if (!valid_field_name(r.header)) return fail("expected a header field name");
    const std::string_view op = word(&line);
    if (op == "!~")
      r.negate = true;
    else if (op != "=~")
      return fail("expected =~ or !~ after the header name");
  }
  if (r.kind == RuleKind::Phrase) {
    std::string phrase;
    if (!take_quoted(&line, &phrase, &why)) return fail(why);
    pattern = normalize_phrase(phrase);
    if (pattern.empty()) return fail("empty phrase");
    options = PCRE2_LITERAL | PCRE2_CASELESS;
    r.source = "\"" + phrase + "\"";
  } else {
    if (!take_regex(&line, &pattern, &options, &why)) return fail(why);
    r.source = "/" + pattern + "/";
  }
  if (!take_score(&line, &r.score, &why)) return fail(why);
  if (!trim(line).empty())
    return fail("unexpected \"" + std::string(trim(line)) + "\" after the score");
  r.code = compile(pattern, options, &why);
  if (!r.code) return fail("rule " + r.name + ": " + why);
  rules_.push_back(std::move(r));
  return true;
}

Matcher::Matcher() {
  md_ = pcre2_match_data_create(1, nullptr);
  mctx_ = pcre2_match_context_create(nullptr);
  stack_ = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
  if (mctx_) {
    if (stack_) pcre2_jit_stack_assign(mctx_, nullptr, stack_);
    // A pathological pattern or subject costs a bounded amount of work and
    // counts as no match.
    pcre2_set_match_limit(mctx_, 5'000'000);
    pcre2_set_depth_limit(mctx_, 100'000);
  }
}

Matcher::~Matcher() {
  pcre2_match_data_free(md_);
  pcre2_match_context_free(mctx_);
  pcre2_jit_stack_free(stack_);
}

bool Matcher::match(const pcre2_code* code, std::string_view subject) {
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0,
                             0, md_, mctx_);
  return rc >= 0;
}

Score score(const RuleSet& rules, const ParsedMessage& m, Matcher& matcher) {
  Score s;
  for (const Rule& r : rules.rules()) {
    bool hit = false;
    switch (r.kind) {
      case RuleKind::Header:
        if (iequals(r.header, "ALL")) {
          hit = matcher.match(r.code, m.raw_header) != r.negate;
          break;
        }
        {
          bool any = false;
          for (const auto& [name, value] : m.headers) {
            if (iequals(name, r.header) && matcher.match(r.code, value)) {
              any = true;
              break;
            }
          }
          hit = any != r.negate;
        }
        break;
      case RuleKind::Body:
        hit = matcher.match(r.code, m.body);
        break;
      case RuleKind::Phrase:
        hit = matcher.match(r.code, m.phrase_text);
        break;
      case RuleKind::Full:
        hit = matcher.match(r.code, m.raw);
        break;
      case RuleKind::Uri:
        for (const std::string& u : m.uris) {
          if (matcher.match(r.code, u)) {
            hit = true;
            break;
          }
        }
        break;
    }
    if (hit) {
      s.total += r.score;
      s.hits.push_back(r.name);
    }
  }
  return s;
}

}  // namespace petrel::rules
