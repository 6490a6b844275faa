#include "petrel/dns/resolver.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/log.h"
#include "petrel/common/strings.h"

namespace petrel::dns {

// ---------------------------------------------------------------- addresses

std::string IpAddress::text() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (!::inet_ntop(family, bytes.data(), buf, sizeof buf)) return "?";
  return buf;
}

socklen_t IpAddress::to_sockaddr(std::uint16_t port, sockaddr_storage* out) const {
  std::memset(out, 0, sizeof *out);
  if (family == AF_INET6) {
    auto* s = reinterpret_cast<sockaddr_in6*>(out);
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    std::memcpy(&s->sin6_addr, bytes.data(), 16);
    return sizeof *s;
  }
  auto* s = reinterpret_cast<sockaddr_in*>(out);
  s->sin_family = AF_INET;
  s->sin_port = htons(port);
  std::memcpy(&s->sin_addr, bytes.data(), 4);
  return sizeof *s;
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  const std::string s(text);
  IpAddress a;
  if (::inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET;
    return a;
  }
  if (::inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET6;
    return a;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- MX answers

std::string MxResult::status() const {
  switch (kind) {
    case Kind::NullMx: return "5.1.10";
    case Kind::NxDomain: return "5.1.2";
    case Kind::TempFail: return "4.4.3";
    default: return "";
  }
}

namespace {

const char* rcode_name(std::uint8_t rcode) {
  switch (rcode) {
    case kNoError: return "NOERROR";
    case kFormErr: return "FORMERR";
    case kServFail: return "SERVFAIL";
    case kNxDomain: return "NXDOMAIN";
    case kNotImp: return "NOTIMP";
    case kRefused: return "REFUSED";
    default: return "error";
  }
}

std::string strip_dot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

MxResult interpret_mx(const Message& m, std::string_view domain, std::mt19937& rng) {
  MxResult r;
  const std::string d = strip_dot(domain);
  if (m.rcode == kNxDomain) {
    r.kind = MxResult::Kind::NxDomain;
    r.error = "domain " + d + " not found (DNS NXDOMAIN)";
    return r;
  }
  if (m.rcode != kNoError) {
    r.kind = MxResult::Kind::TempFail;
    r.error = std::string("DNS error looking up MX for ") + d + ": " + rcode_name(m.rcode);
    return r;
  }

  // The owner names that stand for `domain`: itself and its CNAME chain.
  std::vector<std::string> owners{d};
  for (std::size_t round = 0; round < 8; ++round) {
    bool grew = false;
    for (const Record& rec : m.answers) {
      if (rec.type != kTypeCname || rec.cls != kClassIn) continue;
      const bool from_owner = std::any_of(owners.begin(), owners.end(),
                                          [&](const std::string& o) { return name_equal(o, rec.name); });
      const bool known = std::any_of(owners.begin(), owners.end(),
                                     [&](const std::string& o) { return name_equal(o, rec.target); });
      if (from_owner && !known) {
        owners.push_back(rec.target);
        grew = true;
      }
    }
    if (!grew) break;
  }

  std::vector<MxHost> hosts;
  bool saw_mx = false, saw_null = false;
  for (const Record& rec : m.answers) {
    if (rec.type != kTypeMx || rec.cls != kClassIn) continue;
    if (!std::any_of(owners.begin(), owners.end(),
                     [&](const std::string& o) { return name_equal(o, rec.name); }))
      continue;
    saw_mx = true;
    if (rec.target.empty()) {
      saw_null = true;
      continue;
    }
    if (!is_host_name(rec.target)) continue;
    hosts.push_back({strip_dot(rec.target), rec.preference});
  }

  if (!saw_mx) {
    r.kind = MxResult::Kind::Implicit;
    r.hosts.push_back({d, 0});
    return r;
  }
  if (hosts.empty()) {
    if (saw_null) {
      r.kind = MxResult::Kind::NullMx;
      r.error = "domain " + d + " does not accept mail (null MX)";
    } else {
      r.kind = MxResult::Kind::TempFail;
      r.error = "no valid MX host name for " + d;
    }
    return r;
  }

  // Shuffle first, then a stable sort: equal preferences end up in random order.
  std::shuffle(hosts.begin(), hosts.end(), rng);
  std::stable_sort(hosts.begin(), hosts.end(),
                   [](const MxHost& a, const MxHost& b) { return a.preference < b.preference; });
  for (const MxHost& h : hosts) {
    const bool dup = std::any_of(r.hosts.begin(), r.hosts.end(),
                                 [&](const MxHost& x) { return name_equal(x.name, h.name); });
    if (!dup) r.hosts.push_back(h);
  }
  r.kind = MxResult::Kind::Hosts;
  return r;
}

// ---------------------------------------------------------------- lookups

namespace {

std::string sockaddr_text(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(s->sin6_port));
  }
  const auto* s = reinterpret_cast<const sockaddr_in*>(&ss);
  ::inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
  return std::string(buf) + ":" + std::to_string(ntohs(s->sin_port));
}

socklen_t sockaddr_len(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

std::uint16_t random_id() {
  std::uint16_t id = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof id) != 1) {
    static std::random_device rd;
    id = static_cast<std::uint16_t>(rd());
  }
  return id;
}

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

// evdns results that may change on a later try.
bool evdns_temporary(int err) {
  return err != DNS_ERR_NONE && err != DNS_ERR_NOTEXIST && err != DNS_ERR_NODATA;
}

constexpr std::size_t kMaxDnsMessage = 65535;

}  // namespace

