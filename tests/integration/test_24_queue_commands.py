"""t-24: `petrel queue list/show/hold/release/flush/delete/summary` on a queue
with deferred messages (SPEC §2), with a running server and without one.

Deferred mail comes from a pipe that exits 75 until a gate file exists, and
from remote recipients; retry.min is 1h, so only flush or release delivers
within the test.
"""

import json
import os
import re
import time
from datetime import datetime, timezone

import pytest

import petrel_harness as h
import queue_helpers as q

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def gated(petrel_factory, tmp_path):
    gate = tmp_path / "gate-open"
    runs = tmp_path / "runs"
    runs.mkdir()
    script = q.write_script(str(tmp_path / "gate.sh"), f"""#!/bin/sh
echo x >> "{runs}/$1"
[ -f "{gate}" ] && exit 0
echo "gate closed for $1"
exit 75
""")
    p = petrel_factory({"domains": {"app.example": {"deliver": ["pipe:", script, "%u"]}},
                        "queue": {"retry": {"min": "1h", "max": "2h"}}})
    p.gate = gate
    p.runs = str(runs)
    return p


def runs_of(p, name):
    try:
        with open(os.path.join(p.runs, name)) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def cli(p, *args, rc=0):
    r = p.run_cli("queue", *args)
    assert r.returncode == rc, f"queue {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def by_id(entries):
    return {e["id"]: e for e in entries}


def fill(p):
    """Four deferred messages: two for the gate pipe, two for remote domains."""
    m1 = q.submit(p, "alice@localhost", "gate@app.example", "m1")
    m2 = q.submit(p, "alice@localhost", ["friend@remote.example", "pal@remote.example"], "m2")
    m3 = q.submit(p, "alice@localhost", "gate2@app.example", "m3")
    m4 = q.submit(p, "", "friend@other.example", "m4")
    for qid, rcpt in ((m1, "gate@app.example"), (m2, "friend@remote.example"),
                      (m2, "pal@remote.example"), (m3, "gate2@app.example"),
                      (m4, "friend@other.example")):
        assert q.delivery_line(p, qid, rcpt, "deferred"), p.log_text()
    # the state is on disk once the runner logged it; give the write a moment
    assert h.wait_until(lambda: all(e["recipients"][0]["status"] == "deferred"
                                    for e in p.queue_list()), 5)
    return m1, m2, m3, m4


def check_list_json(p, ids):
    m1, m2, m3, m4 = ids
    r = cli(p, "list", "--json")
    entries = json.loads(r.stdout)
    assert isinstance(entries, list) and len(entries) == 4
    now = time.time()
    for e in entries:
        assert set(e) == {"id", "size", "arrival", "sender", "held", "recipients"}, e
        assert isinstance(e["size"], int) and e["size"] > 100
        assert RFC3339.match(e["arrival"]) and abs(ts(e["arrival"]) - now) < 120, e
        assert e["held"] is False
        for rc in e["recipients"]:
            assert set(rc) == {"address", "status", "next_attempt", "last_error"}, rc
            assert rc["status"] == "deferred"
            assert RFC3339.match(rc["next_attempt"]), rc
            # retry.min 1h with 80-100% jitter
            assert 0.75 * 3600 < ts(rc["next_attempt"]) - now <= 3600 + 5, rc
            assert isinstance(rc["last_error"], str) and rc["last_error"], rc
    got = by_id(entries)
    assert set(got) == set(ids)
    assert got[m1]["sender"] == "alice@localhost"
    assert got[m4]["sender"] == ""
    assert [r["address"] for r in got[m2]["recipients"]] == ["friend@remote.example",
                                                             "pal@remote.example"]
    assert "gate closed for gate" in got[m1]["recipients"][0]["last_error"]
    return got


def check_list_text(p, ids):
    out = cli(p, "list").stdout
    for qid in ids:
        assert qid in out, out
    assert "gate closed for gate" in out
    assert out.count("deferred") == 5, out
    assert "MAILER-DAEMON" in out  # the null sender
    assert re.search(r"-- \d+ Kbytes in 4 Requests\.", out), out


def check_show(p, m1):
    out = cli(p, "show", m1).stdout
    assert f"id: {m1}" in out
    assert "sender: <alice@localhost>" in out
    assert "<gate@app.example>" in out
    assert re.search(r"gate@app\.example.*deferred, 1 attempt, next \S+Z, last: .*gate closed", out), out
    assert "headers:" in out and "Subject: m1" in out and "Received: " in out
    r = cli(p, "show", "1AAAAAAAAAAAAAAA00", rc=64)
    assert "no such message" in r.stderr


