#include "petrel/queue/relay.h"

#include <algorithm>
#include <ctime>
#include <deque>
#include <list>
#include <map>

#include <event2/event.h>

#include "petrel/common/log.h"
#include "petrel/dns/resolver.h"

namespace petrel::queue {

namespace smtp = delivery::smtp;

namespace {

// Messages handed to a connection ahead of the one being sent: enough that
// the next MAIL FROM follows the last dot without a round trip through the
// scheduler, few enough that work is not tied to one slow connection.
constexpr int kDepth = 2;
// An idle connection waits this long for more work before QUIT.
constexpr int kLingerMs = 1000;
// A destination's endpoints are looked up again after this long.
constexpr std::int64_t kResolutionTtl = 300;

dns::ResolverOptions resolver_options(const config::Config& cfg) {
  dns::ResolverOptions o;
  o.nameservers = cfg.queue.nameservers;
  return o;
}

}  // namespace

struct Relay::Impl {
  struct Dest;

  struct Conn {
    Impl* impl = nullptr;
    Dest* dest = nullptr;
    std::unique_ptr<smtp::Connection> c;
    int assigned = 0;  // messages given to it
    int inflight = 0;  // messages it has not answered yet
    struct event* linger = nullptr;
    ~Conn() {
      if (linger) event_free(linger);
    }
  };

  struct Dest {
    std::string key;
    delivery::Route route;
    std::deque<RelayTransaction> ready;
    std::unique_ptr<delivery::NextHopLookup> lookup;
    bool resolved = false;
    std::int64_t resolved_at = 0;
    std::vector<delivery::Endpoint> endpoints;
    std::vector<Conn*> conns;
    bool in_line = false;  // waiting for a connection slot
    // Lowered when the server turns away a connection while others to it
    // work (its own concurrency limit): no more than it takes, for as long
    // as the destination has work.
    int limit = 1 << 30;
  };

  event_base* base = nullptr;
  config::Config cfg;
  Done done;
  std::unique_ptr<dns::Resolver> resolver;
  std::shared_ptr<smtp::TlsClientContext> tls;
  std::map<std::string, Dest> dests;
  std::list<std::unique_ptr<Conn>> conns;
  std::vector<std::unique_ptr<Conn>> graveyard;  // closed in a callback: freed by the next pump
  std::deque<std::string> line;                  // destinations waiting for a slot, in turn
  struct event* kick_ev = nullptr;
  bool kicked = false;
  bool stopping = false;

  ~Impl() {
    // Connections first (they may refer to nothing here, but their
    // callbacks do), then lookups, then the resolver they use.
    for (auto& c : conns) c->c.reset();
    conns.clear();
    graveyard.clear();
    dests.clear();
    resolver.reset();
    if (kick_ev) event_free(kick_ev);
  }

  static void on_kick(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->kicked = false;
    self->pump();
  }
  void kick() {
    if (kicked) return;
    kicked = true;
    event_active(kick_ev, EV_TIMEOUT, 0);
  }

  // Answers every waiting transaction of `d` with `v` (relay "none").
  void fail_waiting(Dest& d, const delivery::Verdict& v, const std::string& relay) {
    std::deque<RelayTransaction> ready = std::move(d.ready);
    d.ready.clear();
    for (auto& tx : ready) {
      RelayOutcome out;
      out.id = std::move(tx.id);
      out.targets = std::move(tx.targets);
      out.results.assign(out.targets.size(), RelayResult{v, ""});
      out.relay = relay;
      done(out);
    }
  }

  void start_lookup(Dest& d) {
    Dest* dp = &d;
    d.lookup = std::make_unique<delivery::NextHopLookup>(
        *resolver, d.route, [this, dp](const delivery::Resolution& r) { on_resolved(*dp, r); });
  }

  void on_resolved(Dest& d, const delivery::Resolution& r) {
    // The callback may destroy the lookup: keep it alive until we return.
    std::unique_ptr<delivery::NextHopLookup> self = std::move(d.lookup);
    if (r.kind == delivery::Resolution::Kind::Ok) {
      d.resolved = true;
      d.resolved_at = static_cast<std::int64_t>(::time(nullptr));
      d.endpoints = r.endpoints;
    } else {
      delivery::Verdict v;
      v.outcome = r.kind == delivery::Resolution::Kind::Bounced ? delivery::Outcome::Bounced
                                                                : delivery::Outcome::Deferred;
      v.status = r.status;
      v.detail = r.error;
      log::info("relay " + d.route.describe() + ": " + r.status + " " + r.error);
      fail_waiting(d, v, "none");
    }
    kick();
  }

  // Gives waiting work to the destination's connections that can take it.
  void feed(Dest& d) {
    const int per_conn = std::max(1, cfg.queue.max_messages_per_connection);
    for (Conn* c : d.conns) {
      while (!d.ready.empty() && c->c->accepting() && c->assigned < per_conn && c->inflight < kDepth) {
        RelayTransaction tx = std::move(d.ready.front());
        d.ready.pop_front();
        give(*c, std::move(tx));
      }
      if (c->assigned >= per_conn && c->c->accepting()) c->c->quit();
    }
  }

