#include "petrel/filter/plugin.h"

#include <dlfcn.h>
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>

#include "petrel/filter/chain.h"
#include "test_util.h"

namespace petrel::filter {
namespace {

using namespace testing;
using Options = std::vector<std::pair<std::string, std::string>>;

config::Filter plugin_settings(const std::string& path, Options options = {},
                               config::OnError on_error = config::OnError::Tempfail) {
  config::Filter s;
  s.name = "plug";
  s.kind = config::FilterKind::Plugin;
  s.plugin = path;
  s.options = std::move(options);
  s.on_error = on_error;
  return s;
}

// Builds tests/unit/filter/plugins/NAME.c into `tmp`, failing the test if it
// does not compile.
std::string test_plugin(const TempDir& tmp, const std::string& name, const std::string& libs = "") {
  std::string log;
  const std::string so = build_test_plugin(name, tmp.path(), &log, libs);
  REQUIRE_MESSAGE(!so.empty(), "cannot build test plugin " << name << ":\n" << log);
  return so;
}

std::string rules_so() {
  std::string log;
  const std::string so = rules_plugin(&log);
  REQUIRE_MESSAGE(!so.empty(), "cannot build rules.so:\n" << log);
  return so;
}

std::unique_ptr<Filter> load(const std::string& so, Options options = {},
                             config::OnError on_error = config::OnError::Tempfail) {
  auto f = make_plugin_filter(plugin_settings(so, std::move(options), on_error), "/etc/petrel");
  REQUIRE_MESSAGE(f, f.error());
  return std::move(*f);
}

// Runs one filter through a chain so its verdict's changes are applied.
Outcome run_one(std::unique_ptr<Filter> f, std::string& msg, Envelope env = envelope()) {
  Chain chain;
  config::Filter s;
  s.name = f->name();
  chain.add(std::move(f), s);
  chain.worker_init();
  Outcome out = chain.run(env, msg);
  chain.worker_exit();
  chain.fini();
  return out;
}

const std::string kGtube =
    "Received: from client.example (client.example [192.0.2.1])\n"
    "\tby mail.example.org (petrel) with ESMTP id 0123456789ABCDEFGH\n"
    "From: Spammer <spam@example.net>\n"
    "To: alice@example.org\n"
    "Subject: Test spam mail (GTUBE)\n"
    "Date: Wed, 26 Nov 2025 10:00:00 +0000\n"
    "Message-ID: <gtube@example.net>\n"
    "\n"
    "This is the GTUBE, the\n"
    "\tGeneric\n"
    "\tTest for\n"
    "\tUnsolicited\n"
    "\tBulk\n"
    "\tEmail\n"
    "\n"
    "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n";

// --- the host and the ABI -------------------------------------------------------

TEST_CASE("plugin: the whole lifecycle, options, envelope and header changes") {
  TempDir tmp;
  const std::string so = test_plugin(tmp, "probe");
  CHECK(check_plugin(so));
  const std::string trace = tmp / "trace";
  auto f = load(so, {{"trace", trace}});
  CHECK(f->name() == "plug");

  std::string msg = kMessage;
  msg.insert(msg.find("Subject:"), "X-Remove-Me: 1\nX-REMOVE-ME: 2\n");
  const Outcome out = run_one(std::move(f), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("X-Probe: 0123456789ABCDEFGH bob@example.net 2 1\n\n") != std::string::npos);
  CHECK(msg.find("X-Remove-Me") == std::string::npos);
  CHECK(msg.find("X-REMOVE-ME") == std::string::npos);
  CHECK(out.steps[0].log_line.ends_with(" probe=yes"));
  CHECK(slurp(trace) == "init\nworker_init\nscan\nworker_exit\nfini\n");
}

TEST_CASE("plugin: actions from scan, and errors applying on_error") {
  TempDir tmp;
  const std::string so = test_plugin(tmp, "probe");
  struct Case {
    const char* verdict;
    Action action;
  };
  for (Case c : {Case{"accept", Action::Accept}, Case{"reject", Action::Reject},
                 Case{"tempfail", Action::Tempfail}, Case{"discard", Action::Discard}}) {
    CAPTURE(c.verdict);
    std::string msg = kMessage;
    const Outcome out = run_one(load(so, {{"verdict", c.verdict}}), msg);
    CHECK(out.action == c.action);
    if (c.action == Action::Reject) CHECK(out.reply.str() == "550 5.7.1 reject from probe");
    if (c.action == Action::Accept) CHECK(msg.find("X-Probe: ") != std::string::npos);
    if (c.action != Action::Accept) CHECK(msg == kMessage);
  }
  std::string msg = kMessage;
  Outcome out = run_one(load(so, {{"verdict", "error"}}), msg);
  CHECK(out.action == Action::Tempfail);
  CHECK(out.steps[0].error);
  out = run_one(load(so, {{"verdict", "error"}}, config::OnError::Accept), msg);
  CHECK(out.action == Action::Continue);
  out = run_one(load(so, {{"verdict", "badaction"}}, config::OnError::Reject), msg);
  CHECK(out.action == Action::Reject);
  CHECK(out.steps[0].detail == "error=\"unknown action 42\"");
}

TEST_CASE("plugin: per-stage callbacks answer before DATA") {
  TempDir tmp;
  const std::string so = test_plugin(tmp, "probe");
  Chain chain;
  chain.add(load(so, {{"reject_rcpt", "spamtrap@example.org"},
                      {"tempfail_helo", "bad.example"},
                      {"accept_mail", "friend@example.net"}}),
            plugin_settings(so));
  FakeFilter* after = new FakeFilter("after");
  after->rcpt_reply = StageReply{Action::Reject, ""};
  chain.add(std::unique_ptr<Filter>(after), config::Filter{});
  chain.worker_init();

  Envelope env = envelope();
  auto r = chain.on_rcpt(env, "spamtrap@example.org");
  REQUIRE(r);
  CHECK(r->reply.str() == "554 5.7.1 <spamtrap@example.org> is not wanted");
  CHECK(r->filter == "plug");
  CHECK(after->seen_rcpt.empty());
  r = chain.on_rcpt(env, "alice@example.org");  // the plugin passes, the fake refuses
  REQUIRE(r);
  CHECK(r->filter == "after");

  env.helo = "bad.example";
  r = chain.on_helo(env);
  REQUIRE(r);
  CHECK(r->action == Action::Tempfail);
  CHECK(r->reply.code == 451);
  env.helo = "good.example";
  CHECK_FALSE(chain.on_helo(env));
  CHECK_FALSE(chain.on_connect(env));  // NULL callback: not interested
  env.sender = "friend@example.net";
  CHECK_FALSE(chain.on_mail(env));
  chain.worker_exit();
  chain.fini();
}

TEST_CASE("plugin: a failing init is a load error with the plugin's reason") {
  TempDir tmp;
  const std::string so = test_plugin(tmp, "probe");
  auto f = make_plugin_filter(plugin_settings(so, {{"fail_init", "no database"}}), "/");
  REQUIRE_FALSE(f);
  CHECK(f.error() == so + ": init failed: no database");
}

TEST_CASE("plugin: ABI mismatches and missing symbols are refused at load time") {
  TempDir tmp;
  Status st = check_plugin(test_plugin(tmp, "bad_abi"));
  REQUIRE_FALSE(st);
  CHECK(st.error().find("built for filter ABI version 42, petrel has version 1") !=
        std::string::npos);

  st = check_plugin(test_plugin(tmp, "short_struct"));
  REQUIRE_FALSE(st);
  CHECK(st.error().find("ABI version 1 needs at least") != std::string::npos);

  st = check_plugin(test_plugin(tmp, "missing_symbol"));
  REQUIRE_FALSE(st);
  CHECK(st.error().find("undefined symbol: petrel_test_no_such_function") != std::string::npos);

  st = check_plugin(test_plugin(tmp, "no_entry"));
  REQUIRE_FALSE(st);
  CHECK(st.error().find("no symbol petrel_filter_entry") != std::string::npos);

  st = check_plugin(tmp / "absent.so");
  REQUIRE_FALSE(st);
  CHECK(st.error().find("absent.so") != std::string::npos);

  // check-config sees the same through Chain::check.
  config::Config cfg;
  cfg.filter_dir = "";
  cfg.filters.push_back(plugin_settings(tmp / "bad_abi.so"));
  const auto problems = Chain::check(cfg);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].starts_with("filter plug: "));
  CHECK(problems[0].find("ABI version") != std::string::npos);
}

