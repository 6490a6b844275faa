// Helpers every kind of filter shares: names of actions for logs, the verdict
// of a filter that failed (its on_error), and SMTP reply normalisation.
#pragma once

#include <string>
#include <string_view>

#include "petrel/config/config.h"
#include "petrel/filter/filter.h"

namespace petrel::filter {

// "continue", "accept", "reject", "tempfail", "discard".
std::string_view action_name(Action a);

// What a filter that crashed, timed out or answered nonsense returns:
// on_error tempfail -> Tempfail, reject -> Reject, accept -> Continue (the
// message goes on to the next filter as if this one had no objection).
// `why` lands in the log line as error="...".
Verdict error_verdict(config::OnError on_error, std::string_view why);

// An SMTP reply split for the session: code and text (enhanced code first,
// lines separated by '\n').
struct Reply {
  int code = 0;
  std::string text;
  // "550 5.7.1 text" (multi-line replies use "550-" continuation lines,
  // joined with "\n"), for logs.
  std::string str() const;
};

// The reply for a Reject or Tempfail from filter `filter`: `text` is used as
// is when it carries a code of the action's class ("550 5.7.1 go away",
// multi-line "550-..." too); a code of the wrong class or none is replaced by
// the default (550 5.7.1 / 451 4.7.1) and the rest kept as the text; an empty
// text gives "Message rejected by filter NAME" / "Message deferred by filter
// NAME, try again later" ("Command ..." for a per-stage hook, `stage`).
// Control characters are dropped.
Reply make_reply(Action action, std::string_view text, std::string_view filter, bool stage = false);

}  // namespace petrel::filter
