// `petrel passwd`: reads a password (without echo on a terminal, else one
// line from stdin) and prints a yescrypt crypt(3) hash for auth.users or
// auth.passwd_file.
#include <cstdio>
#include <cstring>
#include <string>

#include <crypt.h>
#include <termios.h>
#include <unistd.h>

#include "petrel/cli/commands.h"

namespace petrel::cli {
namespace {

// Reads one line from stdin. With a prompt (stdin is a terminal) echo is
// off before the prompt appears: whatever the user types after seeing it is
// neither shown nor flushed away by the mode change.
bool read_line(std::string* out, const char* prompt) {
  struct termios saved {};
  bool tty = prompt != nullptr && ::tcgetattr(0, &saved) == 0;
  if (tty) {
    struct termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(0, TCSAFLUSH, &quiet);
  }
  if (prompt) std::fputs(prompt, stderr);
  out->clear();
  int c;
  bool got = false;
  while ((c = std::getchar()) != EOF) {
    got = true;
    if (c == '\n') break;
    out->push_back(static_cast<char>(c));
  }
  if (!out->empty() && out->back() == '\r') out->pop_back();
  if (tty) {
    ::tcsetattr(0, TCSANOW, &saved);
    std::fputc('\n', stderr);
  }
  return got;
}

}  // namespace

int cmd_passwd(const Args& args) {
  if (!args.rest.empty()) {
    std::fputs("usage: petrel passwd\n", stderr);
    return kExitUsage;
  }
  bool tty = ::isatty(0);
  std::string pw, again;
  if (!read_line(&pw, tty ? "Password: " : nullptr) || pw.empty()) {
    std::fputs("petrel passwd: no password given\n", stderr);
    return kExitUsage;
  }
  if (tty) {
    if (!read_line(&again, "Again: ") || again != pw) {
      std::fputs("petrel passwd: the passwords differ\n", stderr);
      return kExitUsage;
    }
  }
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!::crypt_gensalt_rn("$y$", 0, nullptr, 0, salt, sizeof salt)) {
    std::perror("petrel passwd: crypt_gensalt");
    return kExitTempFail;
  }
  struct crypt_data data {};
  const char* hash = ::crypt_rn(pw.c_str(), salt, &data, sizeof data);
  if (!hash || hash[0] == '*') {
    std::perror("petrel passwd: crypt");
    return kExitTempFail;
  }
  std::puts(hash);
  return 0;
}

}  // namespace petrel::cli
