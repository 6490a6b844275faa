// TLS for the SMTP server (SPEC §3 `tls`, §5): the server context, made once
// in the master before any fork (and again on SIGHUP), and the worker's
// connection, which is plaintext until STARTTLS (or TLS from the first byte on
// `submissions` listeners). All encrypted I/O happens in the worker.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <openssl/ssl.h>

#include "petrel/common/result.h"
#include "petrel/config/config.h"

namespace petrel::tls {

class ServerContext {
 public:
  // Loads tls.cert/tls.key; without them a self-signed certificate for
  // `hostname` is made in STATE_DIR/tls/ on first use (and logged) and reused.
  static Result<std::shared_ptr<ServerContext>> create(const config::Config& cfg);
  ~ServerContext();
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit ServerContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};

// Generates a self-signed EC P-256 certificate and key (PEM files; the key
// is written mode 0600).
Status make_self_signed(const std::string& hostname, const std::string& cert_path,
                        const std::string& key_path);

// A blocking connection over `fd` (not owned) that may switch to TLS.
class Connection {
 public:
  explicit Connection(int fd) : fd_(fd) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Server-side handshake bounded by timeout_sec, which also bounds each
  // later wait for the rest of a TLS record (a client stalling mid-record).
  Status accept_tls(SSL_CTX* ctx, int timeout_sec);
  bool is_tls() const { return ssl_ != nullptr; }
  std::string version() const;
  std::string cipher() const;

  // >0 bytes read, 0 end of stream, <0 error.
  long read(char* buf, size_t len);
  Status write_all(std::string_view data);
  // Decrypted bytes buffered inside TLS: poll() on the fd would not see them.
  bool has_buffered() const;
  int fd() const { return fd_; }
  void shutdown();

 private:
  int fd_;
  SSL* ssl_ = nullptr;
  int io_timeout_ms_ = 300 * 1000;
};

}  // namespace petrel::tls
