// `petrel queue ...` (SPEC §2): reads and steers the spool directly, with or
// without a running server. Commands that need the runner to act (flush,
// release) tell it through its control socket when it runs; without one the
// state files are changed directly and the next start acts on them.
#include <algorithm>
#include <array>
#include <optional>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>

#include <sys/stat.h>

#include "petrel/cli/commands.h"
#include "petrel/common/fd.h"
#include "petrel/common/strings.h"
#include "petrel/config/config.h"
#include "petrel/queue/runner.h"
#include "petrel/queue/spool.h"
#include "petrel/queue/state.h"

namespace petrel::cli {
namespace {

struct Item {
  queue::Envelope env;
  std::optional<queue::MessageState> st;
  bool held = false;
};

// One row per envelope recipient: status folded over its targets.
struct RcptView {
  std::string address;
  std::string status = "pending";
  std::int64_t next_attempt = 0;
  std::string last_error;
};

std::vector<RcptView> recipient_views(const Item& it) {
  std::vector<RcptView> out;
  for (const auto& r : it.env.recipients) {
    RcptView v;
    v.address = r;
    out.push_back(std::move(v));
  }
  if (!it.st) return out;
  // Precedence: deferred (still work to do) > pending > bounced > delivered.
  auto rank = [](queue::TargetStatus s) {
    switch (s) {
      case queue::TargetStatus::Deferred: return 3;
      case queue::TargetStatus::Pending: return 2;
      case queue::TargetStatus::Bounced: return 1;
      case queue::TargetStatus::Delivered: return 0;
    }
    return 0;
  };
  std::vector<int> best(out.size(), -1);
  for (const auto& t : it.st->targets) {
    if (t.rcpt < 0 || static_cast<size_t>(t.rcpt) >= out.size()) continue;
    size_t i = static_cast<size_t>(t.rcpt);
    int r = rank(t.status);
    if (r > best[i]) {
      best[i] = r;
      out[i].status = queue::status_name(t.status);
      out[i].next_attempt = t.status == queue::TargetStatus::Deferred ? t.next_attempt : 0;
      out[i].last_error = t.error.empty() ? "" : (t.code.empty() ? "" : t.code + " ") + t.error;
    }
  }
  return out;
}

Result<queue::Spool> open_spool(const config::Config& cfg) {
  struct stat st {};
  std::string qdir = cfg.state_dir + "/queue";
  if (::stat(qdir.c_str(), &st) != 0) return Error{qdir + ": no spool here (has petrel run with this config?)"};
  return queue::Spool::open(cfg.state_dir);
}

std::vector<Item> load_items(const queue::Spool& spool) {
  std::vector<Item> items;
  auto ids = spool.list();
  if (!ids) return items;
  for (const auto& id : *ids) {
    auto pm = spool.read_envelope(id);
    if (!pm) continue;  // removed meanwhile
    Item it;
    it.env = std::move(pm->envelope);
    auto st = queue::read_state(spool, id);
    if (st && st->has_value()) it.st = std::move(**st);
    it.held = queue::is_held(spool, id);
    items.push_back(std::move(it));
  }
  return items;
}

int queue_list(const config::Config& cfg, bool json) {
  std::vector<Item> items;
  struct stat sb {};
  if (::stat((cfg.state_dir + "/queue").c_str(), &sb) == 0) {
    auto spool = queue::Spool::open(cfg.state_dir);
    if (!spool) {
      std::fprintf(stderr, "petrel: %s\n", spool.error().c_str());
      return kExitTempFail;
    }
    items = load_items(*spool);
  }
  if (json) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& e = items[i].env;
      out += i ? ",\n " : "\n ";
      out += "{\"id\": " + json_quote(e.id) + ", \"size\": " + std::to_string(e.size) +
             ", \"arrival\": " + json_quote(rfc3339(e.arrival_sec)) +
             ", \"sender\": " + json_quote(e.sender) +
             ", \"held\": " + (items[i].held ? "true" : "false") + ", \"recipients\": [";
      auto views = recipient_views(items[i]);
      for (size_t k = 0; k < views.size(); ++k) {
        const auto& v = views[k];
        out += k ? ", " : "";
        out += "{\"address\": " + json_quote(v.address) + ", \"status\": " + json_quote(v.status) +
               ", \"next_attempt\": " +
               (v.next_attempt > 0 ? json_quote(rfc3339(v.next_attempt)) : std::string("null")) +
               ", \"last_error\": " +
               (v.last_error.empty() ? std::string("null") : json_quote(v.last_error)) + "}";
      }
      out += "]}";
    }
    out += items.empty() ? "]\n" : "\n]\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  if (items.empty()) {
    std::puts("Mail queue is empty");
    return 0;
  }
  std::printf("%-19s %8s %-20s %s\n", "-Queue ID-", "--Size--", "----Arrival Time----",
              "-Sender/Recipient-------");
  std::uint64_t total = 0;
  for (const auto& it : items) {
    const auto& e = it.env;
    char when[32];
    std::time_t t = static_cast<std::time_t>(e.arrival_sec);
    struct tm tm {};
    ::localtime_r(&t, &tm);
    std::strftime(when, sizeof when, "%a %b %d %H:%M:%S", &tm);
    // Postfix's mailq marks a held message with '!' after its id.
    std::printf("%-19s %8llu %-20s %s\n", (e.id + (it.held ? "!" : "")).c_str(),
                static_cast<unsigned long long>(e.size), when,
                e.sender.empty() ? "MAILER-DAEMON" : e.sender.c_str());
    for (const auto& v : recipient_views(it)) {
      if (!v.last_error.empty()) std::printf("%50s(%s)\n", "", v.last_error.c_str());
      std::printf("%50s%s (%s", "", v.address.c_str(), v.status.c_str());
      if (v.next_attempt > 0) std::printf(", next attempt %s", rfc3339(v.next_attempt).c_str());
      std::puts(")");
    }
    std::puts("");
    total += e.size;
  }
  std::printf("-- %llu Kbytes in %zu Request%s.\n",
              static_cast<unsigned long long>((total + 1023) / 1024), items.size(),
              items.size() == 1 ? "" : "s");
  return 0;
}

