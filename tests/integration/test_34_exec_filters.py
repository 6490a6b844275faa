"""t-34: exec filters through the real binary, beyond t-30 (SPEC §8,
petrel-filters(7)): big messages and a filter that reads nothing, process
groups killed at the timeout, every exit code of the table with each
on_error, reply texts, and what mode headers and mode rewrite accept.

t-30 already covers exit 0/1/20/75/99/3 with the default on_error, the
headers and rewrite basics and filter_dir ordering.
"""
import json
import os
import re
import time

import pytest

import petrel_harness as h

RCPT = "bob@remote.example"  # relayed to a dead port: the message stays in the spool


def script(path, body):
    path = str(path)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def start(petrel_factory, filters, limits=None):
    over = {"filters": filters}
    if limits:
        over["limits"] = limits
    return petrel_factory(over)


def send(p, body_lines=None, rcpts=(RCPT,), subject="t"):
    c = p.connect()
    c.ehlo()
    r = c.send_message("alice@localhost", list(rcpts), h.make_message(subject, body_lines))
    c.cmd("QUIT")
    c.close()
    return r


def alive(pid):
    return h._proc_stat(pid) is not None


def pgid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(")") + 2:].split()[2])


def read_pids(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------
# A 30 MiB message through a filter that reads none of it


def test_30mib_message_through_a_filter_that_reads_nothing(petrel_factory, tmp_path):
    f = script(tmp_path / "lazy.sh", 'echo "X-Lazy: did not read"; exit 0')
    p = start(petrel_factory, [{"name": "lazy", "exec": [f], "timeout": "20s"}],
              limits={"max_message_size": "40MiB", "timeouts": {"command": "60s"}})
    line = b"0123456789" * 9 + b"abcdefg"  # 97 bytes + CRLF = 99
    n = (30 * 1024 * 1024) // (len(line) + 2) + 1
    body = (line + b"\r\n") * n
    content = h.make_message("big", []).rstrip(b"\r\n") + b"\r\n\r\n" + body
    assert len(content) > 30 * 1024 * 1024
    c = h.SmtpClient.tcp("127.0.0.1", p.port, timeout=60)
    p._conns.append(c)
    assert c.reply().code == 220
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    t0 = time.monotonic()
    c.send(content + b".\r\n")
    r = c.reply(timeout=60)
    took = time.monotonic() - t0
    assert r.code == 250, r
    assert took < 30, took
    msg = p.spool_message(h.queued_id(r))
    head, stored_body = msg.headers_and_body()
    assert b"X-Lazy: did not read" in head
    assert stored_body == body.replace(b"\r\n", b"\n")
    assert p.wait_log(rf"{msg.id}: filter=lazy verdict=continue")


def test_30mib_rewrite_with_a_chatty_stderr(petrel_factory, tmp_path):
    # stdout (30 MiB) and stderr (1 MiB, far beyond a pipe buffer, written
    # first) must be read at the same time, or the filter blocks forever.
    f = script(tmp_path / "chatty.sh",
               "head -c 1048576 /dev/zero | tr '\\0' e >&2; printf 'X-Rewritten: 1\\n'; cat")
    p = start(petrel_factory, [{"name": "chatty", "exec": [f], "mode": "rewrite",
                                "timeout": "20s"}],
              limits={"max_message_size": "40MiB", "timeouts": {"command": "60s"}})
    line = b"z" * 97
    body = (line + b"\r\n") * ((30 * 1024 * 1024) // 99 + 1)
    c = h.SmtpClient.tcp("127.0.0.1", p.port, timeout=60)
    p._conns.append(c)
    assert c.reply().code == 220
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    c.send(h.make_message("big", []).rstrip(b"\r\n") + b"\r\n\r\n" + body + b".\r\n")
    r = c.reply(timeout=60)
    assert r.code == 250, r
    msg = p.spool_message(h.queued_id(r))
    assert msg.message.startswith(b"X-Rewritten: 1\nReceived: ")
    assert msg.headers_and_body()[1] == body.replace(b"\r\n", b"\n")


def test_filter_sees_the_message_on_a_file_with_lf(petrel_factory, tmp_path):
    report = tmp_path / "report.json"
    f = str(tmp_path / "look.py")
    with open(f, "w") as fh:
        fh.write(f"""#!/usr/bin/python3
import json, os, stat, sys
fds = {{}}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass
info = {{"fds": fds, "cwd": os.getcwd(), "env": dict(os.environ),
        "stdin_regular": stat.S_ISREG(os.fstat(0).st_mode),
        "stdin": sys.stdin.buffer.read().decode("latin-1")}}
with open({str(report)!r}, "w") as out:
    json.dump(info, out)
""")
    os.chmod(f, 0o755)
    p = start(petrel_factory, [{"name": "look", "exec": [f]}])
    c = p.connect()
    c.ehlo()
    c.mail("alice@localhost")
    c.rcpt(RCPT)
    c.rcpt("carol@remote.example")
    r = c.data(h.make_message("look"))
    c.cmd("QUIT")
    msg = p.spool_message(h.queued_id(r))
    info = json.loads(report.read_text())
    assert info["stdin_regular"], info["fds"]
    # Only 0, 1 and 2 (plus the one listdir had open on /proc/self/fd).
    extra = {k: v for k, v in info["fds"].items() if k not in ("0", "1", "2")}
    assert set(info["fds"]) >= {"0", "1", "2"}, info["fds"]
    assert len(extra) <= 1, info["fds"]
    assert info["cwd"] == "/"
    env = info["env"]
    assert env["PETREL_QUEUE_ID"] == msg.id
    assert env["PETREL_RECIPIENTS"] == RCPT + "\ncarol@remote.example", env
    assert env["RCPT_TO"] == RCPT + " carol@remote.example", env
    assert env["PETREL_SENDER"] == "alice@localhost" == env["MAIL_FROM"]
    assert env["PETREL_CLIENT_ADDRESS"] == "127.0.0.1" == env["REMOTE_ADDR"]
    assert env["PETREL_CLIENT_PORT"] == str(c.sock.getsockname()[1])
    assert env["PETREL_HELO"] == "client.example" == env["EHLO_DOMAIN"]
    assert env["PETREL_AUTH_USER"] == "" == env["AUTH_AS"]
    assert env["PETREL_TLS"] == "" == env["ON_TLS"]
    assert env["PETREL_HOSTNAME"] == "mx.test.example"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    known = {"PATH", "PETREL_QUEUE_ID", "PETREL_SENDER", "PETREL_RECIPIENTS",
             "PETREL_CLIENT_ADDRESS", "PETREL_CLIENT_PORT", "PETREL_HELO", "PETREL_AUTH_USER",
             "PETREL_TLS", "PETREL_HOSTNAME", "REMOTE_ADDR", "EHLO_DOMAIN", "MAIL_FROM",
             "RCPT_TO", "AUTH_AS", "ON_TLS"}
    # Python itself may add LC_CTYPE; nothing of the test's environment leaks.
    assert set(env) - known <= {"LC_CTYPE"}, set(env) - known
    # stdin: LF line ends, our Received: first; unchanged, so what is stored.
    assert info["stdin"].encode("latin-1") == msg.message
    assert b"\r" not in msg.message and msg.message.startswith(b"Received: ")


# --------------------------------------------------------------------------
# Timeouts kill the whole process group


HANGER = """
echo $$ > {pids}
# A grandchild that ignores SIGTERM: only the SIGKILL to the group ends it.
sh -c 'trap "" TERM; exec sleep 1000' &
echo $! >> {pids}
sleep 1000 &
echo $! >> {pids}
echo "about to hang" >&2
wait
"""


@pytest.mark.parametrize("on_error,code", [(None, 451), ("accept", 250), ("reject", 550)])
def test_timeout_kills_the_process_group(petrel_factory, tmp_path, on_error, code):
    pids = tmp_path / "pids"
    f = script(tmp_path / "hang.sh", HANGER.format(pids=pids))
    flt = {"name": "hang", "exec": [f], "timeout": "1s"}
    if on_error:
        flt["on_error"] = on_error
    p = start(petrel_factory, [flt])
    c = p.connect()
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    assert c.cmd("DATA").code == 354
    t0 = time.monotonic()
    c.send(h.make_message("hang") + b".\r\n")
    # While petrel waits: three processes, all in the filter's own group.
    assert h.wait_until(lambda: len(read_pids(pids)) == 3, 5), read_pids(pids)
    group = read_pids(pids)
    worker = p.worker_pid_for(c)
    assert all(alive(x) for x in group), group
    assert {pgid_of(x) for x in group} == {group[0]}, [pgid_of(x) for x in group]
    assert group[0] != pgid_of(worker)
    r = c.reply(timeout=10)
    took = time.monotonic() - t0
    assert r.code == code, r
    assert 0.9 <= took < 4.5, took
    # Nothing of the group survives, the TERM-ignoring grandchild included.
    assert h.wait_until(lambda: not any(alive(x) for x in group), 5), \
        [x for x in group if alive(x)]
    assert p.wait_log(r"filter=hang verdict=\w+ latency=\d+ms error=\"timed out after 1s\"")
    if code == 250:
        assert p.spool_message(h.queued_id(r)).recipients == [RCPT]
    else:
        assert p.spool_files() == []
    # The session goes on.
    r = c.cmd("RSET")
    assert r.code == 250
    c.cmd("QUIT")


def test_exited_filter_leaves_nothing_behind(petrel_factory, tmp_path):
    # The filter answers at once but a background child keeps its stdout open:
    # petrel does not wait for that EOF, and kills the leftover.
    pids = tmp_path / "pids"
    f = script(tmp_path / "quick.sh",
               f'sleep 1000 & echo $! > {pids}; echo "X-Quick: yes"; exit 0')
    p = start(petrel_factory, [{"name": "quick", "exec": [f], "timeout": "10s"}])
    t0 = time.monotonic()
    r = send(p)
    took = time.monotonic() - t0
    assert r.code == 250, r
    assert took < 3, took
    assert b"X-Quick: yes" in p.spool_message(h.queued_id(r)).headers_and_body()[0]
    (bg,) = read_pids(pids)
    assert h.wait_until(lambda: not alive(bg), 5), "background child survived"


# --------------------------------------------------------------------------
# The exit-code table, with each on_error


ERROR_CASES = {
    # name: shell body; each is a filter error, never a verdict of its own
    "exit2": "exit 2",
    "exit69": "echo 'spamc: connection refused' >&2; exit 69",  # spamc -x, spamd down
    "exit74": "exit 74",
    "exit100": "exit 100",
    "exit126": "exit 126",
    "exit255": "exit 255",
    "sigkill": "kill -KILL $$",
    "sigsegv": "ulimit -c 0; kill -SEGV $$",
    "badheaders": "echo 'this is not a header line'; exit 0",
    "toomuch": "head -c 200000 /dev/zero | tr '\\0' 'a' | sed 's/^/X-A: /'; exit 0",
}


@pytest.mark.parametrize("on_error,code", [("tempfail", 451), ("accept", 250), ("reject", 550)])
def test_filter_errors_apply_on_error(petrel_factory, tmp_path, on_error, code):
    which = tmp_path / "which"
    cases = "\n".join(f'  {name}) {body} ;;' for name, body in ERROR_CASES.items())
    f = script(tmp_path / "err.sh", f'cat >/dev/null\ncase "$(cat {which})" in\n{cases}\nesac')
    missing = str(tmp_path / "does-not-exist")
    p = start(petrel_factory, [
        {"name": "err", "exec": [f], "on_error": on_error, "timeout": "10s"},
    ])
    for name in ERROR_CASES:
        which.write_text(name)
        before = set(p.spool_files())
        r = send(p, [name])
        assert r.code == code, (name, r)
        new = set(p.spool_files()) - before
        assert len(new) == (1 if code == 250 else 0), (name, new)
        if code != 250:
            default = ("451 4.7.1 Message deferred by filter err" if code == 451
                       else "550 5.7.1 Message rejected by filter err")
            assert r.last.startswith(default), (name, r)  # no text of the filter's
    log = p.log_text()
    verdict = {"tempfail": "tempfail", "accept": "continue", "reject": "reject"}[on_error]
    for detail in ("exit status 2", "exit status 69: spamc: connection refused",
                   "exit status 255", "killed by signal 9", "killed by signal 11",
                   "unusable output", "too much output"):
        assert re.search(rf'filter=err verdict={verdict} latency=\d+ms error="{detail}', log), \
            (detail, log)
    # A program that cannot be executed is a filter error too.
    p2 = start(petrel_factory, [{"name": "gone", "exec": [missing], "on_error": on_error}])
    r = send(p2)
    assert r.code == code, r
    assert p2.wait_log(r'filter=gone verdict=\w+ .*error="cannot execute')


def test_verdict_exit_codes_ignore_on_error(petrel_factory, tmp_path):
    # 1, 20, 75 and 99 are verdicts, not errors: on_error accept changes nothing.
    code_file = tmp_path / "code"
    f = script(tmp_path / "v.sh", f"cat >/dev/null; exit $(cat {code_file})")
    p = start(petrel_factory, [{"name": "v", "exec": [f], "on_error": "accept"}])
    for code, reply in {"1": 550, "20": 550, "75": 451, "99": 250, "0": 250}.items():
        code_file.write_text(code)
        before = set(p.spool_files())
        r = send(p, ["exit " + code])
        assert r.code == reply, (code, r)
        assert len(set(p.spool_files()) - before) == (1 if code == "0" else 0), code


@pytest.mark.parametrize("mode,status,out,err,expect", [
    # stderr's first line, used as is when it has a code of the right class
    ("headers", 1, "", "554 5.7.0 Virus found: Eicar\nsecond line", "554 5.7.0 Virus found: Eicar"),
    ("headers", 75, "", "452 4.3.1 Scanner busy", "452 4.3.1 Scanner busy"),
    # a code of the wrong class: the words kept, the default code in front
    ("headers", 20, "", "451 4.7.1 I meant to reject", "550 5.7.1 I meant to reject"),
    ("headers", 75, "", "550 no way", "451 4.7.1 no way"),
    # no code: the default code and enhanced code in front
    ("headers", 1, "", "spam detected", "550 5.7.1 spam detected"),
    # no stderr: the last stdout line in mode headers (chasquid's hooks)
    ("headers", 20, "first\n553 5.7.1 From the hook's stdout\n", "", "553 5.7.1 From the hook's stdout"),
    # ... but not in mode rewrite, where stdout is a message
    ("rewrite", 1, "Subject: x\n\nbody\n", "", "550 5.7.1 Message rejected by filter r"),
])
def test_reply_texts(petrel_factory, tmp_path, mode, status, out, err, expect):
    (tmp_path / "out").write_text(out)
    (tmp_path / "err").write_text(err)
    f = script(tmp_path / "r.sh",
               f"cat >/dev/null; cat {tmp_path}/out; cat {tmp_path}/err >&2; exit {status}")
    p = start(petrel_factory, [{"name": "r", "exec": [f], "mode": mode}])
    r = send(p)
    assert r.last == expect, r
    assert p.spool_files() == []


# --------------------------------------------------------------------------
# mode headers vs mode rewrite


def test_headers_mode_adds_fields_and_keeps_the_rest(petrel_factory, tmp_path):
    seen = tmp_path / "seen"
    f = script(tmp_path / "h.sh", f"cat > {seen}; printf 'X-One: 1\\r\\nX-Folded: a\\n\\tb\\n'")
    p = start(petrel_factory, [{"name": "h", "exec": [f]}])
    msg = p.spool_message(h.queued_id(send(p, ["line 1", "line 2"])))
    original = seen.read_bytes()
    head, body = original.split(b"\n\n", 1)
    # The fields go at the end of the header; everything else is untouched.
    assert msg.message == head + b"\nX-One: 1\nX-Folded: a\n\tb\n\n" + body, msg.message


def test_rewrite_mode_replaces_the_whole_message(petrel_factory, tmp_path):
    # As spamc -E prints it: a header of its own in front, CRLF line ends.
    f = script(tmp_path / "rw.sh",
               "printf 'X-Spam-Flag: NO\\r\\n'; sed 's/$/\\r/; s/Hello/Goodbye/'")
    p = start(petrel_factory, [{"name": "rw", "exec": [f], "mode": "rewrite"}])
    r = send(p, ["Hello world"])
    msg = p.spool_message(h.queued_id(r))
    assert msg.message.startswith(b"X-Spam-Flag: NO\nReceived: "), msg.message[:80]
    assert b"\r" not in msg.message
    _, body = msg.headers_and_body()
    assert body == b"Goodbye world\n"
    assert int(msg.fields["Z"]) == len(msg.message) + msg.message.count(b"\n")


@pytest.mark.parametrize("name,body", [
    ("empty", "cat >/dev/null"),
    ("bare-cr", "printf 'Subject: x\\n\\nsmuggled\\r.\\rmore\\n'"),
    ("no-header", "printf 'just a body line\\n'"),
    ("too-big", "printf 'Subject: x\\n\\n'; head -c 70000 /dev/zero | tr '\\0' 'a'; echo"),
])
def test_rewrite_mode_rejects_unusable_output(petrel_factory, tmp_path, name, body):
    # max_message_size is 64KiB in the harness config.
    f = script(tmp_path / "bad.sh", "cat >/dev/null\n" + body + "\nexit 0")
    p = start(petrel_factory, [{"name": "bad", "exec": [f], "mode": "rewrite"}])
    r = send(p)
    assert r.code == 451, (name, r)
    assert p.spool_files() == []
    assert p.wait_log(r'filter=bad verdict=tempfail latency=\d+ms error="'), p.log_text()


def test_same_output_headers_vs_rewrite(petrel_factory, tmp_path):
    # One program, two modes: a header block is fields to add in mode headers
    # and a whole (body-less) message in mode rewrite.
    f = script(tmp_path / "both.sh", "cat >/dev/null; printf 'X-Mode-Test: yes\\n'")
    p = start(petrel_factory, [{"name": "hd", "exec": [f], "mode": "headers"}])
    msg = p.spool_message(h.queued_id(send(p, ["kept body"])))
    assert b"X-Mode-Test: yes" in msg.headers_and_body()[0]
    assert msg.headers_and_body()[1] == b"kept body\n"
    p2 = start(petrel_factory, [{"name": "rw", "exec": [f], "mode": "rewrite"}])
    msg = p2.spool_message(h.queued_id(send(p2, ["kept body"])))
    assert msg.message == b"X-Mode-Test: yes\n", msg.message
