// The spool (SPEC §6): queue ids, envelope format, commit protocol.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "petrel/queue/spool.h"

namespace fs = std::filesystem;
using petrel::queue::Envelope;
using petrel::queue::format_envelope;
using petrel::queue::new_queue_id;
using petrel::queue::parse_envelope;
using petrel::queue::Spool;

namespace {

// A scratch state_dir under /tmp, removed at the end of the test.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/petrel-spool-test-XXXXXX";
    char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
  REQUIRE(f.good());
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool valid_id(const std::string& id) {
  return id.size() == 18 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'V');
         });
}

Envelope sample_envelope() {
  Envelope e;
  e.id = new_queue_id();
  e.arrival_sec = 1700000000;
  e.arrival_usec = 123;
  e.sender = "alice@example.com";
  e.size = 4242;
  e.body_8bit = true;
  e.smtputf8 = true;
  e.client = "[192.0.2.1]:40000";
  e.helo = "client.example";
  e.auth_user = "alice";
  e.recipients = {"bob@example.com", "carol@example.org", "postmaster"};
  return e;
}

void check_same(const Envelope& a, const Envelope& b) {
  CHECK(a.id == b.id);
  CHECK(a.arrival_sec == b.arrival_sec);
  CHECK(a.arrival_usec == b.arrival_usec);
  CHECK(a.sender == b.sender);
  CHECK(a.size == b.size);
  CHECK(a.body_8bit == b.body_8bit);
  CHECK(a.smtputf8 == b.smtputf8);
  CHECK(a.client == b.client);
  CHECK(a.helo == b.helo);
  CHECK(a.auth_user == b.auth_user);
  CHECK(a.recipients == b.recipients);
}

}  // namespace

TEST_CASE("spool: queue ids are 18 characters of 0-9A-V") {
  for (int i = 0; i < 100; ++i) {
    std::string id = new_queue_id();
    INFO(id);
    CHECK(valid_id(id));
  }
}

TEST_CASE("spool: queue ids are unique and sorted over many calls") {
  std::vector<std::string> ids;
  ids.reserve(20000);
  for (int i = 0; i < 20000; ++i) ids.push_back(new_queue_id());
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
  for (size_t i = 1; i < ids.size(); ++i) {
    if (!(ids[i - 1] < ids[i])) {
      FAIL_CHECK("ids out of order at " << i << ": " << ids[i - 1] << " then " << ids[i]);
      break;
    }
  }
}

TEST_CASE("spool: queue ids sort by time") {
  auto decode = [](std::string_view s) {
    std::uint64_t v = 0;
    for (char c : s) v = v * 32 + static_cast<std::uint64_t>(c <= '9' ? c - '0' : c - 'A' + 10);
    return v;
  };
  const auto before = std::chrono::system_clock::now();
  std::string a = new_queue_id();
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  std::string b = new_queue_id();
  CHECK(a < b);
  // 7 characters of seconds, then 4 of microseconds, then 5 of the pid.
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      before.time_since_epoch()).count();
  const std::uint64_t a_us = decode(a.substr(0, 7)) * 1000000 + decode(a.substr(7, 4));
  const std::uint64_t b_us = decode(b.substr(0, 7)) * 1000000 + decode(b.substr(7, 4));
  CHECK(decode(a.substr(7, 4)) < 1000000);
  CHECK(a_us >= static_cast<std::uint64_t>(us));
  CHECK(a_us < static_cast<std::uint64_t>(us) + 1000000);
  CHECK(b_us >= a_us + 3000);
  CHECK(decode(a.substr(11, 5)) == static_cast<std::uint64_t>(::getpid()));
}

TEST_CASE("spool: queue ids are unique across processes") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    for (int i = 0; i < 2000; ++i) out += new_queue_id() + "\n";
    size_t off = 0;
    while (off < out.size()) {
      ssize_t w = ::write(fds[1], out.data() + off, out.size() - off);
      if (w <= 0) ::_exit(1);
      off += static_cast<size_t>(w);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::vector<std::string> mine;
  for (int i = 0; i < 2000; ++i) mine.push_back(new_queue_id());
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  std::set<std::string> all(mine.begin(), mine.end());
  std::istringstream in(data);
  std::string line;
  int theirs = 0;
  while (std::getline(in, line)) {
    CHECK(valid_id(line));
    all.insert(line);
    ++theirs;
  }
  CHECK(theirs == 2000);
  CHECK(all.size() == 4000);
}

