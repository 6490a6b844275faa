// RFC 5321 mailbox and path parsing (with RFC 6531 UTF-8 when allowed).
// Pure functions over string_view: no I/O, fuzzable.
#pragma once

#include <string>
#include <string_view>

#include "petrel/common/result.h"

namespace petrel::smtpd {

struct Address {
  std::string local;   // local part as written, quotes included when quoted
  std::string domain;  // domain (lower-cased) or address literal "[1.2.3.4]"; empty for <> and <postmaster>
  bool null = false;   // the null path <>
  bool utf8 = false;   // contains non-ASCII octets

  // "local@domain", "" for the null path, "postmaster" for <postmaster>.
  std::string str() const;
  bool is_postmaster_only() const { return !null && domain.empty(); }
};

enum class PathKind { ReversePath, ForwardPath };

// Parses a path "<...>" (source routes "@a,@b:" are accepted and dropped).
// ReversePath allows "<>"; ForwardPath allows "<postmaster>" (any case).
// On success `rest` receives what follows the closing '>' (the parameters).
// Errors: "syntax" or "utf8" (non-ASCII without SMTPUTF8) in Error::message.
Result<Address> parse_path(std::string_view text, PathKind kind, bool allow_utf8,
                           std::string_view* rest = nullptr);

// Parses a bare mailbox "local@domain" (no angle brackets).
Result<Address> parse_mailbox(std::string_view text, bool allow_utf8);

bool valid_domain(std::string_view domain, bool allow_utf8);

// The local part with quoting undone ("\"a b\"" -> "a b").
std::string unquote_local(std::string_view local);

}  // namespace petrel::smtpd
