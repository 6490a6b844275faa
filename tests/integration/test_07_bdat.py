"""t-07: CHUNKING (RFC 3030): BDAT chunks, BDAT n LAST, pipelined BDATs."""

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def _begin(client):
    assert client.mail("alice@localhost").code == 250
    assert client.rcpt(RCPT).code == 250


def test_bdat_several_chunks(client, server):
    _begin(client)
    msg = h.make_message("bdat", ["line one", ".starts with a dot", "line three"])
    parts = [msg[:10], msg[10:57], msg[57:]]
    for p in parts[:-1]:
        client.send(b"BDAT %d\r\n" % len(p) + p)
        r = client.reply()
        assert r.startswith("250"), r
    client.send(b"BDAT %d LAST\r\n" % len(parts[-1]) + parts[-1])
    qid = h.queued_id(client.reply())
    # BDAT content is not dot-stuffed: the leading dot is kept as sent.
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_bdat_single_last_chunk(client, server):
    _begin(client)
    msg = h.make_message("bdat last")
    client.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    qid = h.queued_id(client.reply())
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_bdat_zero_last(client, server):
    _begin(client)
    msg = h.make_message("bdat zero last")
    client.send(b"BDAT %d\r\n" % len(msg) + msg)
    assert client.reply().code == 250
    client.send(b"BDAT 0 LAST\r\n")
    qid = h.queued_id(client.reply())
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_bdat_pipelined(client, server):
    msg = h.make_message("bdat pipelined", ["x" * 300, "y" * 300])
    a, b, c = msg[:100], msg[100:400], msg[400:]
    client.send(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<" + RCPT.encode() + b">\r\n"
                + b"BDAT %d\r\n" % len(a) + a
                + b"BDAT %d\r\n" % len(b) + b
                + b"BDAT %d LAST\r\n" % len(c) + c
                + b"QUIT\r\n")
    rs = client.replies(6)
    assert [r.code for r in rs] == [250] * 5 + [221], rs
    qid = h.queued_id(rs[4])
    assert server.spool_message(qid).without_first_header() == h.crlf_to_lf(msg)


def test_bdat_chunk_with_crlf_split_across_chunks(client, server):
    _begin(client)
    msg = b"Subject: split\r\n\r\nab\r\ncd\r\n"
    i = msg.index(b"ab\r") + 3  # split between CR and LF
    client.send(b"BDAT %d\r\n" % i + msg[:i])
    assert client.reply().code == 250
    client.send(b"BDAT %d LAST\r\n" % (len(msg) - i) + msg[i:])
    qid = h.queued_id(client.reply())
    assert server.spool_message(qid).without_first_header() == b"Subject: split\n\nab\ncd\n"


def test_bdat_then_data_in_next_transaction(client, server):
    _begin(client)
    msg = h.make_message("bdat first")
    client.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    a = h.queued_id(client.reply())
    b = h.queued_id(client.send_message("alice@localhost", [RCPT], h.make_message("data second")))
    assert sorted(server.spool_files()) == sorted([a, b])


def test_data_after_bdat_is_bad_sequence(client, server):
    _begin(client)
    client.send(b"BDAT 5\r\nhello")
    assert client.reply().code == 250
    assert client.cmd("DATA").startswith("503 5.5.1")


def test_rset_discards_chunks(client, server):
    _begin(client)
    client.send(b"BDAT 5\r\nhello")
    assert client.reply().code == 250
    assert client.cmd("RSET").code == 250
    assert server.spool_files() == []
    assert client.rcpt(RCPT).startswith("503 5.5.1")
