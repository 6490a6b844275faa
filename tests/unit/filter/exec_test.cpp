#include "petrel/filter/exec.h"

#include <doctest/doctest.h>
#include <fcntl.h>

#include <chrono>
#include <thread>

#include "petrel/filter/chain.h"
#include "test_util.h"

namespace petrel::filter {
namespace {

using namespace testing;

// Runs `script` with /bin/sh from a file in the temp dir; its first argument
// is the temp dir. The filter itself never uses a shell.
Verdict run_script(const TempDir& tmp, const std::string& script,
                   config::FilterMode mode = config::FilterMode::Headers,
                   config::OnError on_error = config::OnError::Tempfail, int timeout = 20,
                   const std::string& message = kMessage, const Envelope& env = envelope(),
                   std::uint64_t max_size = 64ull * 1024 * 1024) {
  const std::string path = tmp / "filter.sh";
  spit(path, script);
  config::Filter s;
  s.name = "script";
  s.kind = config::FilterKind::Exec;
  s.exec = {"/bin/sh", path, tmp.path()};
  s.mode = mode;
  s.timeout = timeout;
  s.on_error = on_error;
  return make_exec_filter(s, max_size)->scan(env, message);
}

bool process_gone(pid_t pid) {
  // Gone, or a zombie waiting for whoever adopted it: either way not running.
  for (int i = 0; i < 150; ++i) {
    const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
    if (stat.starts_with("<unreadable")) return true;
    const std::size_t paren = stat.rfind(')');
    if (paren != std::string::npos && stat.compare(paren + 2, 1, "Z") == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_CASE("exec: exit 0 in mode headers adds the header lines from stdout") {
  TempDir tmp;
  const Verdict v =
      run_script(tmp, "cat > \"$1/in\"\nprintf 'X-Checked: yes\\r\\nX-Report: a\\n\\tb\\n'\n");
  CHECK(v.action == Action::Continue);
  REQUIRE(v.headers.size() == 2);
  CHECK(v.headers[0].kind == HeaderOp::Kind::Add);
  CHECK(v.headers[0].name == "X-Checked");
  CHECK(v.headers[0].value == "yes");
  CHECK(v.headers[1].value == "a\n\tb");
  CHECK_FALSE(v.new_message);
  CHECK(slurp(tmp / "in") == kMessage);  // stdin: the message, LF line ends
}

TEST_CASE("exec: the exit status table") {
  TempDir tmp;
  struct Case {
    int code;
    Action action;
  };
  for (Case c : {Case{0, Action::Continue}, Case{1, Action::Reject}, Case{20, Action::Reject},
                 Case{75, Action::Tempfail}, Case{99, Action::Discard}}) {
    CAPTURE(c.code);
    const Verdict v = run_script(tmp, "exit " + std::to_string(c.code) + "\n");
    CHECK(v.action == c.action);
    if (c.code != 0) CHECK(v.detail == "status=" + std::to_string(c.code));
  }
  // Anything else is a filter error, which applies on_error.
  for (int code : {2, 64, 69, 74, 76, 98, 100, 126, 127, 255}) {
    CAPTURE(code);
    const std::string script = "exit " + std::to_string(code) + "\n";
    Verdict v = run_script(tmp, script);
    CHECK(v.action == Action::Tempfail);
    CHECK(v.detail.starts_with("error=\"exit status " + std::to_string(code)));
    CHECK(run_script(tmp, script, config::FilterMode::Headers, config::OnError::Accept).action ==
          Action::Continue);
    CHECK(run_script(tmp, script, config::FilterMode::Headers, config::OnError::Reject).action ==
          Action::Reject);
  }
}

TEST_CASE("exec: a signal, or a program that cannot run, is a filter error") {
  TempDir tmp;
  Verdict v = run_script(tmp, "kill -SEGV $$\n");
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail.starts_with("error=\"killed by signal 11"));

  config::Filter s;
  s.name = "nothing";
  s.exec = {tmp / "no-such-program"};
  v = make_exec_filter(s, 1000)->scan(envelope(), kMessage);
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail.find("cannot execute") != std::string::npos);
  CHECK(v.detail.find("No such file") != std::string::npos);
  s.on_error = config::OnError::Accept;
  CHECK(make_exec_filter(s, 1000)->scan(envelope(), kMessage).action == Action::Continue);
}

TEST_CASE("exec: the reply is the first stderr line, else the last stdout line") {
  TempDir tmp;
  Verdict v =
      run_script(tmp, "echo 'stdout words'; printf 'Spam detected\\nmore\\n' >&2; exit 1\n");
  CHECK(v.action == Action::Reject);
  CHECK(v.reply == "Spam detected");
  v = run_script(tmp, "printf 'first\\n554 5.7.0 go away\\n'; exit 20\n");
  CHECK(v.reply == "554 5.7.0 go away");
  // Through the chain: a code of the right class is kept, none gets the default.
  Chain chain;
  config::Filter s;
  s.name = "hook";
  s.exec = {"/bin/sh", "-c", "echo '554 5.7.0 go away'; exit 20"};
  chain.add(make_exec_filter(s, 1 << 20), s);
  Envelope env = envelope();
  std::string msg = kMessage;
  Outcome out = chain.run(env, msg);
  CHECK(out.reply.str() == "554 5.7.0 go away");

  Chain chain2;
  s.exec = {"/bin/sh", "-c", "echo 'try later' >&2; exit 75"};
  chain2.add(make_exec_filter(s, 1 << 20), s);
  out = chain2.run(env, msg);
  CHECK(out.reply.str() == "451 4.7.1 try later");
}

TEST_CASE("exec: mode rewrite takes stdout as the new message") {
  TempDir tmp;
  Verdict v = run_script(tmp, "echo 'X-Rewritten: yes'; cat\n", config::FilterMode::Rewrite);
  CHECK(v.action == Action::Continue);
  REQUIRE(v.new_message);
  CHECK(*v.new_message == "X-Rewritten: yes\n" + kMessage);

  // CRLF from the filter becomes LF.
  v = run_script(tmp, "printf 'Subject: x\\r\\n\\r\\nbody\\r\\n'\n", config::FilterMode::Rewrite);
  REQUIRE(v.new_message);
  CHECK(*v.new_message == "Subject: x\n\nbody\n");

  // Empty output, a bare CR, no header, too big: errors.
  v = run_script(tmp, "cat > /dev/null\n", config::FilterMode::Rewrite);
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail == "error=\"empty output in mode rewrite\"");
  v = run_script(tmp, "printf 'Subject: x\\n\\nbo\\rdy\\n'\n", config::FilterMode::Rewrite);
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail.find("bare CR") != std::string::npos);
  v = run_script(tmp, "echo 'just text'\n", config::FilterMode::Rewrite);
  CHECK(v.action == Action::Tempfail);
  v = run_script(tmp, "printf 'garbage\\nSubject: x\\n\\nbody\\n'\n", config::FilterMode::Rewrite);
  CHECK(v.detail == "error=\"rewritten message does not start with a header\"");
  v = run_script(tmp, "cat; cat \"$1/filter.sh\"\n", config::FilterMode::Rewrite,
                 config::OnError::Tempfail, 20, kMessage, envelope(), kMessage.size() + 5);
  CHECK(v.action == Action::Tempfail);
  CHECK_MESSAGE(v.detail.find("too much output") != std::string::npos, v.detail);

