// Recipient resolution: domains, users, catch_all, recipient_delimiter and
// aliases (SPEC §3, §7 "Aliases"), as the queue runner and RCPT see it.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "petrel/config/config.h"
#include "petrel/queue/resolver.h"

namespace fs = std::filesystem;
using petrel::config::Config;
using petrel::config::Domain;
using petrel::queue::Resolver;
using petrel::queue::Target;
using Kind = petrel::queue::Target::Kind;
using Strings = std::vector<std::string>;

namespace {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/petrel-resolver-test-XXXXXX";
    char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    std::string file = path + "/" + name;
    std::ofstream(file, std::ios::binary) << text;
    return file;
  }
  std::string path;
};

Domain domain(std::string name, std::optional<Strings> users, std::string catch_all = "") {
  Domain d;
  d.name = std::move(name);
  d.deliver = {"maildir:/var/mail/%d/%u"};
  d.users = std::move(users);
  d.catch_all = std::move(catch_all);
  return d;
}

// example.org verifies users; open.example takes every local part;
// catchall.example sends unknown users to its postmaster.
Config base_config() {
  Config cfg;
  cfg.hostname = "mx.example.org";
  cfg.recipient_delimiter = "+";
  cfg.domains = {domain("example.org", Strings{"alice", "bob", "Carol"}),
                 domain("open.example", std::nullopt),
                 domain("catchall.example", Strings{"alice"}, "postmaster")};
  return cfg;
}

void alias(Config& cfg, std::string key, Strings targets) {
  cfg.aliases.map.emplace_back(std::move(key), std::move(targets));
}

// "L:alice@example.org", "R:bob@example.net", "C:cmd", "F:/path", "E:5.1.1".
std::string show(const Target& t) {
  switch (t.kind) {
    case Kind::Local: return "L:" + t.address;
    case Kind::Remote: return "R:" + t.address;
    case Kind::Command: return "C:" + t.command;
    case Kind::File: return "F:" + t.path;
    case Kind::Error: return "E:" + t.status;
  }
  return "?";
}

Strings shown(const std::vector<Target>& targets) {
  Strings out;
  for (const Target& t : targets) out.push_back(show(t));
  return out;
}

Strings resolve(const Resolver& r, std::string_view address) { return shown(r.resolve(address)); }

}  // namespace

