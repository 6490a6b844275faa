#include "petrel/master/master.h"

#include <algorithm>
#include <cerrno>
#include <memory>
#include <optional>
#include <csignal>
#include <cstring>
#include <map>
#include <unordered_map>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/queue/resolver.h"
#include "petrel/queue/runner.h"
#include "petrel/queue/spool.h"
#include "petrel/filter/chain.h"
#include "petrel/master/proxy.h"
#include "petrel/smtpd/tls.h"
#include "petrel/smtpd/worker.h"

namespace petrel::master {
namespace {

int g_signal_pipe = -1;

void on_signal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  ssize_t r = ::write(g_signal_pipe, &b, 1);
  (void)r;
  errno = saved;
}

std::string listener_key(const config::Listener& l) {
  return l.address.text + "|" + std::to_string(static_cast<int>(l.mode)) + "|" +
         (l.proxy_protocol ? "p" : "");
}

struct ListenSocket {
  UniqueFd fd;
  config::Listener conf;
  std::string key;
};

Result<UniqueFd> bind_listener(const config::Listener& l) {
  const auto& a = l.address;
  if (a.is_unix) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return Error{a.text + ": socket: " + errno_string(errno)};
    struct sockaddr_un sun {};
    sun.sun_family = AF_UNIX;
    if (a.path.size() >= sizeof sun.sun_path) return Error{a.text + ": path too long"};
    std::memcpy(sun.sun_path, a.path.c_str(), a.path.size() + 1);
    ::unlink(a.path.c_str());
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0)
      return Error{a.text + ": bind: " + errno_string(errno)};
    ::chmod(a.path.c_str(), 0666);
    if (::listen(fd.get(), 128) != 0) return Error{a.text + ": listen: " + errno_string(errno)};
    return fd;
  }
  struct addrinfo hints {};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  std::string port = std::to_string(a.port);
  const char* host = a.host.empty() ? nullptr : a.host.c_str();
  if (int rc = ::getaddrinfo(host, port.c_str(), &hints, &res); rc != 0)
    return Error{a.text + ": " + gai_strerror(rc)};
  std::unique_ptr<struct addrinfo, void (*)(struct addrinfo*)> guard(res, ::freeaddrinfo);
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error{a.text + ": socket: " + errno_string(errno)};
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (res->ai_family == AF_INET6) {
    // "[::]:25" serves v4 too (dual stack); "[::1]:25" only v6.
    int v6only = 0;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  }
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0)
    return Error{a.text + ": bind: " + errno_string(errno)};
  if (::listen(fd.get(), 1024) != 0) return Error{a.text + ": listen: " + errno_string(errno)};
  return fd;
}

smtpd::ClientInfo describe_peer(const sockaddr_storage& ss, const config::Listener& l) {
  smtpd::ClientInfo c;
  c.mode = l.mode;
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
    c.ip = buf;
    c.port = ntohs(sin->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      ::inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      ::inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
    }
    c.ip = buf;
    c.port = ntohs(sin6->sin6_port);
  } else {
    c.is_unix = true;
  }
  return c;
}

class Master {
 public:
  Master(std::string path, config::Config cfg) : path_(std::move(path)), cfg_(std::move(cfg)) {}
  int run();

 private:
  Status open_listeners(const config::Config& cfg);
  Status drop_privileges();
  void accept_from(ListenSocket& ls);
  void start_session(int fd, const smtpd::ClientInfo& client);
  void read_proxy(size_t index);
  void expire_pending();
  void load_tls(bool at_start);
  void load_resolver();
  void refuse(int fd, const std::string& why, const std::string& who);
  void reap();
  void reload();
  void shutdown();
  void start_runner();
  void stop_runner();
  int poll_timeout_ms() const;
  std::vector<config::Listener> effective_listeners(const config::Config& cfg) const;

