"""t-43: submission listeners (587 style with STARTTLS, 465 style with
implicit TLS): MAIL needs AUTH; missing Date: and Message-ID: are added there
and only there.
"""

import email.utils
import re

import pytest

import petrel_harness as h
import tls_helpers as t

PASSWORD = "submit me 587"
RCPT = f"friend@{h.REMOTE}"

BARE_MESSAGE = (b"From: Alice <alice@localhost>\r\nTo: friend@remote.example\r\n"
                b"Subject: no date, no id\r\n\r\nbody\r\n")


@pytest.fixture(scope="module")
def alice_hash():
    return t.yescrypt_hash(PASSWORD)


@pytest.fixture
def servers(petrel_factory, alice_hash):
    """(petrel, submission port, submissions port); relay.networks excludes 127.0.0.2."""
    sub, subs = h.free_port(), h.free_port()
    p = petrel_factory(t.tls_overrides(users={"alice": alice_hash}),
                       extra_listen=[{"address": f"127.0.0.1:{sub}", "mode": "submission"},
                                     {"address": f"127.0.0.1:{subs}", "mode": "submissions"}])
    for port in (sub, subs):
        assert h.wait_until(lambda: h.port_is_listening(port), 5)
    return p, sub, subs


def headers_of(msg):
    head, _ = msg.headers_and_body()
    return head.decode("utf-8", "replace")


def test_submission_mail_needs_auth(servers):
    p, sub, _ = servers
    # Even from a relay network address: the listener's policy, not the client's.
    for source in ("127.0.0.1", t.OTHER_IP):
        c = t.connect(p, port=sub, source=source)
        kw = t.ehlo_keywords(c.ehlo())
        assert "STARTTLS" in kw and "AUTH" not in kw
        r = c.mail("alice@localhost")
        assert r.last.startswith("530 5.7.0"), r
        c.starttls()
        c.ehlo()
        assert c.mail("alice@localhost").last.startswith("530 5.7.0")
        assert c.auth_plain("alice", PASSWORD).code == 235
        assert c.mail("alice@localhost").code == 250
        assert c.rcpt(RCPT).code == 250  # authenticated clients relay
        qid = h.queued_id(c.data(h.make_message("submitted")))
        msg = t.wait_spool_message(p, qid)
        assert msg.fields.get("A") == "alice"
        assert t.received_tls(msg)
    assert p.wait_log(r"NOQUEUE: reject: MAIL from \[127\.0\.0\.2\]:\d+: 530 5\.7\.0")


def test_submissions_mail_needs_auth(servers):
    p, _, subs = servers
    c = t.connect(p, port=subs, source=t.OTHER_IP, implicit_tls=True)
    c.ehlo()
    assert c.mail("alice@localhost").last.startswith("530 5.7.0")
    assert c.auth_login("alice", PASSWORD).code == 235
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("465")))
    assert t.received_tls(t.wait_spool_message(p, qid))


def test_submission_adds_date_and_message_id(servers):
    p, sub, subs = servers
    qids = []
    for port, implicit in ((sub, False), (subs, True)):
        c = t.connect(p, port=port, implicit_tls=implicit)
        c.ehlo()
        if not implicit:
            c.starttls()
            c.ehlo()
        assert c.auth_plain("alice", PASSWORD).code == 235
        qids.append(h.queued_id(c.send_message("alice@localhost", [RCPT], BARE_MESSAGE)))
    for qid in qids:
        head = headers_of(t.wait_spool_message(p, qid))
        dates = re.findall(r"^Date: (.+)$", head, re.M)
        ids = re.findall(r"^Message-ID: (.+)$", head, re.M | re.I)
        assert len(dates) == 1 and len(ids) == 1, head
        assert email.utils.parsedate_to_datetime(dates[0]) is not None
        assert re.fullmatch(r"<[^<>@\s]+@mx\.test\.example>", ids[0]), ids[0]
        assert "Subject: no date, no id" in head

    # Headers the client wrote are kept as they are, not doubled.
    c = t.connect(p, port=subs, implicit_tls=True)
    c.ehlo()
    assert c.auth_plain("alice", PASSWORD).code == 235
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("has both")))
    head = headers_of(t.wait_spool_message(p, qid))
    assert head.count("\nDate: ") == 1 and "Date: Mon, 01 Jan 2024 00:00:00 +0000" in head
    assert len(re.findall(r"^Message-ID: ", head, re.M)) == 1
    assert "@client.example>" in head


def test_smtp_listener_adds_neither(servers):
    p, _, _ = servers
    c = t.connect(p)  # the smtp listener, from a relay network
    c.ehlo()
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], BARE_MESSAGE))
    msg = t.wait_spool_message(p, qid)
    head = headers_of(msg)
    assert not re.search(r"^Date:", head, re.M), head
    assert not re.search(r"^Message-ID:", head, re.M | re.I), head
    assert msg.without_first_header() == h.crlf_to_lf(BARE_MESSAGE)
