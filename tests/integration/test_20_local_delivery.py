"""t-20: local delivery lands where it should (SPEC §3 domains, aliases; §7).

A user, user+tag, an alias fanning out to two users and a pipe, a catch-all,
mbox, an aliases.file in /etc/aliases format with :include: and a
continuation line, and a SIGHUP that reloads a changed aliases file. Every
delivered message starts with Return-Path, Delivered-To and X-Original-To.
"""

import mailbox
import os
import re
import signal

import pytest

import petrel_harness as h
import queue_helpers as q


@pytest.fixture
def local(petrel_factory, tmp_path):
    rec = tmp_path / "rec"
    script = q.recorder_script(str(tmp_path / "rec.sh"), str(rec))
    p = petrel_factory({
        "domains": {"mbox.example": {"deliver": f"mbox:{tmp_path}/mbox/%u"}},
        "aliases": {"map": {"team": ["alice", "bob", f"|{script}"]}},
    })
    p.rec = str(rec)
    return p


def mail(p, *parts):
    return os.path.join(p.tmpdir, "mail", *parts)


def test_user_tag_alias_and_catch_all(local):
    p = local
    sender = "carol@remote.example"
    q1 = q.submit(p, sender, "alice@localhost", "to alice")
    q2 = q.submit(p, sender, "bob+news@localhost", "to bob+news")
    q3 = q.submit(p, sender, "team@localhost", "to team")
    q4 = q.submit(p, sender, "nobody@catch.example", "to catch-all")

    alice = q.wait_maildir(mail(p, "alice"), 2)
    bob = q.wait_maildir(mail(p, "bob"), 2)
    caught = q.wait_maildir(mail(p, "catch", "alice"), 1)
    runs = h.wait_until(lambda: q.recorded(p.rec), 10)
    assert len(alice) == 2 and len(bob) == 2 and len(caught) == 1, p.log_text()
    assert len(runs) == 1, runs

    q.assert_delivery_headers(q.by_subject(alice, "to alice"), sender,
                              "alice@localhost", "alice@localhost")
    q.assert_delivery_headers(q.by_subject(bob, "to bob+news"), sender,
                              "bob+news@localhost", "bob+news@localhost")
    q.assert_delivery_headers(q.by_subject(alice, "to team"), sender,
                              "alice@localhost", "team@localhost")
    q.assert_delivery_headers(q.by_subject(bob, "to team"), sender,
                              "bob@localhost", "team@localhost")
    q.assert_delivery_headers(q.by_subject(caught, "to catch-all"), sender,
                              "alice@catch.example", "nobody@catch.example")
    # our Received: comes right after the delivery headers, the body is intact
    m = q.by_subject(alice, "to alice")
    assert m.items()[3][0] == "Received" and q1 in m.items()[3][1]
    assert m.get_payload().strip() == "Body of to alice."

    # the pipe got the message on stdin and the SPEC §7 environment
    run = runs[0]
    piped = q.email.message_from_bytes(run["stdin"])
    q.assert_delivery_headers(piped, sender, "team@localhost", "team@localhost")
    assert piped["Subject"] == "to team"
    env = run["env"]
    assert env["SENDER"] == sender
    assert env["RECIPIENT"] == "team@localhost"
    assert env["ORIGINAL_RECIPIENT"] == "team@localhost"
    assert env["USER"] == "team"
    assert env["DOMAIN"] == "localhost"
    assert env["EXTENSION"] == ""
    assert env["QUEUE_ID"] == q3

    # the log says where each went, and each message is removed
    assert q.delivery_line(p, q1, "alice@localhost")
    line = q.delivery_line(p, q2, "bob+news@localhost")
    assert "relay=local" in line and "delay=" in line, line
    line = q.delivery_line(p, q3, "bob@localhost")
    assert "orig_to=<team@localhost>" in line and "relay=local" in line, line
    assert q.log_lines(p, re.escape(q3) + r": to=<\|.*rec\.sh>, orig_to=<team@localhost>, "
                                          r"relay=pipe, delay=[\d.]+, (dsn=[\d.]+, )?status=sent")
    line = q.delivery_line(p, q4, "alice@catch.example")
    assert "orig_to=<nobody@catch.example>" in line, line
    for qid in (q1, q2, q3, q4):
        assert p.wait_log(re.escape(qid) + r": removed$", 5), p.log_text()
    assert q.wait_queue_empty(p)


def test_mbox_delivery(local):
    p = local
    q.submit(p, "carol@remote.example", "dave@mbox.example", "first",
             body_lines=["From the start, a line that needs quoting.", ">From already quoted."])
    q.submit(p, "", "dave@mbox.example", "second")
    path = os.path.join(os.path.dirname(p.tmpdir), "mbox", "dave")
    assert q.wait_log_count(p, r"to=<dave@mbox\.example>.*status=sent", 2), p.log_text()
    with open(path, "rb") as f:
        raw = f.read()
    # the two are delivered in parallel: either may come first
    assert raw.startswith(b"From "), raw[:80]
    assert re.search(rb"(^|\n\n)From carol@remote\.example \w{3} \w{3} [ \d]\d ", raw), raw
    assert re.search(rb"\n\nFrom MAILER-DAEMON |^From MAILER-DAEMON ", raw), raw
    assert b"\n>From the start" in raw and b"\n>>From already quoted." in raw
    box = mailbox.mbox(path, create=False)
    msgs = sorted((box.get_message(k) for k in box.keys()), key=lambda m: m["Subject"])
    assert [m["Subject"] for m in msgs] == ["first", "second"]
    q.assert_delivery_headers(msgs[0], "carol@remote.example", "dave@mbox.example",
                              "dave@mbox.example")
    q.assert_delivery_headers(msgs[1], "", "dave@mbox.example", "dave@mbox.example")


