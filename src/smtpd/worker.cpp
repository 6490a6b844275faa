#include "petrel/smtpd/worker.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <crypt.h>
#include <openssl/crypto.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/queue/state.h"
#include "petrel/smtpd/policy.h"
#include "petrel/smtpd/tls.h"

namespace petrel::smtpd {

Reply SpoolSink::commit(const MessageInfo& info, std::vector<std::string> recipients,
                        std::string sender, std::initializer_list<std::string_view> parts,
                        std::uint64_t size, bool hold) {
  queue::Envelope env;
  env.id = info.queue_id;
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  env.arrival_sec = tv.tv_sec;
  env.arrival_usec = tv.tv_usec;
  env.sender = std::move(sender);
  env.size = size;
  env.body_8bit = info.body_8bit;
  env.smtputf8 = info.smtputf8;
  env.client = info.client ? info.client->display() : "local";
  env.helo = info.helo;
  env.auth_user = info.auth_user;
  env.recipients = std::move(recipients);

  // A quarantined message is held before it becomes visible to the runner.
  if (hold) (void)queue::set_held(spool_, env.id, true);
  if (Status st = spool_.commit(env, parts); !st) {
    if (hold) (void)queue::set_held(spool_, env.id, false);
    log::error(info.queue_id + ": spool commit failed: " + st.error());
    log::info(info.queue_id + ": reject: DATA from " + env.client +
              ": 452 4.3.1 Error: insufficient system storage");
    return {452, "4.3.1 Error: insufficient system storage"};
  }
  if (notify_fd_ >= 0 && !hold) {
    // Wake the queue runner. Non-blocking: if the pipe is full the periodic
    // scan finds the message.
    std::string note = info.queue_id + "\n";
    ssize_t w = ::write(notify_fd_, note.data(), note.size());
    (void)w;
  }
  log::info(info.queue_id + ": from=<" + log::sanitize(env.sender) +
            ">, size=" + std::to_string(env.size) +
            ", nrcpt=" + std::to_string(env.recipients.size()) + ", client=" + env.client +
            (hold ? ", held (quarantine)" : ""));
  return {250, "2.0.0 Ok: queued as " + info.queue_id};
}

Reply SpoolSink::accept_message(const MessageInfo& info, std::string_view received,
                                std::string_view body) {
  std::vector<std::string> rcpts;
  rcpts.reserve(info.recipients.size());
  for (const auto& r : info.recipients) rcpts.push_back(r.str());
  if (!chain_ || chain_->size() == 0)
    return commit(info, std::move(rcpts), info.sender.str(), {received, body}, info.size, false);

  filter::Envelope fe;
  fe.queue_id = info.queue_id;
  fe.sender = info.sender.str();
  fe.recipients = rcpts;
  if (info.client) {
    fe.client_ip = info.client->ip;
    fe.client_port = info.client->port;
    fe.tls = info.client->tls;
    fe.tls_version = info.client->tls_version;
    fe.tls_cipher = info.client->tls_cipher;
  }
  fe.helo = info.helo;
  fe.auth_user = info.auth_user;
  fe.hostname = hostname_;
  std::string message;
  message.reserve(received.size() + body.size());
  message.append(received).append(body);
  filter::Outcome o = chain_->run(fe, message);
  chain_->reset();
  for (const auto& step : o.steps) log::info(step.log_line);
  switch (o.action) {
    case filter::Action::Reject:
    case filter::Action::Tempfail: {
      // A multi-line reply (a milter's setmlreply) stays on one log line.
      std::string shown = o.reply.str();
      std::replace(shown.begin(), shown.end(), '\n', ' ');
      log::info(info.queue_id + ": reject: DATA from " +
                (info.client ? info.client->display() : std::string("local")) + ": " +
                log::sanitize(shown, 1024) + "; filter=" + log::sanitize(o.filter));
      std::string text = o.reply.text;
      return {o.reply.code, text};
    }
    case filter::Action::Discard:
      log::info(info.queue_id + ": discarded by filter " + o.filter);
      return {250, "2.0.0 Ok: queued as " + info.queue_id};
    default:
      break;
  }
  if (fe.recipients.empty()) {
    log::info(info.queue_id + ": every recipient removed by filters; discarded");
    return {250, "2.0.0 Ok: queued as " + info.queue_id};
  }
  // Size on the wire of the filtered message: LF becomes CRLF.
  std::uint64_t size = message.size() + static_cast<std::uint64_t>(
                                             std::count(message.begin(), message.end(), '\n'));
  if (o.quarantine) log::info(info.queue_id + ": quarantined: " + o.quarantine_reason);
  return commit(info, std::move(fe.recipients), std::move(fe.sender), {message}, size,
                o.quarantine);
}

filter::Envelope ChainHooks::envelope(const ClientInfo& client, std::string_view helo,
                                      std::string_view sender, std::string_view auth_user) const {
  filter::Envelope fe;
  fe.sender = std::string(sender);
  fe.client_ip = client.ip;
  fe.client_port = client.port;
  fe.helo = std::string(helo);
  fe.auth_user = std::string(auth_user);
  fe.tls = client.tls;
  fe.tls_version = client.tls_version;
  fe.tls_cipher = client.tls_cipher;
  fe.hostname = hostname_;
  return fe;
}

std::optional<Reply> ChainHooks::answer(const std::optional<filter::StageResult>& r) {
  if (!r) return std::nullopt;
  log::info(r->log_line);
  return Reply{r->reply.code, r->reply.text};
}

std::optional<Reply> ChainHooks::on_connect(const ClientInfo& client) {
  return answer(chain_.on_connect(envelope(client, {}, {}, {})));
}

std::optional<Reply> ChainHooks::on_helo(const ClientInfo& client, std::string_view helo) {
  return answer(chain_.on_helo(envelope(client, helo, {}, {})));
}

std::optional<Reply> ChainHooks::on_mail(const ClientInfo& client, std::string_view helo,
                                         const Address& sender, std::string_view auth_user) {
  return answer(chain_.on_mail(envelope(client, helo, sender.str(), auth_user)));
}

std::optional<Reply> ChainHooks::on_rcpt(const ClientInfo& client, std::string_view helo,
                                         const Address& sender, const Address& rcpt,
                                         std::string_view auth_user) {
  return answer(chain_.on_rcpt(envelope(client, helo, sender.str(), auth_user), rcpt.str()));
}

CryptAuthenticator::CryptAuthenticator(const config::Config& cfg, int failure_delay_ms)
    : users_(cfg.auth.users), failure_delay_ms_(failure_delay_ms) {
  if (cfg.auth.passwd_file.empty()) return;
  auto text = read_file(cfg.auth.passwd_file);
  if (!text) {
    log::error("auth.passwd_file: " + text.error());
    return;
  }
  size_t pos = 0;
  while (pos < text->size()) {
    size_t nl = text->find('\n', pos);
    std::string line = text->substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text->size() : nl + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0) continue;
    std::string hash = line.substr(colon + 1);
    // "user:hash" or passwd(5)-like "user:hash:..." (hashes contain no ':').
    hash = hash.substr(0, hash.find(':'));
    users_.emplace(line.substr(0, colon), hash);
  }
}

