// The per-target state file format (petrel/queue/spool.h, petrel/queue/state.h).
#include "petrel/queue/state.h"

#include <doctest/doctest.h>

using namespace petrel::queue;

TEST_CASE("state: format and parse round-trip every status") {
  MessageState st;
  st.warned = true;
  auto target = [](TargetStatus s, const char* addr, bool notified = false) {
    TargetState t;
    t.status = s;
    t.attempts = 3;
    t.next_attempt = 1700000000;
    t.rcpt = 1;
    t.code = "4.4.1";
    t.target = addr;
    t.error = "connect to mx[192.0.2.1]:25: Connection refused";
    t.notified = notified;
    return t;
  };
  st.targets = {target(TargetStatus::Pending, "a@x"), target(TargetStatus::Deferred, "b@x"),
                target(TargetStatus::Delivered, "|/bin/cat"), target(TargetStatus::Bounced, "/var/mail/d"),
                target(TargetStatus::Bounced, "e@x", true)};
  std::string text = format_state(st);
  CHECK(text.find("\tbounced\t") != std::string::npos);
  CHECK(text.find("\tbounced-notified\t") != std::string::npos);
  auto back = parse_state(text);
  REQUIRE(back.ok());
  CHECK(back->warned);
  REQUIRE(back->targets.size() == st.targets.size());
  for (size_t i = 0; i < st.targets.size(); ++i) {
    CHECK(back->targets[i].status == st.targets[i].status);
    CHECK(back->targets[i].notified == st.targets[i].notified);
    CHECK(back->targets[i].attempts == 3);
    CHECK(back->targets[i].next_attempt == 1700000000);
    CHECK(back->targets[i].rcpt == 1);
    CHECK(back->targets[i].code == "4.4.1");
    CHECK(back->targets[i].target == st.targets[i].target);
    CHECK(back->targets[i].error == st.targets[i].error);
  }
  CHECK(format_state(*back) == text);
}

TEST_CASE("state: tabs and newlines in fields cannot break the format") {
  MessageState st;
  TargetState t;
  t.status = TargetStatus::Deferred;
  t.target = "x@y";
  t.error = "line one\nline\ttwo";
  st.targets = {t};
  auto back = parse_state(format_state(st));
  REQUIRE(back.ok());
  REQUIRE(back->targets.size() == 1);
  CHECK(back->targets[0].error.find('\n') == std::string::npos);
  CHECK(back->targets[0].error.find('\t') == std::string::npos);
}

TEST_CASE("state: malformed files are errors") {
  CHECK_FALSE(parse_state("NOT-STATE\n").ok());
  CHECK_FALSE(parse_state("PETREL-STATE1\nD\tbounced\t1\n").ok());
  CHECK_FALSE(parse_state("PETREL-STATE1\nD\tlost\t1\t0\t0\t5.0.0\ta@b\terr\n").ok());
  CHECK_FALSE(parse_state("PETREL-STATE1\nW 0").ok());  // truncated: no final newline
  CHECK(parse_state("PETREL-STATE1\nW 0\n").ok());
}
