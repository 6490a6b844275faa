"""t-33: a scripted milter (Debian's python3-milter over the real libmilter)
drives what real daemons never send on demand (SPEC §8, petrel-filters(7)).

Each test starts the milter on a private unix socket (short_tmp), points one
petrel at it, talks SMTP on the wire and checks the effect where it lands:
the reply code, the spooled message and envelope, the hold file and `petrel
queue list`, the log, and what the milter saw (ScriptedMilter.events()).

Recipients are in remote.example: routes send them to a dead port, so the
message stays in the spool where the test can read it.
"""
import os
import time

import pytest

import petrel_harness as h
from milters.scripted import ScriptedMilter

RCPT = "bob@remote.example"


def start(petrel_factory, milter, extra_filters=(), limits=None, **opts):
    f = {"name": "scripted", "milter": milter.address}
    f.update(opts)
    over = {"filters": [f, *extra_filters]}
    if limits:
        over["limits"] = limits
    return petrel_factory(over)


def send(p, rcpts=(RCPT,), body_lines=None, subject="t", extra_headers=(), sender="alice@localhost"):
    c = p.connect()
    c.ehlo()
    r = c.send_message(sender, list(rcpts),
                       h.make_message(subject, body_lines, extra_headers=extra_headers))
    c.cmd("QUIT")
    c.close()
    return r


def stored(p, r):
    assert r.code == 250, r
    return p.spool_message(h.queued_id(r))


def header_lines(msg):
    head, _ = msg.headers_and_body()
    return head.decode("utf-8", "replace").split("\n")


# --------------------------------------------------------------------------
# Changes at the end of the message


def test_header_changes(petrel_factory, short_tmp):
    script = {"eom_changes": [
        ["chgheader", "Subject", 1, "changed by milter"],
        ["chgheader", "X-Remove", 1, ""],  # empty value deletes
        ["chgheader", "X-Twice", 2, "second changed"],
        ["chgheader", "X-Fold", 1, "unfolded"],  # the whole folded field goes
        ["addheader", "X-Added", "added"],
        ["insheader", 0, "X-First", "inserted at 0"],
    ]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p, subject="original", extra_headers=[
            "X-Remove: bye", "X-Twice: one", "X-Twice: two", "X-Fold: one", "\ttwo", "  three",
            "X-After-Fold: kept"])
        msg = stored(p, r)
        lines = header_lines(msg)
        # insheader 0: before the first field the milter saw, our Received:
        assert lines[0] == "X-First: inserted at 0", lines
        assert lines[1].startswith("Received: from client.example"), lines
        assert "Subject: changed by milter" in lines, lines
        assert not any(l.startswith("Subject: original") for l in lines), lines
        assert not any(l.startswith("X-Remove") for l in lines), lines
        assert "X-Twice: one" in lines and "X-Twice: second changed" in lines, lines
        assert "X-Twice: two" not in lines, lines
        i = lines.index("X-Fold: unfolded")
        assert lines[i + 1] == "X-After-Fold: kept", lines
        # Folded fields reach the milter unfolded only by the protocol's LF.
        assert ["X-Fold", "one\n\ttwo\n  three"] in m.events("eom")[0]["headers"]
        assert lines[-1] == "X-Added: added", lines  # addheader: at the end
        _, body = msg.headers_and_body()
        assert body == b"Hello from the petrel tests.\n", body
        # The milter saw our Received: first, and the client's fields as sent.
        eom = m.events("eom")
        assert len(eom) == 1, m.events()
        names = [n for n, _ in eom[0]["headers"]]
        assert names[0] == "Received", names
        assert ["X-Twice", "one"] in eom[0]["headers"], eom[0]["headers"]
        assert p.wait_log(rf"{msg.id}: filter=scripted verdict=continue latency=\d+ms")


