#include "petrel/filter/verdict.h"

#include <cctype>
#include <vector>

namespace petrel::filter {

namespace {

constexpr std::size_t kMaxReplyLine = 450;  // RFC 5321: 512 with code and CRLF
constexpr int kMaxReplyLines = 10;

// "550 5.7.1 text" -> code 550 and "5.7.1 text"; "550-..." likewise with
// `more` set; no code: 0.
int split_code(std::string_view line, std::string_view* rest, bool* more) {
  *more = false;
  if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
      !std::isdigit(static_cast<unsigned char>(line[1])) ||
      !std::isdigit(static_cast<unsigned char>(line[2])))
    return 0;
  if (line.size() > 3 && line[3] != ' ' && line[3] != '-') return 0;
  *more = line.size() > 3 && line[3] == '-';
  *rest = line.size() > 3 ? line.substr(4) : std::string_view();
  return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
}

// "5.7.1 text": true when `text` starts with an enhanced status code of
// class `cls` (followed by a space or the end).
bool has_enhanced(std::string_view text, char cls) {
  if (text.size() < 5 || text[0] != cls || text[1] != '.') return false;
  std::size_t i = 2, digits = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i, ++digits;
  if (digits == 0 || digits > 3 || i >= text.size() || text[i] != '.') return false;
  ++i;
  digits = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i, ++digits;
  return digits > 0 && digits <= 3 && (i == text.size() || text[i] == ' ');
}

std::string clean(std::string_view s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u == '\t') {
      out += ' ';
    } else if (u >= 32 && u != 127) {
      out += c;
    }
    if (out.size() >= kMaxReplyLine) break;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::vector<std::string_view> lines_of(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while (pos < s.size() && static_cast<int>(out.size()) < kMaxReplyLines) {
    std::size_t nl = s.find('\n', pos);
    if (nl == std::string_view::npos) nl = s.size();
    std::string_view line = s.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) out.push_back(line);
    pos = nl + 1;
  }
  return out;
}

}  // namespace

std::string_view action_name(Action a) {
  switch (a) {
    case Action::Continue:
      return "continue";
    case Action::Accept:
      return "accept";
    case Action::Reject:
      return "reject";
    case Action::Tempfail:
      return "tempfail";
    case Action::Discard:
      return "discard";
  }
  return "continue";
}

Verdict error_verdict(config::OnError on_error, std::string_view why) {
  Verdict v;
  switch (on_error) {
    case config::OnError::Tempfail:
      v.action = Action::Tempfail;
      break;
    case config::OnError::Reject:
      v.action = Action::Reject;
      break;
    case config::OnError::Accept:
      v.action = Action::Continue;
      break;
  }
  std::string quoted;
  for (char c : clean(why)) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  v.detail = "error=\"" + quoted + "\"";
  return v;
}

std::string Reply::str() const {
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t nl = text.find('\n', pos);
    const bool last = nl == std::string::npos;
    if (!out.empty()) out += '\n';
    out += std::to_string(code);
    out += last ? ' ' : '-';
    out.append(text, pos, last ? std::string::npos : nl - pos);
    if (last) break;
    pos = nl + 1;
  }
  return out;
}

Reply make_reply(Action action, std::string_view text, std::string_view filter, bool stage) {
  const bool temp = action == Action::Tempfail;
  const char cls = temp ? '4' : '5';
  const int default_code = temp ? 451 : 550;
  const std::string default_enhanced = temp ? "4.7.1" : "5.7.1";

  Reply r;
  std::vector<std::string> out;
  for (std::string_view line : lines_of(text)) {
    std::string_view rest = line;
    bool more = false;
    const int code = split_code(line, &rest, &more);
    if (code != 0) {
      if (code / 100 == cls - '0' && (r.code == 0 || r.code == code)) {
        r.code = code;
      } else if (r.code == 0) {
        r.code = default_code;  // wrong class: keep the words, not the code
      }
    } else {
      rest = line;
    }
    std::string body = clean(rest);
    if (body.empty() && code == 0) continue;
    if (!has_enhanced(body, cls)) {
      // A wrong-class enhanced code is dropped with the wrong-class code.
      if (body.size() >= 2 && std::isdigit(static_cast<unsigned char>(body[0])) && body[1] == '.') {
        const std::size_t sp = body.find(' ');
        body = sp == std::string::npos ? std::string() : body.substr(sp + 1);
      }
      body = body.empty() ? default_enhanced : default_enhanced + " " + body;
    }
    out.push_back(std::move(body));
  }
  if (r.code == 0) r.code = default_code;
  if (out.empty()) {
    const std::string what = stage ? "Command" : "Message";
    out.push_back(default_enhanced + " " + what +
                  (temp ? " deferred by filter " : " rejected by filter ") + clean(filter) +
                  (temp ? ", try again later" : ""));
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i) r.text += '\n';
    r.text += out[i];
  }
  return r;
}

}  // namespace petrel::filter