TEST_CASE("resolver: a listed user is delivered locally") {
  Config cfg = base_config();
  Resolver r(cfg);
  auto t = r.resolve("alice@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::Local);
  CHECK(t[0].address == "alice@example.org");
  CHECK(t[0].user == "alice");
  CHECK(t[0].extension == "");
  CHECK(t[0].domain == "example.org");
  CHECK(r.local_exists("alice@example.org"));
  CHECK(r.local_exists("<alice@example.org>"));
}

TEST_CASE("resolver: user+tag keeps the address, splits user and extension") {
  Config cfg = base_config();
  Resolver r(cfg);
  auto t = r.resolve("alice+Lists@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::Local);
  CHECK(t[0].address == "alice+Lists@example.org");
  CHECK(t[0].user == "alice");
  CHECK(t[0].extension == "Lists");
  CHECK(r.local_exists("alice+Lists@example.org"));
  CHECK_FALSE(r.local_exists("nobody+alice@example.org"));

  SUBCASE("only the first delimiter splits") {
    auto u = r.resolve("bob+a+b@example.org");
    REQUIRE(u.size() == 1);
    CHECK(u[0].user == "bob");
    CHECK(u[0].extension == "a+b");
  }
  SUBCASE("a delimiter at the start does not split") {
    auto u = r.resolve("+alice@open.example");
    REQUIRE(u.size() == 1);
    CHECK(u[0].user == "+alice");
    CHECK(u[0].extension == "");
  }
  SUBCASE("without recipient_delimiter nothing splits") {
    cfg.recipient_delimiter = "";
    CHECK(resolve(r, "alice+tag@example.org") == Strings{"E:5.1.1"});
  }
}

TEST_CASE("resolver: recipient_delimiter is a set of characters") {
  Config cfg = base_config();
  cfg.recipient_delimiter = "+-";
  Resolver r(cfg);
  auto t = r.resolve("alice-news@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].user == "alice");
  CHECK(t[0].extension == "news");
  auto u = r.resolve("bob-x+y@example.org");  // the first one found wins
  REQUIRE(u.size() == 1);
  CHECK(u[0].user == "bob");
  CHECK(u[0].extension == "x+y");
}

TEST_CASE("resolver: a users entry with the delimiter in it matches whole") {
  Config cfg = base_config();
  cfg.domains[0].users->push_back("list+owner");
  Resolver r(cfg);
  auto t = r.resolve("list+owner@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].user == "list+owner");
  CHECK(t[0].extension == "");
}

TEST_CASE("resolver: domains, users and alias keys are case-insensitive") {
  Config cfg = base_config();
  alias(cfg, "Team", {"bob"});
  Resolver r(cfg);
  auto t = r.resolve("ALICE@Example.ORG");
  REQUIRE(t.size() == 1);
  CHECK(t[0].address == "ALICE@example.org");  // local part as written, domain lower-case
  CHECK(t[0].user == "alice");
  CHECK(t[0].domain == "example.org");
  CHECK(resolve(r, "carol@example.org") == Strings{"L:carol@example.org"});  // users has "Carol"
  CHECK(resolve(r, "tEaM@EXAMPLE.org") == Strings{"L:bob@example.org"});
  CHECK(r.is_local_domain("EXAMPLE.ORG"));
  CHECK(r.is_local_domain("example.org."));
  CHECK(resolve(r, "alice@example.org.") == Strings{"L:alice@example.org"});
}

TEST_CASE("resolver: quoted local parts are unquoted for lookup") {
  Config cfg = base_config();
  Resolver r(cfg);
  auto t = r.resolve("\"alice\"@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::Local);
  CHECK(t[0].user == "alice");
  CHECK(t[0].address == "\"alice\"@example.org");
  auto u = r.resolve("\"a b\"@open.example");
  REQUIRE(u.size() == 1);
  CHECK(u[0].user == "a b");
  auto v = r.resolve("\"x@y\"@open.example");
  REQUIRE(v.size() == 1);
  CHECK(v[0].user == "x@y");
  CHECK(v[0].domain == "open.example");
}

TEST_CASE("resolver: unknown user is one 5.1.1 error") {
  Config cfg = base_config();
  Resolver r(cfg);
  auto t = r.resolve("mallory@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::Error);
  CHECK(t[0].status == "5.1.1");
  CHECK(t[0].error.find("mallory@example.org") != std::string::npos);
  CHECK_FALSE(r.local_exists("mallory@example.org"));
}

TEST_CASE("resolver: a domain without users accepts every local part") {
  Config cfg = base_config();
  Resolver r(cfg);
  CHECK(resolve(r, "anything@open.example") == Strings{"L:anything@open.example"});
  CHECK(r.local_exists("anything@open.example"));
}

TEST_CASE("resolver: remote addresses resolve to themselves") {
  Config cfg = base_config();
  Resolver r(cfg);
  auto t = r.resolve("Bob@Example.NET");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::Remote);
  CHECK(t[0].address == "Bob@example.net");
  CHECK(t[0].domain == "example.net");
  CHECK_FALSE(r.local_exists("bob@example.net"));
  CHECK_FALSE(r.is_local_domain("example.net"));
}

TEST_CASE("resolver: bad addresses are 5.1.3") {
  Config cfg = base_config();
  Resolver r(cfg);
  for (const char* bad : {"", "alice", "@example.org", "alice@", "a b@example.org", "\"open@example.org"}) {
    CAPTURE(bad);
    CHECK(resolve(r, bad) == Strings{"E:5.1.3"});
    CHECK_FALSE(r.local_exists(bad));
  }
}

TEST_CASE("resolver: postmaster always exists") {
  Config cfg = base_config();
  Resolver r(cfg);
  CHECK(resolve(r, "postmaster@example.org") == Strings{"L:postmaster@example.org"});
  CHECK(resolve(r, "PostMaster@EXAMPLE.org") == Strings{"L:PostMaster@example.org"});
  CHECK(r.local_exists("postmaster@example.org"));
  auto t = r.resolve("postmaster@example.org");
  CHECK(t[0].user == "postmaster");
}

TEST_CASE("resolver: bare postmaster") {
  Config cfg = base_config();
  SUBCASE("is postmaster in the first local domain") {
    Resolver r(cfg);
    CHECK(resolve(r, "postmaster") == Strings{"L:postmaster@example.org"});
    CHECK(resolve(r, "<Postmaster>") == Strings{"L:postmaster@example.org"});
    CHECK(r.local_exists("postmaster"));
  }
  SUBCASE("follows a postmaster alias") {
    alias(cfg, "postmaster", {"alice"});
    Resolver r(cfg);
    CHECK(resolve(r, "postmaster") == Strings{"L:alice@example.org"});
  }
  SUBCASE("with no local domain, an alias takes it") {
    cfg.domains.clear();
    alias(cfg, "postmaster", {"admin@example.net"});
    Resolver r(cfg);
    CHECK(resolve(r, "postmaster") == Strings{"R:admin@example.net"});
    CHECK(r.local_exists("postmaster"));
  }
  SUBCASE("with no local domain and no alias it waits for the admin") {
    cfg.domains.clear();
    Resolver r(cfg);
    auto t = r.resolve("postmaster");
    REQUIRE(t.size() == 1);
    CHECK(t[0].status == "4.3.0");
    CHECK(r.local_exists("postmaster"));  // accepted at RCPT, deferred at delivery
  }
}

TEST_CASE("resolver: an alias fans out to users and a pipe, in order") {
  Config cfg = base_config();
  alias(cfg, "team", {"alice", "bob", "|/usr/bin/handler --x"});
  Resolver r(cfg);
  auto t = r.resolve("team@example.org");
  CHECK(shown(t) == Strings{"L:alice@example.org", "L:bob@example.org", "C:/usr/bin/handler --x"});
  REQUIRE(t.size() == 3);
  CHECK(t[2].address == "team@example.org");  // the alias the command came from
  CHECK(t[2].domain == "example.org");
  CHECK(r.local_exists("team@example.org"));
  // The alias is reached with an extension too (the extension is not carried over).
  CHECK(shown(r.resolve("team+x@example.org")) == shown(t));
}

TEST_CASE("resolver: file targets") {
  Config cfg = base_config();
  alias(cfg, "archive", {"/var/mail/archive"});
  Resolver r(cfg);
  auto t = r.resolve("archive@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].kind == Kind::File);
  CHECK(t[0].path == "/var/mail/archive");
}

TEST_CASE("resolver: an alias to a remote address") {
  Config cfg = base_config();
  alias(cfg, "fwd", {"someone@Example.NET"});
  Resolver r(cfg);
  CHECK(resolve(r, "fwd@example.org") == Strings{"R:someone@example.net"});
  CHECK(r.local_exists("fwd@example.org"));
}

TEST_CASE("resolver: a target without @ stays in the domain being resolved") {
  Config cfg = base_config();
  alias(cfg, "help", {"bob"});
  Resolver r(cfg);
  CHECK(resolve(r, "help@example.org") == Strings{"L:bob@example.org"});
  CHECK(resolve(r, "help@open.example") == Strings{"L:bob@open.example"});
}

TEST_CASE("resolver: a key with @ matches that address only and wins over the bare key") {
  Config cfg = base_config();
  alias(cfg, "sales", {"bob"});
  alias(cfg, "sales@example.org", {"alice"});
  Resolver r(cfg);
  CHECK(resolve(r, "sales@example.org") == Strings{"L:alice@example.org"});
  CHECK(resolve(r, "sales@open.example") == Strings{"L:bob@open.example"});
}

TEST_CASE("resolver: lookup order for user+ext") {
  Config cfg = base_config();
  alias(cfg, "alice", {"bob"});
  alias(cfg, "alice+vip", {"carol"});
  Resolver r(cfg);
  CHECK(resolve(r, "alice+vip@example.org") == Strings{"L:carol@example.org"});
  CHECK(resolve(r, "alice+other@example.org") == Strings{"L:bob@example.org"});
}

TEST_CASE("resolver: aliases apply to local domains only") {
  Config cfg = base_config();
  alias(cfg, "bob@example.net", {"alice@example.org"});
  alias(cfg, "team", {"alice"});
  Resolver r(cfg);
  CHECK(resolve(r, "bob@example.net") == Strings{"R:bob@example.net"});
  CHECK(resolve(r, "team@example.net") == Strings{"R:team@example.net"});
}

TEST_CASE("resolver: catch_all") {
  Config cfg = base_config();
  SUBCASE("receives unknown users, listed users stay theirs") {
    Resolver r(cfg);
    CHECK(resolve(r, "nobody@catchall.example") == Strings{"L:postmaster@catchall.example"});
    CHECK(resolve(r, "alice@catchall.example") == Strings{"L:alice@catchall.example"});
    CHECK(r.local_exists("nobody@catchall.example"));
  }
  SUBCASE("may be an address and goes through aliases") {
    cfg.domains[2].catch_all = "help@example.org";
    alias(cfg, "help@example.org", {"bob", "carol"});
    Resolver r(cfg);
    CHECK(resolve(r, "x@catchall.example") == Strings{"L:bob@example.org", "L:carol@example.org"});
  }
  SUBCASE("an unknown catch_all target does not fall back to catch_all again") {
    cfg.domains[2].catch_all = "ghost";
    Resolver r(cfg);
    CHECK(resolve(r, "x@catchall.example") == Strings{"E:5.1.1"});
    CHECK_FALSE(r.local_exists("x@catchall.example"));
  }
}

TEST_CASE("resolver: a loop a -> b -> a is 5.4.6") {
  Config cfg = base_config();
  alias(cfg, "a", {"b"});
  alias(cfg, "b", {"a"});
  Resolver r(cfg);
  auto t = r.resolve("a@example.org");
  REQUIRE(t.size() == 1);
  CHECK(t[0].status == "5.4.6");
  CHECK(t[0].error.find("a@example.org -> b@example.org -> a@example.org") != std::string::npos);
  CHECK_FALSE(r.local_exists("a@example.org"));
}

TEST_CASE("resolver: a loop across domains and through extensions is caught") {
  Config cfg = base_config();
  alias(cfg, "x@example.org", {"y@open.example"});
  alias(cfg, "y@open.example", {"x+tag@example.org"});
  Resolver r(cfg);
  CHECK(resolve(r, "x@example.org") == Strings{"E:5.4.6"});
}

TEST_CASE("resolver: an alias naming itself delivers to the user itself") {
  Config cfg = base_config();
  alias(cfg, "alice", {"alice", "alice@elsewhere.net"});
  Resolver r(cfg);
  CHECK(resolve(r, "alice@example.org") == Strings{"L:alice@example.org", "R:alice@elsewhere.net"});
  SUBCASE("with an extension the mailbox keeps it") {
    auto t = r.resolve("alice+tag@example.org");
    REQUIRE(t.size() == 2);
    CHECK(t[0].address == "alice+tag@example.org");
    CHECK(t[0].user == "alice");
    CHECK(t[0].extension == "tag");
  }
  SUBCASE("the self target must still be a user") {
    alias(cfg, "ghost", {"ghost", "bob"});
    Resolver r2(cfg);
    CHECK(resolve(r2, "ghost@example.org") == Strings{"E:5.1.1", "L:bob@example.org"});
    CHECK(r2.local_exists("ghost@example.org"));
  }
}

TEST_CASE("resolver: \\user skips aliases") {
  Config cfg = base_config();
  alias(cfg, "alice", {"\\alice", "bob"});
  alias(cfg, "bob", {"carol"});
  alias(cfg, "copy", {"\\bob"});
  Resolver r(cfg);
  CHECK(resolve(r, "alice@example.org") == Strings{"L:alice@example.org", "L:carol@example.org"});
  CHECK(resolve(r, "copy@example.org") == Strings{"L:bob@example.org"});
}

TEST_CASE("resolver: nesting deeper than 20 levels is 5.4.6") {
  Config cfg = base_config();
  // a0 -> a1 -> ... -> aN -> bob: N+1 alias levels.
  auto chain = [&](int levels) {
    cfg.aliases.map.clear();
    for (int i = 0; i < levels; ++i)
      alias(cfg, "a" + std::to_string(i),
            {i + 1 < levels ? "a" + std::to_string(i + 1) : std::string("bob")});
  };
  chain(Resolver::kMaxDepth);
  CHECK(resolve(Resolver(cfg), "a0@example.org") == Strings{"L:bob@example.org"});
  chain(Resolver::kMaxDepth + 1);
  CHECK(resolve(Resolver(cfg), "a0@example.org") == Strings{"E:5.4.6"});
}

TEST_CASE("resolver: duplicates are removed, first one kept") {
  Config cfg = base_config();
  alias(cfg, "all", {"alice", "Alice", "alice@example.org", "ops", "bob@example.net", "bob@EXAMPLE.net",
                     "|cmd", "|cmd", "ghost", "ghost"});
  alias(cfg, "ops", {"alice", "bob"});
  Resolver r(cfg);
  CHECK(resolve(r, "all@example.org") ==
        Strings{"L:alice@example.org", "L:bob@example.org", "R:bob@example.net", "C:cmd", "E:5.1.1"});
}

TEST_CASE("resolver: expansion is bounded") {
  Config cfg = base_config();
  SUBCASE("1000 targets are fine, 1001 are one 5.3.0 error") {
    Strings many;
    for (int i = 0; i < 1000; ++i) many.push_back("u" + std::to_string(i) + "@example.net");
    alias(cfg, "big", many);
    many.push_back("one-more@example.net");
    alias(cfg, "bigger", many);
    Resolver r(cfg);
    CHECK(r.resolve("big@example.org").size() == 1000);
    CHECK(resolve(r, "bigger@example.org") == Strings{"E:5.3.0"});
    CHECK_FALSE(r.local_exists("bigger@example.org"));
  }
  SUBCASE("a fan-out that dedupes away still ends quickly") {
    for (int i = 0; i < 19; ++i) {
      const std::string next = "f" + std::to_string(i + 1);
      alias(cfg, "f" + std::to_string(i), {next, next + "@example.org", "\"" + next + "\""});
    }
    alias(cfg, "f19", {"bob"});
    Resolver r(cfg);
    auto start = std::chrono::steady_clock::now();
    CHECK(resolve(r, "f0@example.org") == Strings{"E:5.3.0"});
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  }
}

TEST_CASE("resolver: malformed targets wait for the admin (4.3.0)") {
  Config cfg = base_config();
  alias(cfg, "broken", {"bob@", "|", "two words"});
  Resolver r(cfg);
  CHECK(resolve(r, "broken@example.org") == Strings{"E:4.3.0", "E:4.3.0", "E:4.3.0"});
  auto t = r.resolve("broken@example.org");
  CHECK(t[0].address == "broken@example.org");
  CHECK(r.local_exists("broken@example.org"));
}

TEST_CASE("resolver: :include: files are read at resolve time") {
  TempDir dir;
  Config cfg = base_config();
  const std::string list = dir.write("list", "# members\nalice, bob@example.net\n\ncarol\n");
  alias(cfg, "members", {":include:" + list});
  alias(cfg, "spaced", {":include: " + list, "dave@example.net"});
  Resolver r(cfg);
  CHECK(resolve(r, "members@example.org") ==
        Strings{"L:alice@example.org", "R:bob@example.net", "L:carol@example.org"});
  CHECK(resolve(r, "spaced@example.org") == Strings{"L:alice@example.org", "R:bob@example.net",
                                                    "L:carol@example.org", "R:dave@example.net"});

  SUBCASE("changes show up without a reload") {
    dir.write("list", "bob\n");
    CHECK(resolve(r, "members@example.org") == Strings{"L:bob@example.org"});
  }
  SUBCASE("a missing file is a temporary 4.3.0, accepted at RCPT") {
    fs::remove(list);
    auto t = r.resolve("members@example.org");
    REQUIRE(t.size() == 1);
    CHECK(t[0].status == "4.3.0");
    CHECK(t[0].error.find(list) != std::string::npos);
    CHECK(r.local_exists("members@example.org"));
  }
  SUBCASE("an empty list expands to nobody: 5.1.1") {
    dir.write("list", "# nobody yet\n");
    CHECK(resolve(r, "members@example.org") == Strings{"E:5.1.1"});
  }
  SUBCASE("commands and files in a list are refused, the rest delivered") {
    dir.write("list", "alice\n|/bin/evil\n/etc/passwd\n");
    CHECK(resolve(r, "members@example.org") == Strings{"L:alice@example.org", "E:5.7.1", "E:5.7.1"});
  }
  SUBCASE("list entries may be aliases, which may run commands") {
    alias(cfg, "hook", {"|/usr/bin/hook"});
    Resolver r2(cfg);
    dir.write("list", "hook\n");
    CHECK(resolve(r2, "members@example.org") == Strings{"C:/usr/bin/hook"});
  }
  SUBCASE("a list including itself is 5.4.6") {
    dir.write("list", "alice\n:include:" + list + "\n");
    CHECK(resolve(r, "members@example.org") == Strings{"L:alice@example.org", "E:5.4.6"});
  }
  SUBCASE("nested lists") {
    const std::string inner = dir.write("inner", "bob\n");
    dir.write("list", "alice\n:include:" + inner + "\n");
    CHECK(resolve(r, "members@example.org") == Strings{"L:alice@example.org", "L:bob@example.org"});
  }
  SUBCASE("a relative path or a directory is 4.3.0") {
    alias(cfg, "rel", {":include:relative/list"});
    alias(cfg, "dir", {":include:" + dir.path});
    Resolver r2(cfg);
    CHECK(resolve(r2, "rel@example.org") == Strings{"E:4.3.0"});
    CHECK(resolve(r2, "dir@example.org") == Strings{"E:4.3.0"});
  }
  SUBCASE("a file over 1 MiB is 4.3.0") {
    dir.write("list", std::string((1 << 20) + 1, '#'));
    CHECK(resolve(r, "members@example.org") == Strings{"E:4.3.0"});
  }
}

TEST_CASE("resolver: load_aliases_file") {
  TempDir dir;
  Config cfg = base_config();
  alias(cfg, "shared", {"alice"});
  cfg.aliases.file = dir.write("aliases",
                               "# site aliases\n"
                               "staff: alice,\n"
                               "   bob, \"|/usr/bin/logger -t mail\"\n"
                               "shared: bob\n"
                               "broken line\n"
                               "Root: postmaster\n");
  Resolver r(cfg);
  CHECK(resolve(r, "staff@example.org") == Strings{"E:5.1.1"});  // not read yet

  petrel::Status st = r.load_aliases_file();
  CHECK_FALSE(st.ok());
  CHECK(st.error() == cfg.aliases.file + ":5: missing ':' after the alias name");
  CHECK(resolve(r, "staff@example.org") ==
        Strings{"L:alice@example.org", "L:bob@example.org", "C:/usr/bin/logger -t mail"});
  CHECK(resolve(r, "root@example.org") == Strings{"L:postmaster@example.org"});
  CHECK(resolve(r, "shared@example.org") == Strings{"L:alice@example.org"});  // the map wins
  CHECK(r.local_exists("staff@example.org"));

  SUBCASE("reloading replaces the file's entries") {
    dir.write("aliases", "crew: carol\n");
    CHECK(r.load_aliases_file().ok());
    CHECK(resolve(r, "crew@example.org") == Strings{"L:carol@example.org"});
    CHECK(resolve(r, "staff@example.org") == Strings{"E:5.1.1"});
    CHECK(resolve(r, "shared@example.org") == Strings{"L:alice@example.org"});
  }
  SUBCASE("a missing file is reported and leaves the map") {
    fs::remove(cfg.aliases.file);
    petrel::Status missing = r.load_aliases_file();
    CHECK_FALSE(missing.ok());
    CHECK(missing.error().find(cfg.aliases.file) != std::string::npos);
    CHECK(resolve(r, "staff@example.org") == Strings{"E:5.1.1"});
    CHECK(resolve(r, "shared@example.org") == Strings{"L:alice@example.org"});
  }
}

TEST_CASE("resolver: no aliases file configured loads fine") {
  Config cfg = base_config();
  Resolver r(cfg);
  CHECK(r.load_aliases_file().ok());
}

TEST_CASE("resolver: local_exists agrees with resolve") {
  Config cfg = base_config();
  alias(cfg, "a", {"b"});
  alias(cfg, "b", {"a"});
  alias(cfg, "half", {"ghost", "alice"});
  alias(cfg, "inc", {":include:/nonexistent/petrel-list"});
  Resolver r(cfg);
  for (const char* addr : {"alice@example.org", "alice+x@example.org", "ghost@example.org", "a@example.org",
                           "half@example.org", "inc@example.org", "postmaster", "x@catchall.example",
                           "y@open.example"}) {
    CAPTURE(addr);
    bool deliverable = false;
    for (const Target& t : r.resolve(addr))
      deliverable = deliverable || !t.is_error() || t.is_temporary_error();
    CHECK(r.local_exists(addr) == deliverable);
  }
}
