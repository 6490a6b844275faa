#include "petrel/smtpd/tls.h"

#include <cerrno>
#include <cstdio>

#include <fcntl.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"

namespace petrel::tls {
namespace {

std::string ssl_error() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown TLS error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// Waits until fd is ready for what OpenSSL asked for; false on timeout.
bool wait_ready(int fd, int ssl_err, int timeout_ms) {
  struct pollfd p = {fd, static_cast<short>(ssl_err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

}  // namespace

Status make_self_signed(const std::string& hostname, const std::string& cert_path,
                        const std::string& key_path) {
  EVP_PKEY* pkey = EVP_EC_gen("P-256");
  if (!pkey) return Error{"key generation failed: " + ssl_error()};
  std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> key_guard(pkey, EVP_PKEY_free);
  X509* x = X509_new();
  std::unique_ptr<X509, void (*)(X509*)> x_guard(x, X509_free);
  X509_set_version(x, 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 86400);
  X509_set_pubkey(x, pkey);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(hostname.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  std::string san = "DNS:" + hostname;
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  if (X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, san.c_str())) {
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (!X509_sign(x, pkey, EVP_sha256())) return Error{"signing failed: " + ssl_error()};

  std::string key_tmp = key_path + ".tmp", cert_tmp = cert_path + ".tmp";
  {
    UniqueFd kfd(::open(key_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!kfd) return Error{key_tmp + ": " + errno_string(errno)};
    FILE* f = ::fdopen(kfd.release(), "w");
    bool ok = PEM_write_PrivateKey(f, pkey, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    ok = ::fflush(f) == 0 && ::fsync(::fileno(f)) == 0 && ok;
    ::fclose(f);
    if (!ok) return Error{key_tmp + ": write failed"};
  }
  {
    UniqueFd cfd(::open(cert_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!cfd) return Error{cert_tmp + ": " + errno_string(errno)};
    FILE* f = ::fdopen(cfd.release(), "w");
    bool ok = PEM_write_X509(f, x) == 1;
    ok = ::fflush(f) == 0 && ::fsync(::fileno(f)) == 0 && ok;
    ::fclose(f);
    if (!ok) return Error{cert_tmp + ": write failed"};
  }
  if (::rename(key_tmp.c_str(), key_path.c_str()) != 0 ||
      ::rename(cert_tmp.c_str(), cert_path.c_str()) != 0)
    return Error{"rename: " + errno_string(errno)};
  return Status::Ok();
}

Result<std::shared_ptr<ServerContext>> ServerContext::create(const config::Config& cfg) {
  std::string cert = cfg.tls.cert, key = cfg.tls.key;
  if (cert.empty()) {
    std::string dir = cfg.state_dir + "/tls";
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    if (!file_exists(cert) || !file_exists(key)) {
      if (Status s = make_dirs(dir, 0700); !s) return Error{s.error()};
      if (Status s = make_self_signed(cfg.hostname, cert, key); !s)
        return Error{"self-signed certificate: " + s.error()};
      log::info("generated a self-signed certificate for " + cfg.hostname + " in " + cert);
    }
  } else if (key.empty()) {
    key = cert;  // a combined PEM file
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return Error{ssl_error()};
  std::shared_ptr<ServerContext> sc(new ServerContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, cfg.tls.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  // Forward secrecy only (ECDHE), AEAD ciphers for TLS 1.2; TLS 1.3 suites
  // are OpenSSL's defaults. Each worker is a fresh process, so ticket keys
  // would not be shared anyway: no session tickets. SSL_OP_NO_TICKET alone
  // still sends (stateful) TLS 1.3 tickets that can never be resumed.
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!RC4");
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1)
    return Error{"tls.cert " + cert + ": " + ssl_error()};
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1)
    return Error{"tls.key " + key + ": " + ssl_error()};
  if (SSL_CTX_check_private_key(ctx) != 1) return Error{"tls.key does not match tls.cert"};
  return sc;
}

ServerContext::~ServerContext() { SSL_CTX_free(ctx_); }

Connection::~Connection() {
  if (ssl_) SSL_free(ssl_);
}

Status Connection::accept_tls(SSL_CTX* ctx, int timeout_sec) {
  io_timeout_ms_ = timeout_sec * 1000;
  // Non-blocking from here on: on a blocking socket OpenSSL waits inside
  // recv() for the rest of a record and never returns WANT_READ, so a client
  // stalling mid-handshake or mid-record would hold the worker forever.
  int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK) != 0)
    return Error{"TLS: fcntl: " + errno_string(errno)};
  ssl_ = SSL_new(ctx);
  if (!ssl_) return Error{ssl_error()};
  SSL_set_fd(ssl_, fd_);
  for (;;) {
    int r = SSL_accept(ssl_);
    if (r == 1) return Status::Ok();
    int err = SSL_get_error(ssl_, r);
    if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) &&
        wait_ready(fd_, err, timeout_sec * 1000))
      continue;
    std::string why = err == SSL_ERROR_SYSCALL ? "connection lost" : ssl_error();
    SSL_free(ssl_);
    ssl_ = nullptr;
    return Error{"TLS handshake failed: " + why};
  }
}

std::string Connection::version() const { return ssl_ ? SSL_get_version(ssl_) : ""; }
std::string Connection::cipher() const { return ssl_ ? SSL_get_cipher_name(ssl_) : ""; }

bool Connection::has_buffered() const { return ssl_ && SSL_pending(ssl_) > 0; }

long Connection::read(char* buf, size_t len) {
  if (!ssl_) {
    for (;;) {
      ssize_t n = ::read(fd_, buf, len);
      if (n < 0 && errno == EINTR) continue;
      return n;
    }
  }
  for (;;) {
    int n = SSL_read(ssl_, buf, static_cast<int>(len));
    if (n > 0) return n;
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (wait_ready(fd_, err, io_timeout_ms_)) continue;
    }
    return -1;
  }
}

Status Connection::write_all(std::string_view data) {
  if (!ssl_) return petrel::write_all(fd_, data);
  while (!data.empty()) {
    int n = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) &&
        wait_ready(fd_, err, io_timeout_ms_))
      continue;
    return Error{"TLS write failed"};
  }
  return Status::Ok();
}

void Connection::shutdown() {
  if (ssl_) SSL_shutdown(ssl_);
}

}  // namespace petrel::tls
