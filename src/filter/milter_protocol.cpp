// The milter packet codec: bytes in, packets and replies out, no sockets.
#include <cstring>
#include <string>
#include <string_view>

#include "petrel/filter/milter.h"

namespace petrel::filter::milter {

namespace {

void put_u32(std::string* out, std::uint32_t v) {
  out->push_back(static_cast<char>((v >> 24) & 0xFF));
  out->push_back(static_cast<char>((v >> 16) & 0xFF));
  out->push_back(static_cast<char>((v >> 8) & 0xFF));
  out->push_back(static_cast<char>(v & 0xFF));
}

std::uint32_t get_u32(std::string_view s) {
  return (std::uint32_t{static_cast<unsigned char>(s[0])} << 24) |
         (std::uint32_t{static_cast<unsigned char>(s[1])} << 16) |
         (std::uint32_t{static_cast<unsigned char>(s[2])} << 8) |
         std::uint32_t{static_cast<unsigned char>(s[3])};
}

// A string as the wire carries it: cut at an embedded NUL, NUL-terminated.
void put_cstr(std::string* out, std::string_view s) {
  out->append(s.substr(0, s.find('\0')));
  out->push_back('\0');
}

// Walks a reply's data; every getter fails rather than read past the end.
class Reader {
 public:
  explicit Reader(std::string_view d) : d_(d) {}
  bool u32(std::uint32_t* v) {
    if (d_.size() - pos_ < 4) return false;
    *v = get_u32(d_.substr(pos_, 4));
    pos_ += 4;
    return true;
  }
  bool cstr(std::string* s) {
    const std::size_t nul = d_.find('\0', pos_);
    if (nul == std::string_view::npos) return false;
    s->assign(d_.substr(pos_, nul - pos_));
    pos_ = nul + 1;
    return true;
  }
  bool done() const { return pos_ == d_.size(); }