// Runs `body` in a child process (standing in for a worker) and returns its
// wait status.
template <typename Body>
int in_child(const Body& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST_CASE("plugin: a scan that outlives its timeout ends the worker; a crash too") {
  TempDir tmp;
  const std::string hang = test_plugin(tmp, "hang");
  config::Filter s = plugin_settings(hang);
  s.timeout = 1;
  auto f = make_plugin_filter(s, "/");
  REQUIRE(f);
  const auto start = std::chrono::steady_clock::now();
  int status = in_child([&] { (*f)->scan(envelope(), kMessage); });
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGALRM);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));

  auto crash = make_plugin_filter(plugin_settings(test_plugin(tmp, "crash")), "/");
  REQUIRE(crash);
  status = in_child([&] {
    ::signal(SIGSEGV, SIG_DFL);  // the sanitizer's handler would report, not die by it
    (*crash)->scan(envelope(), kMessage);
  });
  CHECK(WIFSIGNALED(status));

  // The watchdog is disarmed after a normal callback; an earlier alarm is kept.
  const std::string probe = test_plugin(tmp, "probe");
  auto p = load(probe);
  ::alarm(100);
  p->scan(envelope(), kMessage);
  const unsigned left = ::alarm(0);
  CHECK(left > 90);
  CHECK(left <= 100);
  p->fini();
}

