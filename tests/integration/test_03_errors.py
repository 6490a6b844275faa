"""t-03: the error rows of SPEC §5: 500, 503, 554 5.5.1, 501, 554 5.7.1, 550 5.1.1, 452 4.5.3."""

import petrel_harness as h


def test_unknown_command_500(client):
    assert client.cmd("XYZZY").startswith("500 5.5.2")
    assert client.cmd("NOOP").code == 250  # the session goes on


def test_mail_before_helo_503(server):
    c = server.connect()
    assert c.mail("alice@localhost").startswith("503 5.5.1")


def test_rcpt_before_mail_503(client):
    assert client.rcpt("alice@localhost").startswith("503 5.5.1")


def test_mail_inside_transaction_503(client):
    assert client.mail("alice@localhost").code == 250
    assert client.mail("bob@localhost").startswith("503 5.5.1")


def test_data_before_mail_503(client):
    assert client.cmd("DATA").startswith("503 5.5.1")


def test_bdat_before_mail_503(client):
    client.send(b"BDAT 4 LAST\r\nabcd")
    r = client.reply()
    assert r.startswith("503 5.5.1")
    assert client.cmd("NOOP").code == 250  # the 4 octets were not read as a command


def test_data_without_accepted_recipient_554(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt("nobody@localhost").startswith("550 5.1.1")
    assert client.cmd("DATA").startswith("554 5.5.1")
    assert server.spool_files() == []


def test_data_without_any_rcpt_554(client):
    assert client.mail("alice@localhost").code == 250
    assert client.cmd("DATA").startswith("554 5.5.1")


def test_bdat_without_accepted_recipient_554(client, server):
    assert client.mail("alice@localhost").code == 250
    client.send(b"BDAT 5 LAST\r\nhello")
    assert client.reply().startswith("554 5.5.1")
    assert client.cmd("NOOP").code == 250
    assert server.spool_files() == []


def test_bad_sender_syntax_501(client):
    for bad in ("MAIL FROM:<a@b@c>", "MAIL FROM:<alice@>", "MAIL FROM:<a b@localhost>",
                "MAIL FROM:<@localhost>", "MAIL FROM:<alice@local..host>"):
        r = client.cmd(bad)
        assert r.startswith("501 5.1.7"), f"{bad}: {r}"


def test_bad_recipient_syntax_501(client):
    assert client.mail("alice@localhost").code == 250
    for bad in ("RCPT TO:<a@b@c>", "RCPT TO:<alice@>", "RCPT TO:<a b@localhost>",
                "RCPT TO:<@localhost>", "RCPT TO:<>"):
        r = client.cmd(bad)
        assert r.startswith("501 5.1.3"), f"{bad}: {r}"


def test_relay_allowed_from_relay_network(client):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt("someone@elsewhere.example").startswith("250 2.1.5")


def test_relay_denied_outside_relay_networks(petrel_factory):
    p = petrel_factory({"relay": {"networks": ["10.0.0.0/8"]}})
    c = p.connect()
    c.ehlo()
    assert c.mail("someone@elsewhere.example").code == 250
    r = c.rcpt("victim@elsewhere.example")
    assert r.startswith("554 5.7.1"), r
    assert "Relay access denied" in r.last
    # local recipients are still accepted from anywhere
    assert c.rcpt("alice@localhost").startswith("250 2.1.5")


def test_unknown_local_user_550(client):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt("carol@localhost").startswith("550 5.1.1")
    assert client.rcpt("alice@localhost").startswith("250 2.1.5")


def test_local_domain_case_insensitive(client):
    assert client.mail("x@elsewhere.example").code == 250
    assert client.rcpt("alice@LOCALHOST").startswith("250 2.1.5")
    assert client.rcpt("carol@LocalHost").startswith("550 5.1.1")


def test_too_many_recipients_452(client):
    assert client.mail("alice@localhost").code == 250
    for i in range(5):
        assert client.rcpt(f"r{i}@{h.REMOTE}").code == 250
    r = client.rcpt(f"r5@{h.REMOTE}")
    assert r.startswith("452 4.5.3"), r
    # the five accepted recipients still make a message
    h.queued_id(client.data(h.make_message("five")))


def test_too_many_recipients_message_keeps_first_five(client, server):
    assert client.mail("alice@localhost").code == 250
    for i in range(7):
        client.rcpt(f"r{i}@{h.REMOTE}")
    qid = h.queued_id(client.data(h.make_message("five")))
    assert server.spool_message(qid).recipients == [f"r{i}@{h.REMOTE}" for i in range(5)]
