"""t-46: PROXY protocol headers as any proxy may send them (written by the
test, no HAProxy needed): split headers, LOCAL, client bytes in the same
packet (including a TLS ClientHello), missing or broken headers.
"""

import socket

import petrel_harness as h
import tls_helpers as t

V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def proxied_server(petrel_factory, **listener):
    p = petrel_factory(t.tls_overrides(users={"alice": t.sha512_hash("pw")}), start=False)
    p.config["listen"] = [{"address": f"127.0.0.1:{p.port}", "proxy_protocol": True, **listener}]
    p.write_config(p.config)
    return p.start()


def raw(p, timeout=h.REPLY_TIMEOUT):
    c = h.SmtpClient.tcp("127.0.0.1", p.port, timeout=timeout)
    p._conns.append(c)
    return c


def test_split_header_local_and_early_data(petrel_factory):
    p = proxied_server(petrel_factory)
    # v1 header in two writes.
    c = raw(p)
    c.send(b"PROXY TCP4 192.0.2.44 127.0.0")
    assert c.pending(0.2) == b""
    c.send(b".1 50123 25\r\n")
    assert c.reply().code == 220
    assert p.wait_log(r"connect from \[192\.0\.2\.44\]:50123$")
    # Header and EHLO in one write: the EHLO is answered after the greeting.
    c = raw(p)
    c.send(b"PROXY TCP6 2001:db8::7 ::1 40000 25\r\nEHLO early.example\r\n")
    assert c.reply().code == 220
    assert c.reply().lines[0] == "250-mx.test.example"
    assert p.wait_log(r"connect from \[2001:db8::7\]:40000$")
    # v2 LOCAL (a health check): the connection's own address is kept.
    c = raw(p)
    c.send(V2_LOCAL)
    assert c.reply().code == 220
    sport = c.sock.getsockname()[1]
    assert p.wait_log(rf"connect from \[127\.0\.0\.1\]:{sport}$")


def test_header_and_client_hello_in_one_packet(petrel_factory):
    p = proxied_server(petrel_factory, mode="submissions")
    for header in (b"PROXY TCP4 192.0.2.5 127.0.0.1 4000 465\r\n", V2_LOCAL):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            c = t.PrefixedTls(s, header)
            assert c.version() in ("TLSv1.2", "TLSv1.3")
            assert c.reply().code == 220
            c.send(b"EHLO client.example\r\n")
            assert "AUTH PLAIN LOGIN" in c.reply().texts
        finally:
            s.close()
    assert p.wait_log(r"TLS connection established from \[192\.0\.2\.5\]:4000")
    assert "TLS handshake failed" not in p.log_text()


def test_invalid_header_is_closed_without_greeting(petrel_factory):
    p = proxied_server(petrel_factory)
    for junk in (b"EHLO client.example\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                 b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00", b"PROXY " + b"x" * 200):
        c = raw(p, timeout=5)
        c.send(junk)
        data, closed = c.read_until_close(5)
        assert closed and data == b"", (junk, data)
    assert p.log_text().count("invalid PROXY protocol header") == 4


def test_silent_connection_without_header_is_closed(petrel_factory):
    p = proxied_server(petrel_factory)
    c = raw(p, timeout=15)
    data, closed = c.read_until_close(14)
    assert closed and data == b""
    assert p.wait_log(r"closing \[127\.0\.0\.1\]:\d+: no PROXY header in time")


def test_connections_waiting_for_a_header_are_capped(petrel_factory):
    p = petrel_factory(t.tls_overrides(limits={"max_workers": 2}), start=False)
    p.config["listen"] = [{"address": f"127.0.0.1:{p.port}", "proxy_protocol": True}]
    p.write_config(p.config)
    p.start()
    idle = [raw(p) for _ in range(2)]
    c = raw(p)
    r = c.reply()
    assert r.last.startswith("421 4.7.0"), r
    assert c.is_closed(5)
    # Once a waiting connection sends its header, it becomes a session.
    idle[0].send(b"PROXY TCP4 192.0.2.8 127.0.0.1 1234 25\r\n")
    assert idle[0].reply().code == 220