  void give(Conn& c, RelayTransaction tx) {
    c.assigned++;
    c.inflight++;
    if (c.linger) evtimer_del(c.linger);
    Conn* cp = &c;
    auto id = std::make_shared<std::string>(std::move(tx.id));
    auto targets = std::make_shared<std::vector<std::size_t>>(std::move(tx.targets));
    bool ok = c.c->send(std::move(tx.message), [this, cp, id, targets](const smtp::Report& rep) {
      on_message(*cp, std::move(*id), std::move(*targets), rep);
    });
    if (!ok) {
      // Cannot happen (accepting() was checked), but never lose an answer.
      c.inflight--;
      RelayOutcome out;
      out.id = *id;
      out.targets = *targets;
      out.results.assign(out.targets.size(),
                         RelayResult{delivery::deferred("4.4.2", "connection closed"), ""});
      out.relay = "none";
      done(out);
    }
  }

  void on_message(Conn& c, std::string id, std::vector<std::size_t> targets, const smtp::Report& rep) {
    c.inflight--;
    RelayOutcome out;
    out.id = std::move(id);
    out.targets = std::move(targets);
    out.relay = rep.relay;
    out.tls = rep.tls;
    for (std::size_t i = 0; i < out.targets.size(); ++i) {
      if (i < rep.result.recipients.size()) {
        const auto& r = rep.result.recipients[i];
        out.results.push_back(RelayResult{r.verdict, r.reply});
      } else {
        out.results.push_back(RelayResult{delivery::deferred("4.4.2", "no answer for recipient"), ""});
      }
    }
    done(out);
    kick();
  }

  void on_idle(Conn& c) {
    if (stopping) {
      c.c->quit();
      return;
    }
    if (!c.dest->ready.empty()) {
      kick();
      return;
    }
    if (!c.linger) c.linger = evtimer_new(base, on_linger, &c);
    struct timeval tv = {kLingerMs / 1000, (kLingerMs % 1000) * 1000};
    evtimer_add(c.linger, &tv);
  }

  static void on_linger(evutil_socket_t, short, void* arg) {
    auto* c = static_cast<Conn*>(arg);
    if (c->inflight == 0 && c->dest->ready.empty() && c->c->accepting()) c->c->quit();
  }

  void on_closed(Conn& c, const smtp::CloseReport& rep) {
    Dest& d = *c.dest;
    d.conns.erase(std::remove(d.conns.begin(), d.conns.end(), &c), d.conns.end());
    bool others_up = std::any_of(d.conns.begin(), d.conns.end(),
                                 [](const Conn* o) { return o->c->established(); });
    if (!rep.established && others_up) {
      int up = static_cast<int>(std::count_if(d.conns.begin(), d.conns.end(),
                                               [](const Conn* o) { return o->c->established(); }));
      if (up < d.limit) {
        d.limit = up;
        log::info("relay " + d.route.describe() + ": server refused a connection, " +
                  std::to_string(up) + " at once from now on");
      }
    }
    if (!rep.established && !others_up) {
      // Every MX and address failed, and no other connection to it works:
      // the destination is down. Defer what waits for it now rather than
      // trying once per message. (A server that turned away one connection
      // of several, e.g. for its own concurrency limit, is not down.)
      std::string why = rep.failure.verdict.detail;
      if (!rep.errors.empty()) why = rep.errors.back();
      log::info("relay " + d.route.describe() + ": no usable server: " + why);
      delivery::Verdict v = rep.failure.verdict;
      v.outcome = delivery::Outcome::Deferred;
      if (v.status.empty() || v.status[0] != '4') v.status = "4.4.1";
      v.detail = why;
      fail_waiting(d, v, c.c->relay().empty() ? "none" : c.c->relay());
      // Look the destination up again next time: its records may be what changed.
      d.resolved = false;
    }
    for (auto it = conns.begin(); it != conns.end(); ++it) {
      if (it->get() == &c) {
        graveyard.push_back(std::move(*it));
        conns.erase(it);
        break;
      }
    }
    kick();
  }

  void open(Dest& d) {
    smtp::ConnectionOptions o;
    o.helo_name = cfg.hostname;
    o.tls = d.route.tls;
    o.tls_context = tls;
    if (!d.route.auth_user.empty()) {
      auto pw = delivery::read_password_file(d.route.auth_password_file);
      if (!pw) {
        log::error("relay " + d.route.describe() + ": " + pw.error());
        fail_waiting(d, delivery::deferred("4.7.0", "cannot read the smarthost password: " + pw.error()),
                     "none");
        return;
      }
      o.auth_user = d.route.auth_user;
      o.auth_password = *pw;
    }
    auto conn = std::make_unique<Conn>();
    conn->impl = this;
    conn->dest = &d;
    conn->c = std::make_unique<smtp::Connection>(base, d.endpoints, std::move(o));
    Conn* cp = conn.get();
    conn->c->on_idle = [this, cp] { on_idle(*cp); };
    conn->c->on_closed = [this, cp](const smtp::CloseReport& rep) { on_closed(*cp, rep); };
    d.conns.push_back(cp);
    conns.push_back(std::move(conn));
    cp->c->start();
    feed(d);
  }

