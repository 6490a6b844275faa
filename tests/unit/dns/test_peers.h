// Real peers for the resolver and SMTP client tests: a child process
// stopped by its pid, a free loopback port, dnsmasq serving records on
// 127.0.0.1, and a bounded libevent loop. Everything listens on loopback
// only and every wait is bounded.
#pragma once

#include <chrono>
#include <csignal>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace petrel::testing {

inline bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// A port free for both TCP and UDP on 127.0.0.1 right now.
inline std::uint16_t free_port() {
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int t = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(t, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(t);
      continue;
    }
    const int u = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const bool ok = ::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(u);
    ::close(t);
    if (ok) return ntohs(a.sin_port);
  }
  return 0;
}

// A child process, stopped (SIGTERM, then SIGKILL after 2 s) by its pid.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { stop(); }

  bool spawn(const std::vector<std::string>& argv, const std::string& log_path) {
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      const int null = ::open("/dev/null", O_RDONLY);
      if (null >= 0) ::dup2(null, 0);
      if (log >= 0) {
        ::dup2(log, 1);
        ::dup2(log, 2);
      }
      ::setpgid(0, 0);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    return true;
  }

  bool running() {
    if (pid_ <= 0) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

// Waits until something accepts TCP connections on 127.0.0.1:port (bounded).
inline bool wait_tcp(std::uint16_t port, std::chrono::milliseconds budget = std::chrono::seconds(5)) {
  const auto end = std::chrono::steady_clock::now() + budget;
  while (std::chrono::steady_clock::now() < end) {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    if (ok) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// dnsmasq answering only from the records given (--mx-host=..., --host-record=...,
// --cname=...), NXDOMAIN for other names under .test, on 127.0.0.1:port.
class DnsMasq {
 public:
  static constexpr const char* kBinary = "/usr/sbin/dnsmasq";

  explicit DnsMasq(const std::vector<std::string>& records) {
    if (!executable(kBinary)) return;
    port_ = free_port();
    if (!port_) return;
    std::vector<std::string> argv = {kBinary,       "-d", "-p", std::to_string(port_),
                                     "--listen-address=127.0.0.1", "--bind-interfaces",
                                     "--no-resolv", "--no-hosts", "--local=/test/",
                                     "--pid-file=", "--cache-size=0"};
    argv.insert(argv.end(), records.begin(), records.end());
    log_ = "/tmp/petrel-dnsmasq-" + std::to_string(::getpid()) + "-" + std::to_string(port_) + ".log";
    if (!child_.spawn(argv, log_)) return;
    ready_ = wait_udp();
  }
  ~DnsMasq() {
    child_.stop();
    if (!log_.empty()) ::unlink(log_.c_str());
  }

  bool ok() const { return ready_; }
  std::uint16_t port() const { return port_; }
  std::string nameserver() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  // Sends a query for "ready.test" until any answer comes (bounded).
  bool wait_udp() {
    static const unsigned char query[] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
                                          5, 'r', 'e', 'a', 'd', 'y', 4, 't', 'e', 's', 't', 0,
                                          0, 1, 0, 1};
    for (int i = 0; i < 100; ++i) {
      if (!child_.running()) return false;
      const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port_);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ::sendto(s, query, sizeof query, 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
      pollfd p{s, POLLIN, 0};
      const bool answered = ::poll(&p, 1, 50) == 1 && (p.revents & POLLIN);
      ::close(s);
      if (answered) return true;
    }
    return false;
  }

  Child child_;
  std::uint16_t port_ = 0;
  std::string log_;
  bool ready_ = false;
};

// Runs the loop until done() or the budget is spent; false on timeout.
inline bool run_until(event_base* base, const std::function<bool()>& done,
                      std::chrono::milliseconds budget = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + budget;
  // A ticking timer so EVLOOP_ONCE always returns within 20 ms.
  event* tick = event_new(base, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
  const timeval tv{0, 20000};
  event_add(tick, &tv);
  while (!done() && std::chrono::steady_clock::now() < end) event_base_loop(base, EVLOOP_ONCE);
  event_free(tick);
  return done();
}

// Lets pending callbacks (evdns cancellations) run before the base goes.
inline void drain(event_base* base) {
  for (int i = 0; i < 3; ++i) event_base_loop(base, EVLOOP_NONBLOCK);
}

}  // namespace petrel::testing
