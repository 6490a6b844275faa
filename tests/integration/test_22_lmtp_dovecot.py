"""t-22: LMTP delivery to a real Dovecot (Debian dovecot-lmtpd), started by the
test on a private unix socket, lands in Dovecot's Maildir (SPEC §7 `lmtp:`)."""

import re

import pytest

import queue_helpers as q

pytestmark = pytest.mark.skipif(not q.have_dovecot(),
                                reason="dovecot-lmtpd is not installed (scripts/install-deps.sh)")


@pytest.fixture
def dovecot(short_tmp):
    d = q.Dovecot(short_tmp).start()
    yield d
    d.stop()


def test_lmtp_to_dovecot(petrel_factory, dovecot):
    p = petrel_factory({"domains": {"dove.example": {"deliver": f"lmtp:unix:{dovecot.socket}"}}})
    qid = q.submit(p, "alice@localhost", ["carol@dove.example", "dave@dove.example"], "via lmtp")
    for user in ("carol", "dave"):
        line = q.delivery_line(p, qid, f"{user}@dove.example", "sent", timeout=15)
        assert line, p.log_text() + dovecot.log_text()
        assert "relay=lmtp" in line and re.search(r"status=sent \(250 2\.0\.0 ", line), line
    carol = q.wait_maildir(dovecot.maildir("carol"), 1)
    dave = q.wait_maildir(dovecot.maildir("dave"), 1)
    assert len(carol) == 1 and len(dave) == 1, dovecot.log_text()
    m = carol[0]
    assert m["Subject"] == "via lmtp"
    assert m["X-Original-To"] == "carol@dove.example"
    assert "carol@dove.example" in m.get_all("Delivered-To")
    assert m["Return-Path"] == "<alice@localhost>"
    assert any(qid in r for r in m.get_all("Received")), m.items()
    assert m.get_payload().strip() == "Body of via lmtp."
    assert dave[0]["X-Original-To"] == "dave@dove.example"
    assert p.wait_log(re.escape(qid) + r": removed$", 5)
    assert q.wait_queue_empty(p)
    assert re.search(r"saved mail to INBOX", dovecot.log_text())


def test_lmtp_server_down_defers(petrel_factory, short_tmp):
    p = petrel_factory({"domains": {"dove.example": {"deliver": f"lmtp:unix:{short_tmp}/none"}},
                        "queue": {"retry": {"min": "1h", "max": "1h"}}})
    qid = q.submit(p, "alice@localhost", "carol@dove.example", "nobody home")
    line = q.delivery_line(p, qid, "carol@dove.example", "deferred")
    assert line and "relay=lmtp" in line, p.log_text()
    [entry] = p.queue_list()
    assert entry["recipients"][0]["status"] == "deferred"
