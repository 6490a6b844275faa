#include "petrel/filter/message.h"

#include <doctest/doctest.h>

namespace petrel::filter {
namespace {

const std::string kMsg =
    "Received: from a\n"
    "\tby b\n"
    "Subject: hello\n"
    "X-Tag: one\n"
    "x-tag: two\n"
    "\n"
    "body\n";

HeaderOp op(HeaderOp::Kind kind, std::string name, std::string value, int index = 0) {
  HeaderOp o;
  o.kind = kind;
  o.name = std::move(name);
  o.value = std::move(value);
  o.index = index;
  return o;
}

TEST_CASE("message: header fields keep continuation lines; the body is not a header") {
  const auto fields = header_fields(kMsg);
  REQUIRE(fields.size() == 4);
  CHECK(fields[0].name == "Received");
  CHECK(kMsg.substr(fields[0].begin, fields[0].end - fields[0].begin) ==
        "Received: from a\n\tby b\n");
  CHECK(fields[3].name == "x-tag");
  CHECK(header_end(kMsg) == kMsg.find("\n\n") + 1);
  CHECK(header_end("A: b\n") == 5);  // no body at all
}

TEST_CASE("message: add appends to the header, insert goes before the index'th field") {
  std::string m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Add, "X-New", "v")));
  CHECK(m.find("x-tag: two\nX-New: v\n\nbody\n") != std::string::npos);

  m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Insert, "X-First", "1", 0)));
  CHECK(m.starts_with("X-First: 1\nReceived: from a\n"));
  m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Insert, "X-Second", "2", 1)));
  CHECK(m.find("\tby b\nX-Second: 2\nSubject: hello\n") != std::string::npos);
  m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Insert, "X-Late", "9", 99)));
  CHECK(m.find("x-tag: two\nX-Late: 9\n\n") != std::string::npos);
}

TEST_CASE("message: change replaces the n-th occurrence case-insensitively; empty deletes") {
  std::string m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Change, "X-TAG", "deux", 2)));
  CHECK(m.find("X-Tag: one\nx-tag: deux\n") != std::string::npos);

  m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Change, "x-tag", "", 1)));
  CHECK(m.find("X-Tag: one") == std::string::npos);
  CHECK(m.find("x-tag: two\n\nbody") != std::string::npos);

  m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Change, "Received", "", 1)));
  CHECK(m.starts_with("Subject: hello\n"));  // continuation lines go with it

  m = kMsg;  // no 3rd occurrence: a change with a value adds, a delete does nothing
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Change, "X-Tag", "", 3)));
  CHECK(m == kMsg);
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Change, "X-Tag", "three", 3)));
  CHECK(m.find("x-tag: two\nX-Tag: three\n\n") != std::string::npos);
}

TEST_CASE("message: folded values, and invalid names or values are refused") {
  std::string m = kMsg;
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Add, "X-Long", "a,\n\tb")));
  CHECK(m.find("X-Long: a,\n\tb\n\n") != std::string::npos);
  CHECK_FALSE(apply_header_op(m, op(HeaderOp::Kind::Add, "Bad Name", "v")));
  CHECK_FALSE(apply_header_op(m, op(HeaderOp::Kind::Add, "X-A", "v\nnot folded")));
  CHECK_FALSE(apply_header_op(m, op(HeaderOp::Kind::Add, "X-A", "v\r\n\tfolded")));
  CHECK_FALSE(apply_header_op(m, op(HeaderOp::Kind::Add, "", "v")));
}

TEST_CASE("message: a message without a body or final newline still takes fields") {
  std::string m = "Subject: x";
  REQUIRE(apply_header_op(m, op(HeaderOp::Kind::Add, "X-A", "1")));
  CHECK(m == "Subject: x\nX-A: 1\n");
  replace_body(m, "new body\n");
  CHECK(m == "Subject: x\nX-A: 1\n\nnew body\n");
  replace_body(m, "other\n");
  CHECK(m == "Subject: x\nX-A: 1\n\nother\n");
}

TEST_CASE("message: header lines from an exec filter") {
  auto ops = parse_header_lines("X-Spam: yes\r\nX-Report: a\r\n\tb\n\n");
  REQUIRE(ops);
  REQUIRE(ops->size() == 2);
  CHECK((*ops)[0].name == "X-Spam");
  CHECK((*ops)[0].value == "yes");
  CHECK((*ops)[1].value == "a\n\tb");
  CHECK(parse_header_lines("")->empty());
  CHECK_FALSE(parse_header_lines("no colon here\n"));
  CHECK_FALSE(parse_header_lines("\tcontinuation first\n"));
  CHECK_FALSE(parse_header_lines("Bad Name: x\n"));
}

TEST_CASE("message: CRLF from a filter becomes LF; a bare CR is an error") {
  std::string m = "A: b\r\n\r\nbody\r\n";
  REQUIRE(normalize_newlines(m));
  CHECK(m == "A: b\n\nbody\n");
  m = "A: b\n\nbo\rdy\n";
  CHECK_FALSE(normalize_newlines(m));
}

}  // namespace
}  // namespace petrel::filter
