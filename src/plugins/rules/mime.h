// Just enough MIME for a spam scorer: header fields unfolded and RFC 2047
// decoded, the text parts of a message (multipart and message/rfc822 walked,
// base64 and quoted-printable decoded, HTML rendered to text) and the URLs in
// them. Charsets are not converted: rules see the bytes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace petrel::rules {

struct ParsedMessage {
  // Top-level header fields: name as written, value unfolded and decoded.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string raw_header;  // the header section as received (for "ALL")
  std::string raw;         // the whole message, capped (for "full" rules)
  // Subject, then the text of every text part, HTML rendered as text.
  std::string body;
  // `body` lower-cased with whitespace runs collapsed to one space (phrases).
  std::string phrase_text;
  std::vector<std::string> uris;
};

// `max_scan` caps how much decoded text (and raw message) is kept.
ParsedMessage parse_message(std::string_view message, std::size_t max_scan);

// Helpers exposed for tests of the plugin.
std::string decode_base64(std::string_view in);
std::string decode_quoted_printable(std::string_view in);
std::string decode_rfc2047(std::string_view value);
std::string html_to_text(std::string_view html);
void extract_uris(std::string_view text, std::vector<std::string>* out);

}  // namespace petrel::rules
