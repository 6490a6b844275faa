// RAII for a forked child that leads its own process group (pipe delivery,
// exec filters). Until reaped, the destructor kills the whole group and reaps
// it, so no early return leaves a process or a zombie behind.
#pragma once

#include <cerrno>
#include <csignal>

#include <sys/types.h>
#include <sys/wait.h>

namespace petrel {

class ChildProcess {
 public:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      reap();
    }
  }
  pid_t pid() const { return pid_; }
  // True once the child has exited. It stays a zombie (not reaped) so its
  // pid, and with it the process group id, cannot be reused while we may
  // still signal the group.
  bool exited() const {
    siginfo_t si{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == pid_;
  }
  void kill_group(int sig) const { ::kill(-pid_, sig); }
  int reap() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
};

}  // namespace petrel