  // Mode rewrite: stdout is the message, so only stderr gives a reply.
  v = run_script(tmp, "cat; exit 1\n", config::FilterMode::Rewrite);
  CHECK(v.action == Action::Reject);
  CHECK(v.reply.empty());
}

TEST_CASE("exec: mode headers refuses output that is not header lines") {
  TempDir tmp;
  const Verdict v = run_script(tmp, "echo 'this is not a header'\n", config::FilterMode::Headers,
                               config::OnError::Reject);
  CHECK(v.action == Action::Reject);
  CHECK(v.detail.find("header line 1") != std::string::npos);
}

TEST_CASE("exec: the environment carries the envelope under both sets of names") {
  TempDir tmp;
  Envelope env = envelope();
  const std::string script = "env > \"$1/env\"\n";
  run_script(tmp, script, config::FilterMode::Headers, config::OnError::Tempfail, 20, kMessage,
             env);
  std::string e = slurp(tmp / "env");
  CHECK(e.find("PETREL_QUEUE_ID=0123456789ABCDEFGH\n") != std::string::npos);
  CHECK(e.find("PETREL_SENDER=bob@example.net\n") != std::string::npos);
  CHECK(e.find("PETREL_RECIPIENTS=alice@example.org\ncarol@example.org\n") != std::string::npos);
  CHECK(e.find("PETREL_CLIENT_ADDRESS=192.0.2.1\n") != std::string::npos);
  CHECK(e.find("PETREL_HELO=client.example\n") != std::string::npos);
  CHECK(e.find("PETREL_AUTH_USER=\n") != std::string::npos);
  CHECK(e.find("PETREL_TLS=\n") != std::string::npos);
  CHECK(e.find("REMOTE_ADDR=192.0.2.1\n") != std::string::npos);
  CHECK(e.find("EHLO_DOMAIN=client.example\n") != std::string::npos);
  CHECK(e.find("MAIL_FROM=bob@example.net\n") != std::string::npos);
  CHECK(e.find("RCPT_TO=alice@example.org carol@example.org\n") != std::string::npos);
  CHECK(e.find("AUTH_AS=\n") != std::string::npos);
  CHECK(e.find("ON_TLS=\n") != std::string::npos);
  CHECK(e.find("PATH=") != std::string::npos);
  CHECK(e.find("HOME=") == std::string::npos);  // nothing of ours leaks in

  env.auth_user = "alice";
  env.tls = true;
  env.tls_version = "TLSv1.3";
  env.tls_cipher = "TLS_AES_256_GCM_SHA384";
  env.sender = "";
  run_script(tmp, script, config::FilterMode::Headers, config::OnError::Tempfail, 20, kMessage,
             env);
  e = slurp(tmp / "env");
  CHECK(e.find("PETREL_AUTH_USER=alice\n") != std::string::npos);
  CHECK(e.find("AUTH_AS=alice\n") != std::string::npos);
  CHECK(e.find("PETREL_TLS=TLSv1.3 TLS_AES_256_GCM_SHA384\n") != std::string::npos);
  CHECK(e.find("ON_TLS=1\n") != std::string::npos);
  CHECK(e.find("PETREL_SENDER=\n") != std::string::npos);
  CHECK(e.find("MAIL_FROM=\n") != std::string::npos);
}

TEST_CASE("exec: only fds 0-2 reach the filter, stdin is a file, and it has its own group") {
  TempDir tmp;
  // An fd the test leaves inheritable: the filter must not see it.
  UniqueFd leak(::open("/dev/null", O_RDONLY));
  REQUIRE(::dup2(leak.get(), 57) == 57);
  UniqueFd fd57(57);
  run_script(tmp,
             "[ -e /proc/$$/fd/57 ] && echo leaked > \"$1/fds\"\n"
             "readlink /proc/$$/fd/0 > \"$1/stdin\"\n"
             "cut -d' ' -f5 /proc/$$/stat > \"$1/pgid\"\n"
             "echo $$ > \"$1/pid\"\n");
  CHECK(slurp(tmp / "fds").starts_with("<unreadable"));
  const std::string in = slurp(tmp / "stdin");
  CHECK(in.find("pipe:") == std::string::npos);
  CHECK(in.find("socket:") == std::string::npos);
  CHECK(slurp(tmp / "pgid") == slurp(tmp / "pid"));
}

TEST_CASE("exec: at the timeout the whole group is killed, grandchildren included") {
  TempDir tmp;
  const auto start = std::chrono::steady_clock::now();
  const Verdict v = run_script(tmp,
                               "sleep 300 &\n"
                               "echo $! > \"$1/grandchild\"\n"
                               "trap '' TERM\n"  // ignores SIGTERM: SIGKILL follows
                               "sleep 300\n",
                               config::FilterMode::Headers, config::OnError::Tempfail, 1);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail == "error=\"timed out after 1s\"");
  CHECK(elapsed < std::chrono::seconds(6));
  const std::string pid = slurp(tmp / "grandchild");
  REQUIRE_FALSE(pid.starts_with("<unreadable"));
  CHECK(process_gone(static_cast<pid_t>(std::stol(pid))));
}

