#include "petrel/queue/state.h"

#include <cerrno>
#include <cstdlib>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"

namespace petrel::queue {
namespace {

std::string clean_field(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return out;
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  for (;;) {
    size_t tab = line.find('\t', pos);
    out.push_back(line.substr(pos, tab == std::string_view::npos ? std::string_view::npos : tab - pos));
    if (tab == std::string_view::npos) break;
    pos = tab + 1;
  }
  return out;
}

Status fsync_dirfd(const Spool& spool) {
  if (::fsync(spool.dir_fd()) != 0) return Error{spool.queue_dir() + ": fsync: " + errno_string(errno)};
  return Status::Ok();
}

}  // namespace

const char* status_name(TargetStatus s) {
  switch (s) {
    case TargetStatus::Pending: return "pending";
    case TargetStatus::Deferred: return "deferred";
    case TargetStatus::Delivered: return "delivered";
    case TargetStatus::Bounced: return "bounced";
  }
  return "pending";
}

bool MessageState::all_final() const {
  for (const auto& t : targets)
    if (!t.final()) return false;
  return true;
}

std::string format_state(const MessageState& st) {
  std::string out = "PETREL-STATE1\n";
  out += st.warned ? "W 1\n" : "W 0\n";
  for (const auto& t : st.targets) {
    out += "D\t";
    out += status_name(t.status);
    if (t.status == TargetStatus::Bounced && t.notified) out += "-notified";
    out += "\t" + std::to_string(t.attempts) + "\t" + std::to_string(t.next_attempt) + "\t" +
           std::to_string(t.rcpt) + "\t" + clean_field(t.code) + "\t" + clean_field(t.target) +
           "\t" + clean_field(t.error) + "\n";
  }
  return out;
}

Result<MessageState> parse_state(std::string_view text) {
  MessageState st;
  size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) return Error{"truncated state file"};
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (first) {
      if (line != "PETREL-STATE1") return Error{"not a petrel state file"};
      first = false;
      continue;
    }
    if (line == "W 1") {
      st.warned = true;
      continue;
    }
    if (line == "W 0" || line.empty()) continue;
    auto f = split_tabs(line);
    if (f.size() != 8 || f[0] != "D") return Error{"bad state line"};
    TargetState t;
    if (f[1] == "pending") t.status = TargetStatus::Pending;
    else if (f[1] == "deferred") t.status = TargetStatus::Deferred;
    else if (f[1] == "delivered") t.status = TargetStatus::Delivered;
    else if (f[1] == "bounced") t.status = TargetStatus::Bounced;
    else if (f[1] == "bounced-notified") {
      t.status = TargetStatus::Bounced;
      t.notified = true;
    }
    else return Error{"bad status in state file"};
    t.attempts = std::atoi(std::string(f[2]).c_str());
    t.next_attempt = std::atoll(std::string(f[3]).c_str());
    t.rcpt = std::atoi(std::string(f[4]).c_str());
    t.code = std::string(f[5]);
    t.target = std::string(f[6]);
    t.error = std::string(f[7]);
    st.targets.push_back(std::move(t));
  }
  if (first) return Error{"empty state file"};
  return st;
}

Status write_state(const Spool& spool, std::string_view id, const MessageState& st) {
  std::string name = std::string(id) + ".state";
  std::string tmp = ".new-" + name;
  UniqueFd fd(::openat(spool.dir_fd(), tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (!fd) return Error{"create " + tmp + ": " + errno_string(errno)};
  std::string text = format_state(st);
  Status w = write_all(fd.get(), text);
  if (!w || ::fdatasync(fd.get()) != 0 || ::close(fd.release()) != 0) {
    Status st2 = Error{"write " + tmp + ": " + (w ? errno_string(errno) : w.error())};
    ::unlinkat(spool.dir_fd(), tmp.c_str(), 0);
    return st2;
  }
  if (::renameat(spool.dir_fd(), tmp.c_str(), spool.dir_fd(), name.c_str()) != 0) {
    Status st2 = Error{"rename " + tmp + ": " + errno_string(errno)};
    ::unlinkat(spool.dir_fd(), tmp.c_str(), 0);
    return st2;
  }
  return fsync_dirfd(spool);
}

Result<std::optional<MessageState>> read_state(const Spool& spool, std::string_view id) {
  std::string name = std::string(id) + ".state";
  UniqueFd fd(::openat(spool.dir_fd(), name.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return std::optional<MessageState>();
    return Error{name + ": " + errno_string(errno)};
  }
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{name + ": " + errno_string(errno)};
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  auto st = parse_state(text);
  if (!st) return Error{name + ": " + st.error()};
  return std::optional<MessageState>(std::move(*st));
}

bool is_queue_id(std::string_view id) {
  if (id.size() != 18) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'V'))) return false;
  return true;
}

bool is_held(const Spool& spool, std::string_view id) {
  std::string name = std::string(id) + ".hold";
  return ::faccessat(spool.dir_fd(), name.c_str(), F_OK, 0) == 0;
}

bool message_exists(const Spool& spool, std::string_view id) {
  std::string name(id);
  return ::faccessat(spool.dir_fd(), name.c_str(), F_OK, 0) == 0;
}

Status set_held(const Spool& spool, std::string_view id, bool held) {
  std::string name = std::string(id) + ".hold";
  if (held) {
    UniqueFd fd(::openat(spool.dir_fd(), name.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0640));
    if (!fd) return Error{name + ": " + errno_string(errno)};
  } else if (::unlinkat(spool.dir_fd(), name.c_str(), 0) != 0 && errno != ENOENT) {
    return Error{name + ": " + errno_string(errno)};
  }
  return fsync_dirfd(spool);
}

Status remove_message(const Spool& spool, std::string_view id, bool sync) {
  std::string base(id);
  // The message first: once it is gone nothing will deliver it again.
  if (::unlinkat(spool.dir_fd(), base.c_str(), 0) != 0 && errno != ENOENT)
    return Error{base + ": " + errno_string(errno)};
  for (const char* suffix : {".state", ".hold"}) {
    std::string name = base + suffix;
    if (::unlinkat(spool.dir_fd(), name.c_str(), 0) != 0 && errno != ENOENT)
      return Error{name + ": " + errno_string(errno)};
  }
  return sync ? fsync_dirfd(spool) : Status::Ok();
}

}  // namespace petrel::queue