TEST_CASE("plugin: the DNSBL test plugin loads, checks its options and fails open") {
  TempDir tmp;
  const std::string so = test_plugin(tmp, "dnsbl", "-lresolv");
  CHECK(check_plugin(so));
  auto bad = make_plugin_filter(plugin_settings(so), "/");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().find("option zone is required") != std::string::npos);
  // Nothing answers on port 9 of loopback: a broken list lets the client through.
  auto f = load(so, {{"zone", "bl.test"}, {"nameserver", "127.0.0.1:9"}});
  f->worker_init();
  CHECK_FALSE(f->on_rcpt(envelope(), "alice@example.org"));
  f->close();
  f->fini();
}

// --- rules.so ---------------------------------------------------------------------

TEST_CASE("rules: GTUBE is spam far above any threshold; the headers say so") {
  const std::string so = rules_so();
  CHECK(check_plugin(so));
  std::string msg = kGtube;
  Outcome out = run_one(load(so), msg);
  CHECK(out.action == Action::Continue);  // no reject_threshold: tag only
  CHECK(msg.find("X-Spam-Score: 10") != std::string::npos);
  const std::size_t status = msg.find("X-Spam-Status: Yes, score=");
  REQUIRE(status != std::string::npos);
  CHECK(msg.find("GTUBE", status) != std::string::npos);
  CHECK(out.steps[0].detail.starts_with("score=10"));

  msg = kGtube;
  out = run_one(load(so, {{"tag_threshold", "2.0"}, {"reject_threshold", "10.0"}}), msg);
  CHECK(out.action == Action::Reject);
  CHECK(out.reply.code == 550);
  CHECK(out.reply.text.starts_with("5.7.1 Message rejected as spam (score 10"));
  CHECK(msg == kGtube);
}

TEST_CASE("rules: a ham message scores as ham") {
  const std::string so = rules_so();
  std::string msg = kMessage;
  Outcome out = run_one(load(so), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("X-Spam-Score: 0.0\n") != std::string::npos);
  CHECK(msg.find("X-Spam-Status: No, score=0.0 tests=none\n") != std::string::npos);

  // Below tag_threshold: no headers; below reject_threshold: no reject.
  msg = kMessage;
  out = run_one(load(so, {{"tag_threshold", "2.0"}, {"reject_threshold", "10.0"}}), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg == kMessage);
}

