#include "petrel/delivery/pipe.h"
#include "petrel/common/child.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "io.h"

namespace petrel::delivery {

namespace {

constexpr int kKillGraceMs = 2000;
constexpr std::size_t kOutputKeep = 4096;  // we show ~200 bytes; the rest is drained
constexpr std::size_t kDetailBytes = 200;

using Child = ChildProcess;

// The message as stdin: a file, not a pipe, so the command may read as much
// or as little as it likes and we never block writing it.
Result<UniqueFd> stdin_file(std::string_view headers, std::string_view body) {
  UniqueFd fd(::memfd_create("petrel-pipe", MFD_CLOEXEC));
  if (!fd) {
    // No memfd (old kernel, seccomp): an unlinked temporary file.
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/petrel-pipe-XXXXXX";
    fd.reset(::mkostemp(tmpl.data(), O_CLOEXEC));
    if (!fd) return Error{"cannot create a temporary file: " + errno_string(errno)};
    ::unlink(tmpl.c_str());
  }
  if (int err = write_fully(fd.get(), headers); err) return Error{"write stdin: " + errno_string(err)};
  if (int err = write_fully(fd.get(), body); err) return Error{"write stdin: " + errno_string(err)};
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) return Error{"lseek: " + errno_string(errno)};
  return fd;
}

std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  for (const char* dir : {"/usr/bin/", "/bin/"}) {
    std::string p = dir + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return name;  // execve will fail with ENOENT, reported as such
}

std::string home_of_current_user() {
  std::vector<char> buf(16384);
  struct passwd pw {};
  struct passwd* found = nullptr;
  if (::getpwuid_r(::getuid(), &pw, buf.data(), buf.size(), &found) == 0 && found &&
      found->pw_dir && *found->pw_dir)
    return found->pw_dir;
  return "/";
}

const char* bounce_status(int code) {
  switch (code) {
    case 65: return "5.6.0";  // EX_DATAERR
    case 67: return "5.1.1";  // EX_NOUSER
    case 68: return "5.1.2";  // EX_NOHOST
    case 73: return "5.2.0";  // EX_CANTCREAT
    case 76: return "5.5.0";  // EX_PROTOCOL
    case 77: return "5.7.0";  // EX_NOPERM
    case 78: return "5.3.5";  // EX_CONFIG
    default: return "5.3.0";
  }
}

// Everything the child needs, built before fork(): after it only
// async-signal-safe calls are allowed (the runner or the tests may have threads).
struct ExecPlan {
  std::string path;
  std::string home;
  std::vector<std::string> argv_store, env_store;
  std::vector<char*> argv, envp;
  int max_fd = 1024;
};

ExecPlan make_plan(const PipeOptions& o, const Recipient& r, const Message& m) {
  ExecPlan p;
  p.path = find_program(o.argv[0]);
  p.home = o.home_dir.empty() ? home_of_current_user() : o.home_dir;
  p.argv_store = o.argv;
  p.env_store = {
      "SENDER=" + m.sender,
      "RECIPIENT=" + r.address,
      "ORIGINAL_RECIPIENT=" + (r.original.empty() ? r.address : r.original),
      "USER=" + r.user,
      "EXTENSION=" + r.extension,
      "DOMAIN=" + r.domain,
      "QUEUE_ID=" + m.queue_id,
      "PATH=/usr/bin:/bin",
      "HOME=" + p.home,
  };
  for (auto& s : p.argv_store) p.argv.push_back(s.data());
  p.argv.push_back(nullptr);
  for (auto& s : p.env_store) p.envp.push_back(s.data());
  p.envp.push_back(nullptr);
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    p.max_fd = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20));
  return p;
}

[[noreturn]] void exec_child(const ExecPlan& p, int in_fd, int out_fd, int err_pipe) {
  ::setpgid(0, 0);
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // Ignored signals stay ignored across exec; the runner may ignore SIGPIPE
  // or SIGCHLD, and the command must not inherit that.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);

  // Move both above 2 first, so the dup2()s below cannot clobber one another.
  const int in = ::fcntl(in_fd, F_DUPFD_CLOEXEC, 3);
  const int out = ::fcntl(out_fd, F_DUPFD_CLOEXEC, 3);
  if (in < 0 || out < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0) {
    const int err = errno;
    (void)!::write(err_pipe, &err, sizeof err);
    ::_exit(127);
  }
  // Only 0-2 may reach the command; everything else closes on exec (err_pipe
  // included, which is how the parent learns that exec succeeded).
  if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < p.max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (::chdir(p.home.c_str()) != 0) (void)!::chdir("/");
  ::execve(p.path.c_str(), p.argv.data(), p.envp.data());
  const int err = errno;
  (void)!::write(err_pipe, &err, sizeof err);
  ::_exit(127);
}