struct Resolver::Lookup {
  virtual ~Lookup() {
    if (timer) event_free(timer);
  }
  Resolver* owner = nullptr;
  RequestId id = 0;
  event* timer = nullptr;
};

// One MX query: UDP to each nameserver in turn, TCP when truncated.
struct Resolver::MxLookup : Lookup {
  std::string domain;
  MxCallback cb;
  std::uint16_t txid = 0;
  int tries = 0;
  std::size_t server = 0;
  UniqueFd udp;
  event* io = nullptr;
  bufferevent* tcp = nullptr;
  std::string last_error;
  std::optional<MxResult> early;

  ~MxLookup() override { close_transport(); }

  void close_transport() {
    if (io) event_free(io);
    io = nullptr;
    udp.reset();
    if (tcp) bufferevent_free(tcp);
    tcp = nullptr;
  }

  const sockaddr_storage& ns() const { return owner->servers_[server]; }

  // Comes back through the timer, so nothing recurses into a new try.
  void retry_soon() {
    close_transport();
    const timeval zero{0, 0};
    evtimer_add(timer, &zero);
  }

  void next_try() {
    close_transport();
    const std::size_t n = owner->servers_.size();
    if (tries >= owner->options_.attempts * static_cast<int>(n)) {
      MxResult r;
      r.kind = MxResult::Kind::TempFail;
      r.error = "DNS lookup of MX for " + domain + " failed: " +
                (last_error.empty() ? std::string("timed out") : last_error);
      finish(std::move(r));
      return;
    }
    server = static_cast<std::size_t>(tries) % n;
    ++tries;
    txid = random_id();
    auto q = build_query(txid, domain, kTypeMx);
    udp.reset(::socket(ns().ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!udp || ::connect(udp.get(), reinterpret_cast<const sockaddr*>(&ns()), sockaddr_len(ns())) != 0 ||
        ::send(udp.get(), q->data(), q->size(), 0) != static_cast<ssize_t>(q->size())) {
      last_error = sockaddr_text(ns()) + ": " + errno_string(errno);
      retry_soon();
      return;
    }
    io = event_new(owner->base_, udp.get(), EV_READ | EV_PERSIST, &MxLookup::on_udp, this);
    event_add(io, nullptr);
    const timeval tv = to_timeval(owner->options_.timeout);
    evtimer_add(timer, &tv);
  }

  static void on_timer(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<MxLookup*>(arg);
    if (self->early) {
      MxResult r = std::move(*self->early);
      self->finish(std::move(r));
      return;
    }
    // Waiting on a transport: that try timed out. Otherwise retry_soon()
    // armed the timer and last_error already says why.
    if (self->io || self->tcp) self->last_error = "no answer from " + sockaddr_text(self->ns());
    self->next_try();
  }

  static void on_udp(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<MxLookup*>(arg);
    std::string buf(kMaxDnsMessage, '\0');
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      // ECONNREFUSED: ICMP port unreachable, nothing listens there.
      self->last_error = sockaddr_text(self->ns()) + ": " + errno_string(errno);
      self->next_try();
      return;
    }
    buf.resize(static_cast<std::size_t>(n));
    self->handle(buf, false);
  }

