#include "petrel/queue/spool.h"

#include <cerrno>
#include <cstdio>
#include <algorithm>

#include <climits>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

namespace petrel::queue {
namespace {

constexpr char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";

void append_base32(std::string& out, std::uint64_t v, int width) {
  char buf[16];
  for (int i = width - 1; i >= 0; --i) {
    buf[i] = kDigits[v & 31];
    v >>= 5;
  }
  out.append(buf, static_cast<size_t>(width));
}

bool is_queue_id(std::string_view name) {
  if (name.size() != 18) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'V'); });
}

}  // namespace

std::string new_queue_id() {
  // The counter counts ids within one microsecond, so ids of one process are
  // strictly increasing (a free-running counter would wrap from 1023 to 0
  // inside a microsecond and break the order). 1024 ids in one microsecond,
  // or a clock stepping back, borrow the next microsecond.
  static std::uint64_t last_us = 0;
  static std::uint32_t counter = 0;
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  std::uint64_t now = static_cast<std::uint64_t>(tv.tv_sec) * 1000000 +
                      static_cast<std::uint64_t>(tv.tv_usec);
  if (now > last_us) {
    last_us = now;
    counter = 0;
  } else if (++counter > 1023) {
    ++last_us;
    counter = 0;
  }
  std::string id;
  id.reserve(18);
  append_base32(id, last_us / 1000000, 7);
  append_base32(id, last_us % 1000000, 4);
  append_base32(id, static_cast<std::uint64_t>(::getpid()), 5);
  append_base32(id, counter, 2);
  return id;
}

std::string format_envelope(const Envelope& env) {
  std::string out;
  out.reserve(256 + env.recipients.size() * 40);
  out += "PETREL1\n";
  out += "I " + env.id + "\n";
  char t[48];
  std::snprintf(t, sizeof t, "T %lld.%06lld\n", static_cast<long long>(env.arrival_sec),
                static_cast<long long>(env.arrival_usec));
  out += t;
  out += "S " + env.sender + "\n";
  out += "Z " + std::to_string(env.size) + "\n";
  out += env.body_8bit ? "B 8BITMIME\n" : "B 7BIT\n";
  out += env.smtputf8 ? "U 1\n" : "U 0\n";
  out += "C " + env.client + "\n";
  out += "H " + env.helo + "\n";
  if (!env.auth_user.empty()) out += "A " + env.auth_user + "\n";
  for (const auto& r : env.recipients) out += "R " + r + "\n";
  out += ".\n";
  return out;
}

Result<ParsedMessage> parse_envelope(std::string_view data) {
  ParsedMessage pm;
  Envelope& env = pm.envelope;
  size_t pos = 0;
  bool first = true, ended = false;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string_view::npos) return Error{"truncated envelope"};
    std::string_view line = data.substr(pos, nl - pos);
    pos = nl + 1;
    if (first) {
      if (line != "PETREL1") return Error{"not a petrel spool file"};
      first = false;
      continue;
    }
    if (line == ".") {
      ended = true;
      break;
    }
    if (line.size() < 2 || line[1] != ' ') return Error{"bad envelope line"};
    std::string value(line.substr(2));
    switch (line[0]) {
      case 'I': env.id = value; break;
      case 'T': {
        long long s = 0, us = 0;
        if (std::sscanf(value.c_str(), "%lld.%lld", &s, &us) < 1) return Error{"bad arrival time"};
        env.arrival_sec = s;
        env.arrival_usec = us;
        break;
      }
      case 'S': env.sender = value; break;
      case 'Z': env.size = std::strtoull(value.c_str(), nullptr, 10); break;
      case 'B': env.body_8bit = value == "8BITMIME"; break;
      case 'U': env.smtputf8 = value == "1"; break;
      case 'C': env.client = value; break;
      case 'H': env.helo = value; break;
      case 'A': env.auth_user = value; break;
      case 'R': env.recipients.push_back(value); break;
      default: break;  // unknown fields are skipped: newer writers may add some
    }
  }
  if (!ended) return Error{"truncated envelope"};
  pm.body_offset = pos;
  return pm;
}

Result<Spool> Spool::open(const std::string& state_dir) {
  Spool s;
  s.queue_dir_ = state_dir + "/queue";
  if (Status st = make_dirs(s.queue_dir_, 0750); !st) return Error{st.error()};
  s.dir_fd_.reset(::open(s.queue_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!s.dir_fd_) return Error{s.queue_dir_ + ": " + errno_string(errno)};
  return s;
}

std::string Spool::message_path(std::string_view id) const {
  return queue_dir_ + "/" + std::string(id);
}

Status Spool::commit(const Envelope& env, std::initializer_list<std::string_view> parts) {
  std::string tmp = ".tmp-" + env.id;
  UniqueFd fd(::openat(dir_fd_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
  if (!fd) return Error{"create " + tmp + ": " + errno_string(errno)};
  auto fail = [&](const char* what) -> Status {
    Status st = Error{std::string(what) + " " + tmp + ": " + errno_string(errno)};
    fd.reset();
    ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
    return st;
  };
  std::string head = format_envelope(env);
  // One writev for the envelope and all parts; loop on short writes.
  std::vector<struct iovec> iov;
  iov.reserve(parts.size() + 1);
  iov.push_back({head.data(), head.size()});
  for (std::string_view p : parts)
    if (!p.empty()) iov.push_back({const_cast<char*>(p.data()), p.size()});
  size_t first = 0;
  while (first < iov.size()) {
    int n = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t w = ::writev(fd.get(), iov.data() + first, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    if (w == 0) {
      errno = ENOSPC;
      return fail("write");
    }
    size_t left = static_cast<size_t>(w);
    while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  if (::fdatasync(fd.get()) != 0) return fail("fsync");
  if (::close(fd.release()) != 0) {
    Status st = Error{"close " + tmp + ": " + errno_string(errno)};
    ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
    return st;
  }
  if (::renameat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), env.id.c_str()) != 0) {
    Status st = Error{"rename " + tmp + ": " + errno_string(errno)};
    ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
    return st;
  }
  if (::fsync(dir_fd_.get()) != 0) {
    // The rename may not be durable: withdraw the message rather than
    // promise what the disk has not confirmed.
    Status st = Error{"fsync " + queue_dir_ + ": " + errno_string(errno)};
    ::unlinkat(dir_fd_.get(), env.id.c_str(), 0);
    return st;
  }
  return Status::Ok();
}

Result<std::vector<std::string>> Spool::list() const {
  std::vector<std::string> ids;
  int dfd = ::dup(dir_fd_.get());
  if (dfd < 0) return Error{queue_dir_ + ": " + errno_string(errno)};
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    ::close(dfd);
    return Error{queue_dir_ + ": " + errno_string(errno)};
  }
  ::rewinddir(d);
  while (struct dirent* e = ::readdir(d)) {
    if (is_queue_id(e->d_name)) ids.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(ids.begin(), ids.end());
  return ids;
}

Result<ParsedMessage> Spool::read_envelope(std::string_view id) const {
  std::string name(id);
  UniqueFd fd(::openat(dir_fd_.get(), name.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error{message_path(id) + ": " + errno_string(errno)};
  // The envelope is small; read a first block and more only if needed.
  std::string buf;
  char chunk[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{message_path(id) + ": " + errno_string(errno)};
    }
    if (n == 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    if (buf.find("\n.\n") != std::string::npos) break;
  }
  auto pm = parse_envelope(buf);
  if (!pm) return Error{message_path(id) + ": " + pm.error()};
  return pm;
}

}  // namespace petrel::queue