TEST_CASE("spool: envelope round trip") {
  Envelope e = sample_envelope();
  std::string text = format_envelope(e);
  CHECK(text.rfind("PETREL1\n", 0) == 0);
  CHECK(text.size() >= 3);
  CHECK(text.substr(text.size() - 3) == "\n.\n");
  CHECK(text.find("\nI " + e.id + "\n") != std::string::npos);
  CHECK(text.find("\nT 1700000000.000123\n") != std::string::npos);
  CHECK(text.find("\nA alice\n") != std::string::npos);
  CHECK(text.find('\r') == std::string::npos);

  const std::string body = "Received: from x\n\tby y\nSubject: hi\n\n.\nbody\n";
  auto pm = parse_envelope(text + body);
  REQUIRE(pm.ok());
  check_same(pm->envelope, e);
  CHECK(pm->body_offset == text.size());
  CHECK((text + body).substr(pm->body_offset) == body);
  // Recipients keep RCPT order.
  REQUIRE(pm->envelope.recipients.size() == 3);
  CHECK(pm->envelope.recipients[0] == "bob@example.com");
  CHECK(pm->envelope.recipients[2] == "postmaster");
}

TEST_CASE("spool: envelope with the null sender and no auth") {
  Envelope e = sample_envelope();
  e.sender = "";
  e.auth_user = "";
  e.body_8bit = false;
  e.smtputf8 = false;
  e.recipients = {"one@example.com"};
  std::string text = format_envelope(e);
  CHECK(text.find("\nS \n") != std::string::npos);
  CHECK(text.find("\nA ") == std::string::npos);
  CHECK(text.find("\nB 7BIT\n") != std::string::npos);
  CHECK(text.find("\nU 0\n") != std::string::npos);
  auto pm = parse_envelope(text);
  REQUIRE(pm.ok());
  check_same(pm->envelope, e);
  CHECK(pm->envelope.sender.empty());
  CHECK(pm->body_offset == text.size());
}

TEST_CASE("spool: envelope with many recipients") {
  Envelope e = sample_envelope();
  e.recipients.clear();
  for (int i = 0; i < 500; ++i) e.recipients.push_back("user" + std::to_string(i) + "@example.com");
  auto pm = parse_envelope(format_envelope(e));
  REQUIRE(pm.ok());
  check_same(pm->envelope, e);
}

TEST_CASE("spool: bad envelopes are errors") {
  std::string good = format_envelope(sample_envelope());
  CHECK_FALSE(parse_envelope("").ok());
  CHECK_FALSE(parse_envelope("PETREL2\nI x\n.\n").ok());
  CHECK_FALSE(parse_envelope("Subject: not a spool file\n\nbody\n").ok());
  CHECK_FALSE(parse_envelope(good.substr(0, good.size() - 2)).ok());   // no "." line
  CHECK_FALSE(parse_envelope(good.substr(0, good.size() - 1)).ok());   // "." without LF
  CHECK_FALSE(parse_envelope("PETREL1\nI\n.\n").ok());
  CHECK_FALSE(parse_envelope("PETREL1\nIxyz\n.\n").ok());
  // Unknown fields are skipped.
  auto pm = parse_envelope("PETREL1\nI ABC\nX future field\nR a@b.c\n.\nbody");
  REQUIRE(pm.ok());
  CHECK(pm->envelope.id == "ABC");
  CHECK(pm->envelope.recipients == std::vector<std::string>{"a@b.c"});
  CHECK(pm->body_offset == std::string("PETREL1\nI ABC\nX future field\nR a@b.c\n.\n").size());
}

TEST_CASE("spool: open creates queue/") {
  TempDir t;
  auto s = Spool::open(t.path);
  REQUIRE(s.ok());
  CHECK(s->queue_dir() == t.path + "/queue");
  CHECK(fs::is_directory(t.path + "/queue"));
  CHECK(s->message_path("ABC") == t.path + "/queue/ABC");
  auto l = s->list();
  REQUIRE(l.ok());
  CHECK(l->empty());
  // Opening again over an existing queue/ works.
  CHECK(Spool::open(t.path).ok());
}

