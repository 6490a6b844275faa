// Base64 (RFC 4648) for SASL exchanges.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace petrel {

std::string base64_encode(std::string_view in);
// nullopt on any character outside the alphabet or bad padding.
std::optional<std::string> base64_decode(std::string_view in);

}  // namespace petrel
