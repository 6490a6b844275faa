#include "petrel/filter/exec.h"
#include "petrel/common/child.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string_view>

#include "petrel/common/fd.h"
#include "petrel/filter/message.h"
#include "petrel/filter/verdict.h"

namespace petrel::filter {

namespace {

constexpr config::Seconds kDefaultTimeout = 30;
constexpr int kKillGraceMs = 2000;
constexpr std::size_t kStderrKeep = 4096;        // only its first line is used
constexpr std::size_t kHeadersKeep = 64 * 1024;  // mode headers: more is an error

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point end) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
  if (left.count() <= 0) return 0;
  return left.count() > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left.count());
}

using Child = ChildProcess;

// One of the filter's output pipes: keeps up to `cap` bytes, notes overflow,
// and drains the rest so the filter never blocks on a full pipe.
struct Capture {
  UniqueFd fd;
  std::size_t cap = 0;
  std::string data;
  bool overflow = false;

  // Reads what is there without blocking; false at EOF or error.
  bool drain() {
    char buf[65536];
    while (fd) {
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n > 0) {
        const auto got = static_cast<std::size_t>(n);
        const std::size_t room = cap > data.size() ? cap - data.size() : 0;
        data.append(buf, std::min(got, room));
        if (got > room) overflow = true;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return true;
      fd.reset();
    }
    return false;
  }
};

// The message as stdin: a file, not a pipe, so the filter may read all of
// it, some or none, and we never block writing it.
Result<UniqueFd> stdin_file(std::string_view message) {
  UniqueFd fd(::memfd_create("petrel-filter", MFD_CLOEXEC));
  if (!fd) {
    // No memfd (old kernel, seccomp): an unlinked temporary file.
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/petrel-filter-XXXXXX";
    fd.reset(::mkostemp(tmpl.data(), O_CLOEXEC));
    if (!fd) return Error{"cannot create a temporary file: " + errno_string(errno)};
    ::unlink(tmpl.c_str());
  }
  if (Status st = write_all(fd.get(), message); !st) return Error{"write stdin: " + st.error()};
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) return Error{"lseek: " + errno_string(errno)};
  return fd;
}

// Everything the child needs, built before fork(): after it only
// async-signal-safe calls are allowed.
struct ExecPlan {
  std::string path;
  std::vector<std::string> argv_store, env_store;
  std::vector<char*> argv, envp;
  int max_fd = 1024;
};

ExecPlan make_plan(const std::vector<std::string>& argv, const Envelope& env) {
  ExecPlan p;
  p.path = find_program(argv[0]);
  p.argv_store = argv;
  p.env_store = exec_environment(env);
  for (auto& s : p.argv_store) p.argv.push_back(s.data());
  p.argv.push_back(nullptr);
  for (auto& s : p.env_store) p.envp.push_back(s.data());
  p.envp.push_back(nullptr);
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    p.max_fd = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20));
  return p;
}

[[noreturn]] void exec_child(const ExecPlan& p, int in_fd, int out_fd, int err_fd, int report) {
  ::setpgid(0, 0);
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // Ignored signals stay ignored across exec (the master ignores SIGPIPE);
  // the filter must start with the defaults.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);

  // Move all three above 2 first, so the dup2()s cannot clobber one another.
  const int in = ::fcntl(in_fd, F_DUPFD_CLOEXEC, 3);
  const int out = ::fcntl(out_fd, F_DUPFD_CLOEXEC, 3);
  const int err = ::fcntl(err_fd, F_DUPFD_CLOEXEC, 3);
  if (in < 0 || out < 0 || err < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 ||
      ::dup2(err, 2) < 0) {
    const int e = errno;
    (void)!::write(report, &e, sizeof e);
    ::_exit(127);
  }
  // Only 0-2 reach the filter; everything else closes on exec, `report`
  // included, which is how the parent learns that exec succeeded.
  if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < p.max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  (void)!::chdir("/");
  ::execve(p.path.c_str(), p.argv.data(), p.envp.data());
  const int e = errno;
  (void)!::write(report, &e, sizeof e);
  ::_exit(127);
}

bool make_pipe(UniqueFd* r, UniqueFd* w) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  r->reset(fds[0]);
  w->reset(fds[1]);
  return true;
}

// How the filter ended.
struct RunResult {
  std::string error;  // could not run it at all
  bool timed_out = false;
  bool output_overflow = false;
  int status = 0;  // waitpid status
  std::string out, err;
};