def test_replace_body(petrel_factory, short_tmp):
    script = {"eom_changes": [["replacebody", "New body.\r\nSecond line.\r\n"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p, body_lines=["old body", "..leading dot"])
        msg = stored(p, r)
        head, body = msg.headers_and_body()
        assert body == b"New body.\nSecond line.\n", body  # CRLF from the milter made LF
        assert b"Subject: t" in head
        # The milter got the body as SMTP carries it: CRLF, dot-stuffing undone.
        assert m.events("eom")[0]["body"] == "old body\r\n.leading dot\r\n"
        # Z is the size of the filtered message on the wire.
        assert int(msg.fields["Z"]) == len(msg.message) + msg.message.count(b"\n")


def test_replaced_body_with_bare_cr_is_a_filter_error(petrel_factory, short_tmp):
    script = {"eom_changes": [["replacebody", "smuggled\r.\rbody\r\n"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == 451 and "4.7.1" in r.last, r
        assert p.spool_files() == []
        assert p.wait_log(r"filter=scripted verdict=tempfail .*bare CR")


def test_add_and_delete_recipients(petrel_factory, short_tmp):
    script = {"eom_changes": [
        ["addrcpt", "<dave@remote.example>"],
        ["addrcpt_par", "<erin@remote.example>", "NOTIFY=NEVER"],
        ["delrcpt", "<carol@remote.example>"],
    ]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p, rcpts=[RCPT, "carol@remote.example"])
        msg = stored(p, r)
        assert msg.recipients == [RCPT, "dave@remote.example", "erin@remote.example"], \
            msg.envelope_text
        assert [e["args"][0] for e in m.events("envrcpt")] == [
            "<bob@remote.example>", "<carol@remote.example>"]
        listed = {e["id"]: e for e in p.queue_list()}
        assert sorted(x["address"] for x in listed[msg.id]["recipients"]) == msg.recipients, \
            listed


def test_deleting_every_recipient_discards(petrel_factory, short_tmp):
    script = {"eom_changes": [["delrcpt", "<bob@remote.example>"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == 250, r
        qid = h.queued_id(r)
        assert p.spool_files() == []
        assert p.wait_log(rf"{qid}: discarded by filter scripted")


def test_change_sender(petrel_factory, short_tmp):
    script = {"eom_changes": [["chgfrom", "<bounces+x@remote.example>"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p)
        msg = stored(p, r)
        assert msg.sender == "bounces+x@remote.example", msg.envelope_text
        assert m.events("envfrom")[0]["args"][0] == "<alice@localhost>"
        assert p.wait_log(rf"{msg.id}: from=<bounces\+x@remote.example>")


def test_quarantine_holds_the_message(petrel_factory, short_tmp):
    # A local recipient: were the message not held, the runner would deliver it.
    script = {"eom_changes": [["quarantine", "looks like malware"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        r = send(p, rcpts=["alice@localhost"])
        assert r.code == 250, r
        qid = h.queued_id(r)
        assert p.spool_files() == [qid]
        assert os.path.exists(os.path.join(p.queue_dir, qid + ".hold"))
        assert p.wait_log(rf"{qid}: quarantined: looks like malware")
        assert p.wait_log(rf"{qid}: from=<alice@localhost>.*held \(quarantine\)")
        (entry,) = p.queue_list()
        assert entry["id"] == qid and entry["held"] is True, entry
        new = os.path.join(p.tmpdir, "mail", "alice", "new")
        time.sleep(1.0)
        assert not os.path.isdir(new) or os.listdir(new) == [], "held message delivered"
        # Released, it is delivered.
        rel = p.run_cli("queue", "release", qid)
        assert rel.returncode == 0, rel.stderr
        assert h.wait_until(lambda: os.path.isdir(new) and len(os.listdir(new)) == 1, 10), \
            p.log_text()


def test_inet_milter(petrel_factory, short_tmp):
    # The same conversation over TCP (inet:127.0.0.1:PORT).
    script = {"eom_changes": [["addheader", "X-Over", "tcp"], ["addrcpt", "<dave@remote.example>"]]}
    with ScriptedMilter(short_tmp, script, port=h.free_port()) as m:
        assert m.address.startswith("inet:127.0.0.1:")
        p = start(petrel_factory, m)
        msg = stored(p, send(p))
        assert "X-Over: tcp" in header_lines(msg)
        assert msg.recipients == [RCPT, "dave@remote.example"]
        assert m.events("connect")[0]["macros"]["{client_addr}"] == "127.0.0.1"


@pytest.mark.parametrize("leadspc", [False, True])
def test_header_leading_space(petrel_factory, short_tmp, leadspc):
    # SMFIP_HDR_LEADSPC: the milter gets (and gives) the space after the
    # colon itself; without it the one space after the colon is petrel's.
    script = {"negotiate": ["HDR_LEADSPC"] if leadspc else [],
              "eom_changes": [["chgheader", "X-Space", 1, " new" if leadspc else "new"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        msg = stored(p, send(p, extra_headers=["X-Space:   three", "X-Tight:none"]))
        seen = dict((n, v) for n, v in m.events("eom")[0]["headers"])
        if leadspc:
            assert seen["X-Space"] == "   three" and seen["X-Tight"] == "none", seen
        else:
            assert seen["X-Space"] == "  three" and seen["X-Tight"] == "none", seen
        assert "X-Space: new" in header_lines(msg), header_lines(msg)


def test_change_sender_to_null(petrel_factory, short_tmp):
    with ScriptedMilter(short_tmp, {"eom_changes": [["chgfrom", "<>"]]}) as m:
        p = start(petrel_factory, m)
        msg = stored(p, send(p))
        assert msg.sender == "" and "S \n" in msg.envelope_text + "\n", msg.envelope_text


@pytest.mark.parametrize("op,why", [
    (["replacebody", "a" * 70000 + "\r\n"], "larger than the size limit"),  # limit 64KiB
    (["addheader", "Bad Name", "x"], "invalid header"),
    (["addrcpt", "<bad address@remote.example>"], "invalid recipient"),
])
def test_unusable_changes_are_filter_errors(petrel_factory, short_tmp, op, why):
    with ScriptedMilter(short_tmp, {"eom_changes": [op]}) as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == 451, r
        assert p.spool_files() == []
        assert p.wait_log(rf'filter=scripted verdict=tempfail latency=\d+ms error=".*{why}')


# --------------------------------------------------------------------------
# Replies: reject, tempfail, replycode, discard, accept at every stage


@pytest.mark.parametrize("stage,action,code,text", [
    ("eom", "reject", 550, "5.7.1 Message rejected by filter scripted"),
    ("eom", "tempfail", 451, "4.7.1 Message deferred by filter scripted, try again later"),
    ("eom", {"reply": ["554", "5.7.0", "Virus found: Eicar"]}, 554, "5.7.0 Virus found: Eicar"),
    ("eom", {"reply": ["452", "4.3.1", "Milter says later"]}, 452, "4.3.1 Milter says later"),
    ("eom", {"reply": ["550", "5.7.1", "First line", "Last line"]}, 550, "5.7.1 Last line"),
    ("data", "reject", 550, "5.7.1 Message rejected by filter scripted"),
    ("header", "tempfail", 451, "4.7.1 Message deferred by filter scripted"),
    ("eoh", {"reply": ["553", "5.7.2", "Bad headers"]}, 553, "5.7.2 Bad headers"),
    ("body", "reject", 550, "5.7.1 Message rejected by filter scripted"),
])
def test_refusals_after_data(petrel_factory, short_tmp, stage, action, code, text):
    with ScriptedMilter(short_tmp, {stage: action}) as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == code and r.last.startswith(f"{code} {text}"), r
        if "Last line" in text:
            assert r.lines == ["550-5.7.1 First line", "550 5.7.1 Last line"], r
            # Logged on one line (a newline in it would forge a log line).
            assert p.wait_log(r"reject: DATA from \S+: 550-5.7.1 First line 550 5.7.1 Last line; "
                              r"filter=scripted$")
        assert p.spool_files() == []
        verdict = "reject" if code >= 500 else "tempfail"
        assert p.wait_log(rf"filter=scripted verdict={verdict} latency=\d+ms")
        assert p.wait_log(rf"reject: DATA from .*: {code}[ -].*; filter=scripted")
        # Nothing more for this message after the decisive answer.
        kinds = [e["event"] for e in m.events()]
        after = {"data": ["header", "eoh", "body", "eom"], "header": ["eoh", "body", "eom"],
                 "eoh": ["body", "eom"], "body": ["eom"], "eom": []}[stage]
        for k in after:
            assert k not in kinds, kinds
        if stage == "header":
            assert kinds.count("header") == 1, kinds


def test_refusals_before_data(petrel_factory, short_tmp):
    script = {"envrcpt": {"bad@remote.example": {"reply": ["550", "5.1.1", "No such user here"]},
                          "later@remote.example": "tempfail", "*": "continue"}}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        c = p.connect()
        c.ehlo()
        assert c.mail("alice@localhost").code == 250
        r = c.rcpt("bad@remote.example")
        assert r.code == 550 and r.last == "550 5.1.1 No such user here", r
        r = c.rcpt("later@remote.example")
        assert r.code == 451 and "4.7.1" in r.last, r
        assert c.rcpt(RCPT).code == 250
        r = c.data(h.make_message())
        msg = stored(p, r)
        assert msg.recipients == [RCPT], msg.envelope_text
        assert p.wait_log(r"filter=scripted stage=rcpt verdict=reject")
        c.cmd("QUIT")


@pytest.mark.parametrize("stage,logged", [("envfrom", "mail"), ("helo", "helo"), ("connect", None)])
def test_refusal_at_session_stages(petrel_factory, short_tmp, stage, logged):
    with ScriptedMilter(short_tmp, {stage: {"reply": ["554", "5.7.1", f"No {stage} for you"]}}) as m:
        p = start(petrel_factory, m)
        c = p.connect(greet=False)
        if stage == "connect":
            r = c.reply()
            assert r.last == "554 5.7.1 No connect for you", r
            assert c.is_closed(), "session not closed after a refused connect"
            return
        assert c.reply().code == 220
        if stage == "helo":
            r = c.cmd("EHLO client.example")
        else:
            c.ehlo()
            r = c.mail("alice@localhost")
        assert r.last == f"554 5.7.1 No {stage} for you", r
        assert p.wait_log(rf"filter=scripted stage={logged} verdict=reject")
        if stage == "envfrom":
            # The next transaction of the session asks the milter again.
            r = c.mail("alice@localhost")
            assert r.code == 554, r
            assert len(m.events("envfrom")) == 2, m.events()
        c.cmd("QUIT")


def test_discard_at_eom_and_at_mail(petrel_factory, short_tmp):
    with ScriptedMilter(short_tmp, {"eom": "discard"}, name="a") as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == 250, r
        assert p.spool_files() == []
        assert p.wait_log(rf"{h.queued_id(r)}: discarded by filter scripted")
    with ScriptedMilter(short_tmp, {"envfrom": "discard"}, name="b") as m:
        p = start(petrel_factory, m)
        r = send(p)
        assert r.code == 250, r
        assert p.spool_files() == []
        assert p.wait_log(rf"{h.queued_id(r)}: discarded by filter scripted")
        # After a discard nothing more is sent for that message.
        kinds = [e["event"] for e in m.events()]
        assert "envrcpt" not in kinds and "eom" not in kinds, kinds


def test_accept_ends_the_milter_part_but_not_the_chain(petrel_factory, short_tmp, tmp_path):
    # SMFIR_ACCEPT = continue with the chain (petrel-filters(7), milter.h):
    # the exec filter after the milter still runs; the milter's changes count.
    after = tmp_path / "after.sh"
    after.write_text("#!/bin/sh\necho 'X-After: ran'\n")
    after.chmod(0o755)
    script = {"eom_changes": [["addheader", "X-Milter", "yes"]], "eom": "accept"}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m, extra_filters=[{"name": "after", "exec": [str(after)]}])
        msg = stored(p, send(p))
        lines = header_lines(msg)
        assert "X-Milter: yes" in lines and "X-After: ran" in lines, lines
        assert p.wait_log(rf"{msg.id}: filter=scripted verdict=continue .*milter accept")


def test_accept_at_rcpt_stops_the_events(petrel_factory, short_tmp):
    with ScriptedMilter(short_tmp, {"envrcpt": "accept"}) as m:
        p = start(petrel_factory, m)
        msg = stored(p, send(p, rcpts=[RCPT, "carol@remote.example"]))
        assert msg.recipients == [RCPT, "carol@remote.example"]
        kinds = [e["event"] for e in m.events()]
        assert kinds.count("envrcpt") == 1, kinds
        for k in ("data", "header", "eoh", "body", "eom"):
            assert k not in kinds, kinds


@pytest.mark.parametrize("stage", ["connect", "envrcpt"])
def test_discard_or_accept_early(petrel_factory, short_tmp, stage):
    # Accept at CONNECT silences the milter for the session; discard at RCPT
    # discards the whole message (as libmilter documents).
    action = "accept" if stage == "connect" else "discard"
    with ScriptedMilter(short_tmp, {stage: action}) as m:
        p = start(petrel_factory, m)
        r = send(p, rcpts=[RCPT, "carol@remote.example"])
        assert r.code == 250, r
        kinds = [e["event"] for e in m.events()]
        if action == "accept":
            assert p.spool_message(h.queued_id(r)).recipients == [RCPT, "carol@remote.example"]
            assert [k for k in kinds if k != "close"] == ["connect"], kinds
        else:
            assert p.spool_files() == []
            assert kinds.count("envrcpt") == 1 and "eom" not in kinds, kinds


def test_steps_the_milter_opts_out_of_are_not_sent(petrel_factory, short_tmp):
    script = {"negotiate": ["NOHDRS", "NOBODY", "NOHELO"],
              "eom_changes": [["addheader", "X-Blind", "yes"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        msg = stored(p, send(p))
        kinds = [e["event"] for e in m.events()]
        for k in ("header", "body", "helo"):
            assert k not in kinds, kinds
        assert "eoh" in kinds and "eom" in kinds, kinds
        assert m.events("eom")[0]["headers"] == [] and m.events("eom")[0]["body"] == ""
        assert "X-Blind: yes" in header_lines(msg)


# --------------------------------------------------------------------------
# PROGRESS, SKIP, body chunks


def test_progress_keeps_the_milter_alive_past_the_timeout(petrel_factory, short_tmp):
    # timeout 2s bounds each wait; PROGRESS restarts it (milter.cpp read_answer).
    script = {"eom_changes": [["sleep", 1.2], ["progress"], ["sleep", 1.2], ["progress"],
                              ["sleep", 1.2], ["addheader", "X-Slow", "done"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m, timeout="2s")
        t0 = time.monotonic()
        msg = stored(p, send(p))
        took = time.monotonic() - t0
        assert took >= 3.5, took
        assert "X-Slow: done" in header_lines(msg)


def test_silence_beyond_the_timeout_is_an_error(petrel_factory, short_tmp):
    # The control for the test above: the same wait without PROGRESS fails.
    script = {"eom_changes": [["sleep", 3.0]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m, timeout="2s")
        t0 = time.monotonic()
        r = send(p)
        took = time.monotonic() - t0
        assert r.code == 451, r
        assert 1.8 <= took < 3.0, took
        assert p.spool_files() == []
        assert p.wait_log(r"filter=scripted verdict=tempfail .*timed out")


BIG_LINE = "x" * 998


def big_body(n_lines):
    return [f"{i:06d}" + BIG_LINE[6:] for i in range(n_lines)]


def test_body_chunks_and_skip(petrel_factory, short_tmp):
    lines = big_body(200)  # ~200 KB: four chunks of at most 65535 bytes
    wire_body = "".join(l + "\r\n" for l in lines)
    limits = {"max_message_size": "1MiB"}
    with ScriptedMilter(short_tmp, {}, name="all") as m:
        p = start(petrel_factory, m, limits=limits)
        msg = stored(p, send(p, body_lines=lines))
        sizes = [int(e["args"][0]) for e in m.events("body")]
        assert len(sizes) >= 4 and max(sizes) <= 65535, sizes
        assert sum(sizes) == len(wire_body), (sum(sizes), len(wire_body))
        assert m.events("eom")[0]["body"] == wire_body
        p.stop()
    with ScriptedMilter(short_tmp, {"body": "skip",
                                    "eom_changes": [["addheader", "X-Skipped", "yes"]]},
                        name="skip") as m:
        p = start(petrel_factory, m, limits=limits)
        msg = stored(p, send(p, body_lines=lines))
        # SKIP after the first chunk: no more body chunks, straight to EOM.
        assert len(m.events("body")) == 1, [e["event"] for e in m.events()]
        assert len(m.events("eom")) == 1
        # The message itself is whole, and the EOM changes are applied.
        _, body = msg.headers_and_body()
        assert body == wire_body.replace("\r\n", "\n").encode()
        assert "X-Skipped: yes" in header_lines(msg)


# --------------------------------------------------------------------------
# Failures: hang, death mid-message; on_error


@pytest.mark.parametrize("on_error,code", [(None, 451), ("accept", 250), ("reject", 550)])
def test_hanging_milter_times_out_and_on_error_applies(petrel_factory, short_tmp, on_error, code):
    opts = {"timeout": "1s"}
    if on_error:
        opts["on_error"] = on_error
    with ScriptedMilter(short_tmp, {"eom": "hang"}) as m:
        p = start(petrel_factory, m, **opts)
        t0 = time.monotonic()
        r = send(p)
        took = time.monotonic() - t0
        assert r.code == code, r
        assert took < 5, took
        if code == 250:
            msg = p.spool_message(h.queued_id(r))
            assert msg.recipients == [RCPT]
            assert p.wait_log(rf"{msg.id}: filter=scripted verdict=continue .*timed out")
        else:
            assert p.spool_files() == []
            assert p.wait_log(r"milter scripted .*timed out; on_error applies")
        m.proc.kill()  # its thread sleeps an hour


def test_hang_at_rcpt_costs_one_timeout(petrel_factory, short_tmp):
    with ScriptedMilter(short_tmp, {"envrcpt": "hang"}) as m:
        p = start(petrel_factory, m, timeout="1s")
        c = p.connect()
        c.ehlo()
        assert c.mail("alice@localhost").code == 250
        t0 = time.monotonic()
        assert c.rcpt(RCPT).code == 451
        assert c.rcpt("carol@remote.example").code == 451
        took = time.monotonic() - t0
        assert took < 2.5, took  # the second answer without waiting again
        c.cmd("QUIT")
        m.proc.kill()


@pytest.mark.parametrize("stage", ["body", "eom", "header"])
@pytest.mark.parametrize("on_error,code", [(None, 451), ("accept", 250)])
def test_milter_dying_mid_message(petrel_factory, short_tmp, stage, on_error, code):
    opts = {"on_error": on_error} if on_error else {}
    with ScriptedMilter(short_tmp, {stage: "exit"}) as m:
        p = start(petrel_factory, m, **opts)
        r = send(p)
        assert r.code == code, r
        assert h.wait_until(lambda: not m.alive(), 5)
        if code == 250:
            assert p.spool_message(h.queued_id(r)).recipients == [RCPT]
        else:
            assert p.spool_files() == []
        assert p.wait_log(r"milter scripted .*closed by the milter; on_error applies")
        # The next session finds nobody listening: on_error again, at once,
        # from its first stage on (tempfail: a 451 greeting, as Postfix and
        # sendmail answer when a milter is unreachable).
        t0 = time.monotonic()
        if code == 250:
            r = send(p)
            assert r.code == 250, r
        else:
            c = p.connect(greet=False)
            r = c.reply()
            assert r.last == "451 4.7.1 Command deferred by filter scripted, try again later", r
            assert c.is_closed()
        assert time.monotonic() - t0 < 3
        assert p.wait_log(r"milter scripted .*connect: .*; on_error applies")


# --------------------------------------------------------------------------
# One connection per worker, reused across transactions


def test_one_connection_reused_across_transactions(petrel_factory, short_tmp):
    script = {"eom_changes": [["addheader", "X-Seen", "yes"]]}
    with ScriptedMilter(short_tmp, script) as m:
        p = start(petrel_factory, m)
        c = p.connect()
        c.ehlo()
        ids = []
        for n in range(2):
            r = c.send_message("alice@localhost", [RCPT], h.make_message(f"m{n}"))
            ids.append(h.queued_id(r))
        # A third one abandoned with RSET after RCPT.
        assert c.mail("alice@localhost").code == 250
        assert c.rcpt(RCPT).code == 250
        assert c.cmd("RSET").code == 250
        r = c.send_message("carol@localhost", [RCPT], h.make_message("m3"))
        ids.append(h.queued_id(r))
        c.cmd("QUIT")
        c.close()
        assert h.wait_until(lambda: m.events("close"), 5), m.events()
        kinds = [e["event"] for e in m.events()]
        # One CONNECT and one HELO: a single milter connection for the session.
        assert kinds.count("connect") == 1 and kinds.count("helo") == 1, kinds
        assert kinds.count("close") == 1, kinds
        assert kinds.count("envfrom") == 4 and kinds.count("eom") == 3, kinds
        # The transaction abandoned with RSET was ABORTed before the next
        # MAIL (libmilter does not report the ABORTs after a finished
        # message to the milter, so those are not seen here).
        mails = [i for i, k in enumerate(kinds) if k == "envfrom"]
        assert kinds[mails[2]:mails[3]] == ["envfrom", "envrcpt", "abort"], kinds
        assert "abort" not in kinds[:mails[2]], kinds
        # The macros name each message's own queue id and envelope.
        eoms = m.events("eom")
        assert [e["macros"].get("i") for e in eoms] == ids, eoms
        froms = m.events("envfrom")
        assert froms[-1]["macros"].get("{mail_addr}") == "carol@localhost", froms[-1]
        assert m.events("connect")[0]["macros"].get("j") == "mx.test.example"
        assert m.events("envrcpt")[0]["macros"].get("{rcpt_addr}") == RCPT
        for qid in ids:
            assert "X-Seen: yes" in header_lines(p.spool_message(qid))
