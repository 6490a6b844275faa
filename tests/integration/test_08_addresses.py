"""t-08: RFC 5321 address parsing over the wire, relay rules and recipient verification."""

import os

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def test_null_sender(client, server):
    assert client.cmd("MAIL FROM:<>").startswith("250 2.1.0")
    assert client.rcpt("alice@localhost").code == 250
    qid = h.queued_id(client.data(h.make_message("null sender")))
    assert server.spool_message(qid).sender == ""


def test_quoted_local_part(client, server):
    assert client.cmd('MAIL FROM:<"john doe"@localhost>').startswith("250 2.1.0")
    assert client.cmd('RCPT TO:<"jane q. public"@open.example>').startswith("250 2.1.5")
    qid = h.queued_id(client.data(h.make_message("quoted")))
    m = server.spool_message(qid)
    assert m.sender == '"john doe"@localhost'
    assert m.recipients == ['"jane q. public"@open.example']


def test_quoted_local_part_with_escape(client):
    assert client.cmd('MAIL FROM:<"a\\"b"@localhost>').startswith("250 2.1.0")


def test_ip_literal_domains(client, server):
    assert client.cmd("MAIL FROM:<user@[192.0.2.1]>").startswith("250 2.1.0")
    assert client.cmd("RCPT TO:<user@[192.0.2.2]>").startswith("250 2.1.5")
    assert client.cmd("RCPT TO:<user@[IPv6:2001:db8::1]>").startswith("250 2.1.5")
    qid = h.queued_id(client.data(h.make_message("literal")))
    # the domain part (and the IPv6: tag) is case-insensitive
    got = [r.lower() for r in server.spool_message(qid).recipients]
    assert got == ["user@[192.0.2.2]", "user@[ipv6:2001:db8::1]"]


def test_bad_ip_literal(client):
    assert client.mail("alice@localhost").code == 250
    assert client.cmd("RCPT TO:<user@[999.1.2.3]>").startswith("501 5.1.3")


def test_postmaster_without_domain(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.cmd("RCPT TO:<postmaster>").startswith("250 2.1.5")
    assert client.cmd("RCPT TO:<Postmaster>").startswith("250 2.1.5")


def test_unqualified_non_postmaster_rejected(client):
    assert client.mail("alice@localhost").code == 250
    r = client.cmd("RCPT TO:<alice>")
    assert r.code in (501, 550, 553) and r.code // 100 == 5, r


def test_source_route_ignored(client):
    assert client.mail("alice@localhost").code == 250
    assert client.cmd("RCPT TO:<@relay.example:alice@localhost>").startswith("250 2.1.5")


def test_utf8_with_smtputf8(client, server):
    assert client.cmd("MAIL FROM:<jörg@localhost> SMTPUTF8").startswith("250 2.1.0")
    assert client.cmd("RCPT TO:<søren@open.example>").startswith("250 2.1.5")
    assert client.cmd("RCPT TO:<用户@例子.example>").startswith("250 2.1.5")
    msg = "Subject: grüße\r\nFrom: jörg@localhost\r\n\r\nhej søren\r\n".encode()
    qid = h.queued_id(client.data(msg))
    m = server.spool_message(qid)
    assert m.sender == "jörg@localhost"
    assert m.recipients == ["søren@open.example", "用户@例子.example"]
    assert m.fields.get("U") == "1"
    assert m.without_first_header() == h.crlf_to_lf(msg)


def test_utf8_sender_without_smtputf8_rejected(client):
    r = client.cmd("MAIL FROM:<jörg@localhost>")
    assert r.code in (501, 553), r
    assert r.last[4:5] == "5"


def test_utf8_recipient_without_smtputf8_rejected(client):
    assert client.mail("alice@localhost").code == 250
    r = client.cmd("RCPT TO:<søren@open.example>")
    assert r.code in (501, 553), r


def test_smtputf8_needs_ehlo(server):
    c = server.connect()
    assert c.cmd("HELO client.example").code == 250
    r = c.cmd("MAIL FROM:<jörg@localhost> SMTPUTF8")
    assert r.code // 100 == 5, r


def test_body_8bitmime_param(client, server):
    assert client.mail("alice@localhost", "BODY=8BITMIME").startswith("250 2.1.0")
    assert client.rcpt(RCPT).code == 250
    msg = "Subject: 8bit\r\n\r\ncaf\u00e9\r\n".encode("latin-1")
    qid = h.queued_id(client.data(msg))
    m = server.spool_message(qid)
    assert m.fields.get("B") == "8BITMIME"
    assert m.without_first_header() == h.crlf_to_lf(msg)


def test_unknown_mail_parameter_rejected(client):
    r = client.mail("alice@localhost", "FROBNICATE=yes")
    assert r.code in (501, 555), r


# -- relay rules ------------------------------------------------------------


def test_relay_from_relay_network(client):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt("someone@far-away.example").startswith("250 2.1.5")


def test_relay_denied_when_127_not_in_networks(petrel_factory):
    p = petrel_factory({"relay": {"networks": ["10.0.0.0/8"]}})
    c = p.connect()
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt("someone@far-away.example").startswith("554 5.7.1")
    assert c.rcpt("user@[192.0.2.1]").startswith("554 5.7.1")
    assert c.rcpt("bob@localhost").startswith("250 2.1.5")


def test_unix_listener_may_relay(petrel_factory, short_tmp):
    sock = os.path.join(short_tmp, "smtp.sock")
    p = petrel_factory({"relay": {"networks": ["10.0.0.0/8"]}},
                       extra_listen=[{"address": f"unix:{sock}"}])
    assert h.wait_until(lambda: os.path.exists(sock), 5)
    c = p.connect_unix(sock)
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt("someone@far-away.example").startswith("250 2.1.5")
    qid = h.queued_id(c.data(h.make_message("via unix")))
    assert p.spool_message(qid).recipients == ["someone@far-away.example"]
    # the TCP listener of the same server still refuses to relay
    t = p.connect()
    t.ehlo()
    assert t.mail("alice@localhost").code == 250
    assert t.rcpt("someone@far-away.example").startswith("554 5.7.1")


# -- recipient verification --------------------------------------------------


def test_users_list(client):
    assert client.mail("x@far-away.example").code == 250
    assert client.rcpt("alice@localhost").startswith("250 2.1.5")
    assert client.rcpt("bob@localhost").startswith("250 2.1.5")
    assert client.rcpt("mallory@localhost").startswith("550 5.1.1")


def test_recipient_delimiter(client, server):
    assert client.mail("x@far-away.example").code == 250
    assert client.rcpt("alice+tag@localhost").startswith("250 2.1.5")
    assert client.rcpt("mallory+tag@localhost").startswith("550 5.1.1")


def test_catch_all_accepts_unknown(client):
    assert client.mail("x@far-away.example").code == 250
    assert client.rcpt("alice@catch.example").startswith("250 2.1.5")
    assert client.rcpt("anyone@catch.example").startswith("250 2.1.5")


def test_domain_without_users_accepts_any(client):
    assert client.mail("x@far-away.example").code == 250
    assert client.rcpt("whoever@open.example").startswith("250 2.1.5")
