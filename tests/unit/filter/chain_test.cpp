#include "petrel/filter/chain.h"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include "test_util.h"

namespace petrel::filter {
namespace {

using namespace testing;

config::Filter settings(const std::string& name,
                        config::OnError on_error = config::OnError::Tempfail) {
  config::Filter s;
  s.name = name;
  s.on_error = on_error;
  return s;
}

// Adds a fake to the chain and returns a pointer the test keeps.
FakeFilter* add(Chain& chain, const std::string& name, Verdict v = {},
                config::OnError on_error = config::OnError::Tempfail) {
  auto f = std::make_unique<FakeFilter>(name, std::move(v));
  FakeFilter* raw = f.get();
  chain.add(std::move(f), settings(name, on_error));
  return raw;
}

Verdict with_header(const std::string& name, const std::string& value) {
  Verdict v;
  HeaderOp op;
  op.name = name;
  op.value = value;
  v.headers.push_back(op);
  return v;
}

TEST_CASE("chain: filters run in order and each sees the previous one's changes") {
  Chain chain;
  FakeFilter* a = add(chain, "a", with_header("X-A", "1"));
  Verdict vb = with_header("X-B", "2");
  vb.add_recipients = {"<dave@example.org>"};
  vb.new_sender = "<bounce@example.net>";
  FakeFilter* b = add(chain, "b", vb);
  FakeFilter* c = add(chain, "c");

  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);

  CHECK(out.action == Action::Continue);
  CHECK(out.store());
  CHECK(a->seen_message == kMessage);
  CHECK(b->seen_message.find("X-A: 1\n\n") != std::string::npos);
  CHECK(c->seen_message.find("X-A: 1\nX-B: 2\n\n") != std::string::npos);
  CHECK(c->seen_env.recipients.size() == 3);
  CHECK(c->seen_env.sender == "bounce@example.net");
  CHECK(msg == c->seen_message);
  CHECK(env.recipients ==
        std::vector<std::string>{"alice@example.org", "carol@example.org", "dave@example.org"});
  CHECK(env.sender == "bounce@example.net");
  REQUIRE(out.steps.size() == 3);
  CHECK(
      out.steps[0].log_line.starts_with("0123456789ABCDEFGH: filter=a verdict=continue latency="));
  CHECK(out.steps[0].log_line.ends_with("ms"));
}

TEST_CASE("chain: reject and tempfail stop the chain and drop pending changes") {
  for (Action action : {Action::Reject, Action::Tempfail}) {
    Chain chain;
    Verdict first = with_header("X-A", "1");
    first.delete_recipients = {"carol@example.org"};
    first.quarantine = true;
    add(chain, "a", first);
    Verdict refuse = with_header("X-B", "2");
    refuse.action = action;
    FakeFilter* b = add(chain, "b", refuse);
    FakeFilter* c = add(chain, "c");

    Envelope env = envelope();
    std::string msg = kMessage;
    const Outcome out = chain.run(env, msg);
    CHECK(out.action == action);
    CHECK_FALSE(out.store());
    CHECK(out.filter == "b");
    CHECK_FALSE(out.quarantine);
    CHECK(b->scans == 1);
    CHECK(c->scans == 0);
    CHECK(msg == kMessage);
    CHECK(env.recipients.size() == 2);
    if (action == Action::Reject) {
      CHECK(out.reply.str() == "550 5.7.1 Message rejected by filter b");
      CHECK(out.steps.back().log_line.find(" filter=b verdict=reject ") != std::string::npos);
    } else {
      CHECK(out.reply.str() == "451 4.7.1 Message deferred by filter b, try again later");
    }
  }
}

TEST_CASE("chain: a filter's own reply is used when it has the right class") {
  Chain chain;
  Verdict v;
  v.action = Action::Reject;
  v.reply = "554 5.7.0 Virus found";
  add(chain, "clam", v);
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.reply.code == 554);
  CHECK(out.reply.text == "5.7.0 Virus found");
}

TEST_CASE("chain: discard stores nothing and stops the chain") {
  Chain chain;
  add(chain, "a", with_header("X-A", "1"));
  Verdict d;
  d.action = Action::Discard;
  add(chain, "b", d);
  FakeFilter* c = add(chain, "c");
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Discard);
  CHECK_FALSE(out.store());
  CHECK(out.filter == "b");
  CHECK(c->scans == 0);
  CHECK(msg == kMessage);
  CHECK(out.steps.back().log_line.find("verdict=discard") != std::string::npos);
}