TEST_CASE("exec: a filter that exits leaves nothing running behind it") {
  TempDir tmp;
  const Verdict v = run_script(tmp, "sleep 300 > /dev/null 2>&1 &\necho $! > \"$1/bg\"\nexit 0\n");
  CHECK(v.action == Action::Continue);
  CHECK(process_gone(static_cast<pid_t>(std::stol(slurp(tmp / "bg")))));
}

TEST_CASE("exec: a 30 MiB message through filters that read nothing, all, or echo it") {
  TempDir tmp;
  std::string big = kMessage;
  const std::string line(999, 'x');
  while (big.size() < 30u * 1024 * 1024) big += line + "\n";

  auto start = std::chrono::steady_clock::now();
  Verdict v =
      run_script(tmp, "exit 0\n", config::FilterMode::Headers, config::OnError::Tempfail, 60, big);
  CHECK(v.action == Action::Continue);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));

  v = run_script(tmp, "wc -c > \"$1/count\"\n", config::FilterMode::Headers,
                 config::OnError::Tempfail, 60, big);
  CHECK(v.action == Action::Continue);
  CHECK(std::stoull(slurp(tmp / "count")) == big.size());

  // Writes it all back while we read: stdout is drained as it comes.
  v = run_script(tmp, "cat\n", config::FilterMode::Rewrite, config::OnError::Tempfail, 60, big);
  CHECK(v.action == Action::Continue);
  REQUIRE(v.new_message);
  CHECK(v.new_message->size() == big.size());
  CHECK(*v.new_message == big);

  // Floods stderr and stdout before reading nothing: both are drained.
  v = run_script(tmp, "head -c 5000000 /dev/zero | tr '\\0' e >&2; exit 75\n",
                 config::FilterMode::Headers, config::OnError::Tempfail, 60, big);
  CHECK(v.action == Action::Tempfail);
  CHECK(v.detail == "status=75");
}

}  // namespace
}  // namespace petrel::filter
