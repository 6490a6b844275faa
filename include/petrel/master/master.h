// The master process (SPEC §4): binds the listeners, drops privileges, forks
// one worker per accepted connection, enforces max_workers and max_per_ip,
// reaps children, reloads on SIGHUP and stops gracefully on SIGTERM/SIGINT.
#pragma once

#include <string>

#include "petrel/config/config.h"

namespace petrel::master {

// Runs until SIGTERM/SIGINT; returns the process exit code.
int serve(const std::string& config_path, config::Config cfg);

}  // namespace petrel::master
