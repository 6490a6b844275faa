// The spool: petrel's one on-disk format, documented here and nowhere else.
//
// Layout under state_dir:
//   queue/ID           one file per accepted message, written once by the
//                      worker that received it; never modified afterwards.
//                      Removed with its .state and .hold once every target
//                      is final, without a directory fsync: after a crash a
//                      finished message may reappear and go out again (at
//                      least once; never lost).
//   queue/.tmp-ID      a message being written; removed on failure, ignored by
//                      readers, and swept by the queue runner at start.
//   queue/ID.state     per-target delivery state, written by the queue runner
//                      (or `petrel queue` when no runner runs), replaced
//                      atomically on every change: .new-ID.state, fsync,
//                      rename, directory fsync. Absent until the first attempt.
//   queue/ID.hold      exists while the message is held (`petrel queue hold`).
//
// A state file (API in petrel/queue/state.h):
//
//   PETREL-STATE1
//   W <0 | 1>                     a delay warning was sent
//   D<TAB>status<TAB>attempts<TAB>next_attempt<TAB>rcpt<TAB>code<TAB>target<TAB>error
//
// one D line per final target, i.e. after alias expansion: status is pending,
// deferred, delivered, bounced, or bounced-notified (bounced, and the sender
// already has a DSN for it: a message whose other targets are still deferred
// reports each bounce once, when it happens); next_attempt unix seconds (0 = now); rcpt
// the index of the envelope recipient it came from; code the last enhanced
// status ("4.4.1"); target an address, "|command" or "/file"; error the last
// error text. Fields never contain tabs or newlines.
//
// A message file is a small text envelope, one field per line as
// "<letter> <value>", ending with a line holding a single ".", then the
// message itself with LF line ends (the SMTP CRLF is not stored; dot-stuffing
// is undone). Field values never contain CR or LF.
//
//   PETREL1                       format marker and version
//   I <queue id>
//   T <arrival, unix seconds>.<microseconds>
//   S <sender address>            empty for the null sender <>
//   Z <size on the wire, octets>
//   B <7BIT | 8BITMIME>           BODY= parameter
//   U <0 | 1>                     SMTPUTF8 requested
//   C <client address>            "[ip]:port", "unix:" or "local"
//   H <helo name>                 as given, sanitised
//   A <authenticated user>        absent when not authenticated
//   R <recipient address>         one line per recipient, in RCPT order
//   .
//   <message>
//
// Commit protocol (SPEC §6): the worker writes queue/.tmp-ID, fsync()s it,
// renames it to queue/ID and fsync()s the queue directory, and only then
// answers 250. A crash before the rename leaves only a .tmp- file, which is
// never read as a message; an I/O error unlinks it and answers 452 4.3.1.
//
// Queue ids are 18 characters from 0-9A-V ("base32hex"), fixed width, so
// they sort by arrival time: 7 characters of seconds, 4 of microseconds,
// 5 of the process id and 2 of a per-process counter. Ids are unique across
// processes on one machine.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/fd.h"
#include "petrel/common/result.h"

namespace petrel::queue {

struct Envelope {
  std::string id;
  std::int64_t arrival_sec = 0;
  std::int64_t arrival_usec = 0;
  std::string sender;  // "" = null sender
  std::uint64_t size = 0;
  bool body_8bit = false;
  bool smtputf8 = false;
  std::string client;
  std::string helo;
  std::string auth_user;
  std::vector<std::string> recipients;
};

// A new queue id (see above). Thread-unsafe; one counter per process.
std::string new_queue_id();

// Serialises the envelope block (up to and including the "." line).
std::string format_envelope(const Envelope& env);

struct ParsedMessage {
  Envelope envelope;
  std::uint64_t body_offset = 0;  // where the message starts in the file
};
// Parses the envelope block at the start of a spool file's contents.
Result<ParsedMessage> parse_envelope(std::string_view data);

class Spool {
 public:
  // `state_dir` must exist; queue/ is created when missing.
  static Result<Spool> open(const std::string& state_dir);

  const std::string& queue_dir() const { return queue_dir_; }
  int dir_fd() const { return dir_fd_.get(); }
  std::string message_path(std::string_view id) const;

  // Durably stores a message (see the commit protocol above): the message is
  // the concatenation of `parts` (LF line ends). On error nothing is left
  // behind.
  Status commit(const Envelope& env, std::initializer_list<std::string_view> parts);

  // Ids of committed messages, sorted (oldest first).
  Result<std::vector<std::string>> list() const;
  // Reads the envelope of a committed message.
  Result<ParsedMessage> read_envelope(std::string_view id) const;

 private:
  std::string queue_dir_;
  UniqueFd dir_fd_;  // the queue directory, kept open for fsync and *at() calls
};

}  // namespace petrel::queue
