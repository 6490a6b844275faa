"""Helpers for the queue runner's integration tests (t-20 .. t-29).

Built on petrel_harness: Maildir and mbox readers, a pipe command that
records what it was given, log parsing, finding the queue runner, DSN
parsing and a private Dovecot LMTP server. Every wait is bounded.
"""

import email
import email.policy
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from datetime import datetime, timezone

import petrel_harness as h

# --------------------------------------------------------------------------
# Messages


def message(subject, body_lines=None, sender="alice@localhost", to="someone@localhost",
            extra_headers=()):
    """A small message (CRLF, ending with CRLF) with a unique Message-ID."""
    mid = "<%d.%s@client.example>" % (time.time_ns(), re.sub(r"\W", "-", subject))
    head = [
        f"From: <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Message-ID: {mid}",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
        *extra_headers,
    ]
    body = body_lines if body_lines is not None else [f"Body of {subject}."]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(body) + "\r\n").encode("utf-8")


def submit(p, sender, rcpts, subject, **kw):
    """Sends one message over SMTP; returns its queue id."""
    c = p.connect()
    try:
        c.ehlo()
        rcpts = [rcpts] if isinstance(rcpts, str) else list(rcpts)
        reply = c.send_message(sender, rcpts, message(subject, sender=sender or "nobody@x",
                                                      to=rcpts[0], **kw))
        c.cmd("QUIT")
        return h.queued_id(reply)
    finally:
        c.close()


# --------------------------------------------------------------------------
# Mailboxes


def maildir_paths(path):
    """Files in a Maildir's new/ and cur/, sorted by name."""
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        try:
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        except FileNotFoundError:
            pass
    return out


def read_mail(path):
    with open(path, "rb") as f:
        return email.message_from_bytes(f.read(), policy=email.policy.compat32)


def maildir(path):
    """The messages in a Maildir (email.message.Message objects)."""
    return [read_mail(p) for p in maildir_paths(path)]


def wait_maildir(path, n, timeout=10.0):
    """Waits until a Maildir holds at least n messages; returns them."""
    h.wait_until(lambda: len(maildir_paths(path)) >= n, timeout)
    return maildir(path)


def by_subject(msgs, subject):
    found = [m for m in msgs if m["Subject"] == subject]
    assert len(found) == 1, f"want one message with Subject {subject!r}, have " \
                            f"{[m['Subject'] for m in msgs]}"
    return found[0]


def first_headers(msg, n=3):
    """Names of the first n header fields, in order."""
    return [k for k, _ in msg.items()[:n]]


def assert_delivery_headers(msg, sender, delivered_to, original_to):
    """The three headers local delivery prepends (SPEC §7), first, in order."""
    assert first_headers(msg) == ["Return-Path", "Delivered-To", "X-Original-To"], msg.items()[:4]
    assert msg["Return-Path"] == f"<{sender}>"
    assert msg["Delivered-To"] == delivered_to
    assert msg["X-Original-To"] == original_to


# --------------------------------------------------------------------------
# Pipe commands


def write_script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def recorder_script(path, outdir):
    """A pipe command that saves its environment and stdin in outdir/N.txt
    (N unique), then exits with the status in outdir/exit (0 if absent)."""
    os.makedirs(outdir, exist_ok=True)
    return write_script(path, f"""#!/bin/sh
out="{outdir}/$$.$(date +%s%N).txt"
{{ env | sort; echo "--- args: $*"; echo "--- stdin"; cat; }} > "$out.tmp"
mv "$out.tmp" "$out"
code=0
[ -f "{outdir}/exit" ] && code=$(cat "{outdir}/exit")
exit $code
""")


def recorded(outdir):
    """What recorder_script saw, one dict per run: env (dict), args, stdin (bytes)."""
    runs = []
    for name in sorted(os.listdir(outdir)):
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(outdir, name), "rb") as f:
            data = f.read()
        env_part, _, rest = data.partition(b"--- args: ")
        args, _, stdin = rest.partition(b"\n--- stdin\n")
        env = {}
        for line in env_part.decode("utf-8", "replace").splitlines():
            k, sep, v = line.partition("=")
            if sep:
                env[k] = v
        runs.append({"env": env, "args": args.decode(), "stdin": stdin})
    return runs


# --------------------------------------------------------------------------
# Logs

TS = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)"


def log_time(line):
    m = re.match(TS, line)
    assert m, f"no timestamp in {line!r}"
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


def log_lines(p, pattern):
    rx = re.compile(pattern)
    return [line for line in p.log_text().splitlines() if rx.search(line)]


def wait_log_count(p, pattern, n, timeout=10.0):
    """Waits until at least n log lines match; returns them."""
    h.wait_until(lambda: len(log_lines(p, pattern)) >= n, timeout)
    return log_lines(p, pattern)


def delivery_line(p, qid, to, status="sent", timeout=10.0):
    """Waits for `qid: to=<to>, ... status=STATUS` and returns the line (or None)."""
    pat = r"^.*" + re.escape(qid) + r": to=<" + re.escape(to) + r">,.* status=" + status + r" "
    m = p.wait_log(pat + ".*$", timeout)
    return m.group(0) if m else None


