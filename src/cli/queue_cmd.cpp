#include <cstdio>
#include <ctime>
#include <string>

#include <sys/stat.h>

#include "petrel/cli/commands.h"
#include "petrel/common/strings.h"
#include "petrel/config/config.h"
#include "petrel/queue/spool.h"

namespace petrel::cli {
namespace {

int queue_list(const config::Config& cfg, bool json) {
  struct stat st {};
  std::string qdir = cfg.state_dir + "/queue";
  std::vector<queue::Envelope> envs;
  if (::stat(qdir.c_str(), &st) == 0) {
    auto spool = queue::Spool::open(cfg.state_dir);
    if (!spool) {
      std::fprintf(stderr, "petrel: %s\n", spool.error().c_str());
      return kExitTempFail;
    }
    auto ids = spool->list();
    if (!ids) {
      std::fprintf(stderr, "petrel: %s\n", ids.error().c_str());
      return kExitTempFail;
    }
    for (const auto& id : *ids) {
      auto pm = spool->read_envelope(id);
      if (!pm) continue;  // removed meanwhile, or being written
      envs.push_back(std::move(pm->envelope));
    }
  }
  if (json) {
    std::string out = "[";
    for (size_t i = 0; i < envs.size(); ++i) {
      const auto& e = envs[i];
      out += i ? ",\n " : "\n ";
      out += "{\"id\": " + json_quote(e.id) + ", \"size\": " + std::to_string(e.size) +
             ", \"arrival\": " + json_quote(rfc3339(e.arrival_sec)) +
             ", \"sender\": " + json_quote(e.sender) + ", \"held\": false, \"recipients\": [";
      for (size_t k = 0; k < e.recipients.size(); ++k) {
        out += k ? ", " : "";
        out += "{\"address\": " + json_quote(e.recipients[k]) +
               ", \"status\": \"pending\", \"next_attempt\": null, \"last_error\": null}";
      }
      out += "]}";
    }
    out += envs.empty() ? "]\n" : "\n]\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  if (envs.empty()) {
    std::puts("Mail queue is empty");
    return 0;
  }
  std::printf("%-18s %8s %-20s %s\n", "-Queue ID-", "--Size--", "----Arrival Time----",
              "-Sender/Recipient-------");
  std::uint64_t total = 0;
  for (const auto& e : envs) {
    char when[32];
    std::time_t t = static_cast<std::time_t>(e.arrival_sec);
    struct tm tm {};
    ::localtime_r(&t, &tm);
    std::strftime(when, sizeof when, "%a %b %d %H:%M:%S", &tm);
    std::printf("%-18s %8llu %-20s %s\n", e.id.c_str(), static_cast<unsigned long long>(e.size),
                when, e.sender.empty() ? "MAILER-DAEMON" : e.sender.c_str());
    for (const auto& r : e.recipients) std::printf("%49s%s (pending)\n", "", r.c_str());
    std::puts("");
    total += e.size;
  }
  std::printf("-- %llu Kbytes in %zu Request%s.\n",
              static_cast<unsigned long long>((total + 1023) / 1024), envs.size(),
              envs.size() == 1 ? "" : "s");
  return 0;
}

}  // namespace

int cmd_queue(const Args& args) {
  if (args.rest.empty()) {
    std::fputs("usage: petrel queue list [--json] [-c FILE]\n", stderr);
    return kExitUsage;
  }
  auto loaded = config::load_file(args.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return kExitConfig;
  }
  const std::string& sub = args.rest[0];
  if (sub == "list") {
    bool json = args.rest.size() > 1 && args.rest[1] == "--json";
    if (args.rest.size() > (json ? 2u : 1u)) {
      std::fputs("usage: petrel queue list [--json]\n", stderr);
      return kExitUsage;
    }
    return queue_list(loaded.config, json);
  }
  std::fprintf(stderr, "petrel queue: unknown subcommand %s\n", sub.c_str());
  return kExitUsage;
}

}  // namespace petrel::cli
