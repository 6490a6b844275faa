// Shared fixtures for the delivery agent tests: a sample recipient and
// message, and the common temp dir and file helpers.
#pragma once

#include <string>
#include <string_view>

#include "../common/temp_files.h"
#include "petrel/delivery/agent.h"

namespace petrel::delivery::testing {

using petrel::testing::exists;
using petrel::testing::list_dir;
using petrel::testing::slurp;
using petrel::testing::spit;
using petrel::testing::TempDir;

inline Recipient alice() {
  Recipient r;
  r.address = "alice+news@example.org";
  r.original = "Alice+News@Example.ORG";
  r.user = "alice";
  r.extension = "news";
  r.domain = "example.org";
  return r;
}

inline const std::string kBody =
    "Received: from client.example (client.example [192.0.2.1])\n"
    "\tby mail.example.org (petrel) with ESMTP id 0123456789ABCDEFGH\n"
    "From: Bob <bob@example.net>\n"
    "Subject: hello\n"
    "\n"
    "First line.\n"
    "From the start of a line.\n"
    ">From an already quoted line.\n"
    ".a line with a dot\n"
    "Last line.\n";

inline Message message(std::string_view body = kBody) {
  Message m;
  m.queue_id = "0123456789ABCDEFGH";
  m.sender = "bob@example.net";
  m.body = body;
  return m;
}

}  // namespace petrel::delivery::testing