  bool wants_connection(const Dest& d) const {
    const int cap = std::min(d.limit, std::max(1, cfg.queue.max_connections_per_domain));
    return !d.ready.empty() && d.resolved && static_cast<int>(d.conns.size()) < cap;
  }

  void pump() {
    graveyard.clear();
    if (stopping) return;
    const std::int64_t now = static_cast<std::int64_t>(::time(nullptr));
    for (auto it = dests.begin(); it != dests.end();) {
      Dest& d = it->second;
      if (d.ready.empty()) {
        if (d.conns.empty() && !d.lookup) {
          it = dests.erase(it);
          continue;
        }
        ++it;
        continue;
      }
      if (d.resolved && d.conns.empty() && now - d.resolved_at > kResolutionTtl) d.resolved = false;
      if (!d.resolved) {
        if (!d.lookup) start_lookup(d);
        ++it;
        continue;
      }
      feed(d);
      if (wants_connection(d) && !d.in_line) {
        d.in_line = true;
        line.push_back(d.key);
      }
      ++it;
    }
    const int max_total = std::max(1, cfg.queue.max_connections);
    std::size_t rounds = line.size();
    while (!line.empty() && static_cast<int>(conns.size()) < max_total && rounds > 0) {
      std::string key = std::move(line.front());
      line.pop_front();
      rounds--;
      auto it = dests.find(key);
      if (it == dests.end()) continue;
      Dest& d = it->second;
      d.in_line = false;
      if (!wants_connection(d)) continue;
      open(d);
      if (wants_connection(d)) {
        // More to do than one connection takes: back of the line, so the
        // other destinations get their turn first.
        d.in_line = true;
        line.push_back(d.key);
        rounds++;
      }
    }
  }
};

Relay::Relay(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Relay::~Relay() = default;

Result<std::unique_ptr<Relay>> Relay::create(event_base* base, const config::Config& cfg, Done done) {
  auto impl = std::make_unique<Impl>();
  impl->base = base;
  impl->cfg = cfg;
  impl->done = std::move(done);
  auto r = dns::Resolver::create(base, resolver_options(cfg));
  if (!r) return Error{"DNS resolver: " + r.error()};
  impl->resolver = std::move(*r);
  auto t = smtp::TlsClientContext::create();
  if (!t) return Error{"TLS client context: " + t.error()};
  impl->tls = std::move(*t);
  impl->kick_ev = event_new(base, -1, 0, Impl::on_kick, impl.get());
  if (!impl->kick_ev) return Error{"event_new failed"};
  return std::unique_ptr<Relay>(new Relay(std::move(impl)));
}

void Relay::submit(const delivery::Route& route, RelayTransaction tx) {
  Impl& m = *impl_;
  std::string key = route.key();
  auto [it, inserted] = m.dests.try_emplace(key);
  if (inserted) {
    it->second.key = key;
    it->second.route = route;
  }
  it->second.ready.push_back(std::move(tx));
  m.kick();
}

Status Relay::reload(const config::Config& cfg) {
  Impl& m = *impl_;
  if (cfg.queue.nameservers != m.cfg.queue.nameservers) {
    auto r = dns::Resolver::create(m.base, resolver_options(cfg));
    if (!r) return Error{"DNS resolver: " + r.error()};
    // Lookups in flight use the old resolver: drop them (no callback) and
    // look up again with the new one.
    for (auto& [key, d] : m.dests) {
      d.lookup.reset();
      d.resolved = false;
    }
    m.resolver = std::move(*r);
  }
  m.cfg = cfg;
  m.kick();
  return Status::Ok();
}

void Relay::stop() {
  Impl& m = *impl_;
  m.stopping = true;
  // Waiting work is left alone: its messages are unchanged in the spool and
  // the next runner sends them.
  for (auto& [key, d] : m.dests) {
    d.ready.clear();
    d.lookup.reset();
  }
  m.line.clear();
  for (auto& c : m.conns)
    if (c->c->accepting()) c->c->quit();
}

bool Relay::idle() const {
  for (const auto& [key, d] : impl_->dests)
    if (!d.ready.empty() || d.lookup) return false;
  return impl_->conns.empty();
}

std::size_t Relay::connections() const { return impl_->conns.size(); }

std::size_t Relay::waiting() const {
  std::size_t n = 0;
  for (const auto& [key, d] : impl_->dests) n += d.ready.size();
  return n;
}

}  // namespace petrel::queue