TEST_CASE("spool: commit writes exactly envelope and parts") {
  TempDir t;
  auto s = Spool::open(t.path);
  REQUIRE(s.ok());
  Envelope e = sample_envelope();
  const std::string received = "Received: from client.example ([192.0.2.1])\n\tby mx; date\n";
  const std::string body = "Subject: hi\n\nline 1\n.\nline 3\n";
  auto st = s->commit(e, {received, "", body});
  REQUIRE_MESSAGE(st.ok(), st.error());

  CHECK(dir_entries(s->queue_dir()) == std::vector<std::string>{e.id});
  CHECK(read_all(s->message_path(e.id)) == format_envelope(e) + received + body);

  auto l = s->list();
  REQUIRE(l.ok());
  CHECK(*l == std::vector<std::string>{e.id});

  auto pm = s->read_envelope(e.id);
  REQUIRE(pm.ok());
  check_same(pm->envelope, e);
  CHECK(pm->body_offset == format_envelope(e).size());
  CHECK(read_all(s->message_path(e.id)).substr(pm->body_offset) == received + body);
}

TEST_CASE("spool: commit of a large message") {
  TempDir t;
  auto s = Spool::open(t.path);
  REQUIRE(s.ok());
  Envelope e = sample_envelope();
  for (int i = 0; i < 600; ++i) e.recipients.push_back("r" + std::to_string(i) + "@example.net");
  std::string body;
  for (int i = 0; i < 50000; ++i) body += "line " + std::to_string(i) + "\n";
  REQUIRE(s->commit(e, {body}).ok());
  CHECK(read_all(s->message_path(e.id)) == format_envelope(e) + body);
  // The envelope is larger than one read block: read_envelope reads on.
  REQUIRE(format_envelope(e).size() > 8192);
  auto pm = s->read_envelope(e.id);
  REQUIRE(pm.ok());
  check_same(pm->envelope, e);
}

TEST_CASE("spool: commit never leaves a .tmp- file and refuses an existing temp") {
  TempDir t;
  auto s = Spool::open(t.path);
  REQUIRE(s.ok());
  Envelope e = sample_envelope();
  // A stale temp file with the same id (a crashed writer) makes commit fail
  // rather than write through it; nothing is committed under the id.
  write_file(s->queue_dir() + "/.tmp-" + e.id, "half");
  auto st = s->commit(e, {"body\n"});
  CHECK_FALSE(st.ok());
  CHECK_FALSE(fs::exists(s->message_path(e.id)));
  CHECK(read_all(s->queue_dir() + "/.tmp-" + e.id) == "half");
  fs::remove(s->queue_dir() + "/.tmp-" + e.id);

  Envelope e2 = sample_envelope();
  REQUIRE(s->commit(e2, {"body\n"}).ok());
  for (const auto& name : dir_entries(s->queue_dir())) CHECK(name.rfind(".tmp-", 0) != 0);
}

TEST_CASE("spool: list is sorted and ignores temp and other files") {
  TempDir t;
  auto s = Spool::open(t.path);
  REQUIRE(s.ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(new_queue_id());
  // Commit out of order.
  for (int i : {3, 0, 4, 1, 2}) {
    Envelope e = sample_envelope();
    e.id = ids[static_cast<size_t>(i)];
    REQUIRE(s->commit(e, {"m\n"}).ok());
  }
  const std::string q = s->queue_dir();
  write_file(q + "/.tmp-" + new_queue_id(), "partial");
  write_file(q + "/" + ids[0] + ".state", "state");
  write_file(q + "/README", "junk");
  write_file(q + "/abcdefghijklmnopqr", "lower-case is not an id");
  write_file(q + "/0123456789ABCDEFGHI", "19 characters");
  auto l = s->list();
  REQUIRE(l.ok());
  CHECK(*l == ids);

  // read_envelope of each, and of a missing id.
  for (const auto& id : ids) {
    auto pm = s->read_envelope(id);
    REQUIRE(pm.ok());
    CHECK(pm->envelope.id == id);
  }
  auto missing = s->read_envelope("00000000000000000Z");
  CHECK_FALSE(missing.ok());
  auto junk = s->read_envelope("README");
  CHECK_FALSE(junk.ok());
}
