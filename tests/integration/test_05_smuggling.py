"""t-05: SMTP smuggling. DATA ends only at CRLF.CRLF; a bare CR or LF refuses the message.

Each case sends a message whose body hides a second, smuggled transaction
behind a non-standard end-of-data sequence, then the real CRLF.CRLF. petrel
must answer exactly one reply (550 5.5.2), spool nothing, and keep the
session usable.
"""

import pytest

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"

SMUGGLED = (b"MAIL FROM:<admin@localhost>\r\n"
            b"RCPT TO:<victim@" + h.REMOTE.encode() + b">\r\n"
            b"DATA\r\n"
            b"From: admin@localhost\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled body\r\n")

CASES = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
}


def _content(seq):
    return (b"From: alice@localhost\r\nSubject: carrier\r\n\r\nfirst part" + seq + SMUGGLED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_smuggling_sequence_rejected(client, server, name):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(_content(CASES[name]) + b".\r\n")
    r = client.reply()
    assert r.startswith("550 5.5.2"), f"{name}: {r}"
    # Exactly one reply: DATA did not end early at the fake terminator, so
    # no reply to a smuggled MAIL/RCPT/DATA follows.
    assert client.pending(0.5) == b"", f"{name}: extra replies {client.buf!r}"
    assert client.cmd("NOOP").startswith("250")
    assert server.spool_files() == []
    assert server.tmp_files() == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_smuggling_session_goes_on(client, server, name):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(_content(CASES[name]) + b".\r\n")
    assert client.reply().startswith("550 5.5.2")
    qid = h.queued_id(client.send_message("alice@localhost", [RCPT], h.make_message("clean")))
    assert server.spool_files() == [qid]
    assert b"smuggled" not in server.spool_message(qid).message


def test_bare_lf_in_body_550(client, server):
    r = client.send_message("alice@localhost", [RCPT],
                            b"Subject: x\r\n\r\nline one\nline two\r\n")
    assert r.startswith("550 5.5.2"), r
    assert client.cmd("NOOP").code == 250
    assert server.spool_files() == []


def test_bare_cr_in_body_550(client, server):
    r = client.send_message("alice@localhost", [RCPT],
                            b"Subject: x\r\n\r\nline one\rline two\r\n")
    assert r.startswith("550 5.5.2"), r
    assert client.cmd("NOOP").code == 250
    assert server.spool_files() == []


def test_bare_lf_in_header_550(client, server):
    r = client.send_message("alice@localhost", [RCPT],
                            b"Subject: x\nX-Evil: y\r\n\r\nbody\r\n")
    assert r.startswith("550 5.5.2"), r
    assert server.spool_files() == []


def test_bare_lf_right_before_end(client, server):
    # "...\n" then ".\r\n": the LF is bare, and the next ".\r\n" is not preceded by CRLF.
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: x\r\n\r\nbody\n.\r\n")
    # Not the end of DATA: the server must still be waiting for CRLF.CRLF.
    assert client.pending(0.5) == b"", f"DATA ended at LF.CRLF: {client.buf!r}"
    client.send(b"\r\n.\r\n")
    assert client.reply().startswith("550 5.5.2")
    assert server.spool_files() == []


def test_lf_dot_lf_does_not_end_data(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: x\r\n\r\nbody\n.\n")
    assert client.pending(0.5) == b"", f"DATA ended at LF.LF: {client.buf!r}"
    client.send(b"more\r\n.\r\n")
    assert client.reply().startswith("550 5.5.2")
    assert server.spool_files() == []


def test_cr_dot_cr_does_not_end_data(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: x\r\n\r\nbody\r.\r")
    assert client.pending(0.5) == b"", f"DATA ended at CR.CR: {client.buf!r}"
    client.send(b"\n.\r\n")
    assert client.reply().startswith("550 5.5.2")
    assert server.spool_files() == []


def test_crlf_dot_crlf_split_across_writes(client, server):
    # The real terminator split over several TCP segments still ends DATA.
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: split\r\n\r\nbody\r")
    client.pending(0.1)
    client.send(b"\n.")
    client.pending(0.1)
    client.send(b"\r")
    client.pending(0.1)
    client.send(b"\n")
    qid = h.queued_id(client.reply())
    assert server.spool_message(qid).without_first_header() == b"Subject: split\n\nbody\n"