  void start_tcp() {
    close_transport();
    UniqueFd fd(::socket(ns().ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      last_error = "TCP to " + sockaddr_text(ns()) + ": " + errno_string(errno);
      retry_soon();
      return;
    }
    tcp = bufferevent_socket_new(owner->base_, fd.release(), BEV_OPT_CLOSE_ON_FREE);
    if (!tcp) {
      last_error = "TCP to " + sockaddr_text(ns()) + ": out of memory";
      retry_soon();
      return;
    }
    bufferevent_setcb(tcp, &MxLookup::on_tcp_read, nullptr, &MxLookup::on_tcp_event, this);
    bufferevent_enable(tcp, EV_READ | EV_WRITE);
    txid = random_id();
    auto q = build_query(txid, domain, kTypeMx, 0);
    const unsigned char len[2] = {static_cast<unsigned char>(q->size() >> 8),
                                  static_cast<unsigned char>(q->size() & 0xff)};
    bufferevent_write(tcp, len, 2);
    bufferevent_write(tcp, q->data(), q->size());
    if (bufferevent_socket_connect(tcp, reinterpret_cast<const sockaddr*>(&ns()),
                                   static_cast<int>(sockaddr_len(ns()))) != 0) {
      last_error = "TCP to " + sockaddr_text(ns()) + ": " + errno_string(errno);
      retry_soon();
      return;
    }
    const timeval tv = to_timeval(owner->options_.timeout);
    evtimer_add(timer, &tv);
  }

  static void on_tcp_read(bufferevent* bev, void* arg) {
    auto* self = static_cast<MxLookup*>(arg);
    evbuffer* in = bufferevent_get_input(bev);
    unsigned char len[2];
    if (evbuffer_copyout(in, len, 2) != 2) return;
    const std::size_t n = static_cast<std::size_t>(len[0]) << 8 | len[1];
    if (evbuffer_get_length(in) < 2 + n) return;
    evbuffer_drain(in, 2);
    std::string buf(n, '\0');
    evbuffer_remove(in, buf.data(), n);
    self->handle(buf, true);
  }

  static void on_tcp_event(bufferevent*, short what, void* arg) {
    auto* self = static_cast<MxLookup*>(arg);
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
      const int err = EVUTIL_SOCKET_ERROR();
      self->last_error = "TCP to " + sockaddr_text(self->ns()) + ": " +
                         ((what & BEV_EVENT_EOF) ? std::string("connection closed") : errno_string(err));
      self->next_try();
    }
  }

  void handle(std::string_view packet, bool via_tcp) {
    auto m = parse_message(packet);
    const bool ours = m && m->id == txid && m->response && m->questions.size() == 1 &&
                      name_equal(m->questions[0].name, domain) &&
                      m->questions[0].type == kTypeMx && m->questions[0].cls == kClassIn;
    if (!ours) {
      // Over UDP a stray or forged datagram is ignored: the real answer
      // may still come. Over TCP the stream is ours, so it is a failure.
      if (via_tcp) {
        last_error = "bad DNS answer from " + sockaddr_text(ns());
        next_try();
      }
      return;
    }
    if (m->truncated && !via_tcp) {
      start_tcp();
      return;
    }
    if (m->rcode != kNoError && m->rcode != kNxDomain) {
      last_error = std::string(rcode_name(m->rcode)) + " from " + sockaddr_text(ns());
      next_try();
      return;
    }
    finish(interpret_mx(*m, domain, owner->rng_));
  }

  void finish(MxResult r) {
    std::unique_ptr<Lookup> keep = owner->take(id);  // `this` lives until the end
    MxCallback done = std::move(cb);
    close_transport();
    done(r);
  }
};

// The evdns callback argument for one A or AAAA query. It outlives a
// cancelled lookup: evdns always calls back once (with DNS_ERR_CANCEL at
// worst), and that call frees it.
struct Resolver::EvdnsCall {
  AddressLookup* lookup = nullptr;  // nullptr once the lookup is gone
  bool v6 = false;
  evdns_request* request = nullptr;
};

struct Resolver::AddressLookup : Lookup {
  std::string host;
  AddressCallback cb;
  EvdnsCall* v4 = nullptr;
  EvdnsCall* v6 = nullptr;
  int err4 = DNS_ERR_NONE, err6 = DNS_ERR_NONE;
  std::vector<IpAddress> addr4, addr6;
  std::optional<AddressResult> early;

