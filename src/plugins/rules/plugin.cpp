// rules.so: petrel's rule-based spam scorer, behind the C filter ABI.
//
// Options (petrel.yaml `options:`):
//   rules             rules file; relative to petrel.yaml's folder; default:
//                     the ruleset compiled in (etc/rules.conf)
//   tag_threshold     add X-Spam-Score and X-Spam-Status at or above this
//                     score; default: always
//   spam_threshold    X-Spam-Status says Yes at or above this; default 5.0
//   reject_threshold  refuse with 550 5.7.1 at or above this; default: never
//   max_scan_size     bytes of decoded text scanned; default 1MiB
//   strip_headers     yes: remove X-Spam-Score/X-Spam-Status fields the
//                     message already has (forged, or from an earlier hop)
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <sstream>
#include <string>

#include "petrel/filter.h"
#include "rules.h"

namespace petrel::rules {

namespace {

struct Settings {
  std::string rules_path;  // empty: built in
  bool tag_always = true;
  double tag_threshold = 0;
  double spam_threshold = 5.0;
  bool reject = false;
  double reject_threshold = 0;
  std::size_t max_scan = 1024 * 1024;
  bool strip = false;
};

struct State {
  Settings settings;
  RuleSet rules;
  std::unique_ptr<Matcher> matcher;  // per worker (each has its own copy)
};

void set_error(const petrel_filter_config* c, const std::string& msg) {
  if (!c->error || c->error_size == 0) return;
  std::snprintf(c->error, c->error_size, "%s", msg.c_str());
}

bool parse_number(const std::string& s, double* out) {
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return !s.empty() && end == s.c_str() + s.size() && std::isfinite(*out);
}

bool parse_size(const std::string& s, std::size_t* out) {
  char* end = nullptr;
  const unsigned long long n = std::strtoull(s.c_str(), &end, 10);
  std::string unit(end);
  std::size_t mult = 1;
  if (unit == "KiB")
    mult = 1024;
  else if (unit == "MiB")
    mult = 1024 * 1024;
  else if (!unit.empty())
    return false;
  if (end == s.c_str() || n == 0) return false;
  *out = static_cast<std::size_t>(n) * mult;
  return true;
}

bool parse_options(const petrel_filter_config* c, Settings* s, std::string* error) {
  for (std::size_t i = 0; i < c->option_count; ++i) {
    const std::string key = c->options[i].key ? c->options[i].key : "";
    const std::string value = c->options[i].value ? c->options[i].value : "";
    double d = 0;
    if (key == "rules") {
      s->rules_path = value;
      if (!value.empty() && value[0] != '/' && c->config_dir && *c->config_dir)
        s->rules_path = std::string(c->config_dir) + "/" + value;
    } else if (key == "tag_threshold" || key == "spam_threshold" || key == "reject_threshold") {
      if (!parse_number(value, &d)) {
        *error = "option " + key + ": expected a number, got \"" + value + "\"";
        return false;
      }
      if (key == "tag_threshold") {
        s->tag_always = false;
        s->tag_threshold = d;
      } else if (key == "spam_threshold") {
        s->spam_threshold = d;
      } else {
        s->reject = true;
        s->reject_threshold = d;
      }
    } else if (key == "max_scan_size") {
      if (!parse_size(value, &s->max_scan)) {
        *error = "option max_scan_size: expected a size like 512KiB, got \"" + value + "\"";
        return false;
      }
    } else if (key == "strip_headers") {
      if (value == "yes" || value == "true")
        s->strip = true;
      else if (value == "no" || value == "false")
        s->strip = false;
      else {
        *error = "option strip_headers: expected yes or no, got \"" + value + "\"";
        return false;
      }
    } else {
      *error = "unknown option \"" + key +
               "\" (rules, tag_threshold, spam_threshold, reject_threshold, max_scan_size, "
               "strip_headers)";
      return false;
    }
  }
  return true;
}

std::string format_score(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  if (std::strcmp(buf, "-0.0") == 0) return "0.0";
  return buf;
}

// "Yes, score=12.3 tests=A,B,..." folded before 78 columns.
std::string status_value(bool spam, const std::string& score,
                         const std::vector<std::string>& hits) {
  std::string v = std::string(spam ? "Yes" : "No") + ", score=" + score + " tests=";
  if (hits.empty()) return v + "none";
  std::size_t col = std::strlen("X-Spam-Status: ") + v.size();
  for (std::size_t i = 0; i < hits.size(); ++i) {
    std::string item = hits[i] + (i + 1 < hits.size() ? "," : "");
    if (i > 0 && col + item.size() > 76) {
      v += "\n\t";
      col = 8;
    }
    v += item;
    col += item.size();
  }
  return v;
}

int rules_init(const petrel_filter_config* c, void** state) {
  try {
    auto st = std::make_unique<State>();
    std::string error;
    if (!parse_options(c, &st->settings, &error)) {
      set_error(c, error);
      return PETREL_FILTER_ERROR;
    }
    std::string text = kDefaultRules;
    std::string origin = "(built-in rules)";
    if (!st->settings.rules_path.empty()) {
      std::ifstream in(st->settings.rules_path, std::ios::binary);
      if (!in) {
        set_error(
            c, "cannot read rules file " + st->settings.rules_path + ": " + std::strerror(errno));
        return PETREL_FILTER_ERROR;
      }
      std::ostringstream ss;
      ss << in.rdbuf();
      text = ss.str();
      origin = st->settings.rules_path;
    }
    if (!st->rules.parse(text, origin, &error)) {
      set_error(c, error);
      return PETREL_FILTER_ERROR;
    }
    *state = st.release();
    return PETREL_FILTER_OK;
  } catch (const std::exception& e) {
    set_error(c, e.what());
    return PETREL_FILTER_ERROR;
  }
}

int rules_worker_init(void* state) {
  try {
    auto* st = static_cast<State*>(state);
    st->matcher = std::make_unique<Matcher>();
    return st->matcher->ok() ? PETREL_FILTER_OK : PETREL_FILTER_ERROR;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

int rules_scan(void* state, const petrel_filter_envelope*, const char* message, size_t length,
               petrel_filter_result* result) {
  try {
    auto* st = static_cast<State*>(state);
    if (!st->matcher) st->matcher = std::make_unique<Matcher>();
    const Settings& s = st->settings;
    const ParsedMessage m = parse_message(std::string_view(message, length), s.max_scan);
    const Score sc = score(st->rules, m, *st->matcher);
    const std::string total = format_score(sc.total);

    std::string tests;
    for (const std::string& h : sc.hits) tests += (tests.empty() ? "" : ",") + h;
    const std::string detail = "score=" + total + " tests=" + (tests.empty() ? "none" : tests);
    result->set_detail(result, detail.c_str());

    if (s.reject && sc.total >= s.reject_threshold) {
      result->action = PETREL_FILTER_REJECT;
      const std::string reply = "550 5.7.1 Message rejected as spam (score " + total + ")";
      result->set_reply(result, reply.c_str());
      return PETREL_FILTER_OK;
    }
    if (s.strip) {
      result->delete_header(result, "X-Spam-Score");
      result->delete_header(result, "X-Spam-Status");
    }
    if (s.tag_always || sc.total >= s.tag_threshold) {
      const std::string status = status_value(sc.total >= s.spam_threshold, total, sc.hits);
      if (result->add_header(result, "X-Spam-Score", total.c_str()) != PETREL_FILTER_OK ||
          result->add_header(result, "X-Spam-Status", status.c_str()) != PETREL_FILTER_OK)
        return PETREL_FILTER_ERROR;
    }
    result->action = PETREL_FILTER_CONTINUE;
    return PETREL_FILTER_OK;
  } catch (...) {
    return PETREL_FILTER_ERROR;
  }
}

void rules_worker_exit(void* state) { static_cast<State*>(state)->matcher.reset(); }

void rules_fini(void* state) { delete static_cast<State*>(state); }

const petrel_filter kEntry = {
    sizeof(petrel_filter),
    PETREL_FILTER_ABI_VERSION,
    "rules",
    rules_init,
    rules_worker_init,
    rules_scan,
    rules_worker_exit,
    rules_fini,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

}  // namespace petrel::rules

extern "C" PETREL_FILTER_EXPORT const petrel_filter* petrel_filter_entry(void) {
  return &petrel::rules::kEntry;
}

// The built-in ruleset, for tools and the unit test that keeps etc/rules.conf
// identical to it.
extern "C" PETREL_FILTER_EXPORT const char* petrel_rules_default_text(void) {
  return petrel::rules::kDefaultRules;
}
