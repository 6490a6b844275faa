// petrel — one binary, subcommands (SPEC §2). Exit codes follow sysexits(3).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <openssl/opensslv.h>
#include <yaml-cpp/yaml.h>
#include <event2/event.h>

#include "petrel/cli/commands.h"
#include "petrel/common/log.h"
#include "petrel/config/config.h"
#include "petrel/filter/chain.h"
#include "petrel/master/master.h"

namespace {

constexpr const char* kVersion = "0.1.0";

int usage() {
  std::fputs(
      "usage: petrel COMMAND [-c FILE] [ARGS]\n"
      "commands:\n"
      "  serve                  run the server in the foreground\n"
      "  check-config           validate the configuration and print it\n"
      "  queue list [--json]    list queued messages\n"
      "  queue show ID...       envelope, delivery state and headers of messages\n"
      "  queue flush [ID...]    retry deferred messages now\n"
      "  queue delete ID...|--all, hold ID..., release ID...\n"
      "  queue summary          destination domains x message age\n"
      "  sendmail [-t] [-i] [-f ADDR] [-F NAME] [RCPT...]  submit a message from stdin\n"
      "  passwd                 print a crypt(3) hash of a password for auth.users\n"
      "  version                print version and build information\n",
      stderr);
  return petrel::cli::kExitUsage;
}

int cmd_check_config(const petrel::cli::Args& args) {
  auto loaded = petrel::config::load_file(args.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return petrel::cli::kExitConfig;
  }
  // Filters are checked as the server would load them: plugins opened,
  // ABI-checked and initialised, exec programs found.
  auto problems = petrel::filter::Chain::check(loaded.config);
  if (!problems.empty()) {
    for (const auto& p : problems)
      std::fprintf(stderr, "%s: %s\n", args.config_path.c_str(), p.c_str());
    return petrel::cli::kExitConfig;
  }
  std::fputs(petrel::config::describe(loaded.config).c_str(), stdout);
  return 0;
}

int cmd_serve(const petrel::cli::Args& args) {
  auto loaded = petrel::config::load_file(args.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return petrel::cli::kExitConfig;
  }
  const auto& lc = loaded.config.log;
  petrel::log::configure(static_cast<petrel::log::Target>(lc.target),
                         static_cast<petrel::log::Format>(lc.format),
                         static_cast<petrel::log::Level>(lc.level));
  petrel::log::set_program("petrel/master");
  return petrel::master::serve(args.config_path, std::move(loaded.config));
}

int cmd_version() {
  std::printf("petrel %s\n", kVersion);
  std::printf("built with g++ %d.%d, C++%ld\n", __GNUC__, __GNUC_MINOR__, __cplusplus / 100 % 100);
  std::printf("openssl: %s\n", OPENSSL_VERSION_TEXT);
  std::printf("libevent: %s\n", event_get_version());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string self = argv[0];
  self = self.substr(self.rfind('/') == std::string::npos ? 0 : self.rfind('/') + 1);
  petrel::cli::Args args;
  args.config_path = petrel::config::default_path();
  if (self == "sendmail" || self == "mailq") {
    // sendmail's own flags stay as they are; only -c is ours.
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-c" && i + 1 < argc) args.config_path = argv[++i];
      else args.rest.push_back(a);
    }
    if (self == "mailq") {
      args.rest = {"list"};
      return petrel::cli::cmd_queue(args);
    }
    return petrel::cli::cmd_sendmail(args);
  }
  if (argc < 2) return usage();
  std::string cmd = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c") {
      if (i + 1 >= argc) return usage();
      args.config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      args.config_path = a.substr(9);
    } else {
      args.rest.push_back(a);
    }
  }
  if (cmd == "serve" && args.rest.empty()) return cmd_serve(args);
  if (cmd == "check-config" && args.rest.empty()) return cmd_check_config(args);
  if (cmd == "queue") return petrel::cli::cmd_queue(args);
  if (cmd == "sendmail") return petrel::cli::cmd_sendmail(args);
  if (cmd == "passwd") return petrel::cli::cmd_passwd(args);
  if (cmd == "mailq") {
    args.rest = {"list"};
    return petrel::cli::cmd_queue(args);
  }
  if (cmd == "version") return cmd_version();
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    usage();
    return 0;
  }
  return usage();
}
