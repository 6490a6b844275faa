// The aliases(5) parser (SPEC §3 aliases.file, §7 "Aliases").
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "petrel/queue/resolver.h"

using petrel::queue::AliasEntry;
using petrel::queue::AliasParseError;
using petrel::queue::parse_aliases;
using petrel::queue::parse_include_list;
using Strings = std::vector<std::string>;

namespace {

std::vector<AliasEntry> parse(const std::string& text, std::vector<AliasParseError>* errors = nullptr) {
  return parse_aliases(text, errors);
}

}  // namespace

TEST_CASE("aliases: one entry per line, targets split at commas") {
  auto e = parse("postmaster: root\nteam: alice, bob@example.net ,carol\n");
  REQUIRE(e.size() == 2);
  CHECK(e[0].name == "postmaster");
  CHECK(e[0].targets == Strings{"root"});
  CHECK(e[0].line == 1);
  CHECK(e[1].name == "team");
  CHECK(e[1].targets == Strings{"alice", "bob@example.net", "carol"});
  CHECK(e[1].line == 2);
}

TEST_CASE("aliases: comments and blank lines are skipped") {
  std::vector<AliasParseError> errors;
  auto e = parse("# the admins\n\n   \n\t# indented comment\nroot: alice\n#tail", &errors);
  CHECK(errors.empty());
  REQUIRE(e.size() == 1);
  CHECK(e[0].name == "root");
  CHECK(e[0].line == 5);
}

TEST_CASE("aliases: lines starting with a blank continue the entry") {
  std::vector<AliasParseError> errors;
  auto e = parse(
      "list: alice,\n"
      "  bob,\n"
      "# a comment between continuation lines\n"
      "\n"
      "\tcarol\n"
      "next: dave\n",
      &errors);
  CHECK(errors.empty());
  REQUIRE(e.size() == 2);
  CHECK(e[0].targets == Strings{"alice", "bob", "carol"});
  CHECK(e[0].line == 1);
  CHECK(e[1].name == "next");
  CHECK(e[1].line == 6);
}

TEST_CASE("aliases: a name with only trailing blanks takes targets from continuation lines") {
  std::vector<AliasParseError> errors;
  auto e = parse("staff:   \n   alice, bob\n", &errors);
  CHECK(errors.empty());
  REQUIRE(e.size() == 1);
  CHECK(e[0].targets == Strings{"alice", "bob"});
}

TEST_CASE("aliases: CRLF line ends") {
  std::vector<AliasParseError> errors;
  auto e = parse("a: b, c\r\n  d\r\n# x\r\ne: f\r\n", &errors);
  CHECK(errors.empty());
  REQUIRE(e.size() == 2);
  CHECK(e[0].targets == Strings{"b", "c", "d"});
  CHECK(e[1].targets == Strings{"f"});
}

TEST_CASE("aliases: quoted targets keep commas, colons and blanks; quotes are removed") {
  auto e = parse(
      "app: \"|/usr/bin/x --y, z\", /var/mail/file, \"/var/mail/with space\"\n"
      "esc: \"|echo \\\"hi\\\"\"\n"
      "q: \"a b\"@example.org\n");
  REQUIRE(e.size() == 3);
  CHECK(e[0].targets == Strings{"|/usr/bin/x --y, z", "/var/mail/file", "/var/mail/with space"});
  CHECK(e[1].targets == Strings{"|echo \"hi\""});
  // Only a wholly quoted target is unquoted: this stays an address with a quoted local part.
  CHECK(e[2].targets == Strings{"\"a b\"@example.org"});
}

TEST_CASE("aliases: unquoted commands and :include: targets") {
  auto e = parse("x: |/usr/bin/handler, :include:/etc/mail/list\n");
  REQUIRE(e.size() == 1);
  CHECK(e[0].targets == Strings{"|/usr/bin/handler", ":include:/etc/mail/list"});
}

TEST_CASE("aliases: quoted and mixed-case names") {
  std::vector<AliasParseError> errors;
  auto e = parse("\"sales team\": alice\n\"odd:name\": bob\nPostMaster: root\nboss@Example.ORG: carol\n",
                 &errors);
  CHECK(errors.empty());
  REQUIRE(e.size() == 4);
  CHECK(e[0].name == "sales team");
  CHECK(e[1].name == "odd:name");
  CHECK(e[2].name == "postmaster");
  CHECK(e[3].name == "boss@example.org");
}

