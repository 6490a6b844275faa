// Small string helpers shared by several parts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace petrel {

std::string to_lower(std::string_view s);
// A JSON string literal, quotes included.
std::string json_quote(std::string_view s);
// RFC 3339 UTC time, e.g. "2026-11-26T02:50:00Z".
std::string rfc3339(std::int64_t unix_seconds);

}  // namespace petrel
