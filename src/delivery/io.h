// Small helpers private to the delivery agents.
#pragma once

#include <cerrno>
#include <chrono>
#include <string_view>

#include <unistd.h>

namespace petrel::delivery {

// Like write_all, but returns the errno (0 on success), which the agents need
// to tell a full disk or quota (4.2.2, 4.3.1) from other failures.
inline int write_fully(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

// A point in monotonic time that bounds a whole operation.
class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds budget)
      : end_(std::chrono::steady_clock::now() + budget) {}
  // Milliseconds left, 0 once expired; capped so it fits poll()'s int.
  int remaining_ms() const {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end_ - std::chrono::steady_clock::now());
    if (left.count() <= 0) return 0;
    return left.count() > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left.count());
  }
  bool expired() const { return remaining_ms() == 0; }

 private:
  std::chrono::steady_clock::time_point end_;
};

}  // namespace petrel::delivery
