"""t-10: loop detection: more than limits.max_hops (50) Received: headers -> 554 5.4.6."""

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def _with_received(n):
    hdrs = [f"Received: from hop{i}.example by hop{i + 1}.example; Mon, 1 Jan 2024 00:00:00 +0000"
            for i in range(n)]
    return h.make_message(f"{n} hops", extra_headers=hdrs)


def test_50_received_headers_accepted(client, server):
    qid = h.queued_id(client.send_message("alice@localhost", [RCPT], _with_received(50)))
    m = server.spool_message(qid)
    assert m.message.count(b"Received:") == 51  # theirs plus ours


def test_51_received_headers_rejected(client, server):
    r = client.send_message("alice@localhost", [RCPT], _with_received(51))
    assert r.startswith("554 5.4.6"), r
    assert server.spool_files() == []
    assert client.cmd("NOOP").code == 250


def test_received_lowercase_counts(client, server):
    msg = h.make_message("lower", extra_headers=[f"received: from h{i}" for i in range(51)])
    assert client.send_message("alice@localhost", [RCPT], msg).startswith("554 5.4.6")


def test_received_in_body_does_not_count(client, server):
    body = [f"Received: quoted in the body {i}" for i in range(60)]
    h.queued_id(client.send_message("alice@localhost", [RCPT], h.make_message("body", body)))


def test_max_hops_configurable(petrel_factory):
    p = petrel_factory({"limits": {"max_hops": 3}})
    c = p.connect()
    c.ehlo()
    h.queued_id(c.send_message("alice@localhost", [RCPT], _with_received(3)))
    assert c.send_message("alice@localhost", [RCPT], _with_received(4)).startswith("554 5.4.6")


def test_hops_over_bdat(client, server):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250
    msg = _with_received(51)
    client.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    assert client.reply().startswith("554 5.4.6")
    assert server.spool_files() == []
