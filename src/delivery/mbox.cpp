#include "petrel/delivery/mbox.h"

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <optional>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "io.h"

namespace petrel::delivery {

namespace {

constexpr int kLockPollMs = 100;

void sleep_ms(int ms) {
  struct timespec ts {ms / 1000, static_cast<long>(ms % 1000) * 1'000'000L};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Owns PATH.lock while held; removes it on every way out.
class DotLock {
 public:
  DotLock() = default;
  DotLock(const DotLock&) = delete;
  DotLock& operator=(const DotLock&) = delete;
  ~DotLock() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // nullopt when held (or when the directory allows no lock files), else
  // the verdict to return.
  std::optional<Verdict> acquire(const std::string& path, const Deadline& deadline,
                                 int stale_sec) {
    for (;;) {
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
      if (fd) {
        path_ = path;
        // The pid is for humans and for liblockfile-style stale checks.
        (void)write_fully(fd.get(), std::to_string(::getpid()) + "\n");
        return std::nullopt;
      }
      const int err = errno;
      if (err == EACCES || err == EPERM || err == EROFS) {
        // Spool directories like Debian's /var/mail are writable only by
        // group mail and petrel is not setgid mail: the fcntl lock, which
        // every current MUA also takes, has to do there.
        return std::nullopt;
      }
      if (err != EEXIST) return deferred_io(err, "create " + path);
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0 && std::time(nullptr) - st.st_mtime > stale_sec) {
        // A crashed holder's lock. Two deliverers may both find it stale; the
        // O_EXCL create above still lets only one of them in.
        ::unlink(path.c_str());
        continue;
      }
      if (deadline.expired()) return deferred("4.2.0", "mailbox is locked: " + path + " exists");
      sleep_ms(std::min(kLockPollMs, deadline.remaining_ms()));
    }
  }

 private:
  std::string path_;
};

std::optional<Verdict> fcntl_lock(int fd, const std::string& path, const Deadline& deadline) {
  for (;;) {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    // An open file description lock: released by close() of this fd only and
    // not shared with other threads of the process, unlike F_SETLK.
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return std::nullopt;
    if (errno != EAGAIN && errno != EACCES && errno != EINTR) return deferred_io(errno, "lock " + path);
    if (deadline.expired()) return deferred("4.2.0", "mailbox is locked: " + path + " (fcntl)");
    sleep_ms(std::min(kLockPollMs, deadline.remaining_ms()));
  }
}

std::string from_line(const Message& msg) {
  std::string sender = msg.sender.empty() ? "MAILER-DAEMON" : msg.sender;
  // A space would end the address early for mbox parsers.
  for (char& c : sender)
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') c = '_';
  const std::time_t now = std::time(nullptr);
  struct tm tm {};
  ::localtime_r(&now, &tm);
  char date[64];
  std::strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", &tm);
  return "From " + sender + " " + date + "\n";
}

bool needs_quote(std::string_view line) {
  std::size_t i = 0;
  while (i < line.size() && line[i] == '>') ++i;
  return line.substr(i).starts_with("From ");
}

// Writes the message in mboxrd form, in bounded chunks so a large message
// is not copied whole.
int write_quoted(int fd, std::string_view prefix, std::string_view body) {
  std::string out(prefix);
  out.reserve(256 * 1024 + 1024);
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t eol = body.find('\n', pos);
    const std::size_t next = eol == std::string_view::npos ? body.size() : eol + 1;
    const std::string_view line = body.substr(pos, next - pos);
    if (needs_quote(line)) out += '>';
    out.append(line);
    pos = next;
    if (out.size() >= 256 * 1024) {
      if (int err = write_fully(fd, out); err) return err;
      out.clear();
    }
  }
  if (!body.empty() && body.back() != '\n') out += '\n';
  out += '\n';  // the blank line that separates messages
  return write_fully(fd, out);
}

}  // namespace

Verdict deliver_mbox(const std::string& path, const Recipient& rcpt, const Message& msg,
                     const MboxOptions& options) {
  if (path == "/dev/null") return delivered("discarded to /dev/null");
  if (path.empty() || path.back() == '/') return deferred("4.3.5", "bad mbox path: " + path);

  const std::size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (Status st = make_dirs(path.substr(0, slash), 0700); !st)
      return deferred("4.2.0", "cannot create mailbox directory: " + st.error());
  }

  const Deadline deadline{std::chrono::milliseconds(options.lock_timeout_ms)};
  DotLock dotlock;  // declared before fd: the fcntl lock goes first on the way out
  if (auto v = dotlock.acquire(path + ".lock", deadline, options.stale_lock_sec)) return *v;

  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC,
                     0600));
  if (!fd) return deferred_io(errno, "open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return deferred_io(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return deferred("4.2.0", path + " is not a regular file");
  if (auto v = fcntl_lock(fd.get(), path, deadline)) return *v;
  // The size may have changed while we waited for the lock.
  if (::fstat(fd.get(), &st) != 0) return deferred_io(errno, "stat " + path);
  const off_t original_size = st.st_size;

  int err = write_quoted(fd.get(), from_line(msg) + delivery_headers(rcpt, msg), msg.body);
  if (!err && ::fsync(fd.get()) != 0) err = errno;
  if (err) {
    // Leave the mailbox as it was, so the retry does not follow half a copy.
    if (::ftruncate(fd.get(), original_size) == 0) (void)::fsync(fd.get());
    return deferred_io(err, "write " + path);
  }
  return delivered("delivered to mailbox");
}

}  // namespace petrel::delivery
