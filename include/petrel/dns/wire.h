// The DNS wire format (RFC 1035 §4, RFC 3596 for AAAA, RFC 6891 for the EDNS0
// OPT record), just enough for the MX lookups evdns cannot do: build one query,
// parse one response. Pure functions over bytes, no I/O, no allocation beyond
// the result: every input, however broken, gives a value or an error, never a
// crash or an out-of-bounds read (fuzzable).
//
// Names are handled as text in presentation form without the trailing dot
// ("mx1.example.org"; the root is ""). Parsed names are rejected when a
// label holds a byte outside 0x21..0x7e or a '.', so a name from the wire can
// always be compared and printed safely. Comparisons ignore ASCII case and a
// trailing dot.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"

namespace petrel::dns {

enum RrType : std::uint16_t {
  kTypeA = 1,
  kTypeNs = 2,
  kTypeCname = 5,
  kTypeSoa = 6,
  kTypeMx = 15,
  kTypeAaaa = 28,
  kTypeOpt = 41,
};
constexpr std::uint16_t kClassIn = 1;

enum Rcode : std::uint8_t {
  kNoError = 0,
  kFormErr = 1,
  kServFail = 2,
  kNxDomain = 3,
  kNotImp = 4,
  kRefused = 5,
};

struct Question {
  std::string name;
  std::uint16_t type = 0;
  std::uint16_t cls = kClassIn;
};

// One resource record. The decoded fields are filled for the types petrel
// reads (A, AAAA, MX, CNAME, NS); rdata always holds the raw bytes.
struct Record {
  std::string name;
  std::uint16_t type = 0;
  std::uint16_t cls = 0;
  std::uint32_t ttl = 0;
  std::uint16_t preference = 0;  // MX
  std::string target;            // MX exchange, CNAME/NS target ("" = the root)
  std::array<std::uint8_t, 16> address{};  // A: first 4 bytes; AAAA: all 16
  std::string rdata;
};

struct Message {
  std::uint16_t id = 0;
  bool response = false;       // QR
  std::uint8_t opcode = 0;
  bool authoritative = false;  // AA
  bool truncated = false;      // TC: retry over TCP
  bool recursion_desired = false;
  bool recursion_available = false;
  std::uint8_t rcode = 0;  // low 4 bits from the header (extended rcodes ignored)
  std::vector<Question> questions;
  std::vector<Record> answers;
  std::vector<Record> authority;
  std::vector<Record> additional;
};

// A standard recursive query (RD set) for one name and type, with an EDNS0
// OPT record advertising `udp_size` when it is non-zero (so answers up to
// that size need no TCP retry). Fails on a name that cannot be encoded: an
// empty label, a label over 63 octets, a name over 255 octets.
Result<std::string> build_query(std::uint16_t id, std::string_view name, std::uint16_t type,
                                std::uint16_t udp_size = 1232);

// Parses a whole DNS message (UDP payload, or TCP without its length
// prefix). Compression pointers are followed with loop protection. Fails on
// truncation, bad pointers, a record running past its RDLENGTH, malformed
// A/AAAA/MX/CNAME data or names with unsafe bytes (see above).
Result<Message> parse_message(std::string_view packet);

// Case-insensitive comparison ignoring one trailing dot on either side.
bool name_equal(std::string_view a, std::string_view b);

// True for a syntactically valid host name as MX targets and A/AAAA owners
// should be: letters, digits, '-', '_' in dot-separated labels of 1..63
// octets, at most 253 octets in all (a trailing dot allowed).
bool is_host_name(std::string_view name);

}  // namespace petrel::dns
