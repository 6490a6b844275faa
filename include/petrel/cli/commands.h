// Subcommands of the petrel binary that live outside main.cpp.
#pragma once

#include <string>
#include <vector>

namespace petrel::cli {

constexpr int kExitUsage = 64;
constexpr int kExitTempFail = 75;
constexpr int kExitConfig = 78;

struct Args {
  std::string config_path;
  std::vector<std::string> rest;  // arguments after the subcommand, -c removed
};

// `petrel queue SUBCOMMAND ...`
int cmd_queue(const Args& args);
// `petrel sendmail ...` (also argv[0] "sendmail"); `mailq` is `queue list`.
int cmd_sendmail(const Args& args);
// `petrel passwd`: print a crypt(3) hash of a password read from the user.
int cmd_passwd(const Args& args);

}  // namespace petrel::cli
