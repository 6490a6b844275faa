#include "petrel/delivery/smtp_client.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include "petrel/common/log.h"

namespace petrel::delivery::smtp {

namespace {

constexpr std::size_t kBlock = 64 * 1024;       // one read() of the queue file
constexpr std::size_t kHighWater = 256 * 1024;  // stop reading above this much unsent output
constexpr std::size_t kLowWater = 64 * 1024;    // read more below this

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

Failure local_failure(std::string status, std::string detail) {
  Failure f;
  f.verdict = Verdict{Outcome::Deferred, std::move(status), flatten(detail, 400)};
  return f;
}

}  // namespace

// ---------------------------------------------------------------- TLS context

Result<std::shared_ptr<TlsClientContext>> TlsClientContext::create(const std::string& extra_ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return Error{"cannot create the TLS client context"};
  // Without a system store only `verify` suffers, and it then fails
  // closed (deferring), which is what it is for.
  SSL_CTX_set_default_verify_paths(ctx);
  if (!extra_ca_file.empty() && SSL_CTX_load_verify_locations(ctx, extra_ca_file.c_str(), nullptr) != 1) {
    SSL_CTX_free(ctx);
    return Error{"cannot load CA file " + extra_ca_file};
  }
  return std::shared_ptr<TlsClientContext>(new TlsClientContext(ctx));
}

TlsClientContext::~TlsClientContext() { SSL_CTX_free(ctx_); }

// ---------------------------------------------------------------- connection

Connection::Connection(event_base* base, std::vector<Endpoint> endpoints, ConnectionOptions options)
    : base_(base), endpoints_(std::move(endpoints)), options_(std::move(options)) {
  timer_ = evtimer_new(base_, &Connection::on_timer, this);
  kick_ = event_new(base_, -1, 0, &Connection::on_kick, this);
}

Connection::~Connection() {
  *alive_ = false;
  teardown();
  if (timer_) event_free(timer_);
  if (kick_) event_free(kick_);
}

void Connection::teardown() {
  if (bev_) bufferevent_free(bev_);  // frees the SSL and the socket too
  bev_ = nullptr;
  ssl_ = nullptr;
  body_fd_.reset();
  body_flushing_ = false;
  if (timer_) evtimer_del(timer_);
}

void Connection::kick() { event_active(kick_, EV_TIMEOUT, 0); }

void Connection::start() {
  if (started_) return;
  started_ = true;
  kick();
}

bool Connection::send(Message message, MessageCallback cb) {
  if (!accepting()) return false;
  queue_.push_back(Pending{std::move(message), std::move(cb)});
  if (started_) kick();
  return true;
}

void Connection::quit() {
  if (closed_ || quit_requested_) return;
  quit_requested_ = true;
  kick();
}

void Connection::on_kick(int, short, void* arg) {
  auto* c = static_cast<Connection*>(arg);
  if (c->closed_) return;
  const bool nothing_to_do = c->queue_.empty() && !c->current_;
  switch (c->state_) {
    case State::Idle:
      if (c->quit_requested_ && nothing_to_do) {
        c->finish_closed(Failure{Verdict{Outcome::Delivered, "", "closed before connecting"}, 0, "", false});
        return;
      }
      if (!c->started_) return;
      if (c->endpoints_.empty()) {
        c->relay_ = "none";
        c->finish_closed(local_failure("4.4.1", "no address to connect to"));
        return;
      }
      c->connect_current();
      return;
    case State::Connecting:
      if (c->quit_requested_ && nothing_to_do)
        c->finish_closed(Failure{Verdict{Outcome::Delivered, "", "closed before the session was set up"}, 0, "", false});
      return;
    case State::Session:
      if (!c->established_ && c->quit_requested_ && nothing_to_do) c->session_->quit();
      c->process();
      return;
    case State::Closed:
      return;
  }
}

void Connection::connect_current() {
  const Endpoint& ep = endpoints_[index_];
  relay_ = ep.display();
  tls_version_.clear();

  SessionOptions so;
  so.helo_name = options_.helo_name;
  so.tls = options_.tls;
  // Without a TLS context, opportunistic means plaintext; required and
  // verify still try, and fail at the handshake (never plaintext).
  so.skip_starttls = plaintext_retry_ ||
                     (!options_.tls_context && options_.tls == config::TlsPolicy::Opportunistic);
  so.auth_user = options_.auth_user;
  so.auth_password = options_.auth_password;
  so.peer = ep.host + "[" + ep.address.text() + "]";
  session_ = std::make_unique<Session>(std::move(so));
  state_ = State::Connecting;

  sockaddr_storage ss{};
  const socklen_t len = ep.address.to_sockaddr(ep.port, &ss);
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    setup_failed(local_failure("4.4.1", "connect to " + relay_ + ": " + errno_string(errno)));
    return;
  }
  bev_ = bufferevent_socket_new(base_, fd.release(), BEV_OPT_CLOSE_ON_FREE);
  if (!bev_) {
    setup_failed(local_failure("4.4.1", "connect to " + relay_ + ": out of memory"));
    return;
  }
  bufferevent_setcb(bev_, &Connection::on_read, &Connection::on_write, &Connection::on_event, this);
  bufferevent_enable(bev_, EV_READ | EV_WRITE);
  if (bufferevent_socket_connect(bev_, reinterpret_cast<sockaddr*>(&ss), static_cast<int>(len)) != 0) {
    setup_failed(local_failure("4.4.1", "connect to " + relay_ + ": " + errno_string(errno)));
    return;
  }
  const timeval tv = to_timeval(options_.timeouts.connect);
  evtimer_add(timer_, &tv);
}

