// Delivery status notifications (RFC 3464 multipart/report): bounces and
// delay warnings, sent from MAILER-DAEMON@hostname with the null sender and
// "Auto-Submitted: auto-replied". Pure: builds the message text only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace petrel::queue {

struct DsnRecipient {
  std::string final_recipient;     // the address (or |command, /file) that failed
  std::string original_recipient;  // as given at RCPT
  std::string action;              // "failed" or "delayed"
  std::string status;              // "5.1.1"
  std::string diagnostic;          // the remote reply or local error text
  std::string remote_mta;          // "" for local deliveries
};

struct DsnInput {
  std::string hostname;
  std::string queue_id;             // of the original message
  std::string original_sender;      // the DSN's recipient
  std::int64_t arrival = 0;         // of the original message
  std::int64_t now = 0;
  bool delay_warning = false;       // Action: delayed, no bounce
  std::vector<DsnRecipient> recipients;
  std::string_view original_message;  // LF line ends; only its header section is copied
};

// The complete DSN message, LF line ends, ready to commit to the spool.
std::string build_dsn(const DsnInput& in);

// RFC 5322 date for a unix time, in UTC.
std::string rfc5322_date(std::int64_t unix_seconds);

}  // namespace petrel::queue
