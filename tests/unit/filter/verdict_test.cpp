#include "petrel/filter/verdict.h"

#include <doctest/doctest.h>

namespace petrel::filter {
namespace {

TEST_CASE("verdict: default replies name the filter") {
  Reply r = make_reply(Action::Reject, "", "spamd");
  CHECK(r.code == 550);
  CHECK(r.text == "5.7.1 Message rejected by filter spamd");
  CHECK(r.str() == "550 5.7.1 Message rejected by filter spamd");
  r = make_reply(Action::Tempfail, "", "spamd");
  CHECK(r.code == 451);
  CHECK(r.text == "4.7.1 Message deferred by filter spamd, try again later");
  r = make_reply(Action::Reject, "", "dnsbl", true);
  CHECK(r.text == "5.7.1 Command rejected by filter dnsbl");
}

TEST_CASE("verdict: a reply with a code of the right class is used as is") {
  Reply r = make_reply(Action::Reject, "554 5.7.0 Virus found: Eicar", "clam");
  CHECK(r.code == 554);
  CHECK(r.text == "5.7.0 Virus found: Eicar");
  r = make_reply(Action::Tempfail, "421 4.3.2 busy", "x");
  CHECK(r.code == 421);
  CHECK(r.text == "4.3.2 busy");
  // A basic code without an enhanced one gets the default enhanced code.
  r = make_reply(Action::Reject, "553 go away", "x");
  CHECK(r.code == 553);
  CHECK(r.text == "5.7.1 go away");
  // Multi-line.
  r = make_reply(Action::Reject, "550-5.7.1 first\r\n550 5.7.1 second\r\n", "x");
  CHECK(r.code == 550);
  CHECK(r.text == "5.7.1 first\n5.7.1 second");
  CHECK(r.str() == "550-5.7.1 first\n550 5.7.1 second");
}

TEST_CASE("verdict: text without a code, or with one of the wrong class, gets the default") {
  Reply r = make_reply(Action::Reject, "Spam detected", "x");
  CHECK(r.code == 550);
  CHECK(r.text == "5.7.1 Spam detected");
  r = make_reply(Action::Tempfail, "550 5.7.1 permanent?", "x");
  CHECK(r.code == 451);
  CHECK(r.text == "4.7.1 permanent?");
  r = make_reply(Action::Reject, "250 2.0.0 ok", "x");
  CHECK(r.code == 550);
  CHECK(r.text == "5.7.1 ok");
  r = make_reply(Action::Reject, "bad\x01 char\ttab", "x");
  CHECK(r.text == "5.7.1 bad char tab");
}

TEST_CASE("verdict: on_error maps to an action and an error detail") {
  Verdict v = error_verdict(config::OnError::Tempfail, "timed out");
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail == "error=\"timed out\"");
  CHECK(error_verdict(config::OnError::Reject, "x").action == Action::Reject);
  CHECK(error_verdict(config::OnError::Accept, "x").action == Action::Continue);
  CHECK(error_verdict(config::OnError::Accept, "say \"hi\"").detail == "error=\"say \\\"hi\\\"\"");
}

}  // namespace
}  // namespace petrel::filter
