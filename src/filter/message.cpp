#include "petrel/filter/message.h"

#include <algorithm>

namespace petrel::filter {

namespace {

bool is_wsp(char c) { return c == ' ' || c == '\t'; }

std::size_t line_end(std::string_view s, std::size_t pos) {
  const std::size_t nl = s.find('\n', pos);
  return nl == std::string_view::npos ? s.size() : nl + 1;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x + 32 : x) == (y >= 'A' && y <= 'Z' ? y + 32 : y);
         });
}

std::string field_text(std::string_view name, std::string_view value) {
  std::string f(name);
  f += ':';
  if (value.empty() || !is_wsp(value.front())) f += ' ';
  f += value;
  f += '\n';
  return f;
}

// Where a new field goes at the end of the header section. A message whose
// last header line lacks its '\n' gets one first.
std::size_t append_point(std::string& message) {
  const std::size_t end = header_end(message);
  if (end > 0 && message[end - 1] != '\n') {
    message.insert(end, 1, '\n');
    return end + 1;
  }
  return end;
}

}  // namespace

std::size_t header_end(std::string_view m) {
  std::size_t pos = 0;
  while (pos < m.size()) {
    if (m[pos] == '\n') return pos;
    pos = line_end(m, pos);
  }
  return m.size();
}

std::vector<HeaderField> header_fields(std::string_view m) {
  std::vector<HeaderField> out;
  const std::size_t end = header_end(m);
  std::size_t pos = 0;
  while (pos < end) {
    std::size_t next = line_end(m, pos);
    const std::string_view line = m.substr(pos, next - pos);
    const std::size_t colon = line.find(':');
    if (is_wsp(line.front()) || colon == std::string_view::npos ||
        !valid_header_name(line.substr(0, colon))) {
      pos = next;  // a stray continuation or garbage line: not a field
      continue;
    }
    HeaderField f;
    f.begin = pos;
    f.name = line.substr(0, colon);
    while (next < end && is_wsp(m[next])) next = line_end(m, next);
    f.end = next;
    out.push_back(f);
    pos = next;
  }
  return out;
}

bool valid_header_name(std::string_view name) {
  if (name.empty() || name.size() > 998) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c > 32 && c < 127 && c != ':'; });
}

bool valid_header_value(std::string_view value) {
  std::size_t pos = 0;
  while (pos <= value.size()) {
    const std::size_t nl = value.find('\n', pos);
    const std::string_view line =
        value.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    if (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos)
      return false;
    if (pos > 0 && (line.empty() || !is_wsp(line.front()) ||
                    line.find_first_not_of(" \t") == std::string_view::npos))
      return false;
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return true;
}

Status apply_header_op(std::string& message, const HeaderOp& op) {
  if (!valid_header_name(op.name)) return Error{"invalid header name \"" + op.name + "\""};
  if (!valid_header_value(op.value)) return Error{"invalid value for header " + op.name};
  const auto fields = header_fields(message);
  switch (op.kind) {
    case HeaderOp::Kind::Add:
      message.insert(append_point(message), field_text(op.name, op.value));
      return {};
    case HeaderOp::Kind::Insert: {
      if (op.index < 0) return Error{"negative header index"};
      if (static_cast<std::size_t>(op.index) >= fields.size()) {
        message.insert(append_point(message), field_text(op.name, op.value));
      } else {
        message.insert(fields[static_cast<std::size_t>(op.index)].begin,
                       field_text(op.name, op.value));
      }
      return {};
    }
    case HeaderOp::Kind::Change: {
      int seen = 0;
      for (const HeaderField& f : fields) {
        if (!iequals(f.name, op.name) || ++seen != std::max(op.index, 1)) continue;
        std::string text = op.value.empty() ? std::string() : field_text(op.name, op.value);
        // Keep the field's own spelling of its name.
        if (!text.empty()) text.replace(0, op.name.size(), f.name);
        message.replace(f.begin, f.end - f.begin, text);
        return {};
      }
      if (!op.value.empty()) message.insert(append_point(message), field_text(op.name, op.value));
      return {};
    }
  }
  return {};
}

void replace_body(std::string& message, std::string_view body) {
  const std::size_t end = header_end(message);
  if (end < message.size()) {
    message.replace(end + 1, std::string::npos, body);  // keep the empty line
    return;
  }
  if (!message.empty() && message.back() != '\n') message += '\n';
  message += '\n';
  message += body;
}

Result<std::vector<HeaderOp>> parse_header_lines(std::string_view text) {
  std::vector<HeaderOp> ops;
  std::size_t pos = 0;
  int lineno = 0;
  while (pos < text.size()) {
    const std::size_t next = line_end(text, pos);
    std::string_view line = text.substr(pos, next - pos);
    pos = next;
    ++lineno;
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = "header line " + std::to_string(lineno);
    if (is_wsp(line.front())) {
      if (ops.empty()) return Error{where + " is a continuation with no header before it"};
      if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
      ops.back().value += '\n';
      ops.back().value.append(line);
      if (!valid_header_value(ops.back().value)) return Error{where + " is not a valid value"};
      continue;
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !valid_header_name(line.substr(0, colon)))
      return Error{where + " is not \"Name: value\""};
    HeaderOp op;
    op.kind = HeaderOp::Kind::Add;
    op.name = std::string(line.substr(0, colon));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && is_wsp(value.front())) value.remove_prefix(1);
    op.value = std::string(value);
    if (!valid_header_value(op.value)) return Error{where + " is not a valid value"};
    ops.push_back(std::move(op));
  }
  return ops;
}

Status normalize_newlines(std::string& message) {
  if (message.find('\r') == std::string::npos) return {};
  std::string out;
  out.reserve(message.size());
  for (std::size_t i = 0; i < message.size(); ++i) {
    const char c = message[i];
    if (c == '\r') {
      if (i + 1 < message.size() && message[i + 1] == '\n') continue;
      return Error{"bare CR in the message"};
    }
    out += c;
  }
  message = std::move(out);
  return {};
}

}  // namespace petrel::filter
