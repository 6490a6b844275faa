#include "petrel/delivery/agent.h"

#include <doctest/doctest.h>

#include "test_util.h"

namespace petrel::delivery {
namespace {

using testing::alice;
using testing::message;

TEST_CASE("expand: every placeholder, %% and unknown ones") {
  const Recipient r = alice();
  const Message m = message();
  CHECK(expand("%u|%e|%d|%r|%s|%i|%%|%x|%", r, m, false) ==
        "alice|news|example.org|alice+news@example.org|bob@example.net|0123456789ABCDEFGH|%|%x|%");
  CHECK(expand("/var/mail/%d/%u", r, m, true) == "/var/mail/example.org/alice");
  CHECK(expand("no placeholders", r, m, true) == "no placeholders");
}

TEST_CASE("expand: values cannot escape a path, argv values stay verbatim") {
  Recipient r = alice();
  r.user = "../../etc";
  r.domain = "..";
  r.extension = ".hidden/x\n";
  Message m = message();
  m.sender = "a/b@c";
  const std::string p = expand("/var/mail/%d/%u/.%e/%s", r, m, true);
  CHECK(p == "/var/mail/_./_._.._etc/._hidden_x_/a_b@c");
  // The template's own '.' and '/' are trusted; only values are rewritten.
  CHECK(std::count(p.begin(), p.end(), '/') == 6);
  CHECK(expand("%u", r, m, false) == "../../etc");
  r.extension.clear();
  CHECK(expand("/m/%u%e", r, m, true) == "/m/_._.._etc");
  r.user.clear();
  m.sender.clear();
  CHECK(expand("/m/%d/%u/%s", r, m, true) == "/m/_./_/_");
  CHECK(expand("[%u][%s]", r, m, false) == "[][]");
}

TEST_CASE("delivery_headers: the three headers, in order, LF ends") {
  Recipient r = alice();
  Message m = message();
  CHECK(delivery_headers(r, m) ==
        "Return-Path: <bob@example.net>\n"
        "Delivered-To: alice+news@example.org\n"
        "X-Original-To: Alice+News@Example.ORG\n");
  m.sender.clear();
  r.original.clear();
  r.address = "x@y\r\nBcc: z";
  CHECK(delivery_headers(r, m) ==
        "Return-Path: <>\nDelivered-To: x@yBcc: z\nX-Original-To: x@yBcc: z\n");
}

TEST_CASE("has_delivered_to: header only, case-insensitive") {
  const std::string with =
      "Received: x\nDELIVERED-TO:  <Alice+News@example.org> \nSubject: s\n\nbody\n";
  CHECK(has_delivered_to(with, "alice+news@example.org"));
  CHECK_FALSE(has_delivered_to(with, "bob@example.org"));
  CHECK_FALSE(has_delivered_to("Subject: s\n\nDelivered-To: alice@x\n", "alice@x"));
}

TEST_CASE("verdicts encode to one line and back") {
  const Verdict v{Outcome::Bounced, "5.1.1", "550 5.1.1 no\r\nsuch user"};
  const std::string line = encode(v);
  CHECK(line == "B 5.1.1 550 5.1.1 no  such user");
  auto back = decode(line + "\n");
  REQUIRE(back);
  CHECK(back->outcome == Outcome::Bounced);
  CHECK(back->status == "5.1.1");
  CHECK(back->detail == "550 5.1.1 no  such user");
  auto d = decode(encode(delivered("discarded")));
  REQUIRE(d);
  CHECK(d->outcome == Outcome::Delivered);
  CHECK(d->detail == "discarded");
  CHECK(decode(encode(deferred("4.2.0", "")))->outcome == Outcome::Deferred);
  CHECK_FALSE(decode("X 1"));
  CHECK_FALSE(decode(""));
}

TEST_CASE("deferred_io maps quota and full disk, never bounces") {
  CHECK(deferred_io(EDQUOT, "write").status == "4.2.2");
  CHECK(deferred_io(ENOSPC, "write").status == "4.3.1");
  const Verdict v = deferred_io(EIO, "write /x");
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.2.0");
  CHECK(v.detail.starts_with("write /x: "));
}

}  // namespace
}  // namespace petrel::delivery
