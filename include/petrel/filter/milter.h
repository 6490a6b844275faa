// The milter filter (SPEC §8): petrel as the MTA side of the Sendmail milter
// protocol, version 6, so opendkim, rspamd, spamass-milter and clamav-milter
// plug in unchanged.
//
// One MilterFilter lives in one worker and keeps one connection to its
// milter, opened lazily on first use and reused for every transaction of the
// session (SMFIC_ABORT between them, reset()); close() sends SMFIC_QUIT. The
// object is a per-session state machine: the per-stage hooks (on_connect,
// on_helo, on_mail, on_rcpt) send their stage when the chain calls them and
// remember it, and scan() sends whatever the hooks have not sent yet (so a
// chain that calls no hooks still gets the whole conversation), then DATA,
// the headers, EOH, the body and EOM, and reads the milter's changes.
//
// Any protocol anomaly (bad length, unknown or misplaced reply, EOF, timeout,
// refused connection) closes the socket and puts the filter into an error
// state for the rest of the session: every hook and scan() then answer the
// filter's on_error (tempfail, accept = no objection, reject) without
// touching the network, so a hung milter costs one timeout, not one per
// recipient. close() clears it; the next session connects again.
//
// What the chain gets:
// - EOM answers: continue and accept -> Continue with the changes (an
//   SMFIR_ACCEPT ends this milter's interest, as in sendmail and Postfix; it
//   does not vouch for the message to the other filters); reject, tempfail,
//   replycode (4xx/5xx text, possibly multi-line with CRLF) -> Reject or
//   Tempfail; discard -> Discard; quarantine -> Verdict::quarantine.
// - Changes: HeaderOp Add/Insert/Change (index as the milter sent it;
//   Change 0 is read as 1, an empty value deletes), new_body (LF),
//   add/delete_recipients and new_sender without <> (ESMTP parameters of
//   ADDRCPT_PAR/CHGFROM are dropped). A change the milter did not negotiate
//   is ignored and logged, as sendmail does.
// - Hooks: reject/tempfail at CONNECT or HELO refuses the whole session (every
//   later hook and scan() repeat it); accept there silences the milter for
//   the session. At MAIL they refuse the transaction; at RCPT that recipient
//   only. Accept or discard at MAIL/RCPT end the milter's part in the
//   message (discard makes scan() answer Discard). Recipients that scan()
//   itself sends and the milter refuses come back in delete_recipients; all
//   of them refused refuses the message.
// - Macros: CONNECT j {daemon_name} _ {client_addr} {client_port}; HELO
//   {tls_version} {cipher}; MAIL i {auth_authen} {mail_addr}; RCPT i
//   {rcpt_addr}; DATA, EOH and EOM i. Empty ones are not sent. A milter that
//   lists the macros it wants per stage in its negotiation reply gets those
//   instead (the names above, plus {client_name} and v).
//
// The second half of this header is the pure packet codec, without sockets,
// for the client, the tests and fuzzing.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "petrel/common/result.h"
#include "petrel/config/config.h"
#include "petrel/filter/filter.h"

