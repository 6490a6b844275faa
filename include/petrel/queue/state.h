// Per-target delivery state of a queued message (format in spool.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/queue/spool.h"

namespace petrel::queue {

enum class TargetStatus { Pending, Deferred, Delivered, Bounced };

const char* status_name(TargetStatus s);

// Marks the target of a recipient whose resolution failed temporarily (a
// 4.x.x resolver Error, e.g. a missing :include: file): "?address", deferred,
// resolved again when due and then replaced by what it resolves to.
constexpr char kUnresolved = '?';

struct TargetState {
  TargetStatus status = TargetStatus::Pending;
  int attempts = 0;
  std::int64_t next_attempt = 0;  // unix seconds; 0 = due now
  int rcpt = 0;                   // index into Envelope::recipients
  std::string code;               // last enhanced status code
  std::string target;             // address, "|command", "/file" or "?address"
  std::string error;              // last error text
  bool notified = false;          // Bounced, and the sender has had a DSN for it

  bool final() const { return status == TargetStatus::Delivered || status == TargetStatus::Bounced; }
  bool unresolved() const { return !target.empty() && target[0] == kUnresolved; }
  // What logs and DSNs name: the target, or the address of an unresolved one.
  std::string_view shown() const {
    return unresolved() ? std::string_view(target).substr(1) : std::string_view(target);
  }
};

struct MessageState {
  bool warned = false;
  std::vector<TargetState> targets;

  bool all_final() const;
};

std::string format_state(const MessageState& st);
Result<MessageState> parse_state(std::string_view text);

// Spool-side operations on the files next to a message. All are atomic
// (rename or unlink followed by a directory fsync).
Status write_state(const Spool& spool, std::string_view id, const MessageState& st);
// nullopt when the message has no state file yet.
Result<std::optional<MessageState>> read_state(const Spool& spool, std::string_view id);
// True for a well-formed queue id (spool.h: 18 characters of 0-9A-V).
// Callers check ids from outside (command line, control socket) with it, so
// no "id" can name a path outside the queue.
bool is_queue_id(std::string_view id);
bool is_held(const Spool& spool, std::string_view id);
Status set_held(const Spool& spool, std::string_view id, bool held);
// Removes the message, its state and hold marker. With `sync` the directory
// is fsynced too. The queue runner removes a finished message without it,
// as Postfix does: a crash just after may bring the message back, and it is
// delivered again (at least once, never lost), while a directory fsync per
// delivered message would cap the runner's throughput.
Status remove_message(const Spool& spool, std::string_view id, bool sync = true);
bool message_exists(const Spool& spool, std::string_view id);

}  // namespace petrel::queue
