#include "petrel/delivery/pipe.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include <doctest/doctest.h>
#include <fcntl.h>

#include "petrel/delivery/local.h"
#include "test_util.h"

namespace petrel::delivery {
namespace {

using namespace testing;

// Runs `script` with /bin/sh from a file in the temp dir. The agent itself
// never uses a shell; the tests use one to write small commands.
Verdict run_script(const TempDir& tmp, const std::string& script, const Message& msg = message(),
                   int timeout_sec = 20) {
  const std::string path = tmp / "script.sh";
  spit(path, script);
  PipeOptions o;
  o.argv = {"/bin/sh", path, tmp.path()};
  o.timeout_sec = timeout_sec;
  o.home_dir = tmp.path();
  return deliver_pipe(o, alice(), msg);
}

bool process_gone(pid_t pid) {
  // Gone, or a zombie waiting for whoever adopted it: either way not running.
  for (int i = 0; i < 100; ++i) {
    const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
    if (stat.starts_with("<unreadable")) return true;
    const std::size_t paren = stat.rfind(')');
    if (paren != std::string::npos && stat.compare(paren + 2, 1, "Z") == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_CASE("pipe: exit 0 is delivered; stdin is the headers plus the message") {
  TempDir tmp;
  const Verdict v = run_script(tmp, "cat > \"$1/out\"\n");
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(v.status == "2.0.0");
  CHECK(v.detail == "delivered to command /bin/sh");
  CHECK(slurp(tmp / "out") == delivery_headers(alice(), message()) + kBody);
}

TEST_CASE("pipe: exit 75 defers, other codes bounce with the head of stderr") {
  TempDir tmp;
  Verdict v = run_script(tmp, "echo 'try later' >&2; exit 75\n");
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.3.0");
  CHECK(v.detail == "command exited with status 75: try later");

  v = run_script(tmp, "printf 'no such list\\nsecond line\\n' >&2; exit 1\n");
  CHECK(v.outcome == Outcome::Bounced);
  CHECK(v.status == "5.3.0");
  CHECK(v.detail == "command exited with status 1: no such list second line");

  v = run_script(tmp, "exit 67\n");
  CHECK(v.outcome == Outcome::Bounced);
  CHECK(v.status == "5.1.1");
  CHECK(v.detail == "command exited with status 67");
}

TEST_CASE("pipe: a flood of output is drained and only its head kept") {
  TempDir tmp;
  const Verdict v =
      run_script(tmp, "i=0; while [ $i -lt 2000 ]; do echo 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'; "
                      "i=$((i+1)); done >&2; exit 2\n");
  CHECK(v.outcome == Outcome::Bounced);
  CHECK(v.detail.starts_with("command exited with status 2: xxxx"));
  CHECK(v.detail.size() < 260);
}

TEST_CASE("pipe: the environment is exactly SPEC §7's, cwd is home") {
  TempDir tmp;
  ::setenv("PETREL_TEST_SECRET", "leak", 1);
  const Verdict v = run_script(tmp, "env > \"$1/env\"; pwd > \"$1/pwd\"\n");
  ::unsetenv("PETREL_TEST_SECRET");
  REQUIRE(v.outcome == Outcome::Delivered);
  const std::string env = slurp(tmp / "env");
  for (const std::string& line : std::vector<std::string>{
           "SENDER=bob@example.net", "RECIPIENT=alice+news@example.org",
        "ORIGINAL_RECIPIENT=Alice+News@Example.ORG", "USER=alice", "EXTENSION=news",
        "DOMAIN=example.org", "QUEUE_ID=0123456789ABCDEFGH", "PATH=/usr/bin:/bin",
        "HOME=" + tmp.path()}) {
    CHECK_MESSAGE(env.find(line + "\n") != std::string::npos, line);
  }
  CHECK(env.find("PETREL_TEST_SECRET") == std::string::npos);
  CHECK(slurp(tmp / "pwd") == tmp.path() + "\n");
}

TEST_CASE("pipe: only fds 0-2 reach the command, in its own process group") {
  TempDir tmp;
  UniqueFd leaky(::open("/dev/null", O_RDONLY));  // deliberately without O_CLOEXEC
  REQUIRE(leaky.get() > 2);
  PipeOptions o;
  // `exec ls`: the shell's own saved descriptors must not blur the picture;
  // 3 is the directory ls itself opens.
  o.argv = {"sh", "-c",
            "ps -o pgid= -p $$ > \"$0/pgid\"; echo $$ > \"$0/pid\"; exec ls /proc/self/fd > \"$0/fds\"",
            tmp.path()};
  const Verdict v = deliver_pipe(o, alice(), message());
  REQUIRE(v.outcome == Outcome::Delivered);
  CHECK(slurp(tmp / "fds") == "0\n1\n2\n3\n");
  const std::string pgid = slurp(tmp / "pgid");
  if (!pgid.starts_with("<unreadable") && !pgid.empty()) {  // ps may be missing
    CHECK(std::atoi(pgid.c_str()) == std::atoi(slurp(tmp / "pid").c_str()));
  }
}

TEST_CASE("pipe: timeout kills the whole group, grandchildren included, and defers") {
  TempDir tmp;
  // The grandchild ignores SIGTERM, so only the group SIGKILL can stop it.
  const auto start = std::chrono::steady_clock::now();
  const Verdict v = run_script(tmp,
                               "(trap '' TERM; exec sleep 60) &\n"
                               "echo $! > \"$1/grandchild\"\n"
                               "echo 'working on it' >&2\n"
                               "wait\n",
                               message(), 1);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.3.0");
  CHECK(v.detail == "command timed out after 1s: working on it");
  CHECK(took >= std::chrono::milliseconds(900));
  CHECK(took < std::chrono::seconds(5));
  const pid_t grandchild = std::atoi(slurp(tmp / "grandchild").c_str());
  REQUIRE(grandchild > 0);
  CHECK(process_gone(grandchild));
}

TEST_CASE("pipe: a command ignoring SIGTERM is killed after the grace period") {
  TempDir tmp;
  const auto start = std::chrono::steady_clock::now();
  const Verdict v = run_script(tmp, "trap '' TERM\nsleep 60\n", message(), 1);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(took >= std::chrono::milliseconds(2900));
  CHECK(took < std::chrono::seconds(8));
}

TEST_CASE("pipe: a 10 MiB message to a command that reads nothing does not deadlock") {
  TempDir tmp;
  std::string big = "Subject: big\n\n";
  while (big.size() < 10 * 1024 * 1024) big += std::string(1000, 'x') + "\n";
  const auto start = std::chrono::steady_clock::now();
  Verdict v = run_script(tmp, "exit 0\n", message(big));
  CHECK(v.outcome == Outcome::Delivered);
  v = run_script(tmp, "head -c 10 > /dev/null; exit 0\n", message(big));
  CHECK(v.outcome == Outcome::Delivered);
  v = run_script(tmp, "cat > \"$1/out\"\n", message(big));
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(slurp(tmp / "out").size() == delivery_headers(alice(), message()).size() + big.size());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(15));
}

TEST_CASE("pipe: a command that cannot run, or dies by a signal, defers") {
  TempDir tmp;
  PipeOptions o;
  o.argv = {tmp / "no-such-command"};
  Verdict v = deliver_pipe(o, alice(), message());
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.status == "4.3.0");
  CHECK(v.detail.starts_with("cannot execute " + tmp.path() + "/no-such-command: "));

  v = run_script(tmp, "kill -KILL $$\n");
  CHECK(v.outcome == Outcome::Deferred);
  CHECK(v.detail == "command killed by signal 9");

  CHECK(deliver_pipe(PipeOptions{}, alice(), message()).status == "4.3.5");
}

TEST_CASE("pipe: SIGPIPE and other ignored signals are reset for the command") {
  TempDir tmp;
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  // `yes | head` only ends because SIGPIPE kills `yes`.
  const Verdict v = run_script(tmp, "yes | head -n 1 > \"$1/out\"\n", message(), 10);
  ::sigaction(SIGPIPE, &old, nullptr);
  CHECK(v.outcome == Outcome::Delivered);
  CHECK(slurp(tmp / "out") == "y\n");
}

TEST_CASE("pipe via deliver_local: string and list forms, placeholders per word") {
  TempDir tmp;
  Recipient r = alice();
  r.extension = "two words";
  LocalSettings s;
  s.home_dir = tmp.path();
  // String form: split at blanks first, then expanded, so %e stays one word.
  spit(tmp / "args.sh", "for a in \"$@\"; do echo \"[$a]\"; done > \"$HOME/args\"\n");
  Verdict v = deliver_local({"pipe:/bin/sh " + tmp.path() + "/args.sh --to %r %e"}, r, message(), s);
  REQUIRE(v.outcome == Outcome::Delivered);
  CHECK(slurp(tmp / "args") == "[--to]\n[alice+news@example.org]\n[two words]\n");
  v = deliver_local({"pipe:", "/bin/sh", tmp.path() + "/args.sh", "%u/%d", "%%"}, r, message(), s);
  REQUIRE(v.outcome == Outcome::Delivered);
  CHECK(slurp(tmp / "args") == "[alice/example.org]\n[%]\n");
}

}  // namespace
}  // namespace petrel::delivery
