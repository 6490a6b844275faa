// mbox delivery: append to a Unix mailbox file in mboxrd form.
//
// The message goes in as "From <sender or MAILER-DAEMON> <ctime date>", the
// delivery headers, the message with every line matching ^>*From  given one
// more '>', and a blank line. The file is locked against MUAs and other
// deliverers with both a dotlock (PATH.lock, created O_EXCL; one older than
// stale_lock_sec is removed) and an fcntl write lock (open file description
// lock, which conflicts with the classic fcntl locks mutt and Dovecot take).
// Locks are waited for at most lock_timeout_ms in total, then the delivery is
// Deferred. Where the directory does not let petrel create PATH.lock (Debian's
// /var/mail is group mail, and petrel is not setgid), the fcntl lock alone
// is used. The file is fsync()ed before Delivered; on any write error it is
// truncated back to its size before the delivery, so a reader never sees half
// a message. A symlink or non-regular file is refused (Deferred), except that
// "/dev/null" accepts and drops the message, as in /etc/aliases.
#pragma once

#include <string>

#include "petrel/delivery/agent.h"

namespace petrel::delivery {

struct MboxOptions {
  int lock_timeout_ms = 30'000;
  int stale_lock_sec = 300;  // Postfix's stale_lock_time
};

// `path` is the expanded mailbox path; missing parent directories are created.
Verdict deliver_mbox(const std::string& path, const Recipient& rcpt, const Message& msg,
                     const MboxOptions& options = {});

}  // namespace petrel::delivery