def check_summary(p):
    out = cli(p, "summary").stdout
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        rows[parts[0]] = [int(x) for x in parts[1:]]
    assert rows["TOTAL"][0] == 5, out
    assert rows["remote.example"][0] == 2 and rows["remote.example"][1] == 2, out
    assert rows["app.example"][0] == 2, out
    assert rows["other.example"][0] == 1, out
    header = out.splitlines()[0].split()
    assert header[0] == "T" and header[1] == "5", out  # age buckets in minutes, like qshape


def test_queue_commands_with_server(gated):
    p = gated
    ids = fill(p)
    m1, m2, m3, m4 = ids
    check_list_json(p, ids)
    check_list_text(p, ids)
    check_show(p, m1)
    check_summary(p)

    # hold: listed as held, not delivered while held, even by a flush
    assert f"{m3}: held" in cli(p, "hold", m3).stdout
    assert by_id(p.queue_list())[m3]["held"] is True
    assert re.search("^" + m3 + r"! ", cli(p, "list").stdout, re.M)  # mailq's mark
    p.gate.write_text("open\n")
    cli(p, "flush")
    # flush: the deferred m1 goes at once, whatever retry.min says
    assert q.delivery_line(p, m1, "gate@app.example", "sent", timeout=3), p.log_text()
    assert p.wait_log(re.escape(m1) + r": removed$", 3)
    time.sleep(0.5)
    assert m3 in p.spool_files() and runs_of(p, "gate2") == 1, p.log_text()
    assert not q.log_lines(p, re.escape(m3) + r": to=.*status=sent")

    # release: due at once
    assert f"{m3}: released" in cli(p, "release", m3).stdout
    assert q.delivery_line(p, m3, "gate2@app.example", "sent", timeout=3), p.log_text()
    assert h.wait_until(lambda: m3 not in p.spool_files(), 3)

    # delete one, then --all
    assert f"{m2}: deleted" in cli(p, "delete", m2).stdout
    assert set(by_id(p.queue_list())) == {m4}
    r = cli(p, "delete", "1AAAAAAAAAAAAAAA00", rc=64)
    assert "no such message" in r.stderr
    cli(p, "delete", "--all")
    assert p.queue_list() == []
    assert "Mail queue is empty" in cli(p, "list").stdout
    assert os.listdir(p.queue_dir) == []
    # the runner forgot them: nothing more is logged for them
    time.sleep(0.3)
    assert not q.log_lines(p, re.escape(m2) + r": (to=.*status=sent|removed)")
    assert p.proc.poll() is None


def test_queue_commands_without_server(gated):
    p = gated
    ids = fill(p)
    m1, m2, m3, m4 = ids
    p.stop()
    assert not os.path.exists(os.path.join(p.state_dir, "runner.sock"))
    check_list_json(p, ids)
    check_list_text(p, ids)
    check_show(p, m1)
    check_summary(p)

    cli(p, "hold", m3)
    assert by_id(p.queue_list())[m3]["held"] is True
    assert f"{m4}: deleted" in cli(p, "delete", m4).stdout
    r = cli(p, "flush")
    assert "not running" in r.stdout, r.stdout
    entries = by_id(p.queue_list())
    assert set(entries) == {m1, m2, m3}
    assert all(r["next_attempt"] is None for r in entries[m1]["recipients"]), entries[m1]

    # restarted, the flushed m1 goes at once; the held m3 waits for release
    p.gate.write_text("open\n")
    p.start()
    assert q.delivery_line(p, m1, "gate@app.example", "sent", timeout=3), p.log_text()
    time.sleep(0.5)
    assert m3 in p.spool_files() and runs_of(p, "gate2") == 1
    cli(p, "release", m3)
    assert q.delivery_line(p, m3, "gate2@app.example", "sent", timeout=3), p.log_text()
    p.stop()

    cli(p, "delete", "--all")
    assert p.queue_list() == []
    assert os.listdir(p.queue_dir) == []


def test_queue_list_on_a_fresh_config(petrel_factory):
    p = petrel_factory(start=False)
    r = p.run_cli("queue", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r
    r = p.run_cli("queue", "summary")
    assert r.returncode == 0 and "TOTAL" in r.stdout
    r = p.run_cli("queue", "frobnicate")
    assert r.returncode == 64


def test_queue_ids_are_checked(server, tmp_path):
    """An "id" cannot name a file outside the queue."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    rel = os.path.relpath(str(victim), server.queue_dir)
    for sub in ("delete", "hold", "release", "show", "flush"):
        r = server.run_cli("queue", sub, rel)
        assert r.returncode == 64, (sub, r.returncode, r.stdout, r.stderr)
        assert "not a queue id" in r.stderr or "no such message" in r.stderr, r.stderr
    assert victim.read_text() == "keep me\n"
    assert not os.path.exists(str(victim) + ".hold")
    # --all on an empty queue is not an error
    r = server.run_cli("queue", "delete", "--all")
    assert r.returncode == 0, r.stderr
