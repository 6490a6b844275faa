// The aliases(5) file format: pure parsing, no I/O (see resolver.h).
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/strings.h"
#include "petrel/queue/resolver.h"

namespace petrel::queue {
namespace {

bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

// Index just past the quote closing the one at `open`, or npos when it is
// never closed. A backslash inside quotes escapes the next character.
std::size_t skip_quoted(std::string_view s, std::size_t open) {
  for (std::size_t i = open + 1; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// First of `chars` outside quotes; npos when absent. *unterminated is set
// when a quote is left open (then everything after it is inside the quote).
std::size_t find_unquoted(std::string_view s, std::string_view chars, bool* unterminated) {
  *unterminated = false;
  for (std::size_t i = 0; i < s.size();) {
    if (chars.find(s[i]) != std::string_view::npos) return i;
    if (s[i] == '"') {
      std::size_t end = skip_quoted(s, i);
      if (end == std::string_view::npos) {
        *unterminated = true;
        return std::string_view::npos;
      }
      i = end;
    } else {
      ++i;
    }
  }
  return std::string_view::npos;
}

// "\"|cmd --x\"" -> "|cmd --x"; anything not wholly quoted is kept as
// written (so "\"a b\"@example.org" stays an address with a quoted local part).
std::string unquote_whole(std::string_view s) {
  if (s.size() < 2 || s.front() != '"' || skip_quoted(s, 0) != s.size()) return std::string(s);
  std::string out;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    if (s[i] == '\\' && i + 2 < s.size()) ++i;
    out += s[i];
  }
  return out;
}

// Splits "a, \"b, c\", d" at unquoted commas and newlines (a continuation
// line starts a new target even without a comma before it); empty elements
// are dropped (stray and trailing commas are common). False when a quote is
// never closed.
bool split_targets(std::string_view s, std::vector<std::string>* out) {
  while (true) {
    bool open = false;
    std::size_t comma = find_unquoted(s, ",\n", &open);
    if (open) return false;
    std::string_view item = trim(s.substr(0, comma));
    if (!item.empty()) out->push_back(unquote_whole(item));
    if (comma == std::string_view::npos) return true;
    s.remove_prefix(comma + 1);
  }
}

// Calls fn(line, line_number) for each line, without its "\n" or "\r\n".
template <typename Fn>
void for_each_line(std::string_view text, Fn fn) {
  int number = 0;
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    while (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line, ++number);
  }
}

bool skippable(std::string_view line) {
  std::string_view t = trim(line);
  return t.empty() || t.front() == '#';
}

void parse_entry(std::string_view text, int line, std::vector<AliasEntry>* out,
                 std::vector<AliasParseError>* errors) {
  auto fail = [&](std::string reason) {
    if (errors) errors->push_back({line, std::move(reason)});
  };
  bool open = false;
  std::size_t colon = find_unquoted(text, ":", &open);
  if (open) return fail("unterminated quote");
  if (colon == std::string_view::npos) return fail("missing ':' after the alias name");

  std::string_view raw_name = trim(text.substr(0, colon));
  std::string name = unquote_whole(raw_name);
  if (name.empty()) return fail("empty alias name");
  if (raw_name.front() != '"') {
    for (char c : raw_name)
      if (is_blank(c)) return fail("an alias name with blanks must be quoted");
  }

  AliasEntry entry;
  entry.name = to_lower(name);
  entry.line = line;
  if (!split_targets(text.substr(colon + 1), &entry.targets)) return fail("unterminated quote");
  if (entry.targets.empty()) return fail("alias \"" + name + "\" has no targets");
  out->push_back(std::move(entry));
}

}  // namespace

std::vector<AliasEntry> parse_aliases(std::string_view text,
                                      std::vector<AliasParseError>* errors) {
  std::vector<AliasEntry> out;
  std::string entry;  // the logical line being collected
  int entry_line = 0;
  enum class State { None, Entry, Orphan } state = State::None;

  auto flush = [&] {
    if (state == State::Entry) parse_entry(entry, entry_line, &out, errors);
    entry.clear();
    state = State::None;
  };

  for_each_line(text, [&](std::string_view line, int number) {
    if (skippable(line)) return;
    if (is_blank(line.front())) {
      if (state == State::Entry) {
        entry += '\n';
        entry += trim(line);
      } else if (state == State::None) {
        if (errors) errors->push_back({number, "continuation line without an alias above it"});
        state = State::Orphan;  // its further continuation lines go with it, unreported
      }
      return;
    }
    flush();
    entry.assign(line);
    entry_line = number;
    state = State::Entry;
  });
  flush();
  return out;
}

std::vector<std::string> parse_include_list(std::string_view text) {
  std::vector<std::string> out;
  for_each_line(text, [&](std::string_view line, int) {
    if (skippable(line)) return;
    // An unterminated quote: keep the rest of the line as written; the
    // resolver then reports it as a malformed target instead of losing it.
    std::vector<std::string> items;
    if (split_targets(line, &items)) {
      for (std::string& t : items) out.push_back(std::move(t));
    } else {
      out.emplace_back(trim(line));
    }
  });
  return out;
}

}  // namespace petrel::queue
