// The worker: one SMTP session over a blocking socket, in the process the
// master forked for this connection. It applies the configured timeouts,
// commits accepted messages to the spool and returns when the session ends.
#pragma once

#include "petrel/config/config.h"
#include "petrel/queue/spool.h"
#include "petrel/smtpd/session.h"

namespace petrel::smtpd {

// Serves the connection on `fd` (owned by the caller) and returns the
// process exit status.
// `notify_fd` (or -1) is the pipe to the queue runner: each committed queue
// id is written to it.
int run_worker(int fd, const ClientInfo& client, const config::Config& cfg,
               queue::Spool& spool, int notify_fd = -1);

// The sink that commits accepted messages to the spool and logs them.
class SpoolSink : public MessageSink {
 public:
  SpoolSink(queue::Spool& spool, int notify_fd) : spool_(spool), notify_fd_(notify_fd) {}
  Reply accept_message(const MessageInfo& info, std::string_view received,
                       std::string_view body) override;

 private:
  queue::Spool& spool_;
  int notify_fd_;
};

}  // namespace petrel::smtpd
