#include "petrel/delivery/mbox.h"

#include <cctype>
#include <chrono>

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/time.h>

#include "petrel/delivery/local.h"
#include "test_util.h"

namespace petrel::delivery {
namespace {

using namespace testing;

constexpr const char* kHeaders =
    "Return-Path: <bob@example.net>\n"
    "Delivered-To: alice+news@example.org\n"
    "X-Original-To: Alice+News@Example.ORG\n";

// The mboxrd form of kBody: the two lines matching ^>*From  get one more '>'.
const std::string kQuotedBody =
    "Received: from client.example (client.example [192.0.2.1])\n"
    "\tby mail.example.org (petrel) with ESMTP id 0123456789ABCDEFGH\n"
    "From: Bob <bob@example.net>\n"
    "Subject: hello\n"
    "\n"
    "First line.\n"
    ">From the start of a line.\n"
    ">>From an already quoted line.\n"
    ".a line with a dot\n"
    "Last line.\n";

MboxOptions quick() {
  MboxOptions o;
  o.lock_timeout_ms = 300;
  return o;
}

TEST_CASE("mbox: From line, headers, >From quoting, blank line after") {
  TempDir tmp;
  const std::string path = tmp / "spool/alice";
  const Verdict v = deliver_mbox(path, alice(), message());
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(v.detail == "delivered to mailbox");
  const std::string content = slurp(path);
  const std::size_t nl = content.find('\n');
  REQUIRE(nl != std::string::npos);
  const std::string from = content.substr(0, nl);
  // "From bob@example.net Thu Nov 26 02:50:00 2026", ctime(3) style.
  const std::string shape = "From bob@example.net AAA AAA #9 99:99:99 9999";
  REQUIRE(from.size() == shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const char c = from[i];
    const bool fits = shape[i] == 'A' ? std::isalpha(static_cast<unsigned char>(c))
                      : shape[i] == '9' ? std::isdigit(static_cast<unsigned char>(c))
                      : shape[i] == '#' ? c == ' ' || std::isdigit(static_cast<unsigned char>(c))
                                        : c == shape[i];
    CHECK_MESSAGE(fits, from);
  }
  CHECK(content.substr(nl + 1) == kHeaders + kQuotedBody + "\n");
  CHECK_FALSE(exists(path + ".lock"));
}

TEST_CASE("mbox: two deliveries are appended; null sender is MAILER-DAEMON") {
  TempDir tmp;
  const std::string path = tmp / "alice";
  REQUIRE(deliver_mbox(path, alice(), message()).outcome == Outcome::Delivered);
  Message bounce = message("Subject: bounce\n\nno final newline");
  bounce.sender.clear();
  REQUIRE(deliver_mbox(path, alice(), bounce).outcome == Outcome::Delivered);
  const std::string content = slurp(path);
  const std::size_t second = content.find("\n\nFrom MAILER-DAEMON ");
  REQUIRE(second != std::string::npos);
  CHECK(content.starts_with("From bob@example.net "));
  CHECK(content.substr(0, second + 2).ends_with(kQuotedBody + "\n"));
  // A message without a final newline still ends the mbox cleanly.
  CHECK(content.ends_with("Return-Path: <>\nDelivered-To: alice+news@example.org\n"
                          "X-Original-To: Alice+News@Example.ORG\nSubject: bounce\n\n"
                          "no final newline\n\n"));
}

TEST_CASE("mbox: a held dotlock defers after the bounded wait and is left alone") {
  TempDir tmp;
  const std::string path = tmp / "alice";
  spit(path, "From x Thu Jan  1 00:00:00 1970\nold\n\n");
  spit(path + ".lock", "12345\n");
  const auto start = std::chrono::steady_clock::now();
  const Verdict v = deliver_mbox(path, alice(), message(), quick());
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.2.0");
  CHECK(v.detail.find("locked") != std::string::npos);
  CHECK(took >= std::chrono::milliseconds(250));
  CHECK(took < std::chrono::seconds(3));
  CHECK(slurp(path) == "From x Thu Jan  1 00:00:00 1970\nold\n\n");
  CHECK(slurp(path + ".lock") == "12345\n");
}

TEST_CASE("mbox: a stale dotlock is removed") {
  TempDir tmp;
  const std::string path = tmp / "alice";
  spit(path + ".lock", "99999\n");
  struct timeval old[2] = {{std::time(nullptr) - 3600, 0}, {std::time(nullptr) - 3600, 0}};
  REQUIRE(::utimes((path + ".lock").c_str(), old) == 0);
  CHECK(deliver_mbox(path, alice(), message(), quick()).outcome == Outcome::Delivered);
  CHECK_FALSE(exists(path + ".lock"));
  CHECK(slurp(path).starts_with("From bob@example.net "));
}

TEST_CASE("mbox: an fcntl lock held by a mail reader defers") {
  TempDir tmp;
  const std::string path = tmp / "alice";
  spit(path, "");
  UniqueFd reader(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  REQUIRE(::fcntl(reader.get(), F_OFD_SETLK, &fl) == 0);
  const Verdict v = deliver_mbox(path, alice(), message(), quick());
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.detail.find("fcntl") != std::string::npos);
  CHECK(slurp(path).empty());
  CHECK_FALSE(exists(path + ".lock"));  // our dotlock went away with the failure
  reader.reset();
  CHECK(deliver_mbox(path, alice(), message(), quick()).outcome == Outcome::Delivered);
}

TEST_CASE("mbox: symlinks and non-files are refused, /dev/null swallows") {
  TempDir tmp;
  spit(tmp / "target", "");
  REQUIRE(::symlink((tmp / "target").c_str(), (tmp / "link").c_str()) == 0);
  const Verdict v = deliver_mbox(tmp / "link", alice(), message());
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(slurp(tmp / "target").empty());
  REQUIRE(::mkdir((tmp / "dir").c_str(), 0700) == 0);
  CHECK(deliver_mbox(tmp / "dir", alice(), message()).outcome == Outcome::Deferred);
  CHECK(deliver_mbox("/dev/null", alice(), message()).outcome == Outcome::Delivered);
}

TEST_CASE("mbox via deliver_local") {
  TempDir tmp;
  LocalSettings s;
  s.mbox = quick();
  const Verdict v = deliver_local({"mbox:" + tmp.path() + "/%u.mbox"}, alice(), message(), s);
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(exists(tmp / "alice.mbox"));
}

}  // namespace
}  // namespace petrel::delivery