 private:
  std::string_view d_;
  std::size_t pos_ = 0;
};

// What each protocol version knows (mfdef.h SMFI_V2_ACTS and friends).
// SMFIP_NR_HDR is kept for every version: a milter that says it sends no
// header replies must not be waited for.
std::uint32_t actions_known(std::uint32_t version) { return version >= 6 ? kAllActions : 0x3F; }
std::uint32_t protocol_known(std::uint32_t version) {
  if (version >= 6) return kAllProtocol;
  if (version >= 4) return 0x3FF;  // up to NODATA
  if (version == 3) return 0x1FF;  // up to NOUNKNOWN
  return 0xFF;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// "550 5.7.1 text" or a multi-line "550-..\r\n550 ..": a 4xx or 5xx code
// followed by the end, a space or a dash.
bool valid_reply_code(std::string_view t) {
  if (t.size() < 3 || (t[0] != '4' && t[0] != '5') || !is_digit(t[1]) || !is_digit(t[2]))
    return false;
  return t.size() == 3 || t[3] == ' ' || t[3] == '-';
}

}  // namespace

char macro_stage_command(MacroStage stage) {
  switch (stage) {
    case MacroStage::Connect: return kConnect;
    case MacroStage::Helo: return kHelo;
    case MacroStage::Mail: return kMail;
    case MacroStage::Rcpt: return kRcpt;
    case MacroStage::Data: return kData;
    case MacroStage::EndOfMessage: return kEndOfBody;
    case MacroStage::EndOfHeaders: return kEndOfHeaders;
  }
  return kConnect;
}

std::string encode_packet(char code, std::string_view data) {
  std::string out;
  out.reserve(5 + data.size());
  put_u32(&out, static_cast<std::uint32_t>(data.size() + 1));
  out.push_back(code);
  out.append(data);
  return out;
}

DecodeStatus decode_packet(std::string_view in, std::size_t max_data, Packet* out,
                           std::size_t* consumed) {
  if (in.size() < 4) return DecodeStatus::NeedMore;
  const std::uint32_t len = get_u32(in);
  if (len == 0 || len - 1 > max_data) return DecodeStatus::Bad;
  if (in.size() - 4 < len) return DecodeStatus::NeedMore;
  out->code = in[4];
  out->data.assign(in.substr(5, len - 1));
  *consumed = 4 + std::size_t{len};
  return DecodeStatus::Ok;
}

std::string optneg_data(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol) {
  std::string out;
  put_u32(&out, version);
  put_u32(&out, actions);
  put_u32(&out, protocol);
  return out;
}

std::string connect_data(std::string_view hostname, char family, std::uint16_t port,
                         std::string_view address) {
  std::string out;
  put_cstr(&out, hostname);
  out.push_back(family);
  if (family != 'U') {
    out.push_back(static_cast<char>(port >> 8));
    out.push_back(static_cast<char>(port & 0xFF));
    put_cstr(&out, address);
  }
  return out;
}

std::string strings_data(const std::vector<std::string_view>& strings) {
  std::string out;
  for (std::string_view s : strings) put_cstr(&out, s);
  return out;
}

std::string header_data(std::string_view name, std::string_view value) {
  std::string out;
  put_cstr(&out, name);
  put_cstr(&out, value);
  return out;
}

std::string macro_data(char command,
                       const std::vector<std::pair<std::string, std::string>>& macros) {
  std::string out(1, command);
  for (const auto& [name, value] : macros) {
    put_cstr(&out, name);
    put_cstr(&out, value);
  }
  return out;
}

Result<Negotiated> parse_optneg(std::string_view data) {
  if (data.size() < 12) return Error{"negotiation reply too short"};
  Negotiated n;
  n.version = get_u32(data.substr(0, 4));
  n.actions = get_u32(data.substr(4, 4));
  n.protocol = get_u32(data.substr(8, 4));
  if (n.version < 2 || n.version > kVersion)
    return Error{"milter protocol version " + std::to_string(n.version) + " not supported"};
  if ((n.actions & ~kAllActions) != 0) return Error{"milter asks for actions we did not offer"};
  n.actions &= actions_known(n.version);
  n.protocol &= kAllProtocol & protocol_known(n.version);
  if (n.version <= 2) n.protocol |= kNoUnknown;
  if (n.version <= 3) n.protocol |= kNoData;

  Reader r(data.substr(12));
  while (!r.done()) {
    std::uint32_t stage = 0;
    std::string names;
    if (!r.u32(&stage) || !r.cstr(&names)) return Error{"malformed macro list in negotiation"};
    if (stage < kMacroStages) n.macros[stage] = std::move(names);  // unknown stages: ignored
  }
  return n;
}

Result<Reply> parse_reply(const Packet& p) {
  Reply rep;
  rep.code = p.code;
  Reader r(p.data);
  auto bad = [&](const char* what) {
    return Error{std::string("malformed '") + p.code + "' reply: " + what};
  };
  switch (p.code) {
    case kAccept: case kContinue: case kDiscard: case kReject: case kTempfail:
    case kProgress: case kSkip: case kShutdown: case kConnFail:
      if (!p.data.empty()) return bad("unexpected data");
      return rep;
    case kReplyCode: {
      std::string_view t = p.data;
      if (t.ends_with('\0')) t.remove_suffix(1);
      if (t.find('\0') != std::string_view::npos) return bad("NUL inside the text");
      while (t.ends_with('\r') || t.ends_with('\n')) t.remove_suffix(1);
      if (!valid_reply_code(t)) return bad("not a 4xx or 5xx reply");
      // sendmail uses the text as a format string, so milters double '%'.
      for (std::size_t i = 0; i < t.size(); ++i) {
        rep.text.push_back(t[i]);
        if (t[i] == '%' && i + 1 < t.size() && t[i + 1] == '%') ++i;
      }
      return rep;
    }
    case kQuarantine:
      if (!r.cstr(&rep.text) || !r.done()) return bad("expected a reason");
      return rep;
    case kAddHeader:
      if (!r.cstr(&rep.name) || !r.cstr(&rep.value) || !r.done()) return bad("expected name, value");
      if (rep.name.empty()) return bad("empty header name");
      return rep;
    case kInsertHeader: case kChangeHeader:
      if (!r.u32(&rep.index) || !r.cstr(&rep.name) || !r.cstr(&rep.value) || !r.done())
        return bad("expected index, name, value");
      if (rep.name.empty()) return bad("empty header name");
      return rep;
    case kAddRcpt: case kDelRcpt:
      if (!r.cstr(&rep.addr) || !r.done()) return bad("expected an address");
      return rep;
    case kAddRcptPar: case kChangeFrom:
      if (!r.cstr(&rep.addr)) return bad("expected an address");
      if (!r.done() && !r.cstr(&rep.args)) return bad("unterminated parameters");
      if (!r.done()) return bad("trailing data");
      return rep;
    case kReplaceBody:
      rep.body = p.data;
      return rep;
    default:
      break;
  }
  const auto c = static_cast<unsigned char>(p.code);
  return Error{c >= 0x21 && c < 0x7F ? std::string("unknown reply '") + p.code + "'"
                                     : "unknown reply code " + std::to_string(c)};
}

namespace {

bool is_field_name_char(char c) { return c > ' ' && c < 0x7F && c != ':'; }

// "Name:" (optionally "Name  :", the obsolete form): the name, or "" if the
// line is no header field.
std::string_view field_name(std::string_view line, std::size_t* colon) {
  std::size_t i = 0;
  while (i < line.size() && is_field_name_char(line[i])) ++i;
  const std::size_t end = i;
  while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  if (end == 0 || i >= line.size() || line[i] != ':') return {};
  *colon = i;
  return line.substr(0, end);
}

}  // namespace

MessageParts split_message(std::string_view message) {
  MessageParts parts;
  std::size_t pos = 0;
  while (pos < message.size()) {
    const std::size_t nl = message.find('\n', pos);
    const std::size_t end = nl == std::string_view::npos ? message.size() : nl;
    const std::size_t next = nl == std::string_view::npos ? message.size() : nl + 1;
    std::string_view line = message.substr(pos, end - pos);
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.empty()) {
      parts.body = message.substr(next);
      return parts;
    }
    if ((line[0] == ' ' || line[0] == '\t') && !parts.headers.empty()) {
      parts.headers.back().value += '\n';
      parts.headers.back().value += line;
    } else {
      std::size_t colon = 0;
      const std::string_view name = field_name(line, &colon);
      if (name.empty()) {
        parts.body = message.substr(pos);
        return parts;
      }
      parts.headers.push_back(Field{std::string(name), std::string(line.substr(colon + 1))});
    }
    pos = next;
  }
  parts.body = message.substr(message.size());
  return parts;
}

std::string_view header_value_for_milter(std::string_view raw, bool leading_space) {
  if (!leading_space && raw.starts_with(' ')) raw.remove_prefix(1);
  return raw;
}

std::optional<std::string> BodyChunker::next() {
  const std::size_t max = max_ < 2 ? 2 : max_;
  if (rest_.empty() && !pending_lf_) return std::nullopt;
  std::string out;
  out.reserve(std::min(max, rest_.size() + rest_.size() / 16 + 2));
  if (pending_lf_) {
    out.push_back('\n');
    pending_lf_ = false;
  }
  while (out.size() < max && !rest_.empty()) {
    const std::size_t room = max - out.size();
    const std::size_t nl = rest_.find('\n');
    const std::size_t seg = nl == std::string_view::npos ? rest_.size() : nl;
    if (seg >= room) {
      out.append(rest_.substr(0, room));
      rest_.remove_prefix(room);
      break;
    }
    out.append(rest_.substr(0, seg));
    rest_.remove_prefix(seg);
    if (rest_.empty()) break;
    rest_.remove_prefix(1);  // the LF
    const bool had_cr = out.empty() ? last_was_cr_ : out.back() == '\r';
    if (had_cr) {
      out.push_back('\n');
    } else if (out.size() + 2 <= max) {
      out.append("\r\n");
    } else {
      out.push_back('\r');
      pending_lf_ = true;
      break;
    }
  }
  last_was_cr_ = !out.empty() && out.back() == '\r';
  return out;
}

std::string header_value_from_milter(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 4);
  std::size_t pos = 0;
  bool first = true;
  while (pos <= value.size()) {
    std::size_t nl = value.find('\n', pos);
    if (nl == std::string_view::npos) nl = value.size();
    std::string line;
    for (char c : value.substr(pos, nl - pos))
      if (c != '\r') line.push_back(c);  // CRLF becomes LF; a bare CR has no place here
    pos = nl + 1;
    if (first) {
      out = std::move(line);
      first = false;
      continue;
    }
    // A blank continuation line says nothing (and would end the header);
    // one that does not start with a blank would start a header of its own.
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    out += '\n';
    if (line[0] != ' ' && line[0] != '\t') out += '\t';
    out += line;
  }
  return out;
}

std::string crlf_to_lf(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') continue;
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace petrel::filter::milter