namespace petrel::filter {

// SPEC §8: 30s to connect, 30s per command, 300s for the end of the message.
// A filter `timeout` becomes the end-of-message timeout and also caps the
// other two, so "timeout: 5s" fails fast everywhere.
struct MilterTimeouts {
  std::chrono::milliseconds connect{30'000};
  std::chrono::milliseconds command{30'000};
  std::chrono::milliseconds content{300'000};

  static MilterTimeouts from_config(const config::Filter& cfg);
};

// cfg.milter is "unix:/path" or "inet:host:port" ("inet:[v6]:port"), as the
// config loader normalises it. Never fails: an unusable address shows up as
// a filter error (on_error) at first use, and is logged.
std::unique_ptr<Filter> make_milter_filter(const config::Filter& cfg);
std::unique_ptr<Filter> make_milter_filter(const config::Filter& cfg,
                                           const MilterTimeouts& timeouts);

namespace milter {

// libmilter's mfdef.h / mfapi.h, protocol version 6.
inline constexpr std::uint32_t kVersion = 6;
inline constexpr std::size_t kChunkSize = 65535;  // largest SMFIC_BODY we send

// Commands, MTA to milter.
inline constexpr char kAbort = 'A', kBody = 'B', kConnect = 'C', kMacro = 'D', kEndOfBody = 'E',
                      kHelo = 'H', kQuitNewConn = 'K', kHeader = 'L', kMail = 'M',
                      kEndOfHeaders = 'N', kOptNeg = 'O', kQuit = 'Q', kRcpt = 'R', kData = 'T',
                      kUnknown = 'U';

// Replies, milter to MTA.
inline constexpr char kAddRcpt = '+', kDelRcpt = '-', kAddRcptPar = '2', kShutdown = '4',
                      kAccept = 'a', kReplaceBody = 'b', kContinue = 'c', kDiscard = 'd',
                      kChangeFrom = 'e', kConnFail = 'f', kAddHeader = 'h', kInsertHeader = 'i',
                      kChangeHeader = 'm', kProgress = 'p', kQuarantine = 'q', kReject = 'r',
                      kSkip = 's', kTempfail = 't', kReplyCode = 'y';

// Actions the milter may take (SMFIF_*).
inline constexpr std::uint32_t kActAddHeaders = 0x01, kActChangeBody = 0x02,
                               kActAddRcpt = 0x04, kActDelRcpt = 0x08,
                               kActChangeHeaders = 0x10, kActQuarantine = 0x20,
                               kActChangeFrom = 0x40, kActAddRcptPar = 0x80,
                               kActSetSymList = 0x100;
inline constexpr std::uint32_t kAllActions = 0x1FF;

// Protocol flags (SMFIP_*): NO* = don't send that step, NR* = the milter
// sends no reply to it.
inline constexpr std::uint32_t kNoConnect = 0x1, kNoHelo = 0x2, kNoMail = 0x4, kNoRcpt = 0x8,
                               kNoBody = 0x10, kNoHeaders = 0x20, kNoEndOfHeaders = 0x40,
                               kNrHeader = 0x80, kNoUnknown = 0x100, kNoData = 0x200,
                               kCanSkip = 0x400, kRcptRejected = 0x800, kNrConnect = 0x1000,
                               kNrHelo = 0x2000, kNrMail = 0x4000, kNrRcpt = 0x8000,
                               kNrData = 0x10000, kNrUnknown = 0x20000,
                               kNrEndOfHeaders = 0x40000, kNrBody = 0x80000,
                               kHeaderLeadingSpace = 0x100000;
inline constexpr std::uint32_t kAllProtocol = 0x1FFFFF;

// Macro stages (SMFIM_*), as the index of a SETSYMLIST entry.
enum class MacroStage : std::uint32_t { Connect = 0, Helo, Mail, Rcpt, Data, EndOfMessage,
                                        EndOfHeaders };
inline constexpr std::size_t kMacroStages = 7;
// The command a stage's SMFIC_MACRO packet names ('C', 'H', 'M', 'R', 'T', 'E', 'N').
char macro_stage_command(MacroStage stage);

struct Packet {
  char code = 0;
  std::string data;
  bool operator==(const Packet&) const = default;
};

// The wire form: 4-byte big-endian length (code + data), code, data.
std::string encode_packet(char code, std::string_view data = {});

// Reads one packet from the front of `in`. NeedMore: `in` holds a prefix of a
// valid packet. Bad: the length is 0 or the data would exceed `max_data`.
enum class DecodeStatus { Ok, NeedMore, Bad };
DecodeStatus decode_packet(std::string_view in, std::size_t max_data, Packet* out,
                           std::size_t* consumed);

// Command payloads. Strings are NUL-terminated on the wire; a NUL inside one
// would split it, so encoders cut a string at its first NUL.
std::string optneg_data(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol);
// family: 'U' unknown (no port or address follow), 'L' unix, '4', '6'.
std::string connect_data(std::string_view hostname, char family, std::uint16_t port,
                         std::string_view address);
std::string strings_data(const std::vector<std::string_view>& strings);  // each + NUL
std::string header_data(std::string_view name, std::string_view value);
std::string macro_data(char command, const std::vector<std::pair<std::string, std::string>>& macros);

// What the milter answered to SMFIC_OPTNEG, checked and masked for its
// version: version 2..6 only; actions within what its version knows (an
// action we did not offer is an error); protocol flags reduced to what we
// offered and its version knows, plus NOUNKNOWN for v2 and NODATA for v2-3
// (as sendmail does: those steps do not exist for them). `macros` holds the
// SMFIC_SETSYMLIST-style lists that may follow, per stage, as sent.
struct Negotiated {
  std::uint32_t version = 0;
  std::uint32_t actions = 0;
  std::uint32_t protocol = 0;
  std::array<std::optional<std::string>, kMacroStages> macros;
};
Result<Negotiated> parse_optneg(std::string_view data);

// One reply packet, decoded. Which fields are set depends on `code`:
//   kReplyCode: text ("550 5.7.1 text", checked: 4xx/5xx, "%%" undone)
//   kQuarantine: text (the reason)
//   kAddHeader: name, value; kInsertHeader, kChangeHeader: index, name, value
//   kAddRcpt, kDelRcpt: addr; kAddRcptPar, kChangeFrom: addr, args ("" if none)
//   kReplaceBody: body (one chunk, raw)
//   the rest carry no data (any is an error).
struct Reply {
  char code = 0;
  std::string text;
  std::string name;
  std::string value;
  std::uint32_t index = 0;
  std::string addr;
  std::string args;
  std::string body;
};
Result<Reply> parse_reply(const Packet& packet);

// The message as a milter sees it. `message` has LF line ends. A header's
// value is everything after the colon with its folding kept as "\n" (the
// LF-only form sendmail and Postfix send, which opendkim turns back into
// CRLF); without SMFIP_HDR_LEADSPC exactly one leading space is removed, as
// sendmail does. The header ends at the first empty line, or at the first
// line that is neither a field nor a continuation (that line starts the
// body, as in Postfix).
struct Field {
  std::string name;
  std::string value;  // raw: after the colon, leading space kept
};
struct MessageParts {
  std::vector<Field> headers;
  std::string_view body;  // LF line ends
};
MessageParts split_message(std::string_view message);
std::string_view header_value_for_milter(std::string_view raw, bool leading_space);

// Cuts an LF body into SMFIC_BODY chunks of at most `max` bytes with CRLF
// line ends (a CRLF may straddle two chunks), without copying the whole body.
class BodyChunker {
 public:
  explicit BodyChunker(std::string_view lf_body, std::size_t max = kChunkSize)
      : rest_(lf_body), max_(max) {}
  // The next chunk, or nullopt when the body is done.
  std::optional<std::string> next();

 private:
  std::string_view rest_;
  std::size_t max_;
  bool pending_lf_ = false;   // the CR of a CRLF ended the previous chunk
  bool last_was_cr_ = false;  // the previous chunk ended in a CR of the input
};

// A milter's header value as petrel stores it (HeaderOp::value): CRLF made LF,
// blank continuation lines dropped, a continuation line that does not start
// with a space or tab given a tab (so a value can never start a header line
// of its own). Leading whitespace is kept: with SMFIP_HDR_LEADSPC the milter
// sends its own, and the chain writes "Name:" + value, adding a space only
// when the value starts without one.
std::string header_value_from_milter(std::string_view value);
// CRLF line ends (as replbody sends them) to LF.
std::string crlf_to_lf(std::string_view s);

}  // namespace milter
}  // namespace petrel::filter
