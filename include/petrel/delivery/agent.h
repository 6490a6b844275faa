// What every local delivery agent (maildir, mbox, pipe, lmtp) takes and returns.
//
// Agents are blocking functions meant to run in a child process the queue
// runner forks per delivery; each bounds its own time (lock waits, command
// and LMTP timeouts). They never throw and never lose mail on a transient
// failure: anything that might succeed later (I/O errors, full disks, locked
// mailboxes, unreachable servers, config mistakes) is Deferred; only a
// permanent answer from the destination (pipe exit status, LMTP 5xx) is
// Bounced. A Delivered verdict means the message is durably stored
// (fsync'd) or accepted by the command/server.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace petrel::delivery {

enum class Outcome { Delivered, Deferred, Bounced };

// The result of one delivery attempt for one recipient.
struct Verdict {
  Outcome outcome = Outcome::Deferred;
  std::string status;  // RFC 3463 enhanced code: "2.0.0", "4.2.0", "5.1.1"...
  std::string detail;  // one line of human text for logs and DSNs; never has CR/LF
};

struct Recipient {
  std::string address;    // final, e.g. alice+tag@example.org
  std::string original;   // as given at RCPT (X-Original-To); "" = same as address
  std::string user;       // local part without extension, lower-cased
  std::string extension;  // "tag" for alice+tag; "" when none
  std::string domain;     // lower-cased
};

struct Message {
  std::string queue_id;
  std::string sender;     // "" = the null sender <>
  std::string_view body;  // the spooled message: LF line ends, our Received: first
};

// Expands %u %e %d %r %s %i and %% in a deliver path or argv element; any
// other %x is kept as written (the config loader already rejects those).
// With for_path, each substituted value is made safe to use as one path
// component: '/' and control characters become '_', and a leading '.'
// becomes '_', so no recipient can climb out of the configured directory or
// name a hidden file; an empty value other than %e becomes "_" so it cannot
// drop a path component. The template's own text is trusted as is. Without
// for_path (argv elements: no shell is involved) values are used verbatim.
std::string expand(std::string_view tmpl, const Recipient& rcpt, const Message& msg,
                   bool for_path);

// "Return-Path: <sender>\nDelivered-To: address\nX-Original-To: original\n",
// LF line ends, values stripped of CR/LF. Local agents prepend these.
std::string delivery_headers(const Recipient& rcpt, const Message& msg);

// True when the message's header already has "Delivered-To: address"
// (case-insensitive): delivering again would be a mail loop (RFC 5321 §6.3).
bool has_delivered_to(std::string_view body, std::string_view address);

// A verdict as one line ("D 2.0.0 detail", "T ..." deferred, "B ..." bounced)
// for a delivery child to report to the queue runner through a pipe, and back.
std::string encode(const Verdict& v);
std::optional<Verdict> decode(std::string_view line);

// Helpers the agents share.
Verdict delivered(std::string detail);
Verdict deferred(std::string status, std::string detail);
Verdict bounced(std::string status, std::string detail);
// A deferral for a failed local file operation: 4.2.2 for quota/too big,
// 4.3.1 for a full disk, else 4.2.0. `what` says what failed.
Verdict deferred_io(int err, std::string_view what);
// Text from a file, a command or a server, made fit for `detail`: CR, LF and
// tabs become spaces, other control bytes '?', at most max_len bytes.
std::string one_line(std::string_view s, std::size_t max_len = 200);

}  // namespace petrel::delivery
