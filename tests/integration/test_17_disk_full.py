"""t-17: a full disk answers 452 4.3.1 and leaves nothing half-written (SPEC §5, §6).

Needs root: state_dir is a tiny tmpfs mounted for the test.
"""

import os
import subprocess

import pytest

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


@pytest.fixture
def tiny_state_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    d = tmp_path / "tinyfs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(d)],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=10)


def test_disk_full_452(tiny_state_dir, petrel_factory):
    state = os.path.join(tiny_state_dir, "state")
    os.makedirs(state)
    p = petrel_factory({"state_dir": state, "limits": {"max_message_size": "4MiB"}})
    c = p.connect()
    c.ehlo()
    big = h.make_message("too big for the disk", ["z" * 900] * 1200)  # ~1 MiB
    r = c.send_message("alice@localhost", [RCPT], big)
    assert r.startswith("452 4.3.1"), r
    assert p.tmp_files() == [], os.listdir(p.queue_dir)
    assert p.spool_files() == []
    # the session goes on, and a small message fits again
    assert c.cmd("NOOP").code == 250
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("small")))
    assert p.spool_files() == [qid]
    assert p.tmp_files() == []
    c.cmd("QUIT")
    p.stop()
