// The shipped ruleset, compiled in so the plugin works without a rules file.
// Kept identical to etc/rules.conf (a unit test compares them through
// petrel_rules_default_text()).
#include "rules.h"

namespace petrel::rules {

const char* const kDefaultRules = R"RULES(# petrel rules plugin: the default ruleset (compiled into rules.so; this file
# is the same text, to copy and adapt: point the plugin's `rules` option at
# your copy). Format, one rule per line (petrel-filters(7), RULES FILES):
#
#   header NAME Field-Name =~ /regex/flags SCORE   any occurrence of the field matches
#   header NAME Field-Name !~ /regex/flags SCORE   no occurrence matches (or no field)
#   header NAME ALL =~ /regex/flags SCORE          the whole header section, as received
#   body   NAME /regex/flags SCORE                 Subject + decoded text parts, HTML as text
#   uri    NAME /regex/flags SCORE                 each URL found in the text parts
#   phrase NAME "words" SCORE                      case-insensitive, any whitespace between words
#   full   NAME /regex/flags SCORE                 the raw message
#
# Regexes are PCRE2 (JIT-compiled once, at start and on reload); flags i m s x;
# "\/" is a literal slash. Header values are unfolded and RFC 2047 decoded.
# Scores may be negative. Each rule counts once per message. Lines starting
# with # are comments. A message's score is the sum of the rules it hits.

# --- the standard anti-spam test message ---------------------------------------
body   GTUBE  /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/ 1000

# --- header sanity ---------------------------------------------------------------
header MISSING_DATE        Date        !~ /\S/ 1.0
header MISSING_MESSAGE_ID  Message-ID  !~ /<[^<>@\s]+@[^<>\s]+>/ 0.8
header MISSING_FROM        From        !~ /\S/ 1.5
header MISSING_SUBJECT     Subject     !~ /\S/ 0.5
header FROM_NO_ADDRESS     From        !~ /[^\s<>@]+@[^\s<>@]+\.[a-z]{2,}/i 0.7
header FROM_LONG_DIGITS    From        =~ /\d{7,}@/ 0.6
header DATE_IN_FUTURE_YEAR Date        =~ /\b2[1-9]\d\d\b/ 1.0
header SUBJ_ALL_CAPS       Subject     =~ /^[^a-z]*[A-Z]{4,}[^a-z]*$/ 1.0
header SUBJ_EXCLAIM        Subject     =~ /!{3,}|\?{3,}/ 0.8
header SUBJ_MONEY          Subject     =~ /(?:\$\s?\d{3,}|\b\d+%\s*off\b|\bfree\b.*\b(?:offer|gift|money)\b)/i 1.0
header SUBJ_PHARMA         Subject     =~ /\b(?:viagra|cialis|levitra|xanax|valium|tramadol|phentermine)\b/i 2.5
header SUBJ_URGENT         Subject     =~ /\b(?:urgent|immediate(?:ly)?|final notice|action required)\b/i 0.5
header MAILER_BULK         X-Mailer    =~ /(?:mass|bulk|group)\s*mail|send-?safe|dark\s*mailer/i 2.0
header PRIORITY_HIGH       X-Priority  =~ /^\s*1\b/ 0.3
header REPLYTO_FREEMAIL    Reply-To    =~ /@(?:gmail|yahoo|hotmail|outlook|aol|mail|gmx)\.[a-z.]+>?\s*$/i 0.4

# --- body ------------------------------------------------------------------------
body   PHARMA_WORDS   /\b(?:viagra|cialis|levitra|xanax|valium|tramadol|phentermine|oxycodone)\b/i 2.0
body   MILLION_MONEY  /\b\d+(?:[.,]\d+)?\s*(?:million|billion)\s+(?:united states\s+|us\s*)?(?:dollars|usd|euros?|pounds)\b/i 2.0
body   BIG_DOLLARS    /\$\s?\d{1,3}(?:,\d{3}){2,}/ 1.0
body   BTC_DEMAND     /\b(?:bitcoin|btc)\b.{0,300}\b(?:wallet|address)\b/is 1.0
body   SHOUTING       /(?:\b[A-Z]{3,}\b[ !,.]+){8,}/ 0.8
body   WIRE_TRANSFER  /\b(?:western union|moneygram|wire transfer)\b/i 1.0

# --- phrases ---------------------------------------------------------------------
phrase CLICK_HERE        "click here" 0.5
phrase ACT_NOW           "act now" 1.0
phrase LIMITED_TIME      "limited time offer" 1.0
phrase RISK_FREE         "risk free" 0.8
phrase HUNDRED_FREE      "100% free" 1.5
phrase NO_CREDIT_CHECK   "no credit check" 1.5
phrase DEAR_FRIEND       "dear friend" 1.0
phrase DEAR_BENEFICIARY  "dear beneficiary" 2.0
phrase YOU_WON           "you have won" 1.5
phrase SELECTED          "you have been selected" 1.2
phrase LOTTERY_WINNER    "lottery winner" 2.0
phrase NEXT_OF_KIN       "next of kin" 1.0
phrase STRICTLY_CONF     "strictly confidential" 0.8
phrase VERIFY_ACCOUNT    "verify your account" 1.2
phrase ACCOUNT_SUSPENDED "your account has been suspended" 1.5
phrase CASH_BONUS        "cash bonus" 1.0
phrase WORK_FROM_HOME    "work from home" 0.8
phrase REMOVE_LIST       "to be removed from our list" 0.8

# --- URLs ------------------------------------------------------------------------
uri    URI_NUMERIC_IP  /^[a-z]+:\/\/\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?:[\/?#]|$)/i 1.5
uri    URI_USERINFO    /^[a-z]+:\/\/[^\/?#]*@/i 2.0
uri    URI_SHORTENER   /^https?:\/\/(?:www\.)?(?:bit\.ly|tinyurl\.com|goo\.gl|ow\.ly|is\.gd|buff\.ly|cutt\.ly|rebrand\.ly|t\.co|shorturl\.at)\//i 0.5
uri    URI_SPAMMY_TLD  /^[a-z]+:\/\/[^\/?#:]+\.(?:top|xyz|click|loan|work|gq|tk|ml|cf|ga|zip|mov|rest|icu|cam)(?::\d+)?(?:[\/?#]|$)/i 1.0
uri    URI_LONG_HOST   /^[a-z]+:\/\/[^\/?#:]{60,}/i 0.7
)RULES";

}  // namespace petrel::rules