void Connection::flush_output() {
  if (!session_) return;
  const std::string out = session_->take_output();
  if (!out.empty() && bev_) bufferevent_write(bev_, out.data(), out.size());
}

void Connection::process() {
  if (!session_ || closed_) return;
  const std::shared_ptr<bool> alive = alive_;
  for (;;) {
    flush_output();
    std::vector<Event> events = session_->take_events();
    bool progressed = !events.empty();
    for (Event& e : events) {
      switch (e.kind) {
        case Event::Kind::Ready:
          established_ = true;
          idle_notified_ = false;
          tls_version_ = session_->tls_version();
          break;
        case Event::Kind::StartTls:
          start_tls();
          break;
        case Event::Kind::SendBody:
          start_body();
          break;
        case Event::Kind::MessageDone:
          finish_message(std::move(e.result));
          if (!*alive) return;
          break;
        case Event::Kind::SetupFailed:
          setup_failed(e.failure);
          return;
        case Event::Kind::Closed:
          finish_closed(e.failure);
          return;
      }
    }
    if (session_->ready() && !current_) {
      if (!queue_.empty()) {
        begin_next();
        progressed = true;
      } else if (quit_requested_) {
        session_->quit();
        progressed = true;
      } else if (!idle_notified_) {
        idle_notified_ = true;
        if (on_idle) {
          const std::function<void()> cb = on_idle;
          cb();
          if (!*alive) return;
        }
        progressed = true;
      }
    }
    if (!progressed) break;
  }
  arm_timer();
}

void Connection::arm_timer() {
  if (!session_ || closed_) {
    evtimer_del(timer_);
    return;
  }
  const Timeouts& t = options_.timeouts;
  std::chrono::milliseconds ms{0};
  switch (session_->waiting()) {
    case Wait::None: evtimer_del(timer_); return;
    case Wait::Greeting: ms = t.greeting; break;
    case Wait::Helo: ms = t.helo; break;
    case Wait::StartTls:
    case Wait::TlsHandshake: ms = t.starttls; break;
    case Wait::Auth: ms = t.auth; break;
    case Wait::Rset: ms = t.rset; break;
    case Wait::Mail: ms = t.mail; break;
    case Wait::Rcpt: ms = t.rcpt; break;
    case Wait::Data: ms = t.data; break;
    case Wait::Body: ms = t.data_block; break;
    case Wait::DataEnd: ms = t.data_end; break;
    case Wait::Quit: ms = t.quit; break;
  }
  const timeval tv = to_timeval(ms);
  evtimer_add(timer_, &tv);
}

void Connection::begin_next() {
  current_ = std::move(queue_.front());
  queue_.pop_front();
  idle_notified_ = false;
  const Message& m = current_->message;
  Envelope env;
  env.sender = m.sender;
  env.recipients = m.recipients;
  env.size = m.size;
  env.body_8bit = m.body_8bit;
  env.smtputf8 = m.smtputf8;
  if (!session_->begin(env)) {
    // Cannot happen while ready(); keep the message rather than lose it.
    queue_.push_front(std::move(*current_));
    current_.reset();
  }
}