bool check_crypt(std::string_view password, const std::string& hash) {
  struct crypt_data data {};
  std::string pw(password);
  const char* out = ::crypt_rn(pw.c_str(), hash.c_str(), &data, sizeof data);
  if (!out || out[0] == '*') return false;
  size_t n = std::strlen(out);
  return n == hash.size() && CRYPTO_memcmp(out, hash.data(), n) == 0;
}

bool CryptAuthenticator::verify(std::string_view user, std::string_view password) {
  auto it = users_.find(std::string(user));
  bool known = it != users_.end();
  // An unknown user costs what a wrong password costs: hash against some
  // configured hash (same algorithm and cost as the real ones) and fail.
  const std::string& hash = known ? it->second : users_.begin()->second;
  bool ok = check_crypt(password, hash) && known;
  if (!ok && failure_delay_ms_ > 0) ::usleep(static_cast<useconds_t>(failure_delay_ms_) * 1000);
  return ok;
}

int run_worker(int fd, const ClientInfo& client_in, WorkerContext& ctx) {
  const config::Config& cfg = ctx.cfg;
  ClientInfo client = client_in;
  const std::string who = client.display();
  log::info("connect from " + who);

  // A stuck reader must not hold a worker forever on write either.
  struct timeval snd {};
  snd.tv_sec = static_cast<time_t>(cfg.limits.timeouts.command);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);

  tls::Connection conn(fd);
  if (client.mode == config::ListenMode::Submissions) {
    if (!ctx.tls) {
      log::error("no TLS context for submissions listener; closing " + who);
      return 1;
    }
    if (Status s = conn.accept_tls(ctx.tls, static_cast<int>(cfg.limits.timeouts.command)); !s) {
      log::info(s.error() + " from " + who);
      log::info("disconnect from " + who + " messages=0");
      return 0;
    }
    client.tls = true;
    client.tls_version = conn.version();
    client.tls_cipher = conn.cipher();
    log::info("TLS connection established from " + who + ": " + client.tls_version + " with cipher " +
              client.tls_cipher);
  }

  ConfigPolicy policy(cfg, ctx.resolver);
  SpoolSink sink(ctx.spool, ctx.notify_fd, ctx.chain, cfg.hostname);
  CryptAuthenticator auth(cfg);
  SessionSettings settings = SessionSettings::from(cfg);
  settings.starttls_available = ctx.tls != nullptr;
  std::optional<ChainHooks> hooks;
  if (ctx.chain && ctx.chain->size() > 0) {
    ctx.chain->worker_init();
    hooks.emplace(*ctx.chain, cfg.hostname);
  }
  Session session(settings, client, policy, sink, &auth, hooks ? &*hooks : nullptr);
  session.greeting();

  std::string buf(64 * 1024, '\0');
  bool lost = false;
  for (;;) {
    std::string out = session.take_output();
    if (!out.empty() && !conn.write_all(out)) {
      lost = true;
      break;
    }
    if (session.closed()) break;
    if (session.wants_tls()) {
      if (Status s = conn.accept_tls(ctx.tls, static_cast<int>(cfg.limits.timeouts.command)); !s) {
        log::info(s.error() + " from " + who);
        lost = true;
        break;
      }
      log::info("TLS connection established from " + who + ": " + conn.version() +
                " with cipher " + conn.cipher());
      session.tls_started(conn.version(), conn.cipher());
      continue;
    }
    if (!conn.has_buffered()) {
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
    }
    long n = conn.read(buf.data(), buf.size());
    if (n <= 0) {
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
  conn.shutdown();
  if (hooks) ctx.chain->worker_exit();
  log::info("disconnect from " + who + " messages=" + std::to_string(session.messages_accepted()));
  return 0;
}

}  // namespace petrel::smtpd
