// Shared fixtures for the delivery agent tests: a private temp directory that
// is removed afterwards, a sample recipient and message, and file helpers.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/delivery/agent.h"

namespace petrel::delivery::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/petrel-delivery-XXXXXX";
    if (::mkdtemp(tmpl)) path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline Recipient alice() {
  Recipient r;
  r.address = "alice+news@example.org";
  r.original = "Alice+News@Example.ORG";
  r.user = "alice";
  r.extension = "news";
  r.domain = "example.org";
  return r;
}

inline const std::string kBody =
    "Received: from client.example (client.example [192.0.2.1])\n"
    "\tby mail.example.org (petrel) with ESMTP id 0123456789ABCDEFGH\n"
    "From: Bob <bob@example.net>\n"
    "Subject: hello\n"
    "\n"
    "First line.\n"
    "From the start of a line.\n"
    ">From an already quoted line.\n"
    ".a line with a dot\n"
    "Last line.\n";

inline Message message(std::string_view body = kBody) {
  Message m;
  m.queue_id = "0123456789ABCDEFGH";
  m.sender = "bob@example.net";
  m.body = body;
  return m;
}

inline std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

inline std::string slurp(const std::string& path) {
  auto r = read_file(path);
  return r ? *r : std::string("<unreadable: ") + r.error() + ">";
}

inline void spit(const std::string& path, std::string_view data, unsigned mode = 0644) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  (void)write_all(fd.get(), data);
}

inline bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace petrel::delivery::testing