void Connection::finish_message(MessageResult result) {
  body_fd_.reset();
  body_flushing_ = false;
  if (!current_) return;
  Pending p = std::move(*current_);
  current_.reset();
  Report rep{std::move(result), relay_, tls_version_};
  if (p.cb) p.cb(rep);
}

void Connection::start_tls() {
  if (!options_.tls_context || !bev_) {
    session_->tls_failed("no TLS client context");
    return;
  }
  SSL* ssl = SSL_new(options_.tls_context->get());
  if (!ssl) {
    session_->tls_failed("cannot create a TLS session");
    return;
  }
  const Endpoint& ep = endpoints_[index_];
  const bool literal = dns::IpAddress::parse(ep.host).has_value();
  if (!literal) SSL_set_tlsext_host_name(ssl, ep.host.c_str());
  if (options_.tls == config::TlsPolicy::Verify) {
    SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    if (literal) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ep.host.c_str());
    else SSL_set1_host(ssl, ep.host.c_str());
  } else {
    SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
  }
  // Plaintext that came after the 220 must never be read as if it had
  // been protected (CVE-2011-0411 in reverse).
  evbuffer* in = bufferevent_get_input(bev_);
  evbuffer_drain(in, evbuffer_get_length(in));
  bufferevent* tls =
      bufferevent_openssl_filter_new(base_, bev_, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
  if (!tls) {
    SSL_free(ssl);
    session_->tls_failed("cannot start TLS");
    return;
  }
  bev_ = tls;
  ssl_ = ssl;
  bufferevent_openssl_set_allow_dirty_shutdown(bev_, 1);
  bufferevent_setcb(bev_, &Connection::on_read, &Connection::on_write, &Connection::on_event, this);
  bufferevent_enable(bev_, EV_READ | EV_WRITE);
}

std::string Connection::tls_error() const {
  std::string reason;
  if (ssl_ && options_.tls == config::TlsPolicy::Verify) {
    const long v = SSL_get_verify_result(ssl_);
    if (v != X509_V_OK) reason = std::string("certificate verification failed: ") + X509_verify_cert_error_string(v);
  }
  if (bev_) {
    while (const unsigned long e = bufferevent_get_openssl_error(bev_)) {
      if (!reason.empty()) continue;
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      reason = buf;
    }
  }
  if (reason.empty()) {
    const int err = EVUTIL_SOCKET_ERROR();
    reason = err ? errno_string(err) : "handshake failed";
  }
  return reason;
}

void Connection::start_body() {
  if (!current_ || !bev_) {
    session_->abort("4.3.0", "internal error: no message to send");
    return;
  }
  const Message& m = current_->message;
  UniqueFd fd(::open(m.spool_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd || ::lseek(fd.get(), static_cast<off_t>(m.body_offset), SEEK_SET) < 0) {
    session_->abort("4.3.0", "cannot read queue file " + m.spool_path + ": " + errno_string(errno));
    return;
  }
  body_fd_ = std::move(fd);
  stuffer_ = DotStuffer{};
  bufferevent_setwatermark(bev_, EV_WRITE, kLowWater, 0);
  pump_body();
}

void Connection::pump_body() {
  if (!bev_) return;
  evbuffer* out = bufferevent_get_output(bev_);
  std::string block(kBlock, '\0');
  std::string chunk;
  while (body_fd_ && evbuffer_get_length(out) < kHighWater) {
    const ssize_t n = ::read(body_fd_.get(), block.data(), block.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      body_fd_.reset();
      session_->abort("4.3.0", "cannot read queue file " + current_->message.spool_path + ": " +
                                   errno_string(err));
      return;
    }
    chunk.clear();
    if (n == 0) {
      stuffer_.finish(&chunk);
      body_fd_.reset();  // closed as soon as it is read: fds stay bounded
      body_flushing_ = true;
      bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);  // tell us when all is written
    } else {
      stuffer_.add(std::string_view(block.data(), static_cast<std::size_t>(n)), &chunk);
    }
    bufferevent_write(bev_, chunk.data(), chunk.size());
  }
}

