// RAII ownership of file descriptors and small POSIX I/O helpers.
// Every fd petrel opens is O_CLOEXEC and owned by a UniqueFd, so a worker that
// returns early never leaks an fd into the next fork or exec.
#pragma once

#include <string>
#include <string_view>

#include "petrel/common/result.h"

namespace petrel {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Writes all of data, retrying on EINTR and short writes.
Status write_all(int fd, std::string_view data);
// Reads a whole file into a string.
Result<std::string> read_file(const std::string& path);
// Creates a directory and its parents (mode for the new ones).
Status make_dirs(const std::string& path, unsigned mode = 0755);
// fsync()s a directory so a rename or unlink in it is durable.
Status fsync_dir(const std::string& path);
std::string errno_string(int err);

}  // namespace petrel