  ~AddressLookup() override {
    orphan(v4);
    orphan(v6);
  }

  void orphan(EvdnsCall*& call) {
    if (!call) return;
    call->lookup = nullptr;
    if (call->request) evdns_cancel_request(owner->dns_, call->request);
    call = nullptr;
  }

  void start() {
    v4 = new EvdnsCall{this, false, nullptr};
    v4->request = evdns_base_resolve_ipv4(owner->dns_, host.c_str(), DNS_QUERY_NO_SEARCH,
                                          &Resolver::on_evdns, v4);
    if (!v4->request) {
      delete v4;
      v4 = nullptr;
      err4 = DNS_ERR_UNKNOWN;
    }
    v6 = new EvdnsCall{this, true, nullptr};
    v6->request = evdns_base_resolve_ipv6(owner->dns_, host.c_str(), DNS_QUERY_NO_SEARCH,
                                          &Resolver::on_evdns, v6);
    if (!v6->request) {
      delete v6;
      v6 = nullptr;
      err6 = DNS_ERR_UNKNOWN;
    }
    if (!v4 && !v6) complete_soon();
  }

  void complete_soon() {
    const timeval zero{0, 0};
    evtimer_add(timer, &zero);
  }

  static void on_timer(evutil_socket_t, short, void* arg) { static_cast<AddressLookup*>(arg)->finish(); }

  AddressResult result() const {
    if (early) return *early;
    AddressResult r;
    for (const auto* list : {&addr4, &addr6})
      for (const IpAddress& a : *list)
        if (std::find(r.addresses.begin(), r.addresses.end(), a) == r.addresses.end())
          r.addresses.push_back(a);
    if (!r.addresses.empty()) {
      r.kind = AddressResult::Kind::Ok;
    } else if (evdns_temporary(err4) || evdns_temporary(err6)) {
      r.kind = AddressResult::Kind::TempFail;
      const int err = evdns_temporary(err4) ? err4 : err6;
      r.error = "DNS lookup of " + host + " failed: " + evdns_err_to_string(err);
    } else if (err4 == DNS_ERR_NOTEXIST || err6 == DNS_ERR_NOTEXIST) {
      r.kind = AddressResult::Kind::NxDomain;
      r.error = "host " + host + " not found (DNS NXDOMAIN)";
    } else {
      r.kind = AddressResult::Kind::NoAddress;
      r.error = "host " + host + " has no A or AAAA record";
    }
    return r;
  }

  void finish() {
    std::unique_ptr<Lookup> keep = owner->take(id);
    AddressCallback done = std::move(cb);
    done(result());
  }
};

void Resolver::on_evdns(int result, char type, int count, int, void* addresses, void* arg) {
  auto* call = static_cast<EvdnsCall*>(arg);
  AddressLookup* l = call->lookup;
  const bool v6 = call->v6;
  delete call;
  if (!l) return;
  (v6 ? l->v6 : l->v4) = nullptr;
  int& err = v6 ? l->err6 : l->err4;
  std::vector<IpAddress>& out = v6 ? l->addr6 : l->addr4;
  err = result;
  if (result == DNS_ERR_NONE && addresses && count > 0) {
    const int family = type == DNS_IPv6_AAAA ? AF_INET6 : AF_INET;
    const std::size_t size = family == AF_INET6 ? 16 : 4;
    if ((family == AF_INET6) == v6) {
      for (int i = 0; i < count; ++i) {
        IpAddress a;
        a.family = family;
        std::memcpy(a.bytes.data(), static_cast<const unsigned char*>(addresses) + size * i, size);
        out.push_back(a);
      }
    }
  } else if (result == DNS_ERR_NONE) {
    err = DNS_ERR_NODATA;
  }
  if (!l->v4 && !l->v6) l->finish();
}

// ---------------------------------------------------------------- Resolver

