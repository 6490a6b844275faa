"""t-02: the greeting, EHLO/HELO and the simple commands (RSET, NOOP, VRFY, HELP, QUIT)."""

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def test_greeting(server):
    c = server.connect(greet=False)
    r = c.reply()
    assert r.last == "220 mx.test.example ESMTP petrel" or \
        r.last.startswith("220 mx.test.example ESMTP petrel")


def test_ehlo_advertises_extensions(server):
    c = server.connect()
    r = c.cmd("EHLO client.example")
    assert r.code == 250
    assert r.lines[0].startswith("250-mx.test.example")
    kw = [t.split()[0].upper() for t in r.texts[1:]]
    for ext in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"):
        assert ext in kw, f"{ext} not advertised: {r}"
    size = [t for t in r.texts if t.upper().startswith("SIZE")][0]
    assert size.split()[1] == str(64 * 1024)


def test_helo_then_mail(server):
    c = server.connect()
    r = c.cmd("HELO client.example")
    assert r.code == 250 and r.last.startswith("250 mx.test.example")
    assert c.mail("alice@localhost").startswith("250 2.1.0")


def test_ehlo_twice_resets(server):
    c = server.connect()
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    c.ehlo()
    # EHLO resets the transaction: a new MAIL is not a bad sequence.
    assert c.mail("alice@localhost").startswith("250 2.1.0")


def test_noop(client):
    assert client.cmd("NOOP").startswith("250 2.0.0")


def test_rset_clears_transaction(client):
    assert client.mail("alice@localhost").startswith("250 2.1.0")
    assert client.rcpt("alice@localhost").startswith("250 2.1.5")
    assert client.cmd("RSET").startswith("250 2.0.0")
    # No transaction any more: RCPT is a bad sequence, MAIL is fine again.
    assert client.rcpt("alice@localhost").startswith("503 5.5.1")
    assert client.mail("alice@localhost").startswith("250 2.1.0")


def test_vrfy(client):
    assert client.cmd("VRFY alice").code == 252


def test_help(client):
    assert client.cmd("HELP").code == 214


def test_quit_closes(client):
    assert client.cmd("QUIT").code == 221
    assert client.is_closed(5)


def test_commands_are_case_insensitive(server):
    c = server.connect()
    assert c.cmd("ehlo client.example").code == 250
    assert c.cmd("mail from:<alice@localhost>").startswith("250 2.1.0")
    assert c.cmd("rcpt to:<bob@localhost>").startswith("250 2.1.5")
    assert c.cmd("rset").startswith("250 2.0.0")


def test_message_accepted_reply(client, server):
    r = client.send_message("alice@localhost", [RCPT], h.make_message())
    qid = h.queued_id(r)
    assert len(qid) == 18 and qid.isalnum()
    assert qid in server.spool_files()


def test_two_messages_one_session(client, server):
    a = h.queued_id(client.send_message("alice@localhost", [RCPT], h.make_message("one")))
    b = h.queued_id(client.send_message("bob@localhost", [RCPT], h.make_message("two")))
    assert a != b
    assert sorted(server.spool_files()) == sorted([a, b])
