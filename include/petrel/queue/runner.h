// The queue runner (SPEC §4, §7): one process with a libevent loop that owns
// delivery. It learns of new messages through the notify pipe the workers
// write queue ids to (picked up at once), and rescans the spool periodically
// and at start to recover anything missed. Each due message is delivered by a
// forked child running the blocking local agents, so a slow pipe or LMTP
// server never stalls other deliveries; results come back through a pipe and
// every state change is written atomically (petrel/queue/state.h). No file is
// held open per queued message: only while a child delivers it.
#pragma once

#include <string>

#include "petrel/config/config.h"

namespace petrel::queue {

// The control socket `petrel queue` talks to: STATE_DIR/runner.sock
// (datagrams: "flush", "flush ID...", "reload").
std::string control_socket_path(const config::Config& cfg);

// Runs until SIGTERM; returns the process exit status. `notify_fd` is the
// read end of the workers' notify pipe (non-blocking).
int run_queue_runner(const config::Config& cfg, int notify_fd);

// Sends a datagram to a running runner; false when none listens.
bool send_control(const config::Config& cfg, const std::string& message);

}  // namespace petrel::queue
