"""t-45: HAProxy (send-proxy, send-proxy-v2) in front of a
`proxy_protocol: true` listener: the original client address is the one
logged, recorded, used by the relay rules and counted for max_per_ip.
"""

import re

import pytest

import petrel_harness as h
import tls_helpers as t

pytestmark = pytest.mark.skipif(not t.have_tool("haproxy"),
                                reason="haproxy not installed (scripts/install-deps.sh)")

LOCAL = "bob@localhost"
REMOTE_RCPT = f"friend@{h.REMOTE}"


@pytest.fixture
def proxied(petrel_factory, tmp_path):
    """(petrel, {"v1": port, "v2": port}): petrel listens only behind haproxy."""
    def make(**overrides):
        p = petrel_factory(h.deep_merge(t.tls_overrides(networks=["127.0.0.1/32"]), overrides),
                           start=False)
        p.config["listen"] = [{"address": f"127.0.0.1:{p.port}", "proxy_protocol": True}]
        p.write_config(p.config)
        p.start()
        ports = {"v1": h.free_port(), "v2": h.free_port()}
        d = tmp_path / f"haproxy{len(started)}"
        d.mkdir()
        hp = t.Haproxy(d, [(ports["v1"], p.port, "send-proxy"),
                           (ports["v2"], p.port, "send-proxy-v2")])
        started.append(hp)
        hp.start()
        return p, ports

    started = []
    yield make
    for hp in started:
        hp.stop()


def via(p, port, source):
    """A client connected to haproxy's frontend `port` from `source`."""
    c = t.connect(p, port=port, source=source, greet=False)
    r = c.reply()
    return c, r


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_original_client_address_is_used(proxied, version):
    p, ports = proxied()
    c, greeting = via(p, ports[version], t.OTHER_IP)
    assert greeting.last.startswith("220 mx.test.example ESMTP"), greeting
    sport = c.sock.getsockname()[1]
    assert p.wait_log(rf"connect from \[127\.0\.0\.2\]:{sport}$"), p.log_text()
    c.ehlo()
    # Relay rules see 127.0.0.2 (outside relay.networks), not haproxy's 127.0.0.1.
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(REMOTE_RCPT).last.startswith("554 5.7.1")
    assert c.rcpt(LOCAL).code == 250
    qid = h.queued_id(c.data(h.make_message(f"proxied {version}")))
    c.cmd("QUIT")
    assert p.wait_log(rf"{qid}: from=<alice@localhost>, .*client=\[127\.0\.0\.2\]:{sport}")
    # The Received: header names the original client too (the message may
    # already be delivered, so look at the Maildir copy if it left the spool).
    received = None
    if qid in p.spool_files():
        received = p.spool_message(qid).first_header()
    else:
        maildir = p.tmpdir + "/mail/bob"
        found = h.wait_until(lambda: [m for m in t.all_text_under(maildir).split(b"Received: ")
                                      if qid.encode() in m], 5)
        received = found[0] if found else b""
    assert b"[127.0.0.2]" in received, received

    # From 127.0.0.1 through the same proxy, relaying is allowed.
    c, _ = via(p, ports[version], "127.0.0.1")
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(REMOTE_RCPT).code == 250


def test_direct_connection_without_header_is_closed(proxied):
    p, ports = proxied()
    raw = h.SmtpClient.tcp("127.0.0.1", p.port, timeout=5)
    p._conns.append(raw)
    raw.send(b"EHLO client.example\r\n")
    data, closed = raw.read_until_close(5)
    assert closed, "connection without a PROXY header left open"
    assert data == b"", data  # not even a greeting
    assert p.wait_log(r"closing \[127\.0\.0\.1\]:\d+: invalid PROXY protocol header")
    # A forged header from a client of haproxy is the client's data, not a header.
    c, greeting = via(p, ports["v1"], t.OTHER_IP)
    assert greeting.code == 220
    r = c.cmd("PROXY TCP4 127.0.0.1 127.0.0.1 1 25")
    assert r.code == 500, r
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(REMOTE_RCPT).last.startswith("554 5.7.1")


def test_max_per_ip_counts_the_real_address(proxied):
    p, ports = proxied(limits={"max_per_ip": 1})
    first, g1 = via(p, ports["v2"], t.OTHER_IP)
    assert g1.code == 220
    assert p.wait_log(r"connect from \[127\.0\.0\.2\]")
    # Same real client, second connection: refused although haproxy's own
    # address is what petrel's socket sees for every connection.
    second, g2 = via(p, ports["v1"], t.OTHER_IP)
    assert g2.last.startswith("421 4.7.0"), g2
    assert "127.0.0.2" in g2.last
    assert second.is_closed(5)
    assert p.wait_log(r"refusing connection from \[127\.0\.0\.2\]:\d+: too many connections")
    # Another real client through the same haproxy is served.
    third, g3 = via(p, ports["v2"], "127.0.0.3")
    assert g3.code == 220
    third.cmd("QUIT")
    first.cmd("QUIT")
    assert first.is_closed(5)
    # The slot is free again once the first session ended.
    assert h.wait_until(lambda: re.search(r"disconnect from \[127\.0\.0\.2\]", p.log_text()), 5)

    def fourth_ok():
        c, g = via(p, ports["v1"], t.OTHER_IP)
        c.close()
        return g.code == 220
    assert h.wait_until(fourth_ok, 5, interval=0.2)



def test_implicit_tls_behind_haproxy(petrel_factory, tmp_path):
    sport = h.free_port()
    p = petrel_factory(t.tls_overrides(users={"alice": t.sha512_hash("pw 465")}),
                       extra_listen=[{"address": f"127.0.0.1:{sport}", "mode": "submissions",
                                      "proxy_protocol": True}])
    assert h.wait_until(lambda: h.port_is_listening(sport), 5)
    fport = h.free_port()
    hp = t.Haproxy(tmp_path, [(fport, sport, "send-proxy-v2")]).start()
    try:
        c = t.connect(p, port=fport, source=t.OTHER_IP, implicit_tls=True)
        sport_client = c.sock.getsockname()[1]
        c.ehlo()
        assert c.auth_plain("alice", "pw 465").code == 235
        qid = h.queued_id(c.send_message("alice@localhost", [REMOTE_RCPT], h.make_message("465")))
        msg = t.wait_spool_message(p, qid)
        assert msg.fields["C"] == f"[127.0.0.2]:{sport_client}"
        assert t.received_tls(msg)
        assert b"[127.0.0.2]" in msg.first_header()
    finally:
        hp.stop()
