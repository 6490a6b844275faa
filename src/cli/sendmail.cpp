// `petrel sendmail` (also when invoked as `sendmail`): sendmail(1)-compatible
// submission from stdin through STATE_DIR/submit.sock, the master's always-open
// local socket, spoken to in SMTP. Flags apps and cron use: -t -i -oi -f -F,
// recipients as arguments, -bp (= queue list); other -o/-B/-v/-N options are
// accepted and ignored, as other MTAs' sendmail do.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include <pwd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "petrel/cli/commands.h"
#include "petrel/common/fd.h"
#include "petrel/common/strings.h"
#include "petrel/config/config.h"
#include "petrel/queue/dsn.h"

namespace petrel::cli {
namespace {

constexpr int kExitNoUser = 67;
constexpr int kExitUnavailable = 69;

struct Options {
  bool from_headers = false;  // -t
  bool ignore_dots = false;   // -i / -oi
  std::string sender;         // -f
  std::string full_name;      // -F
  bool list_queue = false;    // -bp
  std::vector<std::string> recipients;
};

int usage() {
  std::fputs("usage: petrel sendmail [-t] [-i] [-f ADDR] [-F NAME] [-c FILE] [RCPT...]\n", stderr);
  return kExitUsage;
}

bool parse_options(const std::vector<std::string>& args, Options* o) {
  bool only_rcpts = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_rcpts || a.empty() || a[0] != '-') {
      o->recipients.push_back(a);
      continue;
    }
    if (a == "--") {
      only_rcpts = true;
    } else if (a == "-t") {
      o->from_headers = true;
    } else if (a == "-i" || a == "-oi") {
      o->ignore_dots = true;
    } else if (a == "-bp") {
      o->list_queue = true;
    } else if (a == "-f" || a == "-r" || a == "-F") {
      if (i + 1 >= args.size()) return false;
      (a == "-F" ? o->full_name : o->sender) = args[++i];
    } else if (a.rfind("-f", 0) == 0 || a.rfind("-r", 0) == 0) {
      o->sender = a.substr(2);
    } else if (a.rfind("-F", 0) == 0) {
      o->full_name = a.substr(2);
    } else if (a == "-bm" || a.rfind("-o", 0) == 0 || a.rfind("-B", 0) == 0 || a == "-v" ||
               a.rfind("-N", 0) == 0 || a.rfind("-X", 0) == 0 || a.rfind("-R", 0) == 0 ||
               a.rfind("-V", 0) == 0 || a == "-em" || a == "-ep" || a == "-eq" || a == "-n") {
      // accepted and ignored
    } else {
      std::fprintf(stderr, "petrel sendmail: unsupported option %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

// Addresses from a header value: "A <a@x>, b@y, \"Q, R\" <c@z>".
std::vector<std::string> header_addresses(std::string_view v) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  int angle = 0, paren = 0;
  auto flush = [&]() {
    std::string s = cur;
    cur.clear();
    size_t lt = s.find('<'), gt = s.rfind('>');
    if (lt != std::string::npos && gt != std::string::npos && gt > lt) s = s.substr(lt + 1, gt - lt - 1);
    size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
    if (b == std::string::npos) return;
    s = s.substr(b, e - b + 1);
    if (!s.empty() && s.find(':') == std::string::npos) out.push_back(s);
  };
  for (char c : v) {
    if (c == '"' && paren == 0) quoted = !quoted;
    else if (!quoted && c == '(') ++paren;
    else if (!quoted && c == ')' && paren > 0) {
      --paren;
      continue;
    } else if (!quoted && c == '<') ++angle;
    else if (!quoted && c == '>' && angle > 0) --angle;
    if (paren > 0 && c != '(') continue;
    if (c == '(') continue;
    if (c == ',' && !quoted && angle == 0) {
      flush();
      continue;
    }
    cur += c;
  }
  flush();
  return out;
}

bool iequals_prefix(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  return true;
}

class SmtpClient {
 public:
  explicit SmtpClient(int fd) : fd_(fd) {}
  // Reads one (multi-line) reply; returns its code, 0 on a lost connection.
  int reply(std::string* text) {
    text->clear();
    for (;;) {
      size_t nl;
      while ((nl = buf_.find('\n')) == std::string::npos) {
        char tmp[4096];
        ssize_t n = ::read(fd_, tmp, sizeof tmp);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        buf_.append(tmp, static_cast<size_t>(n));
      }
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() < 3) return 0;
      *text += line + "\n";
      if (line.size() == 3 || line[3] == ' ') return std::atoi(line.substr(0, 3).c_str());
    }
  }
  bool send(std::string_view s) { return write_all(fd_, s).ok(); }
  int command(const std::string& cmd, std::string* text) {
    if (!send(cmd + "\r\n")) return 0;
    return reply(text);
  }

 private:
  int fd_;
  std::string buf_;
};

std::string default_sender(const config::Config& cfg) {
  struct passwd* pw = ::getpwuid(::getuid());
  std::string user = pw ? pw->pw_name : "nobody";
  return user + "@" + cfg.hostname;
}

}  // namespace

int cmd_sendmail(const Args& args) {
  Options o;
  if (!parse_options(args.rest, &o)) return usage();
  if (o.list_queue) {
    Args q = args;
    q.rest = {"list"};
    return cmd_queue(q);
  }
  auto loaded = config::load_file(args.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return kExitConfig;
  }
  const config::Config& cfg = loaded.config;
  std::string sender = o.sender.empty() ? default_sender(cfg) : o.sender;
  if (sender == "<>") sender.clear();

  // Read the message: LF or CRLF lines; "." alone ends it unless -i.
  std::vector<std::string> lines;
  {
    std::string data;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) data.append(buf, n);
    size_t pos = 0;
    while (pos < data.size()) {
      size_t nl = data.find('\n', pos);
      std::string line = data.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      pos = nl == std::string::npos ? data.size() : nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!o.ignore_dots && line == ".") break;
      // An mbox "From sender date" envelope line some programs put first is
      // not a header: drop it, as Postfix's sendmail does.
      if (lines.empty() && line.rfind("From ", 0) == 0) continue;
      lines.push_back(std::move(line));
    }
  }
  // Header section: up to the first empty line. Unfold for -t, drop Bcc.
  size_t body_start = 0;
  while (body_start < lines.size() && !lines[body_start].empty()) ++body_start;
  bool has_from = false, has_date = false, has_msgid = false;
  std::vector<std::string> out_lines;
  std::vector<std::string> rcpts = o.recipients;
  for (size_t i = 0; i < body_start;) {
    std::string field = lines[i];
    size_t j = i + 1;
    while (j < body_start && !lines[j].empty() && (lines[j][0] == ' ' || lines[j][0] == '\t'))
      field += "\n" + lines[j++];
    bool bcc = iequals_prefix(field, "bcc:");
    if (iequals_prefix(field, "from:")) has_from = true;
    if (iequals_prefix(field, "date:")) has_date = true;
    if (iequals_prefix(field, "message-id:")) has_msgid = true;
    if (o.from_headers && (iequals_prefix(field, "to:") || iequals_prefix(field, "cc:") || bcc)) {
      size_t colon = field.find(':');
      for (auto& a : header_addresses(field.substr(colon + 1))) rcpts.push_back(a);
    }
    if (!bcc)
      for (size_t k = i; k < j; ++k) out_lines.push_back(lines[k]);
    i = j;
  }
  if (rcpts.empty()) {
    std::fputs("petrel sendmail: no recipients\n", stderr);
    return kExitUsage;
  }
  std::vector<std::string> added;
  if (!has_from)
    added.push_back("From: " + (o.full_name.empty() ? sender : o.full_name + " <" + sender + ">"));
  if (!has_date) added.push_back("Date: " + queue::rfc5322_date(std::time(nullptr)));
  if (!has_msgid) {
    struct timeval tv {};
    ::gettimeofday(&tv, nullptr);
    added.push_back("Message-ID: <" + std::to_string(tv.tv_sec) + "." + std::to_string(tv.tv_usec) +
                    "." + std::to_string(::getpid()) + "@" + cfg.hostname + ">");
  }
  std::string message;
  for (const auto& h : added) message += h + "\r\n";
  for (const auto& l : out_lines) {
    // unfolded lines kept their "\n": restore CRLF
    std::string s = l;
    message += s + "\r\n";
  }
  for (size_t i = body_start; i < lines.size(); ++i) {
    if (!lines[i].empty() && lines[i][0] == '.') message += ".";
    message += lines[i] + "\r\n";
  }

  std::string path = cfg.state_dir + "/submit.sock";
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_un sun {};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    std::fprintf(stderr,
                 "petrel sendmail: cannot connect to %s: %s; is petrel running? "
                 "The message was not sent.\n",
                 path.c_str(), std::strerror(errno));
    return kExitTempFail;
  }
  SmtpClient c(fd.get());
  std::string text;
  auto fail = [&](int code, const std::string& what) {
    std::fprintf(stderr, "petrel sendmail: %s: %s", what.c_str(),
                 text.empty() ? "connection lost\n" : text.c_str());
    return code >= 500 ? kExitUnavailable : kExitTempFail;
  };
  int code = c.reply(&text);
  if (code != 220) return fail(code, "server refused the connection");
  if ((code = c.command("EHLO localhost", &text)) != 250) return fail(code, "EHLO");
  bool utf8 = false;
  for (unsigned char ch : sender) utf8 |= ch >= 0x80;
  for (const auto& r : rcpts)
    for (unsigned char ch : r) utf8 |= ch >= 0x80;
  // Declare 8-bit content, so a later relay knows it needs 8BITMIME.
  bool eight_bit = std::any_of(message.begin(), message.end(),
                               [](char ch) { return static_cast<unsigned char>(ch) >= 0x80; });
  std::string params = std::string(eight_bit ? " BODY=8BITMIME" : "") + (utf8 ? " SMTPUTF8" : "");
  if ((code = c.command("MAIL FROM:<" + sender + ">" + params, &text)) != 250)
    return fail(code, "sender <" + sender + "> refused");
  int accepted = 0;
  for (const auto& r : rcpts) {
    code = c.command("RCPT TO:<" + r + ">", &text);
    if (code / 100 == 2) ++accepted;
    else std::fprintf(stderr, "petrel sendmail: recipient <%s> refused: %s", r.c_str(), text.c_str());
  }
  if (accepted == 0) {
    c.command("QUIT", &text);
    return kExitNoUser;
  }
  if ((code = c.command("DATA", &text)) != 354) return fail(code, "DATA");
  if (!c.send(message + ".\r\n")) return fail(0, "sending the message");
  code = c.reply(&text);
  if (code / 100 != 2) return fail(code, "message refused");
  c.command("QUIT", &text);
  return accepted == static_cast<int>(rcpts.size()) ? 0 : kExitNoUser;
}

}  // namespace petrel::cli
