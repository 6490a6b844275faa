"""t-26: a slow pipe does not stall other deliveries (issue 4, scope 2), not
even across a configuration reload; the queue runner reloads in place on
SIGHUP."""

import os
import re
import signal
import time

import pytest

import petrel_harness as h
import queue_helpers as q

SLOW = 4  # seconds the slow command takes


@pytest.fixture
def slow(petrel_factory, tmp_path):
    started = tmp_path / "started"
    script = q.write_script(str(tmp_path / "slow.sh"), f"""#!/bin/sh
echo "$$" >> "{started}"
sleep {SLOW}
exit 0
""")
    aliases = tmp_path / "aliases"
    aliases.write_text("crew: alice\n")
    p = petrel_factory({"domains": {"slow.example": {"deliver": ["pipe:", script]}},
                        "aliases": {"file": str(aliases)}})
    p.started = started
    p.aliases = aliases
    return p


def runs(p):
    try:
        return len(p.started.read_text().split())
    except FileNotFoundError:
        return 0


def latency(p, qid, rcpt, timeout=5):
    line = q.delivery_line(p, qid, rcpt, timeout=timeout)
    assert line, p.log_text()
    [accepted] = q.log_lines(p, re.escape(qid) + r": from=<")
    return q.log_time(line) - q.log_time(accepted)


def start_slow(p):
    qid = q.submit(p, "alice@localhost", "app@slow.example", "slow one")
    assert h.wait_until(lambda: runs(p) == 1, 5), p.log_text()
    return qid


def test_slow_pipe_does_not_stall_others(slow):
    p = slow
    slow_id = start_slow(p)
    for i in range(3):
        qid = q.submit(p, "bob@localhost", "alice@localhost", f"meanwhile {i}")
        assert latency(p, qid, "alice@localhost") < 1.0
    assert not q.log_lines(p, re.escape(slow_id) + r": to=.*status=sent")  # still running
    assert q.delivery_line(p, slow_id, "app@slow.example", timeout=SLOW + 5), p.log_text()
    assert runs(p) == 1


def test_runner_reloads_in_place_on_sighup(slow):
    p = slow
    runner = q.runner_pid(p)
    slow_id = start_slow(p)
    p.aliases.write_text("crew: bob\n")
    os.kill(runner, signal.SIGHUP)
    assert p.wait_log(r"petrel/qmgr\[%d\]: queue runner reloaded" % runner, 3), p.log_text()
    qid = q.submit(p, "carol@remote.example", "crew@localhost", "crew after reload")
    assert latency(p, qid, "bob@localhost") < 1.0
    assert q.runner_pid(p) == runner
    assert q.delivery_line(p, slow_id, "app@slow.example", timeout=SLOW + 5), p.log_text()
    assert runs(p) == 1


def test_master_reload_during_slow_pipe_does_not_stall(slow):
    p = slow
    slow_id = start_slow(p)
    p.aliases.write_text("crew: bob\n")
    p.signal(signal.SIGHUP)
    time.sleep(0.3)
    qid = q.submit(p, "carol@remote.example", "crew@localhost", "crew after reload")
    try:
        assert latency(p, qid, "bob@localhost", timeout=2) < 1.5
    finally:
        q.delivery_line(p, slow_id, "app@slow.example", timeout=SLOW + 5)
    assert runs(p) == 1
