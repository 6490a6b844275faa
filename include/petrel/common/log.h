// One line per event, in the style admins grep for ("ID: from=<a@b>, size=..").
// Text to stderr by default; JSON or syslog when configured. Values built from
// client input must go through sanitize() before they are logged.
#pragma once

#include <string>
#include <string_view>

namespace petrel::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };
enum class Target { Stderr, Syslog };
enum class Format { Text, Json };

// Sets the process-wide sink. `program` names the process in each line
// ("petrel/master", "petrel/smtpd"...).
void configure(Target target, Format format, Level level);
void set_program(std::string_view program);

void write(Level level, std::string_view message);
inline void debug(std::string_view m) { write(Level::Debug, m); }
inline void info(std::string_view m) { write(Level::Info, m); }
inline void warn(std::string_view m) { write(Level::Warn, m); }
inline void error(std::string_view m) { write(Level::Error, m); }

// Replaces control characters and non-printable bytes with '?', caps the length.
// UTF-8 sequences are kept when valid.
std::string sanitize(std::string_view s, size_t max_len = 256);

}  // namespace petrel::log
