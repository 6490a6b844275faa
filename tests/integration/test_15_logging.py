"""t-15: log lines admins grep for: connect/disconnect, accepted messages, rejections."""

import re

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"
PREFIX = r"^\S.* petrel/[\w.-]+\[\d+\]: "


def test_log_line_format(server):
    c = server.connect()
    c.cmd("QUIT")
    assert server.wait_log(PREFIX + r"connect from ", 5), server.log_text()
    for line in server.log_text().splitlines():
        if line.strip():
            assert re.match(PREFIX, line), f"unexpected log line format: {line!r}"


def test_connect_and_disconnect_logged(server):
    c = server.connect()
    cport = c.sock.getsockname()[1]
    c.ehlo()
    c.cmd("QUIT")
    c.close()
    assert server.wait_log(PREFIX + rf"connect from \[127\.0\.0\.1\]:{cport}\b", 5), server.log_text()
    assert server.wait_log(PREFIX + rf"disconnect from \[127\.0\.0\.1\]:{cport}\b", 5), \
        server.log_text()


def test_disconnect_logged_when_client_drops(server):
    c = server.connect()
    cport = c.sock.getsockname()[1]
    c.close()
    assert server.wait_log(PREFIX + rf"disconnect from \[127\.0\.0\.1\]:{cport}\b", 5), \
        server.log_text()


def test_accepted_message_logged(client, server):
    msg = h.make_message("logged")
    qid = h.queued_id(client.send_message("alice@localhost", [RCPT, "bob@localhost"], msg))
    m = server.wait_log(PREFIX + re.escape(qid) + r": from=<alice@localhost>, size=(\d+), nrcpt=2\b", 5)
    assert m, server.log_text()
    assert int(m.group(1)) >= len(msg) - 50


def test_null_sender_logged_as_empty(client, server):
    qid = h.queued_id(client.send_message("", [RCPT], h.make_message("null")))
    assert server.wait_log(PREFIX + re.escape(qid) + r": from=<>, size=\d+, nrcpt=1\b", 5), \
        server.log_text()


def test_rcpt_rejection_logged(client, server):
    cport = client.sock.getsockname()[1]
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt("mallory@localhost").startswith("550 5.1.1")
    pat = PREFIX + rf"(NOQUEUE|\w+): reject: RCPT from \[127\.0\.0\.1\]:{cport}: 550 5\.1\.1"
    assert server.wait_log(pat, 5), server.log_text()


def test_relay_rejection_logged(petrel_factory):
    p = petrel_factory({"relay": {"networks": ["10.0.0.0/8"]}})
    c = p.connect()
    cport = c.sock.getsockname()[1]
    c.ehlo()
    c.mail("alice@localhost")
    assert c.rcpt("x@far-away.example").startswith("554 5.7.1")
    pat = PREFIX + rf"(NOQUEUE|\w+): reject: RCPT from \[127\.0\.0\.1\]:{cport}: 554 5\.7\.1"
    assert p.wait_log(pat, 5), p.log_text()


def test_data_rejection_logged(client, server):
    cport = client.sock.getsockname()[1]
    r = client.send_message("alice@localhost", [RCPT], b"Subject: x\r\n\r\nbare\nlf\r\n")
    assert r.startswith("550 5.5.2")
    pat = PREFIX + rf"(NOQUEUE|\w+): reject: [\w ]+ from \[127\.0\.0\.1\]:{cport}: 550 5\.5\.2"
    assert server.wait_log(pat, 5), server.log_text()


def test_log_sanitises_client_input(client, server):
    assert client.mail("alice@localhost").code == 250
    client.cmd(b"RCPT TO:<mallory\x1b[2J@localhost>")
    client.cmd("QUIT")
    assert server.wait_log(r"disconnect from", 5)
    assert "\x1b" not in server.log_text()