  std::string path_;
  config::Config cfg_;
  std::vector<ListenSocket> listeners_;
  UniqueFd sig_r_, sig_w_;
  std::unordered_map<pid_t, std::string> workers_;  // pid -> client ip ("" for unix)
  std::unordered_map<std::string, int> per_ip_;
  std::optional<queue::Spool> spool_;
  std::shared_ptr<tls::ServerContext> tls_;
  // Recipient lookup for RCPT (aliases.file read once here, not per session).
  std::unique_ptr<queue::Resolver> resolver_;
  // Content filters: plugins are initialised here, before any fork.
  std::optional<filter::Chain> chain_;
  bool stopping_ = false;
  // Connections on proxy_protocol listeners whose PROXY header is not read yet.
  struct Pending {
    UniqueFd fd;
    smtpd::ClientInfo client;
    std::string buf;
    double deadline = 0;
  };
  std::vector<Pending> pending_;
  // The queue runner and the pipe workers announce new queue ids on. The
  // master keeps both ends so a restarted runner finds pending ids.
  UniqueFd notify_r_, notify_w_;
  pid_t runner_pid_ = -1;
  double runner_restart_at_ = 0;   // monotonic seconds; 0 = not scheduled
  double runner_started_at_ = 0;
  int runner_backoff_ = 1;
};

double monotonic() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Listeners from the config plus STATE_DIR/submit.sock, the always-open
// local submission socket `petrel sendmail` uses (a unix listener).
std::vector<config::Listener> Master::effective_listeners(const config::Config& cfg) const {
  std::vector<config::Listener> out = cfg.listen;
  config::Listener submit;
  submit.address.is_unix = true;
  submit.address.path = cfg.state_dir + "/submit.sock";
  submit.address.text = "unix:" + submit.address.path;
  submit.mode = config::ListenMode::Smtp;
  out.push_back(submit);
  return out;
}

void Master::start_runner() {
  runner_restart_at_ = 0;
  pid_t pid = ::fork();
  if (pid < 0) {
    log::error("fork queue runner: " + errno_string(errno));
    runner_restart_at_ = monotonic() + runner_backoff_;
    return;
  }
  if (pid == 0) {
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::signal(sig, SIG_DFL);
    for (auto& l : listeners_) l.fd.reset();
    sig_r_.reset();
    sig_w_.reset();
    notify_w_.reset();
    log::set_program("petrel/qmgr");
    int rc = queue::run_queue_runner(cfg_, notify_r_.get());
    ::_exit(rc);
  }
  runner_pid_ = pid;
  runner_started_at_ = monotonic();
}

void Master::stop_runner() {
  if (runner_pid_ > 0) ::kill(runner_pid_, SIGTERM);
}

int Master::poll_timeout_ms() const {
  if (runner_restart_at_ <= 0) return -1;
  double wait = runner_restart_at_ - monotonic();
  return wait <= 0 ? 0 : static_cast<int>(wait * 1000) + 1;
}

Status Master::open_listeners(const config::Config& cfg) {
  std::vector<ListenSocket> next;
  for (const auto& l : effective_listeners(cfg)) {
    std::string key = listener_key(l);
    auto it = std::find_if(listeners_.begin(), listeners_.end(),
                           [&](const ListenSocket& s) { return s.key == key && s.fd.valid(); });
    if (it != listeners_.end()) {
      next.push_back(std::move(*it));
      next.back().conf = l;
      continue;
    }
    auto fd = bind_listener(l);
    if (!fd) return Error{fd.error()};
    next.push_back(ListenSocket{std::move(*fd), l, key});
  }
  for (auto& old : listeners_) {
    if (old.fd.valid() && old.conf.address.is_unix) ::unlink(old.conf.address.path.c_str());
  }
  listeners_ = std::move(next);
  return Status::Ok();
}

