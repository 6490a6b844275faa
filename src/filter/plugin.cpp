#include "petrel/filter/plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <new>
#include <string_view>
#include <vector>

#include "petrel/filter.h"
#include "petrel/filter/message.h"
#include "petrel/filter/verdict.h"

namespace petrel::filter {

namespace {

constexpr config::Seconds kDefaultTimeout = 30;
// Version 1 of struct petrel_filter ends with on_rcpt. Later versions only
// grow, so a plugin built against a newer header is at least this big.
constexpr std::size_t kEntrySizeV1 = offsetof(petrel_filter, on_rcpt) + sizeof(void (*)());
constexpr std::size_t kEntryVersionEnd = offsetof(petrel_filter, abi_version) + sizeof(unsigned);

// A dlopen()ed plugin whose entry point passed the ABI checks.
class Library {
 public:
  static Result<std::unique_ptr<Library>> open(const std::string& path) {
    ::dlerror();
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = ::dlerror();
      return Error{e ? std::string(e) : path + ": cannot load"};
    }
    std::unique_ptr<Library> lib(new Library(handle));
    void* sym = ::dlsym(handle, "petrel_filter_entry");
    if (!sym) {
      return Error{path + ": no symbol petrel_filter_entry (not a petrel filter plugin?)"};
    }
    using EntryFn = const petrel_filter* (*)();
    const petrel_filter* e = reinterpret_cast<EntryFn>(sym)();
    if (!e) return Error{path + ": petrel_filter_entry() returned NULL"};
    if (e->size < kEntryVersionEnd)
      return Error{path + ": struct petrel_filter is too small (" + std::to_string(e->size) +
                   " bytes)"};
    if (e->abi_version != PETREL_FILTER_ABI_VERSION)
      return Error{path + ": built for filter ABI version " + std::to_string(e->abi_version) +
                   ", petrel has version " + std::to_string(PETREL_FILTER_ABI_VERSION)};
    if (e->size < kEntrySizeV1)
      return Error{path + ": struct petrel_filter is " + std::to_string(e->size) +
                   " bytes, ABI version 1 needs at least " + std::to_string(kEntrySizeV1)};
    if (!e->scan && !e->on_connect && !e->on_helo && !e->on_mail && !e->on_rcpt)
      return Error{path + ": plugin has neither scan nor any on_* callback"};
    lib->entry_ = e;
    return lib;
  }

  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;
  ~Library() {
    if (handle_) ::dlclose(handle_);
  }
  // Keeps the object mapped for the rest of the process (a worker never
  // unloads what the master loaded: the plugin may have exit handlers).
  void leak() { handle_ = nullptr; }
  const petrel_filter& entry() const { return *entry_; }

 private:
  explicit Library(void* handle) : handle_(handle) {}
  void* handle_;
  const petrel_filter* entry_ = nullptr;
};

// The C view of an Envelope; pointers into `env`, valid while it lives.
class CEnvelope {
 public:
  explicit CEnvelope(const Envelope& env) {
    for (const std::string& r : env.recipients) rcpts_.push_back(r.c_str());
    c_.size = sizeof c_;
    c_.queue_id = env.queue_id.c_str();
    c_.client_address = env.client_ip.c_str();
    c_.client_port = env.client_port;
    c_.helo = env.helo.c_str();
    c_.auth_user = env.auth_user.c_str();
    c_.tls = env.tls ? 1 : 0;
    c_.tls_version = env.tls_version.c_str();
    c_.tls_cipher = env.tls_cipher.c_str();
    c_.hostname = env.hostname.c_str();
    c_.sender = env.sender.c_str();
    c_.recipients = rcpts_.empty() ? nullptr : rcpts_.data();
    c_.recipient_count = rcpts_.size();
  }
  const petrel_filter_envelope* get() const { return &c_; }

