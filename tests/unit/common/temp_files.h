// File helpers every unit test area uses: a private temp directory removed
// afterwards, and whole-file read / write / exists / list.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"

namespace petrel::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/petrel-test-XXXXXX";
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

// The file's contents, or "<unreadable: why>".
inline std::string slurp(const std::string& path) {
  auto r = read_file(path);
  return r ? *r : std::string("<unreadable: ") + r.error() + ">";
}

// Writes the file with exactly `mode` (whatever the umask).
inline void spit(const std::string& path, std::string_view data, unsigned mode = 0644) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  (void)write_all(fd.get(), data);
  ::fchmod(fd.get(), mode);
}

inline bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// Names in a directory, sorted.
inline std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace petrel::testing