Status Master::drop_privileges() {
  if (::geteuid() != 0) {
    if (!cfg_.user.empty()) log::warn("not started as root: user " + cfg_.user + " ignored");
    return Status::Ok();
  }
  if (cfg_.user.empty()) return Status::Ok();
  struct passwd* pw = ::getpwnam(cfg_.user.c_str());
  if (!pw) return Error{"user " + cfg_.user + ": no such user"};
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  for (const std::string& dir : {cfg_.state_dir, cfg_.state_dir + "/queue"})
    if (::chown(dir.c_str(), uid, gid) != 0)
      return Error{dir + ": chown: " + errno_string(errno)};
  // The self-signed certificate made as root must stay readable on reload.
  for (const std::string& f : {cfg_.state_dir + "/tls", cfg_.state_dir + "/tls/cert.pem",
                               cfg_.state_dir + "/tls/key.pem"})
    (void)::chown(f.c_str(), uid, gid);
  if (::initgroups(cfg_.user.c_str(), gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0)
    return Error{"cannot drop privileges to " + cfg_.user + ": " + errno_string(errno)};
  log::info("running as user " + cfg_.user);
  return Status::Ok();
}

void Master::refuse(int fd, const std::string& why, const std::string& who) {
  std::string msg = "421 4.7.0 " + cfg_.hostname + " Error: " + why + "\r\n";
  ssize_t r = ::send(fd, msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  (void)r;
  ::close(fd);
  log::warn("refusing connection from " + who + ": " + why);
}

void Master::accept_from(ListenSocket& ls) {
  for (int i = 0; i < 64; ++i) {
    struct sockaddr_storage ss {};
    socklen_t len = sizeof ss;
    int fd = ::accept4(ls.fd.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) log::warn("accept: " + errno_string(errno));
      return;
    }
    smtpd::ClientInfo client = describe_peer(ss, ls.conf);
    if (ls.conf.proxy_protocol) {
      // The real client is in the PROXY header: read it (non-blocking, in the
      // poll loop) before limits and logs use the address. Connections still
      // waiting for theirs are capped like sessions, or idle ones could use
      // up the master's descriptors.
      if (static_cast<int>(pending_.size()) >= cfg_.limits.max_workers) {
        refuse(fd, "too many connections", client.display());
        continue;
      }
      ::fcntl(fd, F_SETFL, O_NONBLOCK);
      Pending p;
      p.fd.reset(fd);
      p.client = client;
      p.deadline = monotonic() + 10;
      pending_.push_back(std::move(p));
      continue;
    }
    start_session(fd, client);
  }
}

void Master::start_session(int fd, const smtpd::ClientInfo& client) {
  std::string who = client.display();
  if (static_cast<int>(workers_.size()) >= cfg_.limits.max_workers) {
    refuse(fd, "too many connections", who);
    return;
  }
  if (!client.is_unix && per_ip_[client.ip] >= cfg_.limits.max_per_ip) {
    refuse(fd, "too many connections from " + client.ip, who);
    return;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    log::error("fork: " + errno_string(errno));
    refuse(fd, "out of resources", who);
    return;
  }
  if (pid == 0) {
    // Worker: only the client socket, the spool directory, the notify pipe
    // and stdio remain.
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::signal(sig, SIG_DFL);
    for (auto& l : listeners_) l.fd.reset();
    for (auto& p : pending_) p.fd.reset();
    sig_r_.reset();
    sig_w_.reset();
    notify_r_.reset();
    log::set_program("petrel/smtpd");
    int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    smtpd::WorkerContext wc{cfg_, *spool_, notify_w_.get(), tls_ ? tls_->get() : nullptr,
                            resolver_.get(), chain_ ? &*chain_ : nullptr};
    int rc = smtpd::run_worker(fd, client, wc);
    ::close(fd);
    ::_exit(rc);
  }
  ::close(fd);
  workers_[pid] = client.is_unix ? std::string() : client.ip;
  if (!client.is_unix) ++per_ip_[client.ip];
}

void Master::read_proxy(size_t index) {
  Pending& p = pending_[index];
  char buf[512];
  // Peek, then consume only the header's own octets: what follows stays in
  // the socket for the worker (a TLS ClientHello on a submissions listener
  // must reach OpenSSL, not the session as a string).
  ssize_t n = ::recv(p.fd.get(), buf, sizeof buf, MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  auto drop = [&](const std::string& why) {
    log::warn("closing " + p.client.display() + ": " + why);
    pending_.erase(pending_.begin() + static_cast<long>(index));
  };
  if (n <= 0) return drop("connection closed before the PROXY header");
  ProxyHeader h = parse_proxy_header(p.buf + std::string(buf, static_cast<size_t>(n)));
  if (h.status == ProxyHeader::Status::Invalid) return drop("invalid PROXY protocol header");
  // NeedMore: every octet seen so far belongs to the header.
  size_t take = h.status == ProxyHeader::Status::Ok ? h.length - p.buf.size() : static_cast<size_t>(n);
  if (::recv(p.fd.get(), buf, take, 0) != static_cast<ssize_t>(take))
    return drop("read error in the PROXY header");
  p.buf.append(buf, take);
  if (h.status == ProxyHeader::Status::NeedMore) return;
  smtpd::ClientInfo client = p.client;
  if (!h.local) {
    client.ip = h.ip;
    client.port = h.port;
    client.is_unix = false;
  }
  int fd = p.fd.release();
  pending_.erase(pending_.begin() + static_cast<long>(index));
  start_session(fd, client);
}

void Master::expire_pending() {
  double now = monotonic();
  for (size_t i = pending_.size(); i-- > 0;) {
    if (pending_[i].deadline <= now) {
      log::warn("closing " + pending_[i].client.display() + ": no PROXY header in time");
      pending_.erase(pending_.begin() + static_cast<long>(i));
    }
  }
}

void Master::load_resolver() {
  auto r = std::make_unique<queue::Resolver>(cfg_);
  if (Status s = r->load_aliases_file(); !s) log::warn("aliases: " + s.error());
  resolver_ = std::move(r);
}

void Master::load_tls(bool at_start) {
  auto ctx = tls::ServerContext::create(cfg_);
  if (!ctx) {
    log::error("TLS: " + ctx.error() + (at_start ? "; STARTTLS disabled" : "; keeping the previous certificate"));
    return;
  }
  tls_ = std::move(*ctx);
}

void Master::reap() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    if (pid == runner_pid_) {
      runner_pid_ = -1;
      if (stopping_) continue;
      log::error("queue runner exited (status " + std::to_string(status) + "), restarting in " +
                 std::to_string(runner_backoff_) + "s");
      // Back off while it keeps dying; a runner that ran a while starts over.
      if (monotonic() - runner_started_at_ > 60) runner_backoff_ = 1;
      runner_restart_at_ = monotonic() + runner_backoff_;
      runner_backoff_ = std::min(runner_backoff_ * 2, 30);
      continue;
    }
    auto it = workers_.find(pid);
    if (it == workers_.end()) continue;
    if (!it->second.empty()) {
      auto ip = per_ip_.find(it->second);
      if (ip != per_ip_.end() && --ip->second <= 0) per_ip_.erase(ip);
    }
    workers_.erase(it);
    if (WIFSIGNALED(status))
      log::warn("worker " + std::to_string(pid) + " killed by signal " +
                std::to_string(WTERMSIG(status)));
  }
}