// Collects the head of the command's output and throws the rest away, so a
// chatty command never blocks on a full pipe.
struct Output {
  UniqueFd fd;
  std::string head;

  // Reads what is there without blocking; returns false at EOF or error.
  bool drain() {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n > 0) {
        if (head.size() < kOutputKeep)
          head.append(buf, std::min(static_cast<std::size_t>(n), kOutputKeep - head.size()));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return true;
      fd.reset();
      return false;
    }
  }
};

// Waits until the child exits or `budget_ms` passes, draining its output
// meanwhile. Returns true when it exited.
bool wait_exit(const Child& child, int pidfd, Output& out, int budget_ms) {
  const Deadline deadline{std::chrono::milliseconds(budget_ms)};
  for (;;) {
    if (child.exited()) return true;
    const int left = deadline.remaining_ms();
    if (left == 0) return false;
    struct pollfd pfd[2] = {};
    nfds_t n = 0;
    if (out.fd) pfd[n++] = {out.fd.get(), POLLIN, 0};
    if (pidfd >= 0) pfd[n++] = {pidfd, POLLIN, 0};
    // Without a pidfd, exit is only noticed by polling waitid().
    const int slice = pidfd >= 0 ? left : std::min(left, 20);
    if (::poll(pfd, n, slice) < 0 && errno != EINTR) return child.exited();
    if (out.fd) out.drain();
  }
}

std::string with_output(std::string what, const std::string& head) {
  const std::string text = one_line(head, kDetailBytes);
  return text.empty() ? what : what + ": " + text;
}

}  // namespace

Verdict deliver_pipe(const PipeOptions& options, const Recipient& rcpt, const Message& msg) {
  if (options.argv.empty() || options.argv[0].empty())
    return deferred("4.3.5", "pipe: no command configured");

  auto in = stdin_file(delivery_headers(rcpt, msg), msg.body);
  if (!in) return deferred("4.3.0", "pipe: " + in.error());

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return deferred_io(errno, "pipe");
  UniqueFd out_r(fds[0]), out_w(fds[1]);
  if (::pipe2(fds, O_CLOEXEC) != 0) return deferred_io(errno, "pipe");
  UniqueFd err_r(fds[0]), err_w(fds[1]);

  const ExecPlan plan = make_plan(options, rcpt, msg);
  const pid_t pid = ::fork();
  if (pid < 0) return deferred_io(errno, "fork");
  if (pid == 0) exec_child(plan, in->get(), out_w.get(), err_w.get());

  Child child(pid);
  // Also set here: the parent may signal the group before the child has run.
  ::setpgid(pid, pid);
  in->reset();
  out_w.reset();
  err_w.reset();

  Output out{std::move(out_r), {}};
  ::fcntl(out.fd.get(), F_SETFL, O_NONBLOCK);
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));

  const long timeout_ms = static_cast<long>(options.timeout_sec) * 1000L;
  const bool finished =
      wait_exit(child, pidfd.get(), out, static_cast<int>(std::min(timeout_ms, 1'000'000'000L)));
  if (!finished) {
    ::kill(-pid, SIGTERM);
    wait_exit(child, pidfd.get(), out, kKillGraceMs);
    // Whether or not the command obeyed, its descendants may not have; the
    // unreaped command keeps the group id ours to signal.
    ::kill(-pid, SIGKILL);
    child.reap();
    return deferred("4.3.0", with_output("command timed out after " +
                                             std::to_string(options.timeout_sec) + "s",
                                         out.head));
  }
  if (out.fd) out.drain();  // what it wrote just before exiting
  const int status = child.reap();

  // The exec-error pipe: EOF means exec succeeded (or never got that far).
  int exec_errno = 0;
  if (::read(err_r.get(), &exec_errno, sizeof exec_errno) == sizeof exec_errno)
    return deferred("4.3.0", "cannot execute " + plan.path + ": " + errno_string(exec_errno));

  if (WIFSIGNALED(status))
    return deferred("4.3.0",
                    with_output("command killed by signal " + std::to_string(WTERMSIG(status)),
                                out.head));
  const int code = WEXITSTATUS(status);
  if (code == 0) return delivered("delivered to command " + plan.path);
  const std::string what = "command exited with status " + std::to_string(code);
  if (code == 75) return deferred("4.3.0", with_output(what, out.head));
  return bounced(bounce_status(code), with_output(what, out.head));
}

}  // namespace petrel::delivery
