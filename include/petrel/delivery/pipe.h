// Pipe delivery: hand the message to a command (SPEC §7), never via a shell.
//
// The command runs in its own process group with only fds 0-2 open, default
// signal dispositions, cwd = home_dir (or /), and exactly this environment:
// SENDER RECIPIENT ORIGINAL_RECIPIENT USER EXTENSION DOMAIN QUEUE_ID (values
// of the Recipient/Message), PATH=/usr/bin:/bin and HOME. Its stdin is the
// delivery headers plus the message, from an unlinked in-memory file, so a
// command that reads nothing (or only part) can never deadlock us, and no
// SIGPIPE can reach the caller. Its stdout and stderr are captured together,
// as Postfix's pipe(8) does, and the head of them goes in the verdict.
//
// Exit 0: Delivered. Exit 75 (EX_TEMPFAIL), death by a signal, or a command
// that cannot be executed: Deferred 4.3.0. Any other exit: Bounced (5.3.0, or
// the sysexits.h meaning: 67 -> 5.1.1, 68 -> 5.1.2, 65 -> 5.6.0, 73 -> 5.2.0,
// 76 -> 5.5.0, 77 -> 5.7.0, 78 -> 5.3.5). After timeout_sec the whole process
// group gets SIGTERM, then SIGKILL 2 s later (so grandchildren die too), the
// child is reaped, and the verdict is Deferred 4.3.0. deliver_pipe returns
// only after the command has been reaped; it does not wait for descendants
// the command left running after exiting on its own.
#pragma once

#include <string>
#include <vector>

#include "petrel/delivery/agent.h"

namespace petrel::delivery {

struct PipeOptions {
  // Expanded. argv[0] is a path, or a bare name looked up in /usr/bin:/bin.
  std::vector<std::string> argv;
  int timeout_sec = 300;
  // HOME and the working directory; "" = the home of the current user.
  std::string home_dir;
};

Verdict deliver_pipe(const PipeOptions& options, const Recipient& rcpt, const Message& msg);

}  // namespace petrel::delivery
