"""t-23: kill -9 of the queue runner in the middle of 1,000 deliveries loses
nothing (SPEC §4, §6): the master restarts it, every message is delivered at
least once, and none is left in the queue."""

import os
import re
import signal
import threading
import time

import petrel_harness as h
import queue_helpers as q

COUNT = 1000


def delivered_subjects(box):
    """Distinct "bulk N" numbers in a Maildir, and the number of files."""
    seen = set()
    paths = q.maildir_paths(box)
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(2048)
        except FileNotFoundError:
            continue
        m = re.search(rb"\nSubject: bulk (\d+)\n", head)
        if m:
            seen.add(int(m.group(1)))
    return seen, len(paths)


def test_kill_runner_during_bulk_delivery(petrel_factory, tmp_path):
    box = str(tmp_path / "bulk" / "sink")
    p = petrel_factory({"domains": {"bulk.example": {"deliver": f"maildir:{tmp_path}/bulk/%u"}},
                        "queue": {"retry": {"min": "1s", "max": "2s"}}})
    first = q.runner_pid(p)
    assert first, p.log_text()

    ids, errors = [], []

    def send():
        try:
            ids.extend(q.submit_many(p.port, "alice@localhost", lambda i: "sink@bulk.example",
                                     COUNT, connections=4, timeout=40))
        except Exception as e:  # asserted below
            errors.append(e)

    t0 = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    # Kill it once a good share, but not all, is delivered.
    assert h.wait_until(lambda: len(q.maildir_paths(box)) >= COUNT // 5, 30), p.log_text()[-3000:]
    p.remember_children()
    os.kill(first, signal.SIGKILL)
    at_kill = len(q.maildir_paths(box))
    assert at_kill < COUNT, "everything was delivered before the kill: nothing was tested"

    second = q.runner_pid(p, timeout=10, not_pid=first)
    assert second, p.log_text()[-3000:]
    assert p.wait_log(r"queue runner exited \(status 9\)", 5) or \
        p.wait_log(r"queue runner exited", 1), p.log_text()[-3000:]

    sender.join(45)
    assert not sender.is_alive(), "submission did not finish"
    assert not errors, errors
    assert len(set(ids)) == COUNT

    # every message delivered at least once, none left in the queue
    done = h.wait_until(lambda: len(delivered_subjects(box)[0]) == COUNT and not p.spool_files(),
                        45, interval=0.25)
    seen, files = delivered_subjects(box)
    missing = sorted(set(range(COUNT)) - seen)
    assert done, f"{len(missing)} not delivered (e.g. {missing[:10]}), " \
                 f"spool holds {len(p.spool_files())}:\n{p.log_text()[-3000:]}"
    assert files >= COUNT
    leftovers = [n for n in os.listdir(p.queue_dir) if not n.startswith(".tmp-")]
    assert h.wait_until(lambda: not [n for n in os.listdir(p.queue_dir)], 5), leftovers
    assert p.proc.poll() is None
    print(f"killed at {at_kill}/{COUNT}; {files - COUNT} duplicate(s); "
          f"{time.monotonic() - t0:.1f}s")