def aliases_setup(tmp_path, petrel_factory, users=None):
    inc = tmp_path / "everyone.list"
    inc.write_text("# the whole company\nerin\nfrank, grace\n")
    aliases = tmp_path / "aliases"
    aliases.write_text(
        "# /etc/aliases style\n"
        "staff: carol,\n"
        "  dave\n"
        "\n"
        f"everyone: :include:{inc}\n"
        "boss: staff, heidi\n")
    dom = {"deliver": f"maildir:{tmp_path}/lists/%u"}
    if users is not None:
        dom["users"] = users
    p = petrel_factory({"domains": {"lists.example": dom}, "aliases": {"file": str(aliases)}})
    return p, aliases


def test_aliases_file_include_and_continuation(petrel_factory, tmp_path):
    p, _ = aliases_setup(tmp_path, petrel_factory)
    q1 = q.submit(p, "alice@localhost", "staff@lists.example", "staff")
    q.submit(p, "alice@localhost", "everyone@lists.example", "everyone")
    q.submit(p, "alice@localhost", "boss@lists.example", "boss")
    box = lambda u: str(tmp_path / "lists" / u)  # noqa: E731
    expect = {"carol": ["boss", "staff"], "dave": ["boss", "staff"], "heidi": ["boss"],
              "erin": ["everyone"], "frank": ["everyone"], "grace": ["everyone"]}
    for user, subjects in expect.items():
        got = q.wait_maildir(box(user), len(subjects))
        assert sorted(m["Subject"] for m in got) == subjects, (user, p.log_text())
    q.assert_delivery_headers(q.by_subject(q.maildir(box("dave")), "staff"), "alice@localhost",
                              "dave@lists.example", "staff@lists.example")
    line = q.delivery_line(p, q1, "dave@lists.example")
    assert "orig_to=<staff@lists.example>" in line, line
    assert q.wait_queue_empty(p)


def test_aliases_file_name_accepted_at_rcpt(petrel_factory, tmp_path):
    p, _ = aliases_setup(tmp_path, petrel_factory, users=["carol", "dave", "heidi"])
    c = p.connect()
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    r = c.rcpt("staff@lists.example")
    assert r.code == 250, r


def test_sighup_reloads_aliases_file(petrel_factory, tmp_path):
    p, aliases = aliases_setup(tmp_path, petrel_factory)
    first = q.runner_pid(p)
    assert first, p.log_text()
    q.submit(p, "alice@localhost", "staff@lists.example", "before")
    q.wait_maildir(str(tmp_path / "lists" / "carol"), 1)

    aliases.write_text("staff: ivan\n")
    ready = r"petrel/qmgr\[\d+\]: queue runner (started|reloaded)"
    before = len(q.log_lines(p, ready))
    p.signal(signal.SIGHUP)
    # the runner reloads in place, or is restarted with the new config
    assert q.wait_log_count(p, ready, before + 1, timeout=10), p.log_text()
    q.submit(p, "alice@localhost", "staff@lists.example", "after")
    got = q.wait_maildir(str(tmp_path / "lists" / "ivan"), 1)
    assert [m["Subject"] for m in got] == ["after"], p.log_text()
    assert [m["Subject"] for m in q.maildir(str(tmp_path / "lists" / "carol"))] == ["before"]
    assert q.wait_queue_empty(p)


def test_pickup_latency(local):
    """A committed message is delivered at once (notify pipe, not polling)."""
    p = local
    for i in range(5):
        qid = q.submit(p, "carol@remote.example", "alice@localhost", f"fast {i}")
        line = q.delivery_line(p, qid, "alice@localhost", timeout=5)
        assert line, p.log_text()
        accepted = q.log_lines(p, re.escape(qid) + r": from=<")
        assert len(accepted) == 1
        latency = q.log_time(line) - q.log_time(accepted[0])
        assert 0 <= latency < 1.0, (latency, accepted[0], line)



def test_listed_user_with_delimiter_is_not_split(petrel_factory, tmp_path):
    """users: ["news+daily"] is its own mailbox; carol+x is carol's."""
    p = petrel_factory({"domains": {"users.example": {
        "deliver": f"maildir:{tmp_path}/u/%u/%e", "users": ["carol", "news+daily"]}}})
    q.submit(p, "alice@localhost", "news+daily@users.example", "own box")
    q.submit(p, "alice@localhost", "carol+x@users.example", "tagged")
    [m] = q.wait_maildir(str(tmp_path / "u" / "news+daily"), 1)
    q.assert_delivery_headers(m, "alice@localhost", "news+daily@users.example",
                              "news+daily@users.example")
    [m] = q.wait_maildir(str(tmp_path / "u" / "carol" / "x"), 1)
    assert m["Subject"] == "tagged"
    assert q.wait_queue_empty(p)
