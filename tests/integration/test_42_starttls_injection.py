"""t-42: plaintext pipelined after STARTTLS is never executed inside TLS
(CVE-2011-0411, the STARTTLS command injection).
"""

import ssl

import pytest

import petrel_harness as h
import tls_helpers as t


def test_mail_from_in_the_starttls_write_is_discarded(server):
    c = t.connect(server)
    c.ehlo()
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<bob@localhost>\r\n")
    r = c.reply()
    assert r.last == "220 2.0.0 Ready to start TLS", r
    # Nothing else was answered in plaintext...
    assert c.pending(0.3) == b""
    c.wrap()
    # ...nor inside TLS: the first reply there is the one to our EHLO.
    r = c.ehlo()
    assert r.lines[0] == "250-mx.test.example", r
    assert c.pending(0.3) == b""
    # No transaction was opened by the injected MAIL.
    assert c.rcpt("bob@localhost").last.startswith("503 5.5.1"), "injected MAIL was executed"
    assert server.wait_log(r"discarding \d+ octets pipelined after STARTTLS from \[127\.0\.0\.1\]")
    # The session itself works.
    qid = h.queued_id(c.send_message("alice@localhost", ["bob@localhost"], h.make_message("ok")))
    assert qid


def test_injected_ehlo_does_not_replace_the_one_sent_in_tls(server):
    """A pipelined EHLO must not count as the post-TLS greeting: MAIL needs a new one."""
    c = t.connect(server)
    c.ehlo()
    c.send(b"STARTTLS\r\nEHLO injected.example\r\n")
    assert c.reply().code == 220
    c.wrap()
    assert c.mail("alice@localhost").last.startswith("503 5.5.1")
    c.ehlo("honest.example")
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt("bob@localhost").code == 250
    qid = h.queued_id(c.data(h.make_message("after injection")))
    msg = t.wait_spool_message(server, qid)
    assert b"honest.example" in msg.first_header()
    assert b"injected" not in msg.raw


def test_plaintext_just_after_starttls_breaks_the_handshake_not_the_session(server):
    """Plaintext sent right after STARTTLS (maybe a separate packet) either is
    discarded with the STARTTLS line or reaches the TLS handshake and fails it;
    it never becomes an SMTP command."""
    c = t.connect(server)
    c.ehlo()
    c.send(b"STARTTLS\r\n")
    c.send(b"MAIL FROM:<evil@attacker.example>\r\n")
    assert c.reply().code == 220
    try:
        c.wrap()
        c.ehlo()
    except (ssl.SSLError, ConnectionError, OSError):
        return  # the handshake saw the plaintext: connection refused, nothing executed
    assert c.rcpt("bob@localhost").last.startswith("503 5.5.1")


@pytest.mark.parametrize("mode", ["submission", "smtp"])
def test_injection_on_each_starttls_listener(petrel_factory, mode):
    port = h.free_port()
    p = petrel_factory({"auth": {"users": {"alice": t.sha512_hash("pw")}}},
                       extra_listen=[{"address": f"127.0.0.1:{port}", "mode": mode}])
    assert h.wait_until(lambda: h.port_is_listening(port), 5)
    c = t.connect(p, port=port)
    c.ehlo()
    c.send(b"STARTTLS\r\nAUTH PLAIN " + t.plain_response("alice", "pw").encode() + b"\r\n")
    assert c.reply().code == 220
    assert c.pending(0.2) == b""
    c.wrap()
    c.ehlo()
    # The injected AUTH did not authenticate the TLS session.
    assert c.cmd("AUTH PLAIN " + t.plain_response("alice", "pw")).code == 235