TEST_CASE("chain: accept applies its changes and skips the remaining filters") {
  Chain chain;
  Verdict acc = with_header("X-Accepted", "yes");
  acc.action = Action::Accept;
  add(chain, "whitelist", acc);
  Verdict never;
  never.action = Action::Reject;
  FakeFilter* later = add(chain, "later", never);
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Accept);
  CHECK(out.store());
  CHECK(out.filter == "whitelist");
  CHECK(later->scans == 0);
  CHECK(msg.find("X-Accepted: yes\n") != std::string::npos);
  CHECK(out.steps.size() == 1);
}

TEST_CASE("chain: body replacement, header insert/change/delete and quarantine") {
  Chain chain;
  Verdict v;
  v.new_body = "replaced\n";
  HeaderOp ins;
  ins.kind = HeaderOp::Kind::Insert;
  ins.name = "X-Top";
  ins.value = "first";
  ins.index = 0;
  HeaderOp chg;
  chg.kind = HeaderOp::Kind::Change;
  chg.name = "subject";
  chg.value = "[SPAM] lunch tomorrow";
  chg.index = 1;
  HeaderOp del;
  del.kind = HeaderOp::Kind::Change;
  del.name = "Message-ID";
  del.index = 1;
  v.headers = {ins, chg, del};
  v.quarantine = true;
  v.quarantine_reason = "suspicious";
  v.delete_recipients = {"<Carol@Example.ORG>"};
  add(chain, "milt", v);
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Continue);
  CHECK(out.quarantine);
  CHECK(out.quarantine_reason == "suspicious");
  CHECK(msg.starts_with("X-Top: first\nReceived: "));
  CHECK(msg.find("Subject: [SPAM] lunch tomorrow\n") != std::string::npos);
  CHECK(msg.find("Message-ID") == std::string::npos);
  CHECK(msg.ends_with("\n\nreplaced\n"));
  CHECK(env.recipients == std::vector<std::string>{"alice@example.org"});
}

TEST_CASE("chain: a rewritten message with a CR, or too big, is a filter error") {
  for (auto on_error :
       {config::OnError::Tempfail, config::OnError::Reject, config::OnError::Accept}) {
    Chain chain(1000);
    Verdict bad;
    bad.new_message = "Subject: x\r\n\r\nsmuggled\r\n.\r\n";
    add(chain, "rewriter", bad, on_error);
    FakeFilter* next = add(chain, "next");
    Envelope env = envelope();
    std::string msg = kMessage;
    const Outcome out = chain.run(env, msg);
    CHECK(msg == kMessage);
    CHECK(out.steps[0].error);
    CHECK(out.steps[0].log_line.find("error=\"bare CR in the new message\"") != std::string::npos);
    switch (on_error) {
      case config::OnError::Tempfail:
        CHECK(out.action == Action::Tempfail);
        CHECK(out.reply.code == 451);
        break;
      case config::OnError::Reject:
        CHECK(out.action == Action::Reject);
        CHECK(out.reply.code == 550);
        break;
      case config::OnError::Accept:
        CHECK(out.action == Action::Continue);
        CHECK(next->seen_message == kMessage);  // the next filter sees the original
        break;
    }
  }
  Chain chain(100);
  Verdict big;
  big.new_message = "Subject: x\n\n" + std::string(200, 'a') + "\n";
  add(chain, "grow", big);
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Tempfail);
  CHECK(out.steps[0].detail == "error=\"new message larger than the size limit\"");
}

TEST_CASE("chain: invalid header changes from a filter are a filter error") {
  Chain chain;
  add(chain, "bad", with_header("Not A Name", "x"), config::OnError::Reject);
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Reject);
  CHECK(msg == kMessage);
}

TEST_CASE("chain: removing every recipient discards the message") {
  Chain chain;
  Verdict v;
  v.delete_recipients = {"alice@example.org", "carol@example.org"};
  add(chain, "drop", v);
  Envelope env = envelope();
  std::string msg = kMessage;
  CHECK(chain.run(env, msg).action == Action::Discard);
  CHECK(env.recipients.size() == 2);
}

TEST_CASE("chain: the errors a filter reports go through as its on_error verdict") {
  Chain chain;
  add(chain, "broken", error_verdict(config::OnError::Tempfail, "exit status 69"));
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain.run(env, msg);
  CHECK(out.action == Action::Tempfail);
  CHECK(out.steps[0].error);
  CHECK(out.steps[0].log_line.find("verdict=tempfail latency=") != std::string::npos);
  CHECK(out.steps[0].log_line.ends_with("error=\"exit status 69\""));
}