int queue_show(const config::Config& cfg, const std::vector<std::string>& ids) {
  auto spool = open_spool(cfg);
  if (!spool) {
    std::fprintf(stderr, "petrel: %s\n", spool.error().c_str());
    return kExitTempFail;
  }
  int rc = 0;
  for (const auto& id : ids) {
    auto data = queue::is_queue_id(id) ? read_file(spool->message_path(id))
                                        : Result<std::string>(Error{"not a queue id"});
    if (!data) {
      std::fprintf(stderr, "petrel: %s: no such message\n", id.c_str());
      rc = kExitUsage;
      continue;
    }
    auto pm = queue::parse_envelope(*data);
    if (!pm) {
      std::fprintf(stderr, "petrel: %s: %s\n", id.c_str(), pm.error().c_str());
      rc = kExitTempFail;
      continue;
    }
    const auto& e = pm->envelope;
    std::printf("id: %s\narrival: %s\nsender: <%s>\nsize: %llu\nclient: %s\nhelo: %s\n",
                e.id.c_str(), rfc3339(e.arrival_sec).c_str(), e.sender.c_str(),
                static_cast<unsigned long long>(e.size), e.client.c_str(), e.helo.c_str());
    if (!e.auth_user.empty()) std::printf("auth: %s\n", e.auth_user.c_str());
    std::printf("held: %s\n", queue::is_held(*spool, id) ? "yes" : "no");
    std::printf("recipients:\n");
    for (const auto& r : e.recipients) std::printf("  <%s>\n", r.c_str());
    auto st = queue::read_state(*spool, id);
    if (st && st->has_value()) {
      std::printf("delivery:\n");
      for (const auto& t : (*st)->targets) {
        std::printf("  %s%s <- <%s>: %s, %d attempt%s", t.unresolved() ? "(unresolved) " : "",
                    std::string(t.shown()).c_str(),
                    e.recipients[static_cast<size_t>(t.rcpt)].c_str(), queue::status_name(t.status),
                    t.attempts, t.attempts == 1 ? "" : "s");
        if (t.status == queue::TargetStatus::Deferred && t.next_attempt > 0)
          std::printf(", next %s", rfc3339(t.next_attempt).c_str());
        if (!t.error.empty()) std::printf(", last: %s %s", t.code.c_str(), t.error.c_str());
        std::puts("");
      }
    } else {
      std::printf("delivery: not attempted yet\n");
    }
    std::printf("headers:\n");
    std::string_view body = std::string_view(*data).substr(pm->body_offset);
    size_t end = body.find("\n\n");
    std::string_view head = body.substr(0, end == std::string_view::npos ? body.size() : end + 1);
    std::fwrite(head.data(), 1, head.size(), stdout);
    std::puts("");
  }
  return rc;
}

