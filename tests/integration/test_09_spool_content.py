"""t-09: what lands in the spool: envelope, our Received: first, dot-unstuffing, exact bytes."""

import re

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def _send(client, content, sender="alice@localhost", rcpts=(RCPT,)):
    return h.queued_id(client.send_message(sender, list(rcpts), content))


def test_envelope_fields(client, server):
    qid = _send(client, h.make_message("envelope"), rcpts=(RCPT, "bob@localhost"))
    m = server.spool_message(qid)
    assert m.id == qid
    assert m.sender == "alice@localhost"
    assert m.recipients == [RCPT, "bob@localhost"]
    assert m.fields["H"] == "client.example"
    assert re.fullmatch(r"\[127\.0\.0\.1\]:\d+", m.fields["C"]), m.fields["C"]
    assert re.fullmatch(r"\d+\.\d+", m.fields["T"])
    assert int(m.fields["Z"]) > 0
    assert not any(n.startswith(".tmp-") for n in server.tmp_files())


def test_dot_unstuffing(client, server):
    content = b"Subject: dots\r\n\r\n..x\r\n...\r\n..\r\nnot.a.dot\r\n. leading dot space\r\n"
    # A line "..x" on the wire is stored as ".x"; ".." alone as "."
    qid = _send(client, content)
    body = server.spool_message(qid).without_first_header()
    assert body == b"Subject: dots\n\n.x\n..\n.\nnot.a.dot\n leading dot space\n"


def test_bytes_intact(client, server):
    lines = [bytes(range(0x20, 0x7f)).decode(), "tab\there", "trailing spaces   ", "",
             "caf\u00e9 8-bit", "x" * 998]
    msg = h.make_message("bytes", lines)
    qid = _send(client, msg)
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_message_without_final_crlf_gets_one(client, server):
    # The CRLF before ".\r\n" belongs to the last line: a message is stored with LF ends.
    qid = _send(client, b"Subject: x\r\n\r\nlast line\r\n")
    assert server.spool_message(qid).message.endswith(b"last line\n")


def test_received_header_is_first(client, server):
    qid = _send(client, h.make_message("received"))
    m = server.spool_message(qid)
    first = m.first_header()
    assert first.startswith(b"Received:"), m.message[:200]
    text = first.decode("utf-8", "replace")
    assert "client.example" in text
    assert "127.0.0.1" in text
    assert "mx.test.example" in text
    assert qid in text
    # exactly one Received: was added
    assert m.message.count(b"\nReceived:") + m.message.startswith(b"Received:") == 1


def test_received_header_for_bdat(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    msg = h.make_message("bdat received")
    client.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    qid = h.queued_id(client.reply())
    assert server.spool_message(qid).first_header().startswith(b"Received:")


def _assert_clean_header(first):
    # One header field: only printable ASCII/UTF-8, tabs and LF followed by whitespace.
    for i, line in enumerate(first.split(b"\n")):
        if i:
            assert line[:1] in (b" ", b"\t"), f"unfolded continuation: {first!r}"
        for ch in line:
            assert ch == 0x09 or ch >= 0x20 and ch != 0x7F, f"control char {ch:#x} in {first!r}"


def test_helo_with_control_characters_sanitised(server):
    c = server.connect()
    r = c.cmd(b"EHLO evil\x01\x1b[31mhost\x7f.example")
    if r.code != 250:
        # refusing such a HELO outright is also safe
        assert r.code // 100 == 5, r
        return
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("ctl")))
    m = server.spool_message(qid)
    _assert_clean_header(m.first_header())
    assert b"\x01" not in m.envelope_text.encode() and "\x1b" not in m.envelope_text
    assert "\x01" not in server.log_text() and "\x1b" not in server.log_text()


def test_helo_with_bare_lf_cannot_inject_header(server):
    c = server.connect()
    c.send(b"EHLO evil.example\nX-Injected: yes\r\n")
    r = c.reply()
    c.pending(0.5)
    c.buf = b""  # a reply to "X-Injected: yes" as its own command, if any
    if r.code == 250:
        qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("inj")))
        m = server.spool_message(qid)
        _assert_clean_header(m.first_header())
        assert not re.search(rb"^X-Injected:", m.message, re.M)
    else:
        assert r.code // 100 == 5, r
    assert not re.search(r"^X-Injected", server.log_text(), re.M)


def test_helo_with_parentheses_and_odd_chars(server):
    c = server.connect()
    r = c.cmd("EHLO (comment) \"quoted\" ;; <angle>")
    if r.code != 250:
        assert r.code // 100 == 5
        return
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("odd")))
    first = server.spool_message(qid).first_header()
    _assert_clean_header(first)
    # Balanced parentheses: a client cannot close our comment and add fields.
    depth = 0
    for ch in first.decode("utf-8", "replace"):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0, first
    assert depth == 0, first


def test_long_helo_capped(server):
    c = server.connect()
    name = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".example"
    assert c.cmd(f"EHLO {name}").code == 250
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("long helo")))
    first = server.spool_message(qid).first_header()
    assert len(first) < 2000