TEST_CASE("chain: lifecycle calls reach every filter; fini only once") {
  Chain chain;
  FakeFilter* a = add(chain, "a");
  FakeFilter* b = add(chain, "b");
  chain.worker_init();
  chain.reset();
  chain.worker_exit();
  chain.fini();
  chain.fini();
  for (FakeFilter* f : {a, b}) {
    CHECK(f->worker_inits == 1);
    CHECK(f->resets == 1);
    CHECK(f->closes == 1);
    CHECK(f->finis == 1);
  }
  CHECK(chain.names() == std::vector<std::string>{"a", "b"});
}

TEST_CASE("chain: per-stage hooks return the first objection; accept ends the fan-out") {
  Chain chain;
  FakeFilter* a = add(chain, "a");
  FakeFilter* b = add(chain, "b");
  FakeFilter* c = add(chain, "c");
  Envelope env = envelope();
  CHECK_FALSE(chain.on_rcpt(env, "x@example.org"));
  CHECK(c->seen_rcpt == "x@example.org");

  b->rcpt_reply = StageReply{Action::Reject, "554 5.7.1 listed in dnsbl"};
  c->seen_rcpt.clear();
  auto r = chain.on_rcpt(env, "y@example.org");
  REQUIRE(r);
  CHECK(r->action == Action::Reject);
  CHECK(r->filter == "b");
  CHECK(r->reply.str() == "554 5.7.1 listed in dnsbl");
  CHECK(r->log_line.starts_with("filter=b stage=rcpt verdict=reject latency="));
  CHECK(c->seen_rcpt.empty());

  a->rcpt_reply = StageReply{Action::Accept, ""};
  CHECK_FALSE(chain.on_rcpt(env, "z@example.org"));
  CHECK(b->seen_rcpt == "y@example.org");  // not asked again

  c->connect_reply = StageReply{Action::Tempfail, ""};
  r = chain.on_connect(env);
  REQUIRE(r);
  CHECK(r->reply.str() == "451 4.7.1 Command deferred by filter c, try again later");
  CHECK_FALSE(chain.on_helo(env));
  CHECK_FALSE(chain.on_mail(env));
}

TEST_CASE("chain: load builds config filters, then filter_dir executables in name order") {
  TempDir tmp;
  const std::string dir = tmp / "filters.d";
  ::mkdir(dir.c_str(), 0755);
  spit(dir + "/20-second", "#!/bin/sh\nexit 0\n", 0755);
  spit(dir + "/10-first", "#!/bin/sh\necho 'X-First: yes'\n", 0755);
  spit(dir + "/30-not-executable", "#!/bin/sh\nexit 1\n", 0644);
  spit(dir + "/.hidden", "#!/bin/sh\nexit 1\n", 0755);
  spit(dir + "/15-backup~", "#!/bin/sh\nexit 1\n", 0755);
  spit(dir + "/16-old.dpkg-old", "#!/bin/sh\nexit 1\n", 0755);
  ::mkdir((dir + "/40-a-directory").c_str(), 0755);

  config::Config cfg;
  config::Filter f;
  f.name = "configured";
  f.kind = config::FilterKind::Exec;
  f.exec = {"/bin/sh", "-c", "echo 'X-Configured: yes'"};
  cfg.filters.push_back(f);
  cfg.filter_dir = dir;

  auto chain = Chain::load(cfg);
  REQUIRE_MESSAGE(chain, chain.error());
  CHECK(chain->names() == std::vector<std::string>{"configured", "10-first", "20-second"});
  Envelope env = envelope();
  std::string msg = kMessage;
  const Outcome out = chain->run(env, msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("X-Configured: yes\nX-First: yes\n\n") != std::string::npos);
  CHECK(Chain::check(cfg).empty());

  cfg.filter_dir = tmp / "missing";
  auto none = Chain::load(cfg);
  REQUIRE(none);
  CHECK(none->size() == 1);
}

TEST_CASE("chain: check reports unusable filters, load refuses bad plugins") {
  TempDir tmp;
  config::Config cfg;
  cfg.filter_dir = tmp / "none";
  config::Filter e;
  e.name = "gone";
  e.kind = config::FilterKind::Exec;
  e.exec = {tmp / "no-such-program"};
  cfg.filters.push_back(e);
  config::Filter p;
  p.name = "noplugin";
  p.kind = config::FilterKind::Plugin;
  p.plugin = tmp / "missing.so";
  cfg.filters.push_back(p);
  const auto problems = Chain::check(cfg);
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].starts_with("filter gone: cannot execute "));
  CHECK(problems[1].starts_with("filter noplugin: "));
  CHECK(problems[1].find("missing.so") != std::string::npos);

  auto chain = Chain::load(cfg);
  REQUIRE_FALSE(chain);
  CHECK(chain.error().starts_with("filter noplugin: "));
}

}  // namespace
}  // namespace petrel::filter