// Makes deferred targets due now in the state files (no runner running).
void flush_offline(const queue::Spool& spool, const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    auto st = queue::read_state(spool, id);
    if (!st || !st->has_value()) continue;
    queue::MessageState s = std::move(**st);
    for (auto& t : s.targets)
      if (t.status == queue::TargetStatus::Deferred) t.next_attempt = 0;
    (void)queue::write_state(spool, id, s);
  }
}

std::vector<std::string> all_ids(const queue::Spool& spool) {
  auto ids = spool.list();
  return ids ? *ids : std::vector<std::string>{};
}

int queue_modify(const config::Config& cfg, const std::string& sub, std::vector<std::string> ids) {
  auto spool = open_spool(cfg);
  if (!spool) {
    std::fprintf(stderr, "petrel: %s\n", spool.error().c_str());
    return kExitTempFail;
  }
  bool all = std::find(ids.begin(), ids.end(), "--all") != ids.end();
  if (all) ids = all_ids(*spool);
  for (const auto& id : ids) {
    if (!queue::is_queue_id(id)) {
      std::fprintf(stderr, "petrel: %s: not a queue id\n", id.c_str());
      return kExitUsage;
    }
  }
  if (sub == "flush") {
    std::string msg = "flush";
    for (const auto& id : ids) msg += " " + id;
    if (all || ids.empty()) msg = "flush";
    std::vector<std::string> targets = ids.empty() ? all_ids(*spool) : ids;
    if (queue::send_control(cfg, msg)) {
      std::printf("flush requested for %s\n", ids.empty() ? "all messages" : msg.c_str() + 6);
    } else {
      flush_offline(*spool, targets);
      std::printf("petrel is not running: %zu message(s) marked due for its next start\n",
                  targets.size());
    }
    return 0;
  }
  if (ids.empty() && !all) {
    std::fprintf(stderr, "usage: petrel queue %s ID... | --all\n", sub.c_str());
    return kExitUsage;
  }
  int rc = 0;
  std::vector<std::string> done;
  for (const auto& id : ids) {
    if (!queue::message_exists(*spool, id)) {
      std::fprintf(stderr, "petrel: %s: no such message\n", id.c_str());
      rc = kExitUsage;
      continue;
    }
    Status s;
    if (sub == "delete") s = queue::remove_message(*spool, id);
    else if (sub == "hold") s = queue::set_held(*spool, id, true);
    else s = queue::set_held(*spool, id, false);
    if (!s) {
      std::fprintf(stderr, "petrel: %s: %s\n", id.c_str(), s.error().c_str());
      rc = kExitTempFail;
      continue;
    }
    done.push_back(id);
    std::printf("%s: %s\n", id.c_str(),
                sub == "delete" ? "deleted" : sub == "hold" ? "held" : "released");
  }
  if (!done.empty()) {
    std::string verb = sub == "delete" ? "forget" : "flush";
    if (sub == "release") {
      std::string msg = "flush";
      for (const auto& id : done) msg += " " + id;
      if (!queue::send_control(cfg, msg)) flush_offline(*spool, done);
    } else if (sub == "delete") {
      std::string msg = "forget";
      for (const auto& id : done) msg += " " + id;
      (void)queue::send_control(cfg, msg);
    }
  }
  return rc;
}

