// exec filters (SPEC §8): a program run per message, no shell, in its own
// process group with only fds 0-2 open. stdin is a file holding the message,
// the envelope is in the environment (PETREL_* and chasquid's hook names), the
// exit status is the verdict:
//   0 continue (mode headers: stdout = header lines to add; mode rewrite:
//     stdout = the whole new message, empty = error), 1 or 20 reject,
//   75 tempfail, 99 discard; any other status, a signal, the timeout or
//   unusable output = error, which applies on_error.
// Reply text: the first stderr line, else (mode headers) the last stdout line.
// At the timeout the group gets SIGTERM, then SIGKILL 2 s later; the group is
// always killed once the filter has exited, so nothing it forked outlives it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "petrel/config/config.h"
#include "petrel/filter/filter.h"

namespace petrel::filter {

// `max_message_size` bounds what mode rewrite may produce.
std::unique_ptr<Filter> make_exec_filter(const config::Filter& settings,
                                         std::uint64_t max_message_size);

// The environment an exec filter gets for `env` ("NAME=value" strings).
std::vector<std::string> exec_environment(const Envelope& env);

// argv[0] as execve will run it: a name without '/' is looked up in
// /usr/local/bin, /usr/bin and /bin; returned as is when not found.
std::string find_program(const std::string& name);

}  // namespace petrel::filter