void Connection::setup_failed(const Failure& f) {
  errors_.push_back(f.verdict.detail);
  last_failure_ = f;
  // A polite QUIT when the server is still talking plaintext to us.
  if (bev_ && !ssl_ && session_) {
    const std::string out = session_->take_output();
    const int fd = bufferevent_getfd(bev_);
    if (!out.empty() && fd >= 0 && evbuffer_get_length(bufferevent_get_output(bev_)) == 0)
      (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  teardown();
  state_ = State::Idle;
  const bool abandon = quit_requested_ && queue_.empty() && !current_;
  if (f.retry_plaintext && !plaintext_retry_ && !abandon) {
    log::info("relay=" + relay_ + ": " + f.verdict.detail + "; retrying without STARTTLS");
    plaintext_retry_ = true;
    connect_current();
    return;
  }
  plaintext_retry_ = false;
  if (++index_ < endpoints_.size() && !abandon) {
    connect_current();
    return;
  }
  finish_closed(f);
}

bool Connection::fail_queue(const Failure& f) {
  const std::shared_ptr<bool> alive = alive_;
  Verdict v = f.verdict;
  if (v.outcome != Outcome::Deferred) v = Verdict{Outcome::Deferred, "4.4.2", "connection closed"};
  while (current_ || !queue_.empty()) {
    Pending p;
    if (current_) {
      p = std::move(*current_);
      current_.reset();
    } else {
      p = std::move(queue_.front());
      queue_.pop_front();
    }
    Report rep;
    rep.relay = relay_.empty() ? "none" : relay_;
    rep.tls = tls_version_;
    rep.result.code = f.code;
    rep.result.reply = f.reply;
    for (const std::string& r : p.message.recipients)
      rep.result.recipients.push_back(RecipientResult{r, v, f.code, f.reply});
    if (p.cb) p.cb(rep);
    if (!*alive) return false;
  }
  return true;
}

void Connection::finish_closed(const Failure& f) {
  if (closed_) return;
  closed_ = true;
  state_ = State::Closed;
  teardown();
  if (!fail_queue(f)) return;
  CloseReport rep{established_, f, errors_};
  if (on_closed) {
    const std::function<void(const CloseReport&)> cb = on_closed;
    cb(rep);
  }
}

// ---------------------------------------------------------------- libevent callbacks

void Connection::on_read(bufferevent* bev, void* arg) {
  auto* c = static_cast<Connection*>(arg);
  if (!c->session_ || c->closed_) return;
  evbuffer* in = bufferevent_get_input(bev);
  std::string data(evbuffer_get_length(in), '\0');
  if (data.empty()) return;
  evbuffer_remove(in, data.data(), data.size());
  c->session_->feed(data);
  c->process();
}

void Connection::on_write(bufferevent* bev, void* arg) {
  auto* c = static_cast<Connection*>(arg);
  if (!c->session_ || c->closed_) return;
  if (c->body_fd_) {
    c->pump_body();
    c->process();  // picks up an abort; re-arms the data block timer
    return;
  }
  if (c->body_flushing_ && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    c->body_flushing_ = false;
    c->session_->body_sent();
    c->process();
  }
}

void Connection::on_event(bufferevent*, short what, void* arg) {
  auto* c = static_cast<Connection*>(arg);
  if (c->closed_) return;
  if (c->state_ == State::Connecting) {
    if (what & BEV_EVENT_CONNECTED) {
      c->state_ = State::Session;
      c->process();  // arms the greeting timer
      return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
      const int err = EVUTIL_SOCKET_ERROR();
      c->setup_failed(local_failure(
          "4.4.1", "connect to " + c->relay_ + ": " + (err ? errno_string(err) : std::string("failed"))));
    }
    return;
  }
  if (c->state_ != State::Session || !c->session_) return;
  if (c->session_->waiting() == Wait::TlsHandshake) {
    if (what & BEV_EVENT_CONNECTED) {
      c->session_->tls_established(c->ssl_ ? SSL_get_version(c->ssl_) : "TLS");
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
      c->session_->tls_failed(c->tls_error());
    }
    c->process();
    return;
  }
  if (what & BEV_EVENT_EOF) {
    c->session_->connection_lost("");
  } else if (what & BEV_EVENT_ERROR) {
    c->session_->connection_lost(c->ssl_ ? c->tls_error() : errno_string(EVUTIL_SOCKET_ERROR()));
  } else {
    return;
  }
  c->process();
}

void Connection::on_timer(int, short, void* arg) {
  auto* c = static_cast<Connection*>(arg);
  if (c->closed_) return;
  if (c->state_ == State::Connecting) {
    c->setup_failed(local_failure("4.4.1", "connect to " + c->relay_ + ": timed out"));
    return;
  }
  if (!c->session_) return;
  c->session_->timed_out();
  c->process();
}

}  // namespace petrel::delivery::smtp