def wait_queue_empty(p, timeout=10.0):
    return h.wait_until(lambda: p.spool_files() == [], timeout)


# --------------------------------------------------------------------------
# The queue runner process


def runner_pid(p, timeout=5.0, not_pid=None):
    """PID of the live queue runner: a child of the master that logged
    "petrel/qmgr[PID]: queue runner started" (the last such line wins)."""

    def find():
        for line in reversed(p.log_text().splitlines()):
            m = re.search(r"petrel/qmgr\[(\d+)\]: queue runner started", line)
            if m:
                pid = int(m.group(1))
                if pid != not_pid and pid in p.children():
                    return pid
                return None
        return None

    return h.wait_until(find, timeout)


# --------------------------------------------------------------------------
# DSNs


def dsn_parts(msg):
    """(notification, delivery-status blocks, returned headers) of a DSN,
    after checking the RFC 3464 structure."""
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [pt.get_content_type() for pt in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"], \
        [pt.get_content_type() for pt in parts]
    blocks = parts[1].get_payload()  # per-message block, then one per recipient
    assert len(blocks) >= 2, blocks
    returned = email.message_from_string(parts[2].get_payload(), policy=email.policy.compat32)
    return parts[0].get_payload(), blocks, returned


# --------------------------------------------------------------------------
# Bulk submission


def submit_many(port, sender, rcpt_of, count, connections=4, timeout=60.0):
    """Sends `count` messages over `connections` parallel SMTP sessions, each
    transaction pipelined (MAIL, RCPT, DATA in one write). rcpt_of(i) names
    the recipient of message i; its Subject is "bulk i". Returns the queue ids."""
    ids = [None] * count
    errors = []
    deadline = time.monotonic() + timeout

    def worker(k):
        try:
            c = h.SmtpClient.tcp("127.0.0.1", port)
            assert c.reply().code == 220
            c.ehlo()
            for i in range(k, count, connections):
                if time.monotonic() > deadline:
                    raise TimeoutError("submission took too long")
                c.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt_of(i)}>\r\nDATA\r\n")
                r = c.replies(3)
                assert [x.code for x in r] == [250, 250, 354], r
                c.send(message(f"bulk {i}", sender=sender, to=rcpt_of(i)) + b".\r\n")
                ids[i] = h.queued_id(c.reply())
            c.cmd("QUIT")
            c.close()
        except Exception as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not errors, errors
    assert all(ids), "some submissions did not finish"
    return ids


# --------------------------------------------------------------------------
# Dovecot's LMTP server


DOVECOT = "/usr/sbin/dovecot"


class Dovecot:
    """A private Dovecot serving LMTP on a unix socket in `tmp` (run as the
    current user's uid, or as nobody when that is root: Dovecot refuses to
    deliver as uid 0)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.socket = os.path.join(tmp, "lmtp")
        self.mail_root = os.path.join(tmp, "dmail")
        self.log_path = os.path.join(tmp, "dovecot.log")
        self.conf = os.path.join(tmp, "dovecot.conf")
        self.proc = None
        uid, gid = os.getuid(), os.getgid()
        user = _user_name(uid)
        if uid == 0:
            import pwd
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        os.chmod(tmp, 0o755)
        os.makedirs(self.mail_root, exist_ok=True)
        os.chmod(self.mail_root, 0o777)
        for d in ("run", "state"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"""base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {self.log_path}
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = {min(uid, 500)}
mail_location = maildir:{self.mail_root}/%n
default_internal_user = {user}
default_login_user = {user}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={tmp}/home/%n allow_all_users=yes
}}
service lmtp {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
""")

    def start(self, timeout=10.0):
        self._out = open(os.path.join(self.tmp, "dovecot.out"), "ab")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._out, close_fds=True)
        ok = h.wait_until(lambda: self.proc.poll() is not None or _can_connect(self.socket),
                          timeout)
        if self.proc.poll() is not None or not ok:
            self.stop()
            raise RuntimeError("dovecot did not start:\n" + self.log_text())
        return self

    def maildir(self, user):
        return os.path.join(self.mail_root, user)

    def log_text(self):
        out = ""
        for p in (self.log_path, os.path.join(self.tmp, "dovecot.out")):
            try:
                with open(p, errors="replace") as f:
                    out += f.read()
            except OSError:
                pass
        return out

    def stop(self):
        if self.proc is None:
            return
        kids = h.descendants_of(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._out.close()
        self.proc = None


def have_dovecot():
    return os.access(DOVECOT, os.X_OK) and os.path.isdir("/usr/lib/dovecot") and \
        os.path.exists("/usr/lib/dovecot/lmtp")


def _user_name(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "root"


def _can_connect(path):
    if not os.path.exists(path) or not stat.S_ISSOCK(os.stat(path).st_mode):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(path)
        s.close()
        return True
    except OSError:
        return False


def rm_rf(path):
    shutil.rmtree(path, ignore_errors=True)