std::string first_line(std::string_view s) {
  while (!s.empty() && (s.front() == '\n' || s.front() == '\r')) s.remove_prefix(1);
  const std::size_t nl = s.find('\n');
  std::string_view line = s.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return std::string(line);
}

std::string last_line(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
  const std::size_t nl = s.rfind('\n');
  return std::string(nl == std::string_view::npos ? s : s.substr(nl + 1));
}

class ExecFilter : public Filter {
 public:
  ExecFilter(config::Filter settings, std::uint64_t max_message_size)
      : s_(std::move(settings)), max_message_size_(max_message_size) {}

  const std::string& name() const override { return s_.name; }

  Verdict scan(const Envelope& env, std::string_view message) override {
    if (s_.exec.empty() || s_.exec[0].empty()) return fail("no command configured");
    const RunResult r = run(env, message);
    if (!r.error.empty()) return fail(r.error);
    if (r.timed_out) return fail("timed out after " + config::format_duration(timeout()));
    if (r.output_overflow) return fail("too much output on stdout");
    if (WIFSIGNALED(r.status))
      return fail("killed by signal " + std::to_string(WTERMSIG(r.status)) + with(r.err));
    const int code = WEXITSTATUS(r.status);
    Verdict v;
    switch (code) {
      case 0:
        return accepted(r);
      case 1:
      case 20:
        v.action = Action::Reject;
        break;
      case 75:
        v.action = Action::Tempfail;
        break;
      case 99:
        v.action = Action::Discard;
        break;
      default:
        return fail("exit status " + std::to_string(code) + with(r.err));
    }
    v.detail = "status=" + std::to_string(code);
    if (v.action != Action::Discard) {
      v.reply = first_line(r.err);
      if (v.reply.empty() && s_.mode == config::FilterMode::Headers) v.reply = last_line(r.out);
    }
    return v;
  }

 private:
  config::Seconds timeout() const { return s_.timeout ? *s_.timeout : kDefaultTimeout; }

  Verdict fail(const std::string& why) const { return error_verdict(s_.on_error, why); }

  static std::string with(const std::string& err) {
    const std::string line = first_line(err);
    return line.empty() ? std::string() : ": " + line;
  }

  // Exit 0: the output is the change.
  Verdict accepted(const RunResult& r) const {
    Verdict v;
    if (s_.mode == config::FilterMode::Headers) {
      auto ops = parse_header_lines(r.out);
      if (!ops) return fail("unusable output: " + ops.error());
      v.headers = std::move(*ops);
      return v;
    }
    std::string msg = r.out;
    if (msg.empty()) return fail("empty output in mode rewrite");
    if (Status st = normalize_newlines(msg); !st) return fail("rewritten message: " + st.error());
    if (msg.size() > max_message_size_) return fail("rewritten message is larger than the limit");
    if (const auto fields = header_fields(msg); fields.empty() || fields[0].begin != 0)
      return fail("rewritten message does not start with a header");
    v.new_message = std::move(msg);
    return v;
  }

  RunResult run(const Envelope& env, std::string_view message) const {
    RunResult res;
    auto in = stdin_file(message);
    if (!in) {
      res.error = in.error();
      return res;
    }
    Capture out, err;
    UniqueFd out_w, err_w, report_r, report_w;
    if (!make_pipe(&out.fd, &out_w) || !make_pipe(&err.fd, &err_w) ||
        !make_pipe(&report_r, &report_w)) {
      res.error = "pipe: " + errno_string(errno);
      return res;
    }
    out.cap = s_.mode == config::FilterMode::Rewrite ? max_message_size_ + 1 : kHeadersKeep;
    err.cap = kStderrKeep;

    const ExecPlan plan = make_plan(s_.exec, env);
    const auto deadline = Clock::now() + std::chrono::seconds(timeout());
    const pid_t pid = ::fork();
    if (pid < 0) {
      res.error = "fork: " + errno_string(errno);
      return res;
    }
    if (pid == 0) exec_child(plan, in->get(), out_w.get(), err_w.get(), report_w.get());

    Child child(pid);
    // Also here: we may signal the group before the child has run setpgid.
    ::setpgid(pid, pid);
    out_w.reset();
    err_w.reset();
    report_w.reset();
    in->reset();

    // EOF: exec succeeded. An errno: it did not (the child is exiting).
    int exec_errno = 0;
    ssize_t n;
    while ((n = ::read(report_r.get(), &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
    }
    if (n == static_cast<ssize_t>(sizeof exec_errno)) {
      res.error = "cannot execute " + plan.path + ": " + errno_string(exec_errno);
      return res;
    }
    ::fcntl(out.fd.get(), F_SETFL, O_NONBLOCK);
    ::fcntl(err.fd.get(), F_SETFL, O_NONBLOCK);
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));

    if (!wait_exit(child, pidfd.get(), out, err, deadline)) {
      if (out.overflow) {
        res.output_overflow = true;
      } else {
        res.timed_out = true;
        child.kill_group(SIGTERM);
        wait_exit(child, pidfd.get(), out, err,
                  Clock::now() + std::chrono::milliseconds(kKillGraceMs));
      }
    }
    // Whatever the filter left behind in its group goes too.
    child.kill_group(SIGKILL);
    out.drain();
    err.drain();
    res.status = child.reap();
    res.output_overflow = res.output_overflow || out.overflow;
    res.out = std::move(out.data);
    res.err = std::move(err.data);
    return res;
  }