Result<std::unique_ptr<Resolver>> Resolver::create(event_base* base, const ResolverOptions& options) {
  // evdns talks on stderr by default; its notes belong in petrel's log.
  evdns_set_log_fn([](int is_warning, const char* msg) {
    log::write(is_warning ? log::Level::Warn : log::Level::Debug, std::string("dns: ") + msg);
  });
  const int flags = EVDNS_BASE_DISABLE_WHEN_INACTIVE |
                    (options.nameservers.empty() ? EVDNS_BASE_INITIALIZE_NAMESERVERS : 0);
  evdns_base* dns = evdns_base_new(base, flags);
  if (!dns) return Error{"cannot set up the DNS resolver (evdns_base_new failed)"};
  for (const std::string& ns : options.nameservers) {
    if (evdns_base_nameserver_ip_add(dns, ns.c_str()) != 0) {
      evdns_base_free(dns, 0);
      return Error{"bad nameserver " + ns};
    }
  }
  ResolverOptions opts = options;
  opts.attempts = std::max(1, opts.attempts);
  if (opts.timeout.count() <= 0) opts.timeout = std::chrono::milliseconds(5000);
  char value[32];
  std::snprintf(value, sizeof value, "%lld.%03lld", static_cast<long long>(opts.timeout.count() / 1000),
                static_cast<long long>(opts.timeout.count() % 1000));
  evdns_base_set_option(dns, "timeout:", value);
  std::snprintf(value, sizeof value, "%d", opts.attempts);
  evdns_base_set_option(dns, "attempts:", value);

  std::unique_ptr<Resolver> r(new Resolver(base, dns, std::move(opts)));
  for (int i = 0;; ++i) {
    sockaddr_storage ss{};
    const int n = evdns_base_get_nameserver_addr(dns, i, reinterpret_cast<sockaddr*>(&ss), sizeof ss);
    if (n < 0 || n > static_cast<int>(sizeof ss)) break;
    r->servers_.push_back(ss);
  }
  if (r->servers_.empty()) return Error{"no DNS nameserver configured"};
  return r;
}

Resolver::Resolver(event_base* base, evdns_base* dns, ResolverOptions options)
    : base_(base), dns_(dns), options_(std::move(options)), rng_(std::random_device{}()) {}

Resolver::~Resolver() {
  lookups_.clear();  // cancels pending evdns requests while dns_ still exists
  evdns_base_free(dns_, 0);
}

std::unique_ptr<Resolver::Lookup> Resolver::take(RequestId id) {
  auto it = lookups_.find(id);
  if (it == lookups_.end()) return nullptr;
  std::unique_ptr<Lookup> l = std::move(it->second);
  lookups_.erase(it);
  return l;
}

Resolver::RequestId Resolver::resolve_mx(std::string_view domain, MxCallback cb) {
  auto l = std::make_unique<MxLookup>();
  MxLookup* raw = l.get();
  raw->owner = this;
  raw->id = next_id_++;
  raw->domain = strip_dot(domain);
  raw->cb = std::move(cb);
  raw->timer = evtimer_new(base_, &MxLookup::on_timer, raw);
  lookups_.emplace(raw->id, std::move(l));
  if (!build_query(0, raw->domain, kTypeMx) || raw->domain.empty()) {
    MxResult r;
    r.kind = MxResult::Kind::NxDomain;
    r.error = "invalid domain name " + raw->domain;
    raw->early = std::move(r);
    raw->retry_soon();
  } else {
    raw->next_try();
  }
  return raw->id;
}

Resolver::RequestId Resolver::resolve_addresses(std::string_view host, AddressCallback cb) {
  auto l = std::make_unique<AddressLookup>();
  AddressLookup* raw = l.get();
  raw->owner = this;
  raw->id = next_id_++;
  raw->host = strip_dot(host);
  raw->cb = std::move(cb);
  raw->timer = evtimer_new(base_, &AddressLookup::on_timer, raw);
  lookups_.emplace(raw->id, std::move(l));
  if (auto ip = IpAddress::parse(raw->host)) {
    AddressResult r;
    r.kind = AddressResult::Kind::Ok;
    r.addresses.push_back(*ip);
    raw->early = std::move(r);
    raw->complete_soon();
  } else if (!build_query(0, raw->host, kTypeA) || raw->host.empty()) {
    AddressResult r;
    r.kind = AddressResult::Kind::NxDomain;
    r.error = "invalid host name " + raw->host;
    raw->early = std::move(r);
    raw->complete_soon();
  } else {
    raw->start();
  }
  return raw->id;
}

void Resolver::cancel(RequestId id) { take(id); }

std::vector<std::string> Resolver::nameservers() const {
  std::vector<std::string> out;
  for (const auto& ss : servers_) out.push_back(sockaddr_text(ss));
  return out;
}

}  // namespace petrel::dns
