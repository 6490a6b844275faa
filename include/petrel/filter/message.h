// Editing a message as filters see it: LF line ends, a header section ended
// by the first empty line (or the end of the message), then the body. Used by
// the chain to apply verdicts, by the exec filter to read `mode: headers`
// output, and by the plugin host.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/filter/filter.h"

namespace petrel::filter {

// One header field, continuation lines included: message[begin, end) ends
// with its last '\n' (or at the end of the message).
struct HeaderField {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::string_view name;  // as written, without the colon
};

// Where the header section ends: the offset of the empty line separating it
// from the body, or message.size() when there is none.
std::size_t header_end(std::string_view message);
// The fields of the header section, in order. Lines that are neither a field
// nor a continuation are skipped.
std::vector<HeaderField> header_fields(std::string_view message);

// A field name is 1..998 printable ASCII characters other than ':' (RFC 5322).
bool valid_header_name(std::string_view name);
// A value may span lines, each continuation starting with SP or HTAB; no CR,
// no NUL, no empty continuation line.
bool valid_header_value(std::string_view value);

// Applies one operation (milter semantics): Add appends at the end of the
// header section; Insert puts the field before the index'th field (0 = first;
// past the end = Add); Change replaces the index'th (1-based) field of that
// name, case-insensitively, or deletes it when value is empty, or adds the
// field when there is no such occurrence and value is not empty. "name: value"
// gets a space after the colon unless value starts with whitespace.
Status apply_header_op(std::string& message, const HeaderOp& op);

// Replaces everything after the header section (adds the empty separator
// line when the message had none).
void replace_body(std::string& message, std::string_view body);

// Parses header lines as an exec filter in `mode: headers` prints them
// ("Name: value", continuation lines, CRLF or LF, empty lines ignored) into
// Add operations; anything else is an error naming the offending line.
Result<std::vector<HeaderOp>> parse_header_lines(std::string_view text);

// Normalises a message a filter produced: CRLF becomes LF; a bare CR left
// after that is an error (petrel stores LF messages and a stray CR would
// reach the wire bare: SMTP smuggling).
Status normalize_newlines(std::string& message);

}  // namespace petrel::filter
