#include "petrel/delivery/maildir.h"

#include <cerrno>
#include <cstdio>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "io.h"

namespace petrel::delivery {

namespace {

// The host part of a maildir name may not hold '/' or ':' (the flag
// separator); ',' is escaped too since ",S=" follows. Same escapes as Dovecot.
std::string maildir_host() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string out;
  for (const char* p = buf; *p; ++p) {
    switch (*p) {
      case '/': out += "\\057"; break;
      case ':': out += "\\072"; break;
      case ',': out += "\\054"; break;
      default: out += *p;
    }
  }
  return out;
}

// Seconds, microseconds and pid alone may repeat within one process (two
// deliveries in the same microsecond), hence the per-process counter.
std::string unique_name(std::size_t size) {
  static unsigned counter = 0;
  static const std::string host = maildir_host();
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  char buf[128];
  std::snprintf(buf, sizeof buf, "%lld.M%06ldP%ldQ%u.", static_cast<long long>(tv.tv_sec),
                static_cast<long>(tv.tv_usec), static_cast<long>(::getpid()), ++counter);
  return buf + host + ",S=" + std::to_string(size);
}

// Removes the tmp/ file unless the delivery got as far as the rename.
class TmpGuard {
 public:
  explicit TmpGuard(std::string path) : path_(std::move(path)) {}
  TmpGuard(const TmpGuard&) = delete;
  TmpGuard& operator=(const TmpGuard&) = delete;
  ~TmpGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

Verdict deliver_maildir(const std::string& dir, const Recipient& rcpt, const Message& msg) {
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (base.empty()) return deferred("4.3.5", "maildir path is empty");

  const bool fresh = !is_dir(base + "/new") || !is_dir(base + "/tmp") || !is_dir(base + "/cur");
  if (fresh) {
    if (Status st = make_dirs(base, 0700); !st)
      return deferred("4.2.0", "cannot create maildir: " + st.error());
    for (const char* sub : {"/tmp", "/new", "/cur"}) {
      const std::string p = base + sub;
      if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return deferred_io(errno, "mkdir " + p);
    }
    // The new subdirectories must survive a crash along with the message.
    if (Status st = fsync_dir(base); !st) return deferred("4.2.0", st.error());
  }

  const std::string headers = delivery_headers(rcpt, msg);
  const std::size_t size = headers.size() + msg.body.size();

  UniqueFd fd;
  std::string name;
  for (int attempt = 0; attempt < 10 && !fd; ++attempt) {
    name = unique_name(size);
    const std::string tmp = base + "/tmp/" + name;
    fd.reset(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd && errno != EEXIST) return deferred_io(errno, "create " + tmp);
  }
  if (!fd) return deferred("4.2.0", "cannot find a unique file name in " + base + "/tmp");

  const std::string tmp = base + "/tmp/" + name;
  TmpGuard guard(tmp);
  if (int err = write_fully(fd.get(), headers); err) return deferred_io(err, "write " + tmp);
  if (int err = write_fully(fd.get(), msg.body); err) return deferred_io(err, "write " + tmp);
  if (::fsync(fd.get()) != 0) return deferred_io(errno, "fsync " + tmp);
  // close() can report a delayed write error (NFS); it must not be lost.
  if (::close(fd.release()) != 0) return deferred_io(errno, "close " + tmp);

  const std::string final_path = base + "/new/" + name;
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) return deferred_io(errno, "rename into new/");
  guard.release();
  // Without this the rename may not survive a crash. Deferring here can mean
  // a duplicate later, which at-least-once delivery allows; a loss it does not.
  if (Status st = fsync_dir(base + "/new"); !st) return deferred("4.2.0", st.error());
  return delivered("delivered to maildir");
}

}  // namespace petrel::delivery
