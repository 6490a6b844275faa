#include "petrel/delivery/maildir.h"

#include <set>

#include <doctest/doctest.h>

#include "petrel/delivery/local.h"
#include "test_util.h"

namespace petrel::delivery {
namespace {

using namespace testing;

TEST_CASE("maildir: the message lands in new/ with the three headers and exact bytes") {
  TempDir tmp;
  const std::string dir = tmp / "mail/example.org/alice";
  const Verdict v = deliver_maildir(dir + "/", alice(), message());
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(v.status == "2.0.0");
  CHECK(v.detail == "delivered to maildir");

  CHECK(list_dir(dir) == std::vector<std::string>{"cur", "new", "tmp"});
  CHECK(list_dir(dir + "/tmp").empty());
  CHECK(list_dir(dir + "/cur").empty());
  const auto files = list_dir(dir + "/new");
  REQUIRE(files.size() == 1);
  const std::string content = slurp(dir + "/new/" + files[0]);
  const std::string expected =
      "Return-Path: <bob@example.net>\n"
      "Delivered-To: alice+news@example.org\n"
      "X-Original-To: Alice+News@Example.ORG\n" +
      kBody;
  CHECK(content == expected);
  // Maildir++ size in the name, and no ':' (the flags separator) anywhere.
  CHECK(files[0].ends_with(",S=" + std::to_string(expected.size())));
  CHECK(files[0].find(':') == std::string::npos);
  struct stat st {};
  REQUIRE(::stat((dir + "/new/" + files[0]).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("maildir: many deliveries get unique names, nothing left in tmp/") {
  TempDir tmp;
  const std::string dir = tmp / "Maildir";
  for (int i = 0; i < 200; ++i) REQUIRE(deliver_maildir(dir, alice(), message()).outcome == Outcome::Delivered);
  const auto files = list_dir(dir + "/new");
  CHECK(files.size() == 200);
  CHECK(std::set<std::string>(files.begin(), files.end()).size() == 200);
  CHECK(list_dir(dir + "/tmp").empty());
}

TEST_CASE("maildir: a path that cannot be created defers, nothing is lost") {
  TempDir tmp;
  spit(tmp / "file", "not a directory");
  const Verdict v = deliver_maildir(tmp / "file/Maildir", alice(), message());
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.2.0");
  CHECK(v.detail.find("file") != std::string::npos);
}

TEST_CASE("maildir via deliver_local: placeholders are expanded path-safe") {
  TempDir tmp;
  Recipient r = alice();
  r.user = "../evil";
  const Verdict v = deliver_local({"maildir:" + tmp.path() + "/%d/%u"}, r, message());
  REQUIRE(v.outcome == Outcome::Delivered);
  CHECK(list_dir(tmp.path()) == std::vector<std::string>{"example.org"});
  CHECK(list_dir(tmp / "example.org") == std::vector<std::string>{"_._evil"});
  CHECK(list_dir(tmp / "example.org/_._evil/new").size() == 1);
}

TEST_CASE("deliver_local: a message already delivered to this address is a loop") {
  TempDir tmp;
  const std::string looped = "Delivered-To: alice+news@example.org\n" + kBody;
  const Verdict v = deliver_local({"maildir:" + tmp.path() + "/m"}, alice(), message(looped));
  CHECK(v.outcome == Outcome::Bounced);
  CHECK(v.status == "5.4.6");
  CHECK_FALSE(exists(tmp / "m"));
}

TEST_CASE("deliver_local: discard and bad specs") {
  const Verdict d = deliver_local({"discard"}, alice(), message());
  CHECK(d.outcome == Outcome::Delivered);
  CHECK(d.detail == "discarded");
  const Verdict bad = deliver_local({"carrier-pigeon:/x"}, alice(), message());
  CHECK(bad.outcome == Outcome::Deferred);
  CHECK(bad.status == "4.3.5");
  CHECK(deliver_local({}, alice(), message()).outcome == Outcome::Deferred);
  CHECK(deliver_local({"pipe:'unterminated"}, alice(), message()).status == "4.3.5");
}

TEST_CASE("parse_deliver and split_command") {
  auto words = split_command("  /usr/bin/procmail -d %u  'a b' \"c \\\" d\" e\\ f ''");
  REQUIRE(words);
  CHECK(*words == std::vector<std::string>{"/usr/bin/procmail", "-d", "%u", "a b", "c \" d", "e f", ""});

  auto p = parse_deliver({"pipe:/usr/bin/x --to %r"});
  REQUIRE(p);
  CHECK(p->kind == DeliverSpec::Kind::Pipe);
  CHECK(p->argv == std::vector<std::string>{"/usr/bin/x", "--to", "%r"});
  p = parse_deliver({"pipe:", "/usr/bin/x y", "%r"});
  REQUIRE(p);
  CHECK(p->argv == std::vector<std::string>{"/usr/bin/x y", "%r"});
  p = parse_deliver({"pipe:/usr/bin/x", "--to"});
  REQUIRE(p);
  CHECK(p->argv == std::vector<std::string>{"/usr/bin/x", "--to"});
  CHECK_FALSE(parse_deliver({"pipe:", ""}));
  CHECK_FALSE(parse_deliver({"pipe:   "}));
  p = parse_deliver({"lmtp:unix:/run/dovecot/lmtp"});
  REQUIRE(p);
  CHECK(p->kind == DeliverSpec::Kind::Lmtp);
  CHECK(p->where == "unix:/run/dovecot/lmtp");
  p = parse_deliver({"mbox:/var/mail/%u"});
  REQUIRE(p);
  CHECK(p->kind == DeliverSpec::Kind::Mbox);
  CHECK(p->where == "/var/mail/%u");
  CHECK(parse_deliver({"discard"})->kind == DeliverSpec::Kind::Discard);
  CHECK_FALSE(parse_deliver({"maildir:"}));
  CHECK_FALSE(parse_deliver({"maildir:/a", "b"}));
}

}  // namespace
}  // namespace petrel::delivery
