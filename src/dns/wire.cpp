#include "petrel/dns/wire.h"

#include <optional>

namespace petrel::dns {

namespace {

constexpr std::size_t kHeaderSize = 12;
constexpr std::size_t kMaxName = 255;  // wire octets, RFC 1035 §2.3.4
constexpr std::size_t kMaxLabel = 63;
// More records than this in one section cannot fit a 64 KiB message anyway;
// the cap keeps a forged count from looping long on a short packet.
constexpr std::size_t kMaxRecords = 4096;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string_view strip_dot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return s;
}

void put16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

// Reads big-endian integers and names from a packet; every read is checked.
class Reader {
 public:
  explicit Reader(std::string_view p) : p_(p) {}

  std::size_t pos() const { return pos_; }
  bool u8(std::uint8_t* v) {
    if (pos_ + 1 > p_.size()) return false;
    *v = byte(pos_++);
    return true;
  }
  bool u16(std::uint16_t* v) {
    if (pos_ + 2 > p_.size()) return false;
    *v = static_cast<std::uint16_t>(byte(pos_) << 8 | byte(pos_ + 1));
    pos_ += 2;
    return true;
  }
  bool u32(std::uint32_t* v) {
    if (pos_ + 4 > p_.size()) return false;
    *v = static_cast<std::uint32_t>(byte(pos_)) << 24 | static_cast<std::uint32_t>(byte(pos_ + 1)) << 16 |
         static_cast<std::uint32_t>(byte(pos_ + 2)) << 8 | byte(pos_ + 3);
    pos_ += 4;
    return true;
  }
  bool bytes(std::size_t n, std::string_view* out) {
    if (n > p_.size() - pos_) return false;
    *out = p_.substr(pos_, n);
    pos_ += n;
    return true;
  }

  // A possibly compressed name at the current position; the position moves
  // past it (past the first pointer, when there is one).
  bool name(std::string* out) {
    std::optional<std::size_t> end;
    if (!name_at(pos_, out, &end)) return false;
    pos_ = *end;
    return true;
  }

