#include "mime.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <iterator>
#include <set>

namespace petrel::rules {

namespace {

constexpr int kMaxDepth = 8;
constexpr std::size_t kMaxParts = 200;
constexpr std::size_t kMaxUris = 1000;
constexpr std::size_t kMaxUriLength = 2048;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

bool istarts(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp == 0 || cp > 0x10FFFF) cp = 0xFFFD;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// A MIME entity: its header fields (lower-case names, unfolded values) and
// its body.
struct Entity {
  std::vector<std::pair<std::string, std::string>> fields;
  std::string_view header;
  std::string_view body;

  std::string get(std::string_view name) const {
    for (const auto& [n, v] : fields)
      if (n == name) return v;
    return {};
  }
};

Entity split_entity(std::string_view text) {
  Entity e;
  std::size_t pos = 0;
  std::string* current = nullptr;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    const std::size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view line =
        text.substr(pos, (nl == std::string_view::npos ? text.size() : nl) - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      e.header = text.substr(0, pos);
      e.body = text.substr(next);
      return e;
    }
    if ((line.front() == ' ' || line.front() == '\t') && current) {
      current->append(line);  // unfold: the line break goes, the whitespace stays
    } else if (const std::size_t colon = line.find(':'); colon != std::string_view::npos) {
      e.fields.emplace_back(to_lower(trim(line.substr(0, colon))),
                            std::string(line.substr(colon + 1)));
      current = &e.fields.back().second;
    } else {
      current = nullptr;
    }
    pos = next;
  }
  e.header = text;
  return e;
}

// "multipart/mixed; boundary=\"x\"" -> type "multipart/mixed", param lookup.
std::string media_type(std::string_view value) {
  return to_lower(trim(value.substr(0, value.find(';'))));
}

std::string media_param(std::string_view value, std::string_view name) {
  std::size_t pos = value.find(';');
  while (pos != std::string_view::npos && pos < value.size()) {
    ++pos;
    const std::size_t eq = value.find('=', pos);
    if (eq == std::string_view::npos) break;
    const std::string_view key = trim(value.substr(pos, eq - pos));
    std::size_t vpos = eq + 1;
    while (vpos < value.size() && (value[vpos] == ' ' || value[vpos] == '\t')) ++vpos;
    std::string v;
    std::size_t end;
    if (vpos < value.size() && value[vpos] == '"') {
      end = vpos + 1;
      while (end < value.size() && value[end] != '"') {
        if (value[end] == '\\' && end + 1 < value.size()) ++end;
        v += value[end++];
      }
      end = value.find(';', end);
    } else {
      end = value.find(';', vpos);
      v = std::string(trim(
          value.substr(vpos, end == std::string_view::npos ? std::string_view::npos : end - vpos)));
    }
    if (iequals(key, name)) return v;
    pos = end;
  }
  return {};
}

std::string decode_body(std::string_view cte, std::string_view body) {
  const std::string enc = to_lower(trim(cte));
  if (enc == "base64") return decode_base64(body);
  if (enc == "quoted-printable") return decode_quoted_printable(body);
  return std::string(body);
}

// The parts of a multipart body between its delimiter lines.
std::vector<std::string_view> split_multipart(std::string_view body, std::string_view boundary) {
  std::vector<std::string_view> parts;
  const std::string delim = "--" + std::string(boundary);
  std::size_t pos = 0;
  std::size_t part_start = std::string_view::npos;
  while (pos <= body.size() && parts.size() < kMaxParts) {
    std::size_t nl = body.find('\n', pos);
    const std::size_t line_end = nl == std::string_view::npos ? body.size() : nl;
    std::string_view line = body.substr(pos, line_end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with(delim)) {
      std::string_view rest = line.substr(delim.size());
      const bool close = rest.starts_with("--");
      if (close) rest.remove_prefix(2);
      if (trim(rest).empty()) {
        if (part_start != std::string_view::npos) {
          // The line break before a delimiter belongs to the delimiter.
          std::size_t end = pos;
          if (end > part_start && body[end - 1] == '\n') --end;
          if (end > part_start && body[end - 1] == '\r') --end;
          parts.push_back(body.substr(part_start, end - part_start));
        }
        if (close) return parts;
        part_start = nl == std::string_view::npos ? body.size() : nl + 1;
      }
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  if (part_start != std::string_view::npos && part_start < body.size())
    parts.push_back(body.substr(part_start));  // unterminated: take what there is
  return parts;
}

struct Walker {
  std::size_t max_scan;
  ParsedMessage* out;
  std::size_t parts = 0;

  void add_text(std::string_view text) {
    if (out->body.size() >= max_scan) return;
    if (!out->body.empty() && out->body.back() != '\n') out->body += '\n';
    out->body.append(text.substr(0, max_scan - out->body.size()));
  }

  void walk(std::string_view text, int depth) {
    if (depth > kMaxDepth || ++parts > kMaxParts || out->body.size() >= max_scan) return;
    const Entity e = split_entity(text);
    const std::string ctype_field = e.get("content-type");
    std::string type = media_type(ctype_field);
    if (type.empty()) type = "text/plain";
    if (type.starts_with("multipart/")) {
      const std::string boundary = media_param(ctype_field, "boundary");
      if (boundary.empty()) {
        add_text(e.body);
        return;
      }
      for (std::string_view part : split_multipart(e.body, boundary)) walk(part, depth + 1);
      return;
    }
    if (type == "message/rfc822") {
      const Entity inner = split_entity(e.body);
      if (std::string s = inner.get("subject"); !s.empty()) add_text(decode_rfc2047(trim(s)));
      walk(e.body, depth + 1);
      return;
    }
    if (!type.starts_with("text/")) return;  // attachments are not text
    // Encoding and markup take room: a few times max_scan of the part is
    // enough to fill max_scan with text, and bounds the work on huge parts.
    const std::string decoded =
        decode_body(e.get("content-transfer-encoding"), e.body.substr(0, 4 * max_scan));
    if (out->uris.size() < kMaxUris)
      extract_uris(std::string_view(decoded).substr(0, max_scan), &out->uris);
    if (type == "text/html") {
      add_text(html_to_text(decoded));
    } else {
      add_text(decoded);
    }
  }
};

const char* kBlockTags[] = {"br",         "p",  "div",   "tr", "li", "ul",    "ol",
                            "table",      "h1", "h2",    "h3", "h4", "h5",    "h6",
                            "blockquote", "hr", "title", "td", "th", "center"};

bool is_block(std::string_view tag) {
  for (const char* t : kBlockTags)
    if (iequals(tag, t)) return true;
  return false;
}

// Decodes one entity at html[pos] ('&'); returns the bytes consumed (0: not
// an entity).
std::size_t decode_entity(std::string_view html, std::size_t pos, std::string& out) {
  const std::size_t semi = html.find(';', pos);
  if (semi == std::string_view::npos || semi - pos > 10) return 0;
  const std::string_view name = html.substr(pos + 1, semi - pos - 1);
  if (name.empty()) return 0;
  if (name[0] == '#') {
    std::uint32_t cp = 0;
    const bool is_hex = name.size() > 1 && (name[1] == 'x' || name[1] == 'X');
    const std::string_view digits = name.substr(is_hex ? 2 : 1);
    if (digits.empty()) return 0;
    for (char c : digits) {
      const int d = is_hex ? hex(c) : (c >= '0' && c <= '9' ? c - '0' : -1);
      if (d < 0) return 0;
      cp = cp * (is_hex ? 16 : 10) + static_cast<std::uint32_t>(d);
      if (cp > 0x10FFFF) return 0;
    }
    append_utf8(out, cp);
    return semi - pos + 1;
  }
  static const std::pair<const char*, std::uint32_t> kNamed[] = {
      {"amp", '&'},     {"lt", '<'},     {"gt", '>'},      {"quot", '"'},
      {"apos", '\''},   {"nbsp", ' '},   {"copy", 0xA9},   {"reg", 0xAE},
      {"euro", 0x20AC}, {"pound", 0xA3}, {"trade", 0x2122}};
  for (const auto& [n, cp] : kNamed) {
    if (iequals(name, n)) {
      append_utf8(out, cp);
      return semi - pos + 1;
    }
  }
  return 0;
}

}  // namespace

std::string decode_base64(std::string_view in) {
  std::string out;
  out.reserve(in.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+')
      v = 62;
    else if (c == '/')
      v = 63;
    else if (c == '=')
      break;
    else
      continue;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

std::string decode_quoted_printable(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c != '=') {
      out += c;
      continue;
    }
    if (i + 1 < in.size() && in[i + 1] == '\n') {  // soft line break
      ++i;
    } else if (i + 2 < in.size() && in[i + 1] == '\r' && in[i + 2] == '\n') {
      i += 2;
    } else if (i + 2 < in.size() && hex(in[i + 1]) >= 0 && hex(in[i + 2]) >= 0) {
      out += static_cast<char>(hex(in[i + 1]) * 16 + hex(in[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string decode_rfc2047(std::string_view v) {
  std::string out;
  std::size_t pos = 0;
  bool last_was_word = false;
  std::string pending_space;
  while (pos < v.size()) {
    const std::size_t start = v.find("=?", pos);
    if (start == std::string_view::npos) break;
    // =?charset?E?text?=
    const std::size_t q1 = v.find('?', start + 2);
    const std::size_t q2 = q1 == std::string_view::npos ? q1 : v.find('?', q1 + 1);
    const std::size_t end = q2 == std::string_view::npos ? q2 : v.find("?=", q2 + 1);
    if (end == std::string_view::npos || q2 != q1 + 2) {
      out.append(v.substr(pos, start + 2 - pos));
      pos = start + 2;
      last_was_word = false;
      continue;
    }
    const std::string_view between = v.substr(pos, start - pos);
    // Whitespace between two encoded words is dropped (RFC 2047 6.2).
    if (!(last_was_word && trim(between).empty())) out.append(between);
    const char enc = lower(v[q1 + 1]);
    const std::string_view text = v.substr(q2 + 1, end - q2 - 1);
    if (enc == 'b') {
      out += decode_base64(text);
    } else if (enc == 'q') {
      std::string t(text);
      std::replace(t.begin(), t.end(), '_', ' ');
      out += decode_quoted_printable(t);
    } else {
      out.append(v.substr(start, end + 2 - start));
    }
    last_was_word = enc == 'b' || enc == 'q';
    pos = end + 2;
  }
  out.append(v.substr(pos));
  return out;
}

std::string html_to_text(std::string_view html) {
  std::string out;
  out.reserve(html.size());
  std::size_t i = 0;
  while (i < html.size()) {
    const char c = html[i];
    if (c == '&') {
      if (const std::size_t n = decode_entity(html, i, out)) {
        i += n;
        continue;
      }
      out += c;
      ++i;
      continue;
    }
    if (c != '<') {
      out += c;
      ++i;
      continue;
    }
    if (html.substr(i, 4) == "<!--") {
      const std::size_t end = html.find("-->", i + 4);
      i = end == std::string_view::npos ? html.size() : end + 3;
      continue;
    }
    std::size_t j = i + 1;
    if (j < html.size() && html[j] == '/') ++j;
    std::size_t k = j;
    while (k < html.size() && std::isalnum(static_cast<unsigned char>(html[k]))) ++k;
    const std::string_view tag = html.substr(j, k - j);
    const std::size_t close = html.find('>', k);
    if (tag.empty() || close == std::string_view::npos) {
      out += c;  // not a tag
      ++i;
      continue;
    }
    i = close + 1;
    if (html[i - 2] != '/' && html[j - 1] != '/' &&
        (iequals(tag, "script") || iequals(tag, "style"))) {
      const std::string end_tag = "</" + to_lower(tag);
      std::size_t p = i;
      while (p < html.size()) {
        const std::size_t lt = html.find("</", p);
        if (lt == std::string_view::npos) {
          p = html.size();
          break;
        }
        if (istarts(html.substr(lt), end_tag)) {
          p = lt;
          break;
        }
        p = lt + 2;
      }
      const std::size_t gt = html.find('>', p);
      i = gt == std::string_view::npos ? html.size() : gt + 1;
      continue;
    }
    if (is_block(tag)) out += '\n';
  }
  return out;
}

void extract_uris(std::string_view text, std::vector<std::string>* out) {
  std::set<std::string> seen(out->begin(), out->end());
  const std::string low = to_lower(text);
  auto stop = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 32 || u == 127 || c == '"' || c == '\'' || c == '<' || c == '>' || c == '`' ||
           c == '\\' || c == '{' || c == '}' || c == '|' || c == '^';
  };
  static constexpr std::string_view kStarts[] = {"http://", "https://", "ftp://", "www."};
  // Next occurrence of each start, searched again only once passed: one
  // pass over the text, however many URLs it holds.
  std::size_t next[std::size(kStarts)];
  for (std::size_t& n : next) n = 0;
  bool fresh[std::size(kStarts)] = {};
  std::size_t pos = 0;
  while (pos < low.size() && out->size() < kMaxUris) {
    std::size_t best = std::string::npos;
    std::size_t prefix_len = 0;
    for (std::size_t i = 0; i < std::size(kStarts); ++i) {
      if (!fresh[i] || (next[i] != std::string::npos && next[i] < pos)) {
        next[i] = low.find(kStarts[i], pos);
        fresh[i] = true;
      }
      if (next[i] < best) {
        best = next[i];
        prefix_len = kStarts[i].size();
      }
    }
    if (best == std::string::npos) break;
    const bool www = prefix_len == 4 && low.compare(best, 4, "www.") == 0;
    if (best > 0) {
      const char before = low[best - 1];
      if (std::isalnum(static_cast<unsigned char>(before)) ||
          (www && (before == '/' || before == '.' || before == '@'))) {
        pos = best + prefix_len;
        continue;
      }
    }
    std::size_t end = best + prefix_len;
    while (end < text.size() && end - best < kMaxUriLength && !stop(text[end])) ++end;
    std::string_view uri = text.substr(best, end - best);
    while (!uri.empty() && std::string_view(".,;:!?)]*").find(uri.back()) != std::string_view::npos)
      uri.remove_suffix(1);
    pos = end;
    if (uri.size() <= prefix_len) continue;
    std::string u;
    if (www) u = "http://";
    for (std::size_t i = 0; i < uri.size(); ++i) {
      if (uri.substr(i, 5) == "&amp;") {
        u += '&';
        i += 4;
      } else {
        u += uri[i];
      }
    }
    if (seen.insert(u).second) out->push_back(std::move(u));
  }
}

ParsedMessage parse_message(std::string_view message, std::size_t max_scan) {
  ParsedMessage m;
  m.raw = std::string(message.substr(0, max_scan));
  const Entity top = split_entity(message);
  m.raw_header = std::string(top.header);
  std::string subject;
  {
    // Names as written, for the header rules.
    std::size_t pos = 0;
    const std::string_view h = top.header;
    while (pos < h.size()) {
      std::size_t nl = h.find('\n', pos);
      const std::size_t next = nl == std::string_view::npos ? h.size() : nl + 1;
      std::string_view line = h.substr(pos, next - pos);
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
      if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
        if (!m.headers.empty()) m.headers.back().second.append(line);
      } else if (const std::size_t colon = line.find(':'); colon != std::string_view::npos) {
        m.headers.emplace_back(std::string(trim(line.substr(0, colon))),
                               std::string(line.substr(colon + 1)));
      }
      pos = next;
    }
    for (auto& [name, value] : m.headers) {
      value = decode_rfc2047(trim(value));
      if (subject.empty() && iequals(name, "subject")) subject = value;
    }
  }
  Walker w{max_scan, &m};
  if (!subject.empty()) w.add_text(subject);
  w.walk(message, 0);

  m.phrase_text.reserve(m.body.size());
  bool space = true;
  for (std::size_t i = 0; i < m.body.size(); ++i) {
    char c = m.body[i];
    bool ws = std::isspace(static_cast<unsigned char>(c)) != 0;
    // U+00A0 (from &nbsp; or the text itself) counts as a space.
    if (!ws && static_cast<unsigned char>(c) == 0xC2 && i + 1 < m.body.size() &&
        static_cast<unsigned char>(m.body[i + 1]) == 0xA0) {
      ws = true;
      ++i;
    }
    if (ws) {
      if (!space) m.phrase_text += ' ';
      space = true;
    } else {
      m.phrase_text += lower(c);
      space = false;
    }
  }
  return m;
}

}  // namespace petrel::rules
