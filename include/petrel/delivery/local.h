// The one entry point the queue runner calls for a local recipient: it reads
// a domain's `deliver` value (config::Domain::deliver, SPEC §3) and runs the
// matching agent, blocking, for that one recipient.
//
// Spec forms: "maildir:PATH", "mbox:PATH", "lmtp:unix:/path", "lmtp:host:port",
// "discard", "pipe:COMMAND ARGS" (split into words at blanks; '...' and "..."
// group, backslash escapes; never a shell), or the list form
// ["pipe:", "/cmd", "arg"...] / ["pipe:/cmd", "arg"...] taken word by word.
// Placeholders are expanded after parsing: path-safe in PATH (see expand()),
// verbatim in each argv word, so a value with blanks stays one argument.
// LMTP targets are used as written.
//
// Before any agent runs, a message whose header already carries
// "Delivered-To: <this recipient>" is Bounced 5.4.6 (mail forwarding loop,
// as Postfix's local(8) does). A spec that cannot be parsed is Deferred 4.3.5
// so mail waits while the admin fixes the config. `discard` is Delivered
// with detail "discarded".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/delivery/agent.h"
#include "petrel/delivery/mbox.h"

namespace petrel::delivery {

struct DeliverSpec {
  enum class Kind { Maildir, Mbox, Pipe, Lmtp, Discard };
  Kind kind = Kind::Discard;
  std::string where;              // Maildir/Mbox: path template; Lmtp: target
  std::vector<std::string> argv;  // Pipe: argv templates, not yet expanded
};

// Parses a deliver value; the error text says what is wrong.
Result<DeliverSpec> parse_deliver(const std::vector<std::string>& spec);

// Splits a pipe command string into words as described above.
Result<std::vector<std::string>> split_command(std::string_view command);

struct LocalSettings {
  MboxOptions mbox;
  int pipe_timeout_sec = 300;
  std::string home_dir;  // pipe: HOME and cwd; "" = the current user's home
  int lmtp_timeout_sec = 300;
  std::string lhlo_name;  // "" = gethostname()
  bool lmtp_add_headers = true;
};

Verdict deliver_local(const std::vector<std::string>& spec, const Recipient& rcpt,
                      const Message& msg, const LocalSettings& settings = {});

}  // namespace petrel::delivery