TEST_CASE("rules: header, body, phrase and uri rules from a rules file") {
  TempDir tmp;
  spit(tmp / "rules.conf",
       "# test rules\n"
       "header SUBJ_WIN   Subject =~ /\\bwinner\\b/i 1.5\n"
       "header NO_LIST    List-Id !~ /./ 0.3\n"
       "body   BODY_PILLS /cheap\\s+pills/i 2\n"
       "phrase ACT_NOW    \"act   now\" 1.0\n"
       "uri    URI_BAD    /^https?:\\/\\/bad\\.example\\//i 3\n"
       "full   RAW_QP     /=3D/ 0.5\n");
  const std::string so = rules_so();
  std::string msg =
      "Received: from x\n"
      "Subject: =?UTF-8?B?WW91IGFyZSBhIFdJTk5FUg==?=\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/alternative; boundary=\"b1\"\n"
      "\n"
      "--b1\n"
      "Content-Type: text/plain; charset=utf-8\n"
      "Content-Transfer-Encoding: quoted-printable\n"
      "\n"
      "Buy cheap =\n"
      "pills, ACT\n"
      "NOW a=3Db\n"
      "--b1\n"
      "Content-Type: text/html\n"
      "Content-Transfer-Encoding: base64\n"
      "\n"
      "PGEgaHJlZj0iaHR0cDovL2JhZC5leGFtcGxlL3g/YT0xJmFtcDtiPTIiPmNsaWNrPC9hPg==\n"
      "--b1--\n";
  Outcome out = run_one(load(so, {{"rules", tmp / "rules.conf"}, {"spam_threshold", "8"}}), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("X-Spam-Score: 8.3\n") != std::string::npos);
  CHECK(msg.find("X-Spam-Status: Yes, score=8.3 tests=SUBJ_WIN,NO_LIST,BODY_PILLS,ACT_NOW,\n"
                 "\tURI_BAD,RAW_QP\n\n") != std::string::npos);
  CHECK(out.steps[0].detail ==
        "score=8.3 tests=SUBJ_WIN,NO_LIST,BODY_PILLS,ACT_NOW,URI_BAD,RAW_QP");
}

TEST_CASE("rules: errors in options or the rules file fail init with file and line") {
  TempDir tmp;
  const std::string so = rules_so();
  spit(tmp / "bad.conf", "body OK /x/ 1\nbody BROKEN /(unclosed/ 1\n");
  auto f = make_plugin_filter(plugin_settings(so, {{"rules", "bad.conf"}}), tmp.path());
  REQUIRE_FALSE(f);
  CHECK(f.error().find(tmp / "bad.conf" + ":2: rule BROKEN: regex error") != std::string::npos);

  spit(tmp / "bad2.conf", "bodyy X /x/ 1\n");
  f = make_plugin_filter(plugin_settings(so, {{"rules", tmp / "bad2.conf"}}), "/");
  REQUIRE_FALSE(f);
  CHECK(f.error().find(":1: unknown rule type \"bodyy\"") != std::string::npos);

  f = make_plugin_filter(plugin_settings(so, {{"reject_treshold", "5"}}), "/");
  REQUIRE_FALSE(f);
  CHECK(f.error().find("unknown option \"reject_treshold\"") != std::string::npos);

  f = make_plugin_filter(plugin_settings(so, {{"tag_threshold", "lots"}}), "/");
  REQUIRE_FALSE(f);

  f = make_plugin_filter(plugin_settings(so, {{"rules", tmp / "absent.conf"}}), "/");
  REQUIRE_FALSE(f);
  CHECK(f.error().find("cannot read rules file") != std::string::npos);
}

TEST_CASE("rules: etc/rules.conf is the built-in ruleset and loads on its own") {
  const std::string so = rules_so();
  const std::string src = source_dir();
  REQUIRE_FALSE(src.empty());
  void* h = ::dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE(h);
  using TextFn = const char* (*)();
  auto text = reinterpret_cast<TextFn>(::dlsym(h, "petrel_rules_default_text"));
  const bool found = text != nullptr;
  REQUIRE(found);
  CHECK(std::string(text()) == slurp(src + "/etc/rules.conf"));
  ::dlclose(h);

  std::string msg = kGtube;
  const Outcome out =
      run_one(load(so, {{"rules", src + "/etc/rules.conf"}, {"reject_threshold", "10"}}), msg);
  CHECK(out.action == Action::Reject);
}

