#include "petrel/delivery/agent.h"

#include <cerrno>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/common/strings.h"

namespace petrel::delivery {

namespace {

std::string path_safe(std::string_view v) {
  std::string out(v);
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '/' || u < 0x20 || u == 0x7f) c = '_';
  }
  if (!out.empty() && out[0] == '.') out[0] = '_';
  return out;
}

std::string no_newlines(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v)
    if (c != '\r' && c != '\n') out += c;
  return out;
}

}  // namespace

std::string expand(std::string_view tmpl, const Recipient& rcpt, const Message& msg,
                   bool for_path) {
  std::string out;
  out.reserve(tmpl.size() + 32);
  for (std::size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '%' || i + 1 == tmpl.size()) {
      out += tmpl[i];
      continue;
    }
    const std::string* value = nullptr;
    switch (tmpl[i + 1]) {
      case 'u': value = &rcpt.user; break;
      case 'e': value = &rcpt.extension; break;
      case 'd': value = &rcpt.domain; break;
      case 'r': value = &rcpt.address; break;
      case 's': value = &msg.sender; break;
      case 'i': value = &msg.queue_id; break;
      case '%': out += '%'; ++i; continue;
      default: out += '%'; continue;
    }
    if (!for_path) {
      out += *value;
    } else if (value->empty() && value != &rcpt.extension) {
      // "%d/%u" must stay two components; an empty %e is the usual case.
      out += '_';
    } else {
      out += path_safe(*value);
    }
    ++i;
  }
  return out;
}

std::string delivery_headers(const Recipient& rcpt, const Message& msg) {
  const std::string& original = rcpt.original.empty() ? rcpt.address : rcpt.original;
  return "Return-Path: <" + no_newlines(msg.sender) + ">\nDelivered-To: " +
         no_newlines(rcpt.address) + "\nX-Original-To: " + no_newlines(original) + "\n";
}

bool has_delivered_to(std::string_view body, std::string_view address) {
  const std::string want = to_lower(address);
  constexpr std::string_view kField = "delivered-to:";
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t eol = body.find('\n', pos);
    if (eol == std::string_view::npos) eol = body.size();
    std::string_view line = body.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) return false;  // end of the header
    if (line.size() > kField.size() && to_lower(line.substr(0, kField.size())) == kField) {
      std::string_view v = line.substr(kField.size());
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      if (v.size() >= 2 && v.front() == '<' && v.back() == '>') v = v.substr(1, v.size() - 2);
      if (to_lower(v) == want) return true;
    }
    pos = eol + 1;
  }
  return false;
}

std::string encode(const Verdict& v) {
  const char tag = v.outcome == Outcome::Delivered ? 'D' : v.outcome == Outcome::Bounced ? 'B' : 'T';
  return std::string(1, tag) + ' ' + (v.status.empty() ? "-" : v.status) + ' ' + one_line(v.detail, 1000);
}

std::optional<Verdict> decode(std::string_view line) {
  if (line.size() < 3 || line[1] != ' ') return std::nullopt;
  Verdict v;
  switch (line[0]) {
    case 'D': v.outcome = Outcome::Delivered; break;
    case 'T': v.outcome = Outcome::Deferred; break;
    case 'B': v.outcome = Outcome::Bounced; break;
    default: return std::nullopt;
  }
  line.remove_prefix(2);
  const std::size_t sp = line.find(' ');
  v.status = std::string(line.substr(0, sp));
  if (v.status == "-") v.status.clear();
  if (sp != std::string_view::npos) v.detail = std::string(line.substr(sp + 1));
  if (!v.detail.empty() && v.detail.back() == '\n') v.detail.pop_back();
  return v;
}

Verdict delivered(std::string detail) { return {Outcome::Delivered, "2.0.0", std::move(detail)}; }

Verdict deferred(std::string status, std::string detail) {
  return {Outcome::Deferred, std::move(status), std::move(detail)};
}

Verdict bounced(std::string status, std::string detail) {
  return {Outcome::Bounced, std::move(status), std::move(detail)};
}

Verdict deferred_io(int err, std::string_view what) {
  // Quota and full disks are deferred, not bounced (unlike Postfix's local):
  // they usually clear up, and retry.lifetime still bounces eventually.
  const char* status = err == EDQUOT || err == EFBIG ? "4.2.2" : err == ENOSPC ? "4.3.1" : "4.2.0";
  return deferred(status, one_line(std::string(what) + ": " + errno_string(err), 400));
}

std::string one_line(std::string_view s, std::size_t max_len) {
  std::string flat(s);
  for (char& c : flat)
    if (c == '\r' || c == '\n' || c == '\t') c = ' ';
  std::string out = log::sanitize(flat, max_len);
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace petrel::delivery
