"""t-11: a 250 is a promise (SPEC §6): kill -9 of the worker or the master right
after it leaves the message intact in the spool."""

import os
import signal

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def _big_message(tag):
    lines = [f"{tag} line {i:05d} " + "abcdefghij" * 7 for i in range(400)]
    return h.make_message(tag, lines)


def _check_intact(p, qid, msg):
    assert qid in p.spool_files()
    m = p.spool_message(qid)
    assert m.id == qid
    assert m.sender == "alice@localhost"
    assert m.recipients == [RCPT]
    assert m.first_header().startswith(b"Received:")
    assert m.without_first_header() == h.crlf_to_lf(msg)
    entries = p.queue_list()
    assert [e["id"] for e in entries] == [qid]
    assert entries[0]["recipients"][0]["address"] == RCPT


def test_kill_worker_after_250(server):
    c = server.connect()
    c.ehlo()
    worker = server.worker_pid_for(c)
    assert worker and worker != server.pid, "could not find the worker process"
    msg = _big_message("worker-kill")
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    c.send(msg + b".\r\n")
    qid = h.queued_id(c.reply())
    os.kill(worker, signal.SIGKILL)
    assert c.is_closed(5)
    _check_intact(server, qid, msg)
    # the master carries on
    assert server.proc.poll() is None
    c2 = server.connect()
    c2.ehlo()
    h.queued_id(c2.send_message("alice@localhost", [RCPT], h.make_message("after")))


def test_kill_master_after_250(server):
    c = server.connect()
    c.ehlo()
    worker = server.worker_pid_for(c)
    msg = _big_message("master-kill")
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    c.send(msg + b".\r\n")
    qid = h.queued_id(c.reply())
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    _check_intact(server, qid, msg)
    # Orphans (worker, queue runner) die by PID, then a new master sees the message.
    server.close_clients()
    server.kill_leftovers()
    server._log.close()
    server.start()
    _check_intact(server, qid, msg)
    assert worker is None or worker != server.pid


def test_kill_worker_and_master_after_250(server):
    c = server.connect()
    c.ehlo()
    worker = server.worker_pid_for(c)
    msg = _big_message("both-kill")
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], msg))
    os.kill(server.pid, signal.SIGKILL)
    if worker:
        os.kill(worker, signal.SIGKILL)
    server.proc.wait(5)
    _check_intact(server, qid, msg)


def test_kill_worker_during_data_leaves_no_message(server):
    c = server.connect()
    c.ehlo()
    worker = server.worker_pid_for(c)
    assert worker
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    c.send(_big_message("half")[:20000])
    c.pending(0.3)
    os.kill(worker, signal.SIGKILL)
    assert c.is_closed(5)
    assert server.spool_files() == []
    assert server.queue_list() == []
