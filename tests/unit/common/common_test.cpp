// Small shared helpers: JSON quoting, base64, log sanitising.
#include <doctest/doctest.h>

#include "petrel/common/base64.h"
#include "petrel/common/log.h"
#include "petrel/common/strings.h"

using namespace petrel;

TEST_CASE("json_quote escapes quotes, backslashes and control characters") {
  CHECK(json_quote("plain") == "\"plain\"");
  CHECK(json_quote("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_quote("l1\nl2\t\x01") == "\"l1\\nl2\\t\\u0001\"");
  CHECK(json_quote("caf\xc3\xa9") == "\"caf\xc3\xa9\"");
}

TEST_CASE("rfc3339 formats UTC") {
  CHECK(rfc3339(0) == "1970-01-01T00:00:00Z");
  CHECK(rfc3339(1795661969) == "2026-11-26T02:59:29Z");
}

TEST_CASE("base64 round trip and strict decoding") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  std::string plain("\0alice\0secret", 13);
  CHECK(base64_decode(base64_encode(plain)).value() == plain);
  CHECK(base64_decode("AGFsaWNlAHNlY3JldA==").value() == plain);
  CHECK_FALSE(base64_decode("Zm9").has_value());       // not a multiple of 4
  CHECK_FALSE(base64_decode("Zm9v!A==").has_value());  // outside the alphabet
  CHECK_FALSE(base64_decode("Zg==Zm9v").has_value());  // data after padding
  CHECK_FALSE(base64_decode("Z===").has_value());
}

TEST_CASE("log::sanitize keeps UTF-8, replaces control bytes, caps length") {
  CHECK(log::sanitize("ok text") == "ok text");
  CHECK(log::sanitize("a\r\nb\x1b[31m") == "a??b?[31m");
  CHECK(log::sanitize("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(log::sanitize("bad \xc3 byte") == "bad ? byte");
  CHECK(log::sanitize(std::string(500, 'x'), 10).size() == 10);
}
