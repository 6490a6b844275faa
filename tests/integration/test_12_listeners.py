"""t-12: listeners: IPv6 loopback, unix sockets, several at once."""

import os

import pytest

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


@pytest.mark.skipif(not h.have_ipv6_loopback(), reason="no IPv6 loopback (::1)")
def test_ipv6_listener(petrel_factory):
    port6 = h.free_port("::1")
    p = petrel_factory(extra_listen=[{"address": f"[::1]:{port6}"}])
    assert h.wait_until(lambda: h.port_is_listening(port6), 5)
    c = p.connect(host="::1", port=port6)
    c.ehlo()
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("v6")))
    m = p.spool_message(qid)
    assert "::1" in m.fields["C"], m.fields["C"]
    assert p.wait_log(r"connect from \[::1\]:\d+")


def test_unix_listener(petrel_factory, short_tmp):
    sock = os.path.join(short_tmp, "smtp.sock")
    p = petrel_factory(extra_listen=[{"address": f"unix:{sock}"}])
    assert h.wait_until(lambda: os.path.exists(sock), 5)
    c = p.connect_unix(sock)
    c.ehlo()
    qid = h.queued_id(c.send_message("alice@localhost", ["bob@localhost"], h.make_message("unix")))
    assert p.spool_message(qid).fields["C"].startswith("unix")


def test_two_tcp_listeners(petrel_factory):
    port2 = h.free_port()
    p = petrel_factory(extra_listen=[{"address": f"127.0.0.1:{port2}"}])
    assert h.wait_until(lambda: h.port_is_listening(port2), 5)
    for port in (p.port, port2):
        c = p.connect(port=port)
        assert c.greeting.startswith("220 mx.test.example")
        c.cmd("QUIT")


def test_port_in_use_fails_to_start(petrel_factory):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        p = petrel_factory(start=False)
        p.config["listen"] = [{"address": f"127.0.0.1:{busy.getsockname()[1]}"}]
        p.write_config(p.config)
        p.start(wait=False)
        rc = p.wait_exit(10)
        assert rc is not None and rc != 0
        assert p.log_text().strip(), "no error logged"
