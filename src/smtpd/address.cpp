#include "petrel/smtpd/address.h"

#include <arpa/inet.h>

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace petrel::smtpd {
namespace {

constexpr size_t kMaxLocal = 64;
constexpr size_t kMaxDomain = 255;
constexpr size_t kMaxPath = 256;

bool is_atext(unsigned char c) {
  if (std::isalnum(c)) return true;
  return std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr && c != 0;
}

// Length of a well-formed UTF-8 sequence starting at s[i], or 0.
size_t utf8_len(std::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
  return len;
}

Error syntax() { return Error{"syntax"}; }
Error utf8_error() { return Error{"utf8"}; }

// Dot-string: atoms separated by single dots.
bool valid_dot_string(std::string_view s, bool allow_utf8, bool* saw_utf8) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  bool prev_dot = false;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '.') {
      if (prev_dot) return false;
      prev_dot = true;
      ++i;
      continue;
    }
    prev_dot = false;
    if (c < 0x80) {
      if (!is_atext(c)) return false;
      ++i;
      continue;
    }
    size_t n = utf8_len(s, i);
    if (n == 0) return false;
    *saw_utf8 = true;
    if (!allow_utf8) return true;  // reported as utf8 by the caller
    i += n;
  }
  return true;
}

bool valid_quoted(std::string_view s, bool allow_utf8, bool* saw_utf8) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return false;
  for (size_t i = 1; i + 1 < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      if (i + 2 >= s.size()) return false;
      unsigned char q = static_cast<unsigned char>(s[i + 1]);
      if (q < 32 || q > 126) return false;
      i += 2;
      continue;
    }
    if (c >= 0x80) {
      size_t n = utf8_len(s, i);
      if (n == 0) return false;
      *saw_utf8 = true;
      if (!allow_utf8) return true;
      i += n;
      continue;
    }
    if (c < 32 || c == '"' || c > 126) return false;
    ++i;
  }
  return true;
}

bool valid_address_literal(std::string_view s) {
  if (s.size() < 3 || s.front() != '[' || s.back() != ']') return false;
  std::string inner(s.substr(1, s.size() - 2));
  unsigned char buf[16];
  if (inner.size() > 5 && strncasecmp(inner.c_str(), "IPv6:", 5) == 0)
    return inet_pton(AF_INET6, inner.c_str() + 5, buf) == 1;
  // Only dotted quads: inet_pton rejects octal/short forms.
  return inet_pton(AF_INET, inner.c_str(), buf) == 1;
}

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// Finds the '@' separating local part and domain, skipping a quoted local part.
size_t find_at(std::string_view s) {
  if (!s.empty() && s.front() == '"') {
    for (size_t i = 1; i < s.size(); ++i) {
      if (s[i] == '\\') {
        ++i;
        continue;
      }
      if (s[i] == '"') return s.find('@', i + 1) == i + 1 ? i + 1 : std::string_view::npos;
    }
    return std::string_view::npos;
  }
  return s.rfind('@');
}

}  // namespace

std::string Address::str() const {
  if (null) return "";
  if (domain.empty()) return local;
  return local + "@" + domain;
}

bool valid_domain(std::string_view d, bool allow_utf8) {
  if (d.empty() || d.size() > kMaxDomain) return false;
  if (d.front() == '[') return valid_address_literal(d);
  size_t label_len = 0;
  char prev = '.';
  for (size_t i = 0; i < d.size();) {
    unsigned char c = static_cast<unsigned char>(d[i]);
    if (c == '.') {
      if (label_len == 0 || prev == '-') return false;
      label_len = 0;
      prev = '.';
      ++i;
      continue;
    }
    if (c >= 0x80) {
      size_t n = allow_utf8 ? utf8_len(d, i) : 0;
      if (n == 0) return false;
      i += n;
      label_len += n;
      prev = 'a';
      continue;
    }
    if (!(std::isalnum(c) || c == '-')) return false;
    if (c == '-' && label_len == 0) return false;
    if (++label_len > 63) return false;
    prev = static_cast<char>(c);
    ++i;
  }
  return label_len > 0 && prev != '-';
}

Result<Address> parse_mailbox(std::string_view s, bool allow_utf8) {
  size_t at = find_at(s);
  if (at == std::string_view::npos || at == 0 || at + 1 >= s.size()) return syntax();
  std::string_view local = s.substr(0, at);
  std::string_view domain = s.substr(at + 1);
  if (local.size() > kMaxLocal) return syntax();
  bool saw_utf8 = false;
  bool ok = local.front() == '"' ? valid_quoted(local, allow_utf8, &saw_utf8)
                                 : valid_dot_string(local, allow_utf8, &saw_utf8);
  if (saw_utf8 && !allow_utf8) return utf8_error();
  if (!ok) return syntax();
  for (unsigned char c : domain)
    if (c >= 0x80) saw_utf8 = true;
  if (saw_utf8 && !allow_utf8) return utf8_error();
  if (!valid_domain(domain, allow_utf8)) return syntax();
  Address a;
  a.local = std::string(local);
  a.domain = lower_ascii(domain);
  a.utf8 = saw_utf8;
  return a;
}

Result<Address> parse_path(std::string_view text, PathKind kind, bool allow_utf8,
                           std::string_view* rest) {
  if (text.empty() || text.front() != '<') return syntax();
  // Find the closing '>' outside a quoted string.
  size_t end = std::string_view::npos;
  bool quoted = false;
  for (size_t i = 1; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '\\') ++i;
      else if (c == '"') quoted = false;
      continue;
    }
    if (c == '"') quoted = true;
    else if (c == '>') {
      end = i;
      break;
    }
  }
  if (end == std::string_view::npos) return syntax();
  std::string_view inner = text.substr(1, end - 1);
  if (rest) *rest = text.substr(end + 1);
  if (inner.size() + 2 > kMaxPath) return syntax();  // the limit counts the brackets

  if (inner.empty()) {
    if (kind != PathKind::ReversePath) return syntax();
    Address a;
    a.null = true;
    return a;
  }
  // Source route: "@a,@b:mailbox" — obsolete, accepted and ignored (RFC 5321 §4.1.2).
  if (inner.front() == '@') {
    size_t colon = inner.find(':');
    if (colon == std::string_view::npos) return syntax();
    std::string_view route = inner.substr(0, colon);
    size_t pos = 0;
    while (pos < route.size()) {
      if (route[pos] != '@') return syntax();
      size_t comma = route.find(',', pos);
      std::string_view dom = route.substr(pos + 1, comma == std::string_view::npos ? std::string_view::npos
                                                                                   : comma - pos - 1);
      if (!valid_domain(dom, allow_utf8)) return syntax();
      if (comma == std::string_view::npos) break;
      pos = comma + 1;
    }
    inner = inner.substr(colon + 1);
  }
  if (kind == PathKind::ForwardPath && inner.size() == 10 &&
      strncasecmp(inner.data(), "postmaster", 10) == 0) {
    Address a;
    a.local = "postmaster";
    return a;
  }
  return parse_mailbox(inner, allow_utf8);
}

std::string unquote_local(std::string_view local) {
  if (local.size() < 2 || local.front() != '"') return std::string(local);
  std::string out;
  for (size_t i = 1; i + 1 < local.size(); ++i) {
    if (local[i] == '\\' && i + 2 < local.size()) ++i;
    out += local[i];
  }
  return out;
}

}  // namespace petrel::smtpd
