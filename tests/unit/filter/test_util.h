// Shared fixtures for the filter tests: the common temp dir, a sample
// envelope and message, scripted fake filters, and building plugins from
// source with the system compiler.
//
// Plugins: rules.so comes from $PETREL_RULES_SO when set (the Makefile builds
// build/rules.so and passes it); otherwise it is compiled once per test run
// from src/plugins/rules/ with c++ and pkg-config libpcre2-8. The small C
// test plugins in tests/unit/filter/plugins/ are compiled with cc as needed.
// Sources are found from $PETREL_SOURCE_DIR, else by walking up from the
// current directory to the checkout (tests run from the repository root).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "../common/temp_files.h"
#include "petrel/filter/filter.h"

namespace petrel::filter::testing {

using petrel::testing::slurp;
using petrel::testing::spit;
using petrel::testing::TempDir;

inline const std::string kMessage =
    "Received: from client.example (client.example [192.0.2.1])\n"
    "\tby mail.example.org (petrel) with ESMTP id 0123456789ABCDEFGH\n"
    "From: Bob <bob@example.net>\n"
    "To: Alice <alice@example.org>\n"
    "Subject: lunch tomorrow\n"
    "Date: Wed, 26 Nov 2025 10:00:00 +0000\n"
    "Message-ID: <20251126100000.1234@example.net>\n"
    "\n"
    "Hi Alice,\n"
    "\n"
    "shall we meet at noon at the usual place? I can book a table.\n"
    "\n"
    "Bob\n";

inline Envelope envelope() {
  Envelope e;
  e.queue_id = "0123456789ABCDEFGH";
  e.sender = "bob@example.net";
  e.recipients = {"alice@example.org", "carol@example.org"};
  e.client_ip = "192.0.2.1";
  e.client_port = 40000;
  e.helo = "client.example";
  e.hostname = "mail.example.org";
  return e;
}

// A filter whose answers the test scripts.
class FakeFilter : public Filter {
 public:
  explicit FakeFilter(std::string name, Verdict verdict = {})
      : name_(std::move(name)), verdict_(std::move(verdict)) {}
  const std::string& name() const override { return name_; }
  Verdict scan(const Envelope& env, std::string_view message) override {
    ++scans;
    seen_message = std::string(message);
    seen_env = env;
    if (on_scan) on_scan();
    return verdict_;
  }
  std::optional<StageReply> on_rcpt(const Envelope&, std::string_view rcpt) override {
    seen_rcpt = std::string(rcpt);
    return rcpt_reply;
  }
  std::optional<StageReply> on_connect(const Envelope&) override { return connect_reply; }
  void worker_init() override { ++worker_inits; }
  void close() override { ++closes; }
  void reset() override { ++resets; }
  void fini() override { ++finis; }

  int scans = 0, worker_inits = 0, closes = 0, resets = 0, finis = 0;
  std::string seen_message, seen_rcpt;
  Envelope seen_env;
  std::optional<StageReply> rcpt_reply, connect_reply;
  std::function<void()> on_scan;

 private:
  std::string name_;
  Verdict verdict_;
};

// The checkout's root ("" when not found).
inline std::string source_dir() {
  if (const char* d = std::getenv("PETREL_SOURCE_DIR"); d && *d) return d;
  std::error_code ec;
  for (auto p = std::filesystem::current_path(ec); !p.empty(); p = p.parent_path()) {
    if (std::filesystem::exists(p / "include/petrel/filter.h", ec) &&
        std::filesystem::exists(p / "src/plugins/rules", ec))
      return p.string();
    if (p == p.root_path()) break;
  }
  return {};
}

// Runs a shell command line; returns its exit status, output in *log.
inline int run_command(const std::string& cmd, std::string* log) {
  TempDir tmp;
  const std::string out = tmp / "log";
  const int rc = std::system((cmd + " >" + out + " 2>&1").c_str());
  *log = slurp(out);
  return rc;
}

// Compiles one C test plugin (tests/unit/filter/plugins/NAME.c) into `dir`;
// returns the .so path, or "" with the compiler output in *log.
inline std::string build_test_plugin(const std::string& name, const std::string& dir,
                                     std::string* log, const std::string& libs = "") {
  const std::string src = source_dir();
  const std::string out = dir + "/" + name + ".so";
  const std::string cmd = "cc -std=c11 -Wall -Wextra -Werror -shared -fPIC -I'" + src +
                          "/include' '" + src + "/tests/unit/filter/plugins/" + name + ".c' -o '" +
                          out + "' " + libs;
  return run_command(cmd, log) == 0 ? out : std::string();
}

// rules.so: $PETREL_RULES_SO, or built once into a directory that lives as
// long as the test process.
inline std::string rules_plugin(std::string* log) {
  if (const char* p = std::getenv("PETREL_RULES_SO"); p && *p) return p;
  static std::string built;
  static std::string built_log;
  static bool tried = false;
  if (!tried) {
    tried = true;
    static TempDir dir;
    const std::string src = source_dir();
    const std::string out = dir / "rules.so";
    const std::string cmd = "cd '" + src +
                            "' && c++ -std=c++20 -Wall -Wextra -Werror -O1 -shared -fPIC "
                            "-fvisibility=hidden -Iinclude src/plugins/rules/*.cpp "
                            "$(pkg-config --cflags --libs libpcre2-8) -o '" +
                            out + "'";
    if (run_command(cmd, &built_log) == 0) built = out;
  }
  *log = built_log;
  return built;
}

}  // namespace petrel::filter::testing