void Master::reload() {
  auto loaded = config::load_file(path_);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) log::error("reload failed: " + e.str());
    log::error("reload failed: keeping the previous configuration");
    return;
  }
  if (loaded.config.state_dir != cfg_.state_dir)
    log::warn("reload: state_dir change needs a restart; keeping " + cfg_.state_dir);
  loaded.config.state_dir = cfg_.state_dir;
  if (Status st = open_listeners(loaded.config); !st) {
    log::error("reload failed: " + st.error() + "; keeping the previous configuration");
    return;
  }
  auto chain = filter::Chain::load(loaded.config);
  if (!chain) {
    log::error("reload failed: filters: " + chain.error() + "; keeping the previous configuration");
    return;
  }
  cfg_ = std::move(loaded.config);
  if (chain_) chain_->fini();
  chain_.emplace(std::move(*chain));
  load_tls(false);
  load_resolver();
  // The runner re-reads the configuration in place, so deliveries in flight
  // never hold up a reload.
  if (runner_pid_ > 0) ::kill(runner_pid_, SIGHUP);
  log::configure(static_cast<log::Target>(cfg_.log.target), static_cast<log::Format>(cfg_.log.format),
                 static_cast<log::Level>(cfg_.log.level));
  log::info("reloaded configuration from " + path_);
}

void Master::shutdown() {
  for (auto& l : listeners_) {
    if (l.conf.address.is_unix) ::unlink(l.conf.address.path.c_str());
    l.fd.reset();
  }
  stop_runner();
  log::info("stopping: waiting for " + std::to_string(workers_.size()) + " session(s)");
  // Let sessions finish, bounded; then ask the stragglers to stop.
  for (int round = 0; round < 2 && !workers_.empty(); ++round) {
    struct timespec deadline {};
    ::clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += round == 0 ? 10 : 3;
    while (!workers_.empty()) {
      reap();
      struct timespec now {};
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec > deadline.tv_sec ||
          (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))
        break;
      struct pollfd p = {sig_r_.get(), POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        unsigned char b[64];
        ssize_t r = ::read(sig_r_.get(), b, sizeof b);
        (void)r;
      }
    }
    if (round == 0)
      for (const auto& [pid, ip] : workers_) ::kill(pid, SIGTERM);
  }
  for (const auto& [pid, ip] : workers_) ::kill(pid, SIGKILL);
  // The runner lets its deliveries finish (bounded by the agents' timeouts);
  // wait for it so no process outlives the master.
  for (int i = 0; runner_pid_ > 0 && i < 600; ++i) {
    reap();
    if (runner_pid_ > 0) ::usleep(50 * 1000);
  }
  if (runner_pid_ > 0) ::kill(runner_pid_, SIGKILL);
  if (chain_) chain_->fini();
  log::info("stopped");
}

