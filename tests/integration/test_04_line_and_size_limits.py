"""t-04: line length limits (512-octet commands, 1000-octet text lines) and max_message_size.

Both lengths count the CRLF. max_message_size (64KiB here) counts the message
octets as sent, up to and including the CRLF before the final dot.
"""

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"
LIMIT = 64 * 1024


def test_command_line_512_octets_ok(client):
    line = b"NOOP " + b"x" * (512 - 2 - 5)
    assert len(line + b"\r\n") == 512
    assert client.cmd(line).startswith("250")


def test_command_line_513_octets_500(client):
    line = b"NOOP " + b"x" * (513 - 2 - 5)
    assert len(line + b"\r\n") == 513
    r = client.cmd(line)
    assert r.startswith("500 5.5.2"), r
    assert client.cmd("NOOP").code == 250  # exactly one reply, the session goes on


def test_very_long_command_line_500_once(client):
    client.send(b"MAIL FROM:<" + b"a" * 20000 + b"@localhost>\r\n")
    r = client.reply()
    assert r.startswith("500 5.5.2"), r
    assert client.cmd("NOOP").code == 250


def test_long_mail_command_513_500(client):
    # A syntactically plausible MAIL line: still refused on length alone.
    pad = 513 - len(b"MAIL FROM:<alice@localhost>") - 2
    line = b"MAIL FROM:<alice@localhost>" + b" " * pad
    assert len(line + b"\r\n") == 513
    assert client.cmd(line).startswith("500 5.5.2")


def _with_line(length):
    """A message whose one body line is `length` octets including its CRLF."""
    line = "y" * (length - 2)
    return h.make_message("long line", ["short", line, "short again"])


def test_text_line_1000_octets_accepted(client, server):
    msg = _with_line(1000)
    qid = h.queued_id(client.send_message("alice@localhost", [RCPT], msg))
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_text_line_1001_octets_500(client, server):
    r = client.send_message("alice@localhost", [RCPT], _with_line(1001))
    assert r.startswith("500 5.5.2"), r
    assert server.spool_files() == []
    assert client.cmd("NOOP").code == 250
    # and a good message still goes through on the same connection
    h.queued_id(client.send_message("alice@localhost", [RCPT], h.make_message("after")))


def test_very_long_text_line_500(client, server):
    r = client.send_message("alice@localhost", [RCPT], _with_line(50000))
    assert r.startswith("500 5.5.2"), r
    assert server.spool_files() == []


def exact_message(size):
    """A message of exactly `size` octets (CRLF lines, no line starts with '.')."""
    head = b"Subject: size test\r\n\r\n"
    body_len = size - len(head)
    lines, remaining = [], body_len
    while remaining > 0:
        n = min(800, remaining)
        if n < 3:  # fold the remainder into the previous line
            prev = lines.pop()
            lines.append(prev[:-2] + b"z" * n + b"\r\n")
            break
        lines.append(b"z" * (n - 2) + b"\r\n")
        remaining -= n
    msg = head + b"".join(lines)
    assert len(msg) == size
    return msg


def test_message_exactly_max_size_accepted(client, server):
    msg = exact_message(LIMIT)
    qid = h.queued_id(client.send_message("alice@localhost", [RCPT], msg))
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_message_one_byte_over_552(client, server):
    r = client.send_message("alice@localhost", [RCPT], exact_message(LIMIT + 1))
    assert r.startswith("552 5.3.4"), r
    assert server.spool_files() == []
    assert server.tmp_files() == []
    assert client.cmd("NOOP").code == 250


def test_much_larger_message_552(client, server):
    r = client.send_message("alice@localhost", [RCPT], exact_message(LIMIT * 8))
    assert r.startswith("552 5.3.4"), r
    assert server.spool_files() == []


def test_size_param_over_limit_552(client):
    r = client.mail("alice@localhost", f"SIZE={LIMIT + 1}")
    assert r.startswith("552 5.3.4"), r
    # no transaction was started
    assert client.rcpt("alice@localhost").startswith("503 5.5.1")


def test_size_param_at_limit_ok(client):
    assert client.mail("alice@localhost", f"SIZE={LIMIT}").startswith("250 2.1.0")


def test_size_param_understated_still_checked(client, server):
    assert client.mail("alice@localhost", "SIZE=100").code == 250
    assert client.rcpt(RCPT).code == 250
    r = client.data(exact_message(LIMIT + 1))
    assert r.startswith("552 5.3.4"), r
    assert server.spool_files() == []


def test_bdat_over_limit_552(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    chunk = exact_message(LIMIT + 1)
    client.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = client.reply()
    assert r.startswith("552 5.3.4"), r
    assert server.spool_files() == []
    assert client.cmd("NOOP").code == 250
