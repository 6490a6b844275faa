// LMTP delivery (RFC 2033), e.g. to Dovecot, over a unix or TCP socket.
//
// One connection per call: greeting, LHLO, then one transaction per group of
// recipients that get the same delivery headers (with add_headers that is
// one per recipient, since Delivered-To and X-Original-To differ), then QUIT.
// Each transaction is MAIL FROM (with BODY=8BITMIME / SMTPUTF8 when the
// server offers them and the message needs them), RCPT TO for each
// recipient, DATA with the message in CRLF form, dot-stuffed, and after the
// final dot one reply per accepted recipient.
//
// The verdicts come back in the order of `recipients`: 2xx Delivered, 4xx
// Deferred, 5xx Bounced, with the server's enhanced code (or X.0.0) as status
// and its reply as detail. A failed connect, a refusing greeting or LHLO, a
// malformed reply, a lost connection or the timeout defer every recipient
// still undecided (4.4.1 connect, 4.4.2 lost/timed out, 4.5.0 protocol); a
// recipient already answered after DATA keeps its verdict. timeout_sec
// bounds the whole call, host name resolution for TCP aside.
#pragma once

#include <string>
#include <vector>

#include "petrel/delivery/agent.h"

namespace petrel::delivery {

struct LmtpOptions {
  std::string target;     // "unix:/path", "host:port" or "[v6]:port"
  std::string lhlo_name;  // "" = gethostname()
  int timeout_sec = 300;
  // Prepend Return-Path/Delivered-To/X-Original-To (SPEC §7). Dovecot adds
  // its own Return-Path and Delivered-To, so those then appear twice, with
  // the same values; turning this off lets all recipients share one
  // transaction.
  bool add_headers = true;
};

std::vector<Verdict> deliver_lmtp(const LmtpOptions& options, const std::vector<Recipient>& recipients,
                                  const Message& msg);

}  // namespace petrel::delivery