  // Drains both pipes until the filter exits (true), the deadline passes or
  // stdout overflows (false). Everything the filter wrote before exiting is
  // read: it is in the pipes by then.
  static bool wait_exit(const Child& child, int pidfd, Capture& out, Capture& err,
                        Clock::time_point deadline) {
    for (;;) {
      if (child.exited()) {
        out.drain();
        err.drain();
        return true;
      }
      if (out.overflow) return false;
      const int left = ms_left(deadline);
      if (left == 0) return false;
      struct pollfd pfd[3] = {};
      nfds_t n = 0;
      if (out.fd) pfd[n++] = {out.fd.get(), POLLIN, 0};
      if (err.fd) pfd[n++] = {err.fd.get(), POLLIN, 0};
      if (pidfd >= 0) pfd[n++] = {pidfd, POLLIN, 0};
      // Without a pidfd, exit is only noticed by polling waitid().
      const int slice = pidfd >= 0 ? left : std::min(left, 20);
      if (::poll(pfd, n, slice) < 0 && errno != EINTR) return child.exited();
      out.drain();
      err.drain();
    }
  }

  config::Filter s_;
  std::uint64_t max_message_size_;
};

}  // namespace

std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  for (const char* dir : {"/usr/local/bin/", "/usr/bin/", "/bin/"}) {
    std::string p = dir + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return name;  // execve fails with ENOENT, reported as such
}

std::vector<std::string> exec_environment(const Envelope& env) {
  std::string rcpts_nl, rcpts_sp;
  for (const std::string& r : env.recipients) {
    if (!rcpts_nl.empty()) {
      rcpts_nl += '\n';
      rcpts_sp += ' ';
    }
    rcpts_nl += r;
    rcpts_sp += r;
  }
  std::string tls;
  if (env.tls) {
    tls = env.tls_version.empty() ? "yes" : env.tls_version;
    if (!env.tls_cipher.empty()) tls += " " + env.tls_cipher;
  }
  return {
      "PATH=/usr/local/bin:/usr/bin:/bin",
      "PETREL_QUEUE_ID=" + env.queue_id,
      "PETREL_SENDER=" + env.sender,
      "PETREL_RECIPIENTS=" + rcpts_nl,
      "PETREL_CLIENT_ADDRESS=" + env.client_ip,
      "PETREL_CLIENT_PORT=" + (env.client_port ? std::to_string(env.client_port) : std::string()),
      "PETREL_HELO=" + env.helo,
      "PETREL_AUTH_USER=" + env.auth_user,
      "PETREL_TLS=" + tls,
      "PETREL_HOSTNAME=" + env.hostname,
      // chasquid's post-data hook names, so its hooks run unchanged.
      "REMOTE_ADDR=" + env.client_ip,
      "EHLO_DOMAIN=" + env.helo,
      "MAIL_FROM=" + env.sender,
      "RCPT_TO=" + rcpts_sp,
      "AUTH_AS=" + env.auth_user,
      std::string("ON_TLS=") + (env.tls ? "1" : ""),
  };
}

std::unique_ptr<Filter> make_exec_filter(const config::Filter& settings,
                                         std::uint64_t max_message_size) {
  return std::make_unique<ExecFilter>(settings, max_message_size);
}

}  // namespace petrel::filter
