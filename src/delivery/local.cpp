#include "petrel/delivery/local.h"

#include "petrel/delivery/lmtp.h"
#include "petrel/delivery/maildir.h"
#include "petrel/delivery/pipe.h"

namespace petrel::delivery {

Result<std::vector<std::string>> split_command(std::string_view command) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (std::size_t i = 0; i < command.size(); ++i) {
    const char c = command[i];
    if (quote == '\'') {
      if (c == '\'') quote = 0;
      else word += c;
      continue;
    }
    if (c == '\\' && i + 1 < command.size() && (quote == 0 || command[i + 1] == '"' ||
                                                command[i + 1] == '\\')) {
      word += command[++i];
      in_word = true;
      continue;
    }
    if (quote == '"') {
      if (c == '"') quote = 0;
      else word += c;
      continue;
    }
    if (c == ' ' || c == '\t') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    if (c == '\'' || c == '"') quote = c;
    else word += c;
    in_word = true;
  }
  if (quote) return Error{"unterminated " + std::string(1, quote) + " quote in pipe command"};
  if (in_word) words.push_back(std::move(word));
  return words;
}

Result<DeliverSpec> parse_deliver(const std::vector<std::string>& spec) {
  if (spec.empty()) return Error{"no deliver value"};
  const std::string& first = spec[0];
  DeliverSpec d;
  if (first.starts_with("pipe:")) {
    d.kind = DeliverSpec::Kind::Pipe;
    const std::string_view rest = std::string_view(first).substr(5);
    if (spec.size() == 1) {
      auto words = split_command(rest);
      if (!words) return Error{words.error()};
      d.argv = std::move(*words);
    } else {
      if (!rest.empty()) d.argv.emplace_back(rest);
      d.argv.insert(d.argv.end(), spec.begin() + 1, spec.end());
    }
    if (d.argv.empty() || d.argv[0].empty()) return Error{"pipe: needs a command"};
    return d;
  }
  if (spec.size() != 1) return Error{"a list deliver value is only for pipe:"};
  auto with_path = [&](DeliverSpec::Kind kind, std::size_t prefix) -> Result<DeliverSpec> {
    d.kind = kind;
    d.where = first.substr(prefix);
    if (d.where.empty()) return Error{first + ": needs a path"};
    return d;
  };
  if (first == "discard") return d;
  if (first.starts_with("maildir:")) return with_path(DeliverSpec::Kind::Maildir, 8);
  if (first.starts_with("mbox:")) return with_path(DeliverSpec::Kind::Mbox, 5);
  if (first.starts_with("lmtp:")) return with_path(DeliverSpec::Kind::Lmtp, 5);
  return Error{"unknown deliver value \"" + first + "\""};
}

Verdict deliver_local(const std::vector<std::string>& spec, const Recipient& rcpt,
                      const Message& msg, const LocalSettings& settings) {
  auto parsed = parse_deliver(spec);
  if (!parsed) return deferred("4.3.5", "bad deliver configuration: " + parsed.error());
  const DeliverSpec& d = *parsed;
  if (d.kind == DeliverSpec::Kind::Discard) return delivered("discarded");
  if (has_delivered_to(msg.body, rcpt.address))
    return bounced("5.4.6", "mail forwarding loop for " + rcpt.address);

  switch (d.kind) {
    case DeliverSpec::Kind::Maildir:
      return deliver_maildir(expand(d.where, rcpt, msg, true), rcpt, msg);
    case DeliverSpec::Kind::Mbox:
      return deliver_mbox(expand(d.where, rcpt, msg, true), rcpt, msg, settings.mbox);
    case DeliverSpec::Kind::Pipe: {
      PipeOptions o;
      for (const auto& a : d.argv) o.argv.push_back(expand(a, rcpt, msg, false));
      o.timeout_sec = settings.pipe_timeout_sec;
      o.home_dir = settings.home_dir;
      return deliver_pipe(o, rcpt, msg);
    }
    case DeliverSpec::Kind::Lmtp: {
      LmtpOptions o;
      o.target = d.where;
      o.lhlo_name = settings.lhlo_name;
      o.timeout_sec = settings.lmtp_timeout_sec;
      o.add_headers = settings.lmtp_add_headers;
      auto v = deliver_lmtp(o, {rcpt}, msg);
      return v.empty() ? deferred("4.3.0", "lmtp: no verdict") : std::move(v[0]);
    }
    case DeliverSpec::Kind::Discard:
      break;
  }
  return delivered("discarded");
}

}  // namespace petrel::delivery
