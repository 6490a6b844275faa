"""t-06: PIPELINING (RFC 2920): command groups in one write, content only after 354."""

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def test_pipelined_transaction(client, server):
    client.send(b"MAIL FROM:<alice@localhost>\r\n"
                b"RCPT TO:<bob@localhost>\r\n"
                b"RCPT TO:<" + RCPT.encode() + b">\r\n"
                b"DATA\r\n")
    rs = client.replies(4)
    assert rs[0].startswith("250 2.1.0"), rs
    assert rs[1].startswith("250 2.1.5"), rs
    assert rs[2].startswith("250 2.1.5"), rs
    assert rs[3].code == 354, rs
    msg = h.make_message("pipelined")
    client.send(msg + b".\r\nQUIT\r\n")
    qid = h.queued_id(client.reply())
    assert client.reply().code == 221
    m = server.spool_message(qid)
    assert m.recipients == ["bob@localhost", RCPT]
    assert m.without_first_header() == h.crlf_to_lf(msg)


def test_pipelined_group_with_rejected_recipient(client, server):
    client.send(b"MAIL FROM:<alice@localhost>\r\n"
                b"RCPT TO:<nobody@localhost>\r\n"
                b"RCPT TO:<alice@localhost>\r\n"
                b"DATA\r\n")
    rs = client.replies(4)
    assert rs[0].code == 250 and rs[1].startswith("550 5.1.1") and rs[2].code == 250, rs
    assert rs[3].code == 354
    client.send(h.make_message("partial") + b".\r\n")
    h.queued_id(client.reply())


def test_pipelined_group_all_recipients_rejected(client, server):
    client.send(b"MAIL FROM:<alice@localhost>\r\n"
                b"RCPT TO:<nobody@localhost>\r\n"
                b"DATA\r\n")
    rs = client.replies(3)
    assert rs[1].startswith("550 5.1.1"), rs
    assert rs[2].startswith("554 5.5.1"), rs
    assert client.cmd("NOOP").code == 250
    assert server.spool_files() == []


def test_hundred_messages_one_pipelined_session(client, server):
    group = (b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<" + RCPT.encode() + b">\r\nDATA\r\n")
    client.send(group)
    ids = []
    for i in range(100):
        rs = client.replies(3)
        assert [r.code for r in rs] == [250, 250, 354], f"message {i}: {rs}"
        tail = group if i < 99 else b"QUIT\r\n"
        # end of this message and the next command group in one write
        client.send(h.make_message(f"pipelined {i}", [f"message number {i}"]) + b".\r\n" + tail)
        ids.append(h.queued_id(client.reply()))
    assert client.reply().code == 221
    assert len(set(ids)) == 100
    assert sorted(server.spool_files()) == sorted(ids)
    assert ids == sorted(ids), "queue ids should sort by arrival"
    for i in (0, 50, 99):
        assert f"message number {i}".encode() in server.spool_message(ids[i]).message


def test_content_before_354_is_not_a_message(client, server):
    # The whole transaction, content included, in one write: the client did
    # not wait for 354, so the content must never become a message.
    client.send(b"MAIL FROM:<alice@localhost>\r\n"
                b"RCPT TO:<" + RCPT.encode() + b">\r\n"
                b"DATA\r\n"
                b"Subject: too early\r\n\r\nearly body\r\n.\r\n")
    data, _ = client.read_until_close(3)
    text = data.decode("utf-8", "replace")
    lines = [l for l in text.split("\r\n") if l]
    assert lines[:2] and lines[0].startswith("250") and lines[1].startswith("250"), text
    assert "queued as" not in text, text
    assert any(l[:1] == "5" for l in lines[2:]), f"no 5xx for early content: {text}"
    assert server.spool_files() == []
    assert server.tmp_files() == []


def test_content_before_354_followed_by_commands(client, server):
    client.send(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<" + RCPT.encode() + b">\r\nDATA\r\n"
                b"MAIL FROM:<x@localhost>\r\n.\r\n")
    data, _ = client.read_until_close(3)
    assert b"queued as" not in data, data
    assert server.spool_files() == []
