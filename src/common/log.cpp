#include "petrel/common/log.h"

#include <cstdio>
#include <ctime>
#include <string>

#include <sys/time.h>
#include <syslog.h>
#include <unistd.h>

#include "petrel/common/fd.h"
#include "petrel/common/strings.h"

namespace petrel::log {
namespace {

struct Sink {
  Target target = Target::Stderr;
  Format format = Format::Text;
  Level level = Level::Info;
  std::string program = "petrel";
  bool syslog_open = false;
};

Sink& sink() {
  static Sink s;
  return s;
}

const char* level_name(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warning";
    case Level::Error: return "error";
  }
  return "info";
}

}  // namespace

void configure(Target target, Format format, Level level) {
  Sink& s = sink();
  s.target = target;
  s.format = format;
  s.level = level;
  if (target == Target::Syslog && !s.syslog_open) {
    ::openlog("petrel", LOG_PID | LOG_NDELAY, LOG_MAIL);
    s.syslog_open = true;
  }
}

void set_program(std::string_view program) { sink().program = std::string(program); }

void write(Level level, std::string_view message) {
  Sink& s = sink();
  if (level < s.level) return;
  if (s.target == Target::Syslog) {
    int prio = level == Level::Error ? LOG_ERR
               : level == Level::Warn ? LOG_WARNING
               : level == Level::Debug ? LOG_DEBUG
                                       : LOG_INFO;
    ::syslog(prio, "%s: %.*s", s.program.c_str(), static_cast<int>(message.size()),
             message.data());
    return;
  }
  struct timeval tv {};
  ::gettimeofday(&tv, nullptr);
  struct tm tm {};
  ::gmtime_r(&tv.tv_sec, &tm);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long>(tv.tv_usec));
  std::string line;
  line.reserve(message.size() + 80);
  if (s.format == Format::Json) {
    line += "{\"time\":\"";
    line += ts;
    line += "\",\"program\":" + json_quote(s.program);
    line += ",\"pid\":" + std::to_string(::getpid()) + ",\"level\":\"";
    line += level_name(level);
    line += "\",\"message\":" + json_quote(message) + "}\n";
  } else {
    line += ts;
    line += ' ';
    line += s.program;
    line += '[' + std::to_string(::getpid()) + "]: ";
    if (level == Level::Warn || level == Level::Error) {
      line += level_name(level);
      line += ": ";
    }
    line += message;
    line += '\n';
  }
  // One write() per line so lines from concurrent workers never interleave.
  (void)write_all(2, line);
}

std::string sanitize(std::string_view s, size_t max_len) {
  std::string out;
  out.reserve(std::min(s.size(), max_len));
  size_t i = 0;
  while (i < s.size() && out.size() < max_len) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    // Keep well-formed UTF-8 sequences (no overlongs, no surrogates checked
    // loosely: lead byte range plus continuation bytes).
    int len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    bool ok = len > 0 && i + static_cast<size_t>(len) <= s.size();
    for (int k = 1; ok && k < len; ++k)
      ok = (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0xc0) == 0x80;
    if (ok) {
      out.append(s.substr(i, static_cast<size_t>(len)));
      i += static_cast<size_t>(len);
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

}  // namespace petrel::log