// qshape-style table: destination domains x age of the message.
int queue_summary(const config::Config& cfg) {
  std::vector<Item> items;
  struct stat sb {};
  if (::stat((cfg.state_dir + "/queue").c_str(), &sb) == 0) {
    auto spool = queue::Spool::open(cfg.state_dir);
    if (spool) items = load_items(*spool);
  }
  static const int kBuckets[] = {5, 10, 20, 40, 80, 160, 320, 640, 1280};  // minutes
  constexpr int kCols = 10;  // 9 bounded buckets + older
  std::map<std::string, std::array<int, kCols>> rows;
  std::array<int, kCols> total{};
  std::time_t now = std::time(nullptr);
  for (const auto& it : items) {
    int age_min = static_cast<int>((now - it.env.arrival_sec) / 60);
    int col = kCols - 1;
    for (int i = 0; i < kCols - 1; ++i)
      if (age_min < kBuckets[i]) {
        col = i;
        break;
      }
    for (const auto& v : recipient_views(it)) {
      if (v.status == "delivered" || v.status == "bounced") continue;
      size_t at = v.address.rfind('@');
      std::string dom = at == std::string::npos ? "(local)" : to_lower(v.address.substr(at + 1));
      auto& row = rows.try_emplace(dom, std::array<int, kCols>{}).first->second;
      row[static_cast<size_t>(col)]++;
      total[static_cast<size_t>(col)]++;
    }
  }
  auto print_row = [](const std::string& name, const std::array<int, kCols>& r) {
    int sum = 0;
    for (int v : r) sum += v;
    std::printf("%28s %6d", name.c_str(), sum);
    for (int v : r) std::printf(" %5d", v);
    std::puts("");
  };
  std::printf("%28s %6s", "", "T");
  for (int b : kBuckets) std::printf(" %5d", b);
  std::printf(" %5s\n", "1280+");
  print_row("TOTAL", total);
  std::vector<std::pair<int, std::string>> order;
  for (const auto& [dom, r] : rows) {
    int sum = 0;
    for (int v : r) sum += v;
    order.push_back({-sum, dom});
  }
  std::sort(order.begin(), order.end());
  for (const auto& [neg, dom] : order) print_row(dom, rows[dom]);
  return 0;
}

}  // namespace

int cmd_queue(const Args& args) {
  if (args.rest.empty()) {
    std::fputs("usage: petrel queue list|show|flush|delete|hold|release|summary [-c FILE]\n", stderr);
    return kExitUsage;
  }
  auto loaded = config::load_file(args.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return kExitConfig;
  }
  const config::Config& cfg = loaded.config;
  const std::string& sub = args.rest[0];
  std::vector<std::string> rest(args.rest.begin() + 1, args.rest.end());
  if (sub == "list") {
    bool json = !rest.empty() && rest[0] == "--json";
    if (rest.size() > (json ? 1u : 0u)) {
      std::fputs("usage: petrel queue list [--json]\n", stderr);
      return kExitUsage;
    }
    return queue_list(cfg, json);
  }
  if (sub == "show") {
    if (rest.empty()) {
      std::fputs("usage: petrel queue show ID...\n", stderr);
      return kExitUsage;
    }
    return queue_show(cfg, rest);
  }
  if (sub == "flush" || sub == "delete" || sub == "hold" || sub == "release")
    return queue_modify(cfg, sub, rest);
  if (sub == "summary") return queue_summary(cfg);
  std::fprintf(stderr, "petrel queue: unknown subcommand %s\n", sub.c_str());
  return kExitUsage;
}

}  // namespace petrel::cli
