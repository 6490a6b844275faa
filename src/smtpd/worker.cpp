#include "petrel/smtpd/worker.h"

#include <cerrno>

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/smtpd/policy.h"

namespace petrel::smtpd {

Reply SpoolSink::accept_message(const MessageInfo& info, std::string_view received,
                                std::string_view body) {
  queue::Envelope env;
  env.id = info.queue_id;
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  env.arrival_sec = tv.tv_sec;
  env.arrival_usec = tv.tv_usec;
  env.sender = info.sender.str();
  env.size = info.size;
  env.body_8bit = info.body_8bit;
  env.smtputf8 = info.smtputf8;
  env.client = info.client ? info.client->display() : "local";
  env.helo = info.helo;
  env.auth_user = info.auth_user;
  env.recipients.reserve(info.recipients.size());
  for (const auto& r : info.recipients) env.recipients.push_back(r.str());

  if (Status st = spool_.commit(env, {received, body}); !st) {
    log::error(info.queue_id + ": spool commit failed: " + st.error());
    log::info(info.queue_id + ": reject: DATA from " + env.client +
              ": 452 4.3.1 Error: insufficient system storage");
    return {452, "4.3.1 Error: insufficient system storage"};
  }
  if (notify_fd_ >= 0) {
    // Wake the queue runner. Non-blocking: if the pipe is full the periodic
    // scan finds the message.
    std::string note = info.queue_id + "\n";
    ssize_t w = ::write(notify_fd_, note.data(), note.size());
    (void)w;
  }
  log::info(info.queue_id + ": from=<" + log::sanitize(env.sender) +
            ">, size=" + std::to_string(env.size) +
            ", nrcpt=" + std::to_string(env.recipients.size()) + ", client=" + env.client);
  return {250, "2.0.0 Ok: queued as " + info.queue_id};
}

int run_worker(int fd, const ClientInfo& client, const config::Config& cfg, queue::Spool& spool,
               int notify_fd) {
  const std::string who = client.display();
  log::info("connect from " + who);

  // A stuck reader must not hold a worker forever on write either.
  struct timeval snd {};
  snd.tv_sec = static_cast<time_t>(cfg.limits.timeouts.command);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);

  ConfigPolicy policy(cfg);
  SpoolSink sink(spool, notify_fd);
  Session session(SessionSettings::from(cfg), client, policy, sink);
  session.greeting();

  std::string buf(64 * 1024, '\0');
  bool lost = false;
  for (;;) {
    std::string out = session.take_output();
    if (!out.empty() && !write_all(fd, out)) {
      lost = true;
      break;
    }
    if (session.closed()) break;
    config::Seconds limit =
        session.in_data() ? cfg.limits.timeouts.data_block : cfg.limits.timeouts.command;
    struct pollfd p = {fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(limit * 1000));
    if (r < 0) {
      if (errno == EINTR) continue;
      lost = true;
      break;
    }
    if (r == 0) {
      session.timeout();
      continue;
    }
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      lost = true;
      break;
    }
    if (n == 0) {
      lost = true;
      break;
    }
    session.feed(std::string_view(buf.data(), static_cast<size_t>(n)));
  }
  if (lost && !session.closed()) {
    log::info("lost connection after " +
              (session.last_command().empty() ? std::string("CONNECT") : session.last_command()) +
              " from " + who);
  }
  log::info("disconnect from " + who + " messages=" + std::to_string(session.messages_accepted()));
  return 0;
}

}  // namespace petrel::smtpd
