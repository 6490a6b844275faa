#include "petrel/queue/dsn.h"

#include <cctype>
#include <ctime>

namespace petrel::queue {
namespace {

std::string_view header_section(std::string_view msg) {
  if (msg.substr(0, 1) == "\n") return {};
  size_t end = msg.find("\n\n");
  return end == std::string_view::npos ? msg : msg.substr(0, end + 1);
}

// The diagnostic type: an SMTP reply ("550 5.1.1 ...") or local text.
std::string diagnostic_code(const DsnRecipient& r) {
  std::string d = r.diagnostic;
  bool smtp = d.size() >= 4 && std::isdigit(static_cast<unsigned char>(d[0])) &&
              std::isdigit(static_cast<unsigned char>(d[1])) &&
              std::isdigit(static_cast<unsigned char>(d[2])) && (d[3] == ' ' || d[3] == '-');
  return (smtp ? "smtp; " : "x-unix; ") + d;
}

}  // namespace

std::string rfc5322_date(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

std::string build_dsn(const DsnInput& in) {
  std::string boundary = in.queue_id + "/" + in.hostname;
  std::string m;
  m += "From: MAILER-DAEMON@" + in.hostname + " (Mail Delivery System)\n";
  m += "To: <" + in.original_sender + ">\n";
  m += in.delay_warning ? "Subject: Delayed Mail (still being retried)\n"
                        : "Subject: Undelivered Mail Returned to Sender\n";
  m += "Date: " + rfc5322_date(in.now) + "\n";
  m += "Message-ID: <" + in.queue_id + (in.delay_warning ? ".delay." : ".bounce.") +
       std::to_string(in.now) + "@" + in.hostname + ">\n";
  m += "Auto-Submitted: auto-replied\n";
  m += "MIME-Version: 1.0\n";
  m += "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"" + boundary +
       "\"\n";
  m += "\nThis is a MIME-encapsulated message.\n\n";

  m += "--" + boundary + "\n";
  m += "Content-Description: Notification\nContent-Type: text/plain; charset=utf-8\n\n";
  m += "This is the mail system at host " + in.hostname + ".\n\n";
  if (in.delay_warning) {
    m += "Your message could not be delivered yet. It is still in the queue\n"
         "and delivery will be retried; you do not need to send it again.\n\n";
  } else {
    m += "I'm sorry to have to inform you that your message could not\n"
         "be delivered to one or more recipients. Its headers are attached below.\n\n";
  }
  for (const auto& r : in.recipients)
    m += "<" + r.final_recipient + ">: " + r.diagnostic + "\n";
  m += "\n";

  m += "--" + boundary + "\n";
  m += "Content-Description: Delivery report\nContent-Type: message/delivery-status\n\n";
  m += "Reporting-MTA: dns; " + in.hostname + "\n";
  m += "X-Petrel-Queue-ID: " + in.queue_id + "\n";
  m += "Arrival-Date: " + rfc5322_date(in.arrival) + "\n";
  for (const auto& r : in.recipients) {
    m += "\n";
    m += "Final-Recipient: rfc822; " + r.final_recipient + "\n";
    if (!r.original_recipient.empty())
      m += "Original-Recipient: rfc822; " + r.original_recipient + "\n";
    m += "Action: " + r.action + "\n";
    m += "Status: " + r.status + "\n";
    if (!r.remote_mta.empty()) m += "Remote-MTA: dns; " + r.remote_mta + "\n";
    m += "Diagnostic-Code: " + diagnostic_code(r) + "\n";
  }
  m += "\n";

  m += "--" + boundary + "\n";
  m += "Content-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n";
  m += std::string(header_section(in.original_message));
  m += "\n--" + boundary + "--\n";
  return m;
}

}  // namespace petrel::queue