 private:
  std::vector<const char*> rcpts_;
  petrel_filter_envelope c_{};
};

// What a plugin put into its petrel_filter_result.
struct Collected {
  std::string reply;
  std::string detail;
  std::vector<std::string> deletes;
  std::vector<HeaderOp> adds;
  bool bad = false;  // a callback got invalid arguments
};

Collected* collected(petrel_filter_result* r) {
  return r && r->host ? static_cast<Collected*>(r->host) : nullptr;
}

extern "C" {

// Nothing may unwind through the plugin's C frames: every failure becomes
// PETREL_FILTER_ERROR.
static int host_set_reply(petrel_filter_result* r, const char* text) {
  Collected* c = collected(r);
  if (!c || !text) return PETREL_FILTER_ERROR;
  try {
    c->reply = text;
    return PETREL_FILTER_OK;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

static int host_set_detail(petrel_filter_result* r, const char* text) {
  Collected* c = collected(r);
  if (!c || !text) return PETREL_FILTER_ERROR;
  try {
    c->detail = text;
    return PETREL_FILTER_OK;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

static int host_add_header(petrel_filter_result* r, const char* name, const char* value) {
  Collected* c = collected(r);
  if (!c || !name || !value) return PETREL_FILTER_ERROR;
  try {
    if (!valid_header_name(name) || !valid_header_value(value)) {
      c->bad = true;
      return PETREL_FILTER_ERROR;
    }
    HeaderOp op;
    op.kind = HeaderOp::Kind::Add;
    op.name = name;
    op.value = value;
    c->adds.push_back(std::move(op));
    return PETREL_FILTER_OK;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

static int host_delete_header(petrel_filter_result* r, const char* name) {
  Collected* c = collected(r);
  if (!c || !name) return PETREL_FILTER_ERROR;
  try {
    if (!valid_header_name(name)) {
      c->bad = true;
      return PETREL_FILTER_ERROR;
    }
    c->deletes.emplace_back(name);
    return PETREL_FILTER_OK;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

}  // extern "C"

petrel_filter_result make_result(Collected* c) {
  petrel_filter_result r{};
  r.size = sizeof r;
  r.action = PETREL_FILTER_CONTINUE;
  r.host = c;
  r.set_reply = host_set_reply;
  r.add_header = host_add_header;
  r.delete_header = host_delete_header;
  r.set_detail = host_set_detail;
  return r;
}

// Bounds one callback: past the filter's timeout SIGALRM (default action)
// ends the worker, as a crash would. The previous alarm and disposition come
// back afterwards.
class Watchdog {
 public:
  explicit Watchdog(config::Seconds seconds) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGALRM, &dfl, &old_action_);
    old_alarm_ = ::alarm(static_cast<unsigned>(seconds > 0 ? seconds : 1));
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    ::alarm(0);
    ::sigaction(SIGALRM, &old_action_, nullptr);
    if (old_alarm_) ::alarm(old_alarm_);
  }

 private:
  struct sigaction old_action_ {};
  unsigned old_alarm_ = 0;
};

// Counts the fields named `name` (case-insensitively).
int count_fields(std::string_view message, std::string_view name) {
  int n = 0;
  for (const HeaderField& f : header_fields(message)) {
    if (f.name.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < name.size() && same; ++i)
      same = std::tolower(static_cast<unsigned char>(f.name[i])) ==
             std::tolower(static_cast<unsigned char>(name[i]));
    n += same;
  }
  return n;
}

class PluginFilter : public Filter {
 public:
  PluginFilter(config::Filter settings, std::unique_ptr<Library> lib, void* state)
      : s_(std::move(settings)), lib_(std::move(lib)), state_(state) {}
  ~PluginFilter() override {
    // Only the master (after fini) unloads; see Library::leak.
    if (!finished_ && lib_) lib_->leak();
  }

  const std::string& name() const override { return s_.name; }

  void worker_init() override {
    if (worker_started_ || finished_) return;
    worker_started_ = true;
    const auto& e = lib_->entry();
    if (!e.worker_init) return;
    Watchdog w(timeout());
    worker_ok_ = e.worker_init(state_) == PETREL_FILTER_OK;
  }

  void close() override {
    if (!worker_started_ || worker_exited_ || finished_) return;
    worker_exited_ = true;
    const auto& e = lib_->entry();
    if (!e.worker_exit) return;
    Watchdog w(timeout());
    e.worker_exit(state_);
  }

  void fini() override {
    if (finished_) return;
    finished_ = true;
    if (lib_->entry().fini) lib_->entry().fini(state_);
    state_ = nullptr;
  }

  Verdict scan(const Envelope& env, std::string_view message) override {
    const auto& e = lib_->entry();
    if (!e.scan) return {};
    if (Verdict v; !ready(&v)) return v;
    CEnvelope cenv(env);
    Collected c;
    petrel_filter_result r = make_result(&c);
    int rc;
    {
      Watchdog w(timeout());
      rc = e.scan(state_, cenv.get(), message.data(), message.size(), &r);
    }
    if (rc != PETREL_FILTER_OK) return fail("scan failed" + detail_of(c));
    if (c.bad) return fail("invalid header from the plugin" + detail_of(c));
    Verdict v;
    switch (r.action) {
      case PETREL_FILTER_CONTINUE:
        v.action = Action::Continue;
        break;
      case PETREL_FILTER_ACCEPT:
        v.action = Action::Accept;
        break;
      case PETREL_FILTER_REJECT:
        v.action = Action::Reject;
        break;
      case PETREL_FILTER_TEMPFAIL:
        v.action = Action::Tempfail;
        break;
      case PETREL_FILTER_DISCARD:
        v.action = Action::Discard;
        break;
      default:
        return fail("unknown action " + std::to_string(r.action));
    }
    v.reply = std::move(c.reply);
    v.detail = std::move(c.detail);
    if (v.action == Action::Continue || v.action == Action::Accept) {
      // Deleting from the last occurrence keeps the indexes valid.
      for (const std::string& name : c.deletes) {
        for (int i = count_fields(message, name); i >= 1; --i) {
          HeaderOp op;
          op.kind = HeaderOp::Kind::Change;
          op.name = name;
          op.index = i;
          v.headers.push_back(std::move(op));
        }
      }
      for (HeaderOp& op : c.adds) v.headers.push_back(std::move(op));
    }
    return v;
  }

  std::optional<StageReply> on_connect(const Envelope& env) override {
    return stage(lib_->entry().on_connect, env);
  }
  std::optional<StageReply> on_helo(const Envelope& env) override {
    return stage(lib_->entry().on_helo, env);
  }
  std::optional<StageReply> on_mail(const Envelope& env) override {
    return stage(lib_->entry().on_mail, env);
  }
  std::optional<StageReply> on_rcpt(const Envelope& env, std::string_view rcpt) override {
    const auto hook = lib_->entry().on_rcpt;
    if (!hook) return std::nullopt;
    const std::string r(rcpt);
    return stage_call([&](const petrel_filter_envelope* ce,
                          petrel_filter_result* res) { return hook(state_, ce, r.c_str(), res); },
                      env);
  }

 private:
  using StageFn = int (*)(void*, const petrel_filter_envelope*, petrel_filter_result*);

  config::Seconds timeout() const { return s_.timeout ? *s_.timeout : kDefaultTimeout; }
  Verdict fail(const std::string& why) const { return error_verdict(s_.on_error, why); }

  static std::string detail_of(const Collected& c) {
    return c.detail.empty() ? std::string() : ": " + c.detail;
  }

  // False (and *v set to the on_error verdict) when the plugin cannot be
  // called: finalised, or its worker_init failed.
  bool ready(Verdict* v) {
    if (finished_) {
      *v = fail("plugin already finalised");
      return false;
    }
    worker_init();
    if (!worker_ok_) {
      *v = fail("worker_init failed");
      return false;
    }
    return true;
  }

  std::optional<StageReply> stage(StageFn hook, const Envelope& env) {
    if (!hook) return std::nullopt;
    return stage_call([&](const petrel_filter_envelope* ce,
                          petrel_filter_result* res) { return hook(state_, ce, res); },
                      env);
  }

  template <typename Call>
  std::optional<StageReply> stage_call(const Call& call, const Envelope& env) {
    Verdict v;
    if (!ready(&v)) return from_error(v);
    CEnvelope cenv(env);
    Collected c;
    petrel_filter_result r = make_result(&c);
    int rc;
    {
      Watchdog w(timeout());
      rc = call(cenv.get(), &r);
    }
    if (rc != PETREL_FILTER_OK) return from_error(fail("stage callback failed" + detail_of(c)));
    switch (r.action) {
      case PETREL_FILTER_CONTINUE:
        return std::nullopt;
      case PETREL_FILTER_ACCEPT:
        return StageReply{Action::Accept, {}};
      case PETREL_FILTER_REJECT:
        return StageReply{Action::Reject, std::move(c.reply)};
      case PETREL_FILTER_TEMPFAIL:
        return StageReply{Action::Tempfail, std::move(c.reply)};
      default:
        return from_error(fail("invalid action " + std::to_string(r.action) + " at a stage"));
    }
  }

  static std::optional<StageReply> from_error(const Verdict& v) {
    if (v.action == Action::Continue) return std::nullopt;
    return StageReply{v.action, {}};
  }

  config::Filter s_;
  std::unique_ptr<Library> lib_;
  void* state_;
  bool worker_started_ = false;
  bool worker_ok_ = true;
  bool worker_exited_ = false;
  bool finished_ = false;
};

}  // namespace

Status check_plugin(const std::string& path) {
  auto lib = Library::open(path);
  if (!lib) return Error{lib.error()};
  return {};
}

Result<std::unique_ptr<Filter>> make_plugin_filter(const config::Filter& settings,
                                                   const std::string& config_dir) {
  auto lib = Library::open(settings.plugin);
  if (!lib) return Error{lib.error()};
  const petrel_filter& e = (*lib)->entry();
  void* state = nullptr;
  if (e.init) {
    std::vector<petrel_filter_option> opts;
    for (const auto& [k, v] : settings.options) opts.push_back({k.c_str(), v.c_str()});
    char error[1024] = {};
    petrel_filter_config cfg{};
    cfg.size = sizeof cfg;
    cfg.name = settings.name.c_str();
    cfg.config_dir = config_dir.c_str();
    cfg.options = opts.empty() ? nullptr : opts.data();
    cfg.option_count = opts.size();
    cfg.error = error;
    cfg.error_size = sizeof error;
    if (e.init(&cfg, &state) != PETREL_FILTER_OK) {
      error[sizeof error - 1] = '\0';
      return Error{settings.plugin + ": init failed" + (error[0] ? ": " + std::string(error) : "")};
    }
  }
  std::unique_ptr<Filter> f = std::make_unique<PluginFilter>(settings, std::move(*lib), state);
  return f;
}

}  // namespace petrel::filter