TEST_CASE("rules: the default ruleset catches a typical spam and strips forged headers") {
  const std::string so = rules_so();
  std::string msg =
      "Received: from x\n"
      "From: \"Lottery Board\" <12345678@winners.example>\n"
      "Subject: CONGRATULATIONS WINNER!!!\n"
      "X-Spam-Status: No, score=-5\n"
      "Content-Type: text/html\n"
      "\n"
      "<html><body><p>Dear friend,</p><p>You have <b>won</b> 2.5 million US dollars.\n"
      "You have been selected! Act now and <a href=\"http://192.0.2.7/claim\">click here</a>"
      " to claim via Western Union.</p></body></html>\n";
  const Outcome out = run_one(load(so, {{"strip_headers", "yes"}}), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("score=-5") == std::string::npos);
  const std::size_t at = msg.find("X-Spam-Status: Yes, score=");
  REQUIRE(at != std::string::npos);
  for (const char* rule :
       {"MISSING_DATE", "SUBJ_ALL_CAPS", "SUBJ_EXCLAIM", "FROM_LONG_DIGITS", "MILLION_MONEY",
        "DEAR_FRIEND", "SELECTED", "ACT_NOW", "CLICK_HERE", "URI_NUMERIC_IP", "WIRE_TRANSFER"}) {
    CAPTURE(rule);
    CHECK(out.steps[0].detail.find(rule) != std::string::npos);
  }
}

// --- the example plugin in man/petrel-filters.7 -------------------------------------

// The C source between the EXAMPLE markers, with roff escapes undone.
std::string man_example(const std::string& page) {
  const std::string begin = ".\\\" BEGIN EXAMPLE PLUGIN\n";
  const std::string end = ".\\\" END EXAMPLE PLUGIN\n";
  const std::size_t b = page.find(begin);
  const std::size_t e = page.find(end);
  if (b == std::string::npos || e == std::string::npos || e < b) return {};
  std::string out;
  std::size_t pos = b + begin.size();
  while (pos < e) {
    std::size_t nl = page.find('\n', pos);
    std::string line = page.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.starts_with(".")) continue;  // .EX, .EE, .nf ...
    std::string plain;
    for (std::size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        const char c = line[i + 1];
        if (c == 'e') {
          plain += '\\';
          ++i;
          continue;
        }
        if (c == '-') {
          plain += '-';
          ++i;
          continue;
        }
        if (c == '&') {
          ++i;
          continue;
        }
        if (line.compare(i, 4, "\\(aq") == 0) {
          plain += '\'';
          i += 3;
          continue;
        }
        if (line.compare(i, 4, "\\(dq") == 0) {
          plain += '"';
          i += 3;
          continue;
        }
      }
      plain += line[i];
    }
    out += plain + "\n";
  }
  return out;
}

TEST_CASE("man: the example plugin in petrel-filters(7) compiles, loads and works") {
  TempDir tmp;
  const std::string src = source_dir();
  const std::string code = man_example(slurp(src + "/man/petrel-filters.7"));
  REQUIRE_MESSAGE(!code.empty(), "no example between the markers in man/petrel-filters.7");
  spit(tmp / "example.c", code);
  std::string log;
  const int rc =
      run_command("cc -std=c11 -Wall -Wextra -Werror -shared -fPIC -I'" + src + "/include' '" +
                      (tmp / "example.c") + "' -o '" + (tmp / "example.so") + "'",
                  &log);
  REQUIRE_MESSAGE(rc == 0, "example does not compile:\n" << log << "\n" << code);
  REQUIRE(check_plugin(tmp / "example.so"));

  // It refuses mail from the sender named in its `block` option and tags
  // everything else.
  std::string msg = kMessage;
  Outcome out = run_one(load(tmp / "example.so", {{"block", "bob@example.net"}}), msg);
  CHECK(out.action == Action::Reject);
  CHECK(out.reply.str() == "550 5.7.1 Sender blocked by local policy");
  out = run_one(load(tmp / "example.so", {{"block", "mallory@example.net"}}), msg);
  CHECK(out.action == Action::Continue);
  CHECK(msg.find("X-Example: checked\n") != std::string::npos);
}

}  // namespace
}  // namespace petrel::filter