  // A name starting at `at`; *end is set to the offset just past it (past
  // its first compression pointer). Work is bounded by the jump count and the
  // 255-octet limit, so a pointer cycle fails instead of looping.
  bool name_at(std::size_t at, std::string* out, std::optional<std::size_t>* end) const {
    out->clear();
    std::size_t wire_len = 1;  // the final zero octet
    int jumps = 0;
    std::size_t p = at;
    for (;;) {
      if (p >= p_.size()) return false;
      const std::uint8_t len = byte(p);
      if ((len & 0xc0) == 0xc0) {
        if (p + 1 >= p_.size()) return false;
        const std::size_t target = static_cast<std::size_t>(len & 0x3f) << 8 | byte(p + 1);
        if (!*end) *end = p + 2;
        // Pointers must go strictly backwards: no loops, bounded work.
        if (target >= p || ++jumps > 64) return false;
        p = target;
        continue;
      }
      if ((len & 0xc0) != 0) return false;  // 0x40/0x80: reserved label types
      if (len == 0) {
        if (!*end) *end = p + 1;
        return true;
      }
      if (p + 1 + len > p_.size()) return false;
      wire_len += 1 + len;
      if (wire_len > kMaxName) return false;
      if (!out->empty()) out->push_back('.');
      for (std::size_t i = 0; i < len; ++i) {
        const auto c = static_cast<char>(byte(p + 1 + i));
        if (c == '.' || static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
          return false;
        out->push_back(c);
      }
      p += 1 + len;
    }
  }

 private:
  std::uint8_t byte(std::size_t i) const { return static_cast<std::uint8_t>(p_[i]); }

  std::string_view p_;
  std::size_t pos_ = 0;
};

bool read_question(Reader& r, Question* q) {
  return r.name(&q->name) && r.u16(&q->type) && r.u16(&q->cls);
}

bool decode_rdata(const Reader& r, std::size_t start, Record* rec) {
  const std::string_view d = rec->rdata;
  auto rdata_name = [&](std::size_t offset, std::string* out) {
    std::optional<std::size_t> end;
    if (!r.name_at(start + offset, out, &end)) return false;
    // The uncompressed part must stay inside the RDATA.
    return *end <= start + d.size();
  };
  switch (rec->type) {
    case kTypeA:
      if (d.size() != 4) return false;
      for (std::size_t i = 0; i < 4; ++i) rec->address[i] = static_cast<std::uint8_t>(d[i]);
      return true;
    case kTypeAaaa:
      if (d.size() != 16) return false;
      for (std::size_t i = 0; i < 16; ++i) rec->address[i] = static_cast<std::uint8_t>(d[i]);
      return true;
    case kTypeMx:
      if (d.size() < 3) return false;
      rec->preference = static_cast<std::uint16_t>(static_cast<std::uint8_t>(d[0]) << 8 |
                                                   static_cast<std::uint8_t>(d[1]));
      return rdata_name(2, &rec->target);
    case kTypeCname:
    case kTypeNs:
      return rdata_name(0, &rec->target);
    default:
      return true;
  }
}

bool read_record(Reader& r, Record* rec) {
  std::uint16_t rdlen = 0;
  if (!r.name(&rec->name) || !r.u16(&rec->type) || !r.u16(&rec->cls) || !r.u32(&rec->ttl) ||
      !r.u16(&rdlen))
    return false;
  const std::size_t start = r.pos();
  std::string_view data;
  if (!r.bytes(rdlen, &data)) return false;
  rec->rdata = std::string(data);
  // OPT (EDNS0) reuses CLASS and TTL for other meanings and has no name data.
  if (rec->type == kTypeOpt) return true;
  return decode_rdata(r, start, rec);
}

bool read_section(Reader& r, std::uint16_t count, std::vector<Record>* out) {
  if (count > kMaxRecords) return false;
  out->reserve(count);
  for (std::uint16_t i = 0; i < count; ++i) {
    Record rec;
    if (!read_record(r, &rec)) return false;
    out->push_back(std::move(rec));
  }
  return true;
}

}  // namespace

Result<std::string> build_query(std::uint16_t id, std::string_view name, std::uint16_t type,
                                std::uint16_t udp_size) {
  name = strip_dot(name);
  std::string out;
  out.reserve(kHeaderSize + name.size() + 2 + 4 + 11);
  put16(out, id);
  put16(out, 0x0100);  // standard query, RD
  put16(out, 1);       // QDCOUNT
  put16(out, 0);       // ANCOUNT
  put16(out, 0);       // NSCOUNT
  put16(out, udp_size ? 1 : 0);  // ARCOUNT

  std::size_t wire_len = 1;
  while (!name.empty()) {
    const std::size_t dot = name.find('.');
    const std::string_view label = name.substr(0, dot);
    if (label.empty() || label.size() > kMaxLabel) return Error{"bad DNS name"};
    wire_len += 1 + label.size();
    if (wire_len > kMaxName) return Error{"DNS name too long"};
    out.push_back(static_cast<char>(label.size()));
    out.append(label);
    if (dot == std::string_view::npos) break;
    name.remove_prefix(dot + 1);
    if (name.empty()) return Error{"bad DNS name"};  // "a..": the strip left a dot
  }
  out.push_back('\0');
  put16(out, type);
  put16(out, kClassIn);

  if (udp_size) {
    out.push_back('\0');  // root owner
    put16(out, kTypeOpt);
    put16(out, udp_size);  // CLASS = requester's UDP payload size
    put16(out, 0);         // TTL = extended rcode, version 0,
    put16(out, 0);         //       flags (no DO)
    put16(out, 0);         // RDLENGTH
  }
  return out;
}

Result<Message> parse_message(std::string_view packet) {
  Reader r(packet);
  Message m;
  std::uint16_t flags = 0, qd = 0, an = 0, ns = 0, ar = 0;
  if (!r.u16(&m.id) || !r.u16(&flags) || !r.u16(&qd) || !r.u16(&an) || !r.u16(&ns) || !r.u16(&ar))
    return Error{"DNS message shorter than its header"};
  m.response = flags & 0x8000;
  m.opcode = static_cast<std::uint8_t>(flags >> 11 & 0x0f);
  m.authoritative = flags & 0x0400;
  m.truncated = flags & 0x0200;
  m.recursion_desired = flags & 0x0100;
  m.recursion_available = flags & 0x0080;
  m.rcode = static_cast<std::uint8_t>(flags & 0x000f);

  if (qd > 16) return Error{"DNS message with too many questions"};
  for (std::uint16_t i = 0; i < qd; ++i) {
    Question q;
    if (!read_question(r, &q)) return Error{"malformed question in DNS message"};
    m.questions.push_back(std::move(q));
  }
  // A truncated response may end anywhere after the question: keep what parses.
  if (!read_section(r, an, &m.answers)) {
    if (m.truncated) return m;
    return Error{"malformed answer in DNS message"};
  }
  if (!read_section(r, ns, &m.authority)) {
    if (m.truncated) return m;
    return Error{"malformed authority record in DNS message"};
  }
  if (!read_section(r, ar, &m.additional)) {
    if (m.truncated) return m;
    return Error{"malformed additional record in DNS message"};
  }
  return m;
}

bool name_equal(std::string_view a, std::string_view b) {
  a = strip_dot(a);
  b = strip_dot(b);
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool is_host_name(std::string_view name) {
  name = strip_dot(name);
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok || ++label > kMaxLabel) return false;
  }
  return label > 0;
}

}  // namespace petrel::dns
