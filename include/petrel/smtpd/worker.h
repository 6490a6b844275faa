// The worker: one SMTP session over a blocking socket, in the process the
// master forked for this connection. It applies the configured timeouts,
// runs TLS (STARTTLS, or implicit TLS on `submissions` listeners), checks AUTH
// credentials, commits accepted messages to the spool and returns when the
// session ends.
#pragma once

#include <initializer_list>
#include <map>
#include <optional>
#include <vector>
#include <string>

#include <openssl/ssl.h>

#include "petrel/config/config.h"
#include "petrel/filter/chain.h"
#include "petrel/queue/resolver.h"
#include "petrel/queue/spool.h"
#include "petrel/smtpd/session.h"

namespace petrel::smtpd {

struct WorkerContext {
  const config::Config& cfg;
  queue::Spool& spool;
  int notify_fd = -1;          // pipe to the queue runner: each committed id is written to it
  SSL_CTX* tls = nullptr;      // null: no STARTTLS, and submissions listeners cannot work
  const queue::Resolver* resolver = nullptr;  // with aliases.file, loaded by the master
  filter::Chain* chain = nullptr;             // loaded by the master before the fork
};

// Serves the connection on `fd` (owned by the caller) and returns the
// process exit status.
int run_worker(int fd, const ClientInfo& client, WorkerContext& ctx);

// The sink that commits accepted messages to the spool and logs them.
class SpoolSink : public MessageSink {
 public:
  SpoolSink(queue::Spool& spool, int notify_fd, filter::Chain* chain = nullptr,
            std::string hostname = {})
      : spool_(spool), notify_fd_(notify_fd), chain_(chain), hostname_(std::move(hostname)) {}
  // Runs the filter chain (when there is one), then commits what it left.
  Reply accept_message(const MessageInfo& info, std::string_view received,
                       std::string_view body) override;

 private:
  Reply commit(const MessageInfo& info, std::vector<std::string> recipients, std::string sender,
               std::initializer_list<std::string_view> parts, std::uint64_t size, bool hold);

  queue::Spool& spool_;
  int notify_fd_;
  filter::Chain* chain_;
  std::string hostname_;
};

// The filters' per-stage callbacks as the session's StageHooks.
class ChainHooks : public StageHooks {
 public:
  ChainHooks(filter::Chain& chain, std::string hostname)
      : chain_(chain), hostname_(std::move(hostname)) {}
  std::optional<Reply> on_connect(const ClientInfo& client) override;
  std::optional<Reply> on_helo(const ClientInfo& client, std::string_view helo) override;
  std::optional<Reply> on_mail(const ClientInfo& client, std::string_view helo,
                               const Address& sender, std::string_view auth_user) override;
  std::optional<Reply> on_rcpt(const ClientInfo& client, std::string_view helo,
                               const Address& sender, const Address& rcpt,
                               std::string_view auth_user) override;

 private:
  filter::Envelope envelope(const ClientInfo& client, std::string_view helo,
                            std::string_view sender, std::string_view auth_user) const;
  std::optional<Reply> answer(const std::optional<filter::StageResult>& r);

  filter::Chain& chain_;
  std::string hostname_;
};

// AUTH against auth.users and auth.passwd_file (crypt(3) hashes: yescrypt,
// SHA-512, bcrypt as libcrypt supports). Verification takes the same time for
// unknown users; a failure is answered only after a delay.
class CryptAuthenticator : public Authenticator {
 public:
  explicit CryptAuthenticator(const config::Config& cfg, int failure_delay_ms = 1000);
  bool enabled() const override { return !users_.empty(); }
  bool verify(std::string_view user, std::string_view password) override;

 private:
  std::map<std::string, std::string> users_;
  int failure_delay_ms_;
};

// crypt(3) check of `password` against `hash`, compared in constant time.
bool check_crypt(std::string_view password, const std::string& hash);

}  // namespace petrel::smtpd
