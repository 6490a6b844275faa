// Maildir delivery (https://cr.yp.to/proto/maildir.html).
//
// deliver_maildir() creates dir/{tmp,new,cur} (mode 0700) when missing, writes
// the delivery headers and the message to tmp/ under a unique name
// "<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>", fsync()s it, renames it into new/
// and fsync()s new/. Only then is it Delivered; on any error the tmp/ file is
// removed and the verdict is Deferred (see deferred_io). A reader never sees a
// partial message in new/, and a crash leaves at most a stray file in tmp/.
#pragma once

#include <string>

#include "petrel/delivery/agent.h"

namespace petrel::delivery {

// `dir` is the expanded maildir path (a trailing '/' is fine).
Verdict deliver_maildir(const std::string& dir, const Recipient& rcpt, const Message& msg);

}  // namespace petrel::delivery