TEST_CASE("aliases: empty elements from stray commas are dropped") {
  auto e = parse("a: b,, c ,\n");
  REQUIRE(e.size() == 1);
  CHECK(e[0].targets == Strings{"b", "c"});
}

TEST_CASE("aliases: bad entries are reported with their line and skipped") {
  std::vector<AliasParseError> errors;
  auto e = parse(
      "good: alice\n"        // 1
      "no colon here\n"      // 2
      ": nobody\n"           // 3
      "two words: x\n"       // 4
      "empty:\n"             // 5
      "open: \"|cmd\n"       // 6
      "\"open: x\n"          // 7
      "also: bob\n",         // 8
      &errors);
  REQUIRE(e.size() == 2);
  CHECK(e[0].name == "good");
  CHECK(e[1].name == "also");
  REQUIRE(errors.size() == 6);
  CHECK(errors[0].line == 2);
  CHECK(errors[0].reason.find("':'") != std::string::npos);
  CHECK(errors[1].line == 3);
  CHECK(errors[1].reason == "empty alias name");
  CHECK(errors[2].line == 4);
  CHECK(errors[3].line == 5);
  CHECK(errors[3].reason.find("no targets") != std::string::npos);
  CHECK(errors[4].line == 6);
  CHECK(errors[4].reason == "unterminated quote");
  CHECK(errors[5].line == 7);
}

TEST_CASE("aliases: a continuation line with nothing above is an error, once") {
  std::vector<AliasParseError> errors;
  auto e = parse("  alice\n  bob\nreal: carol\n", &errors);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].line == 1);
  REQUIRE(e.size() == 1);
  CHECK(e[0].name == "real");
}

TEST_CASE("aliases: continuation lines of a bad entry go with it") {
  std::vector<AliasParseError> errors;
  auto e = parse("bad entry\n  more\nok: x\n", &errors);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].line == 1);
  REQUIRE(e.size() == 1);
}

TEST_CASE("aliases: the errors pointer may be null") {
  CHECK(parse("nonsense\n:\n\"", nullptr).empty());
}

TEST_CASE("aliases: empty input and input without a final newline") {
  CHECK(parse("").empty());
  CHECK(parse("\n\n").empty());
  auto e = parse("a: b");
  REQUIRE(e.size() == 1);
  CHECK(e[0].targets == Strings{"b"});
}

TEST_CASE("aliases: garbage input never crashes") {
  const std::vector<std::string> nasty = {
      std::string("\0\0:\0", 4), "\"", "\"\\", "a: \"\\", ":::::", ",,,,", "\r\r\r\n\r", " \n \n",
      "a:\"", "\"a\"\"b\": c", "a: \"x\"\"y\"", std::string(100000, ':'), std::string(100000, '"'),
      std::string(50000, ' ') + "x", "\xff\xfe: \xc3\x28",
  };
  for (const std::string& s : nasty) {
    std::vector<AliasParseError> errors;
    (void)parse_aliases(s, &errors);
    (void)parse_include_list(s);
  }
  // Random bytes over the characters the grammar cares about.
  std::mt19937 rng(12345);
  const std::string alphabet = "ab:,\"\\ \t\r\n#|/@";
  for (int round = 0; round < 2000; ++round) {
    std::string s;
    const int len = static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    std::vector<AliasParseError> errors;
    for (const AliasEntry& e : parse_aliases(s, &errors)) {
      CHECK(!e.name.empty());
      CHECK(!e.targets.empty());
      CHECK(e.line >= 1);
    }
    (void)parse_include_list(s);
  }
}

TEST_CASE("include lists: commas and newlines separate, comments allowed") {
  auto t = parse_include_list(
      "# the list\n"
      "alice, bob@example.net\r\n"
      "\n"
      "  carol  \n"
      "\"dave\", \"|cmd, with comma\"\n");
  CHECK(t == Strings{"alice", "bob@example.net", "carol", "dave", "|cmd, with comma"});
}

TEST_CASE("include lists: an unterminated quote keeps the line as written") {
  auto t = parse_include_list("alice, \"bob\n");
  CHECK(t == Strings{"alice, \"bob"});
}