int Master::run() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    log::error("pipe: " + errno_string(errno));
    return 71;
  }
  sig_r_.reset(fds[0]);
  sig_w_.reset(fds[1]);
  g_signal_pipe = sig_w_.get();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::sigaction(sig, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  if (Status st = make_dirs(cfg_.state_dir, 0750); !st) {
    log::error("state_dir: " + st.error());
    return 73;
  }
  auto spool = queue::Spool::open(cfg_.state_dir);
  if (!spool) {
    log::error("spool: " + spool.error());
    return 73;
  }
  spool_.emplace(std::move(*spool));
  int nfds[2];
  if (::pipe2(nfds, O_CLOEXEC | O_NONBLOCK) != 0) {
    log::error("pipe: " + errno_string(errno));
    return 71;
  }
  notify_r_.reset(nfds[0]);
  notify_w_.reset(nfds[1]);
  if (Status st = open_listeners(cfg_); !st) {
    log::error(st.error());
    return 71;
  }
  load_tls(true);
  if (!tls_ && !cfg_.tls.cert.empty()) return 78;  // a configured certificate must work
  load_resolver();
  if (Status st = drop_privileges(); !st) {
    log::error(st.error());
    return 77;
  }
  // After dropping privileges: plugin init and exec filters run as the user.
  auto chain = filter::Chain::load(cfg_);
  if (!chain) {
    log::error("filters: " + chain.error());
    return 78;
  }
  chain_.emplace(std::move(*chain));
  if (chain_->size() > 0) log::info("filters: " + std::to_string(chain_->size()) + " loaded");
  for (const auto& l : listeners_) log::info("listening on " + l.conf.address.text);
  log::info("petrel started, hostname " + cfg_.hostname);
  start_runner();

  std::vector<struct pollfd> pfds;
  while (!stopping_) {
    pfds.clear();
    pfds.push_back({sig_r_.get(), POLLIN, 0});
    for (const auto& l : listeners_) pfds.push_back({l.fd.get(), POLLIN, 0});
    for (const auto& p : pending_) pfds.push_back({p.fd.get(), POLLIN, 0});
    int timeout = poll_timeout_ms();
    if (!pending_.empty() && (timeout < 0 || timeout > 1000)) timeout = 1000;
    int n = ::poll(pfds.data(), pfds.size(), timeout);
    if (runner_restart_at_ > 0 && monotonic() >= runner_restart_at_ && !stopping_) start_runner();
    if (n < 0) {
      if (errno == EINTR) continue;
      log::error("poll: " + errno_string(errno));
      break;
    }
    if (pfds[0].revents & POLLIN) {
      unsigned char sigs[64];
      ssize_t r = ::read(sig_r_.get(), sigs, sizeof sigs);
      bool hup = false;
      for (ssize_t i = 0; i < r; ++i) {
        if (sigs[i] == SIGTERM || sigs[i] == SIGINT) stopping_ = true;
        else if (sigs[i] == SIGHUP) hup = true;
      }
      reap();
      if (hup && !stopping_) {
        reload();
        continue;  // listeners may have changed: rebuild the poll set
      }
    }
    if (stopping_) break;
    // Listeners and pending connections are unchanged since pfds was built
    // (reload continues above). Pending ones first, from the back, since
    // read_proxy() may erase them; then the listeners, which may add more.
    size_t nl = listeners_.size();
    for (size_t i = pfds.size(); i-- > 1 + nl;)
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_proxy(i - 1 - nl);
    expire_pending();
    for (size_t i = 1; i <= nl; ++i)
      if (pfds[i].revents & POLLIN) accept_from(listeners_[i - 1]);
  }
  shutdown();
  return 0;
}

}  // namespace

int serve(const std::string& config_path, config::Config cfg) {
  Master m(config_path, std::move(cfg));
  return m.run();
}

}  // namespace petrel::master
