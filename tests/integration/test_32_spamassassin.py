"""t-32: SpamAssassin, the real Debian daemons, as a milter and as an exec filter.

spamd runs once for the module on a loopback port chosen at run time, local
tests only (`-L`: no DNS, no network), with the rules Debian ships in
/usr/share/spamassassin (no sa-update needed), Bayes off, logging to a file,
dropping to an unprivileged user when the tests run as root. It is stopped by
PID, as is everything else started here.

- spamass-milter in front of it, as a petrel milter: GTUBE is refused with a
  5xx at the end of DATA and nothing is stored; ham is stored with the
  X-Spam-* fields the milter added.
- spamc as an exec filter with SPEC §8's flags (`-E -x -X`, `mode: rewrite`):
  GTUBE refused (spamc exits 1), ham stored as spamd rewrote it, and with
  spamd stopped the message is tempfailed (4xx), never passed unscanned.
"""
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import petrel_harness as h

SPAMD = "/usr/sbin/spamd"
SPAMC = "/usr/bin/spamc"
SPAMASS_MILTER = "/usr/sbin/spamass-milter"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HAM = ["Hello Bob,", "", "are we still on for lunch on Thursday? The usual place at noon.",
       "", "Alice"]
RCPT = "bob@remote.example"  # relayed to a dead port, so the message stays in the spool


def need(path, package):
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: install {package} (scripts/install-deps.sh)",
                    pytrace=False)


def stop_pid(proc, timeout=10):
    """SIGTERM to `proc` (SIGKILL after `timeout`), then the same for any child
    it left running (spamd's children outlive their parent by a moment)."""
    if proc is None or proc.poll() is not None:
        return
    kids = {pid: h._proc_stat(pid) for pid in h.descendants_of(proc.pid)}
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)

    def alive():
        return [pid for pid, st in kids.items() if st and h._proc_stat(pid) == st]

    if not h.wait_until(lambda: not alive(), timeout):
        for pid in alive():
            os.kill(pid, signal.SIGKILL)


def wait_port_closed(port, timeout=10):
    return h.wait_until(lambda: not h.port_is_listening(port), timeout)


class Spamd:
    """One spamd on 127.0.0.1:<free port>, in the foreground, stopped by PID."""

    def __init__(self):
        need(SPAMD, "spamd")
        need(SPAMC, "spamc")
        # Readable by the unprivileged user spamd runs its children as.
        self.dir = tempfile.mkdtemp(prefix="petrel-spamd-")
        os.chmod(self.dir, 0o755)
        self.port = h.free_port()
        self.log = os.path.join(self.dir, "spamd.log")
        self.proc = None

    def start(self, timeout=60):
        argv = [SPAMD, "--local", "--nouser-config",
                "--listen", f"127.0.0.1:{self.port}", "--allowed-ips", "127.0.0.1",
                "--max-children", "2", "--min-children", "1",
                "--helper-home-dir", self.dir,
                "--syslog", self.log,
                "--cf", "use_bayes 0", "--cf", "bayes_auto_learn 0"]
        if os.geteuid() == 0:
            user = "debian-spamd"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            argv += ["--username", user]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "spamd.stderr"), "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if h.port_is_listening(self.port):
                # Rules load after the bind: wait until a child answers PING.
                r = subprocess.run([SPAMC, "-d", "127.0.0.1", "-p", str(self.port), "-K"],
                                   capture_output=True, text=True, timeout=timeout)
                if r.returncode == 0 and r.stdout.startswith("SPAMD/"):
                    return self
            time.sleep(0.2)
        self.stop()
        pytest.fail("spamd did not start: " + self.diagnostics(), pytrace=False)

    def diagnostics(self):
        out = []
        for name in ("spamd.stderr", "spamd.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    out.append(f"{name}:\n{f.read()[-3000:]}")
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        stop_pid(self.proc)  # the parent takes its children with it
        wait_port_closed(self.port)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def spamc_filter(self):
        """SPEC §8's spamc filter, pointed at this spamd."""
        return {"name": "spamassassin",
                "exec": [SPAMC, "-d", "127.0.0.1", "-p", str(self.port),
                         "-E", "-x", "-X", "-s", "26214400"],
                "mode": "rewrite", "timeout": "60s"}


@pytest.fixture(scope="module")
def spamd():
    d = Spamd()
    try:
        yield d.start()
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def spamass_milter(spamd):
    need(SPAMASS_MILTER, "spamass-milter")
    port = h.free_port()
    stderr_path = os.path.join(spamd.dir, "spamass-milter.stderr")
    # -r 15: refuse at a score of 15 or more (GTUBE scores 1000);
    # after --, spamc's own flags: this spamd.
    proc = subprocess.Popen([SPAMASS_MILTER, "-p", f"inet:{port}@127.0.0.1", "-r", "15",
                             "--", "-d", "127.0.0.1", "-p", str(spamd.port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(stderr_path, "wb"))
    try:
        if not h.wait_until(lambda: h.port_is_listening(port) or proc.poll() is not None, 15) \
                or proc.poll() is not None:
            with open(stderr_path, errors="replace") as f:
                pytest.fail("spamass-milter did not start: " + f.read(), pytrace=False)
        yield f"inet:127.0.0.1:{port}"
    finally:
        stop_pid(proc)


def send(p, body_lines, subject):
    c = p.connect()
    c.ehlo()
    r = c.send_message("alice@localhost", [RCPT], h.make_message(subject, body_lines))
    c.close()
    return r


def spam_headers(head):
    """The X-Spam-* fields of a header block, unfolded: {lower-case name: value}."""
    out = {}
    for m in re.finditer(rb"^(X-Spam-[\w-]+):[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I):
        out[m.group(1).decode().lower()] = re.sub(r"\s+", " ", m.group(2).decode()).strip()
    return out


# -- spamass-milter -----------------------------------------------------------


def test_milter_rejects_gtube_at_data(petrel_factory, spamass_milter):
    p = petrel_factory({"filters": [{"name": "spamass", "milter": spamass_milter,
                                     "timeout": "60s"}]})
    r = send(p, ["Buy now!", GTUBE], "gtube via milter")
    assert r.code // 100 == 5, r
    assert re.match(r"5\.7\.\d", r.last[4:]), r
    assert p.spool_files() == [], p.spool_files()
    # The session goes on: a ham message right after is accepted.
    r = send(p, HAM, "ham after spam")
    assert r.code == 250, r


def test_milter_passes_ham_with_spamassassin_headers(petrel_factory, spamass_milter):
    p = petrel_factory({"filters": [{"name": "spamass", "milter": spamass_milter,
                                     "timeout": "60s"}]})
    r = send(p, HAM, "lunch")
    assert r.code == 250, r
    m = p.spool_message(h.queued_id(r))
    head, body = m.headers_and_body()
    fields = spam_headers(head)
    assert fields.get("x-spam-status", "").startswith("No, score="), head
    assert "x-spam-checker-version" in fields, head
    assert "SpamAssassin" in fields["x-spam-checker-version"], fields
    assert m.first_header().startswith(b"Received: from client.example"), head
    assert body == ("\n".join(HAM) + "\n").encode(), body


def test_milter_replaces_forged_spam_headers(petrel_factory, spamass_milter):
    # X-Spam-* fields a message arrives with are changed (SMFIR_CHGHEADER) to
    # spamd's verdict, or deleted when spamd has none for them.
    p = petrel_factory({"filters": [{"name": "spamass", "milter": spamass_milter,
                                     "timeout": "60s"}]})
    c = p.connect()
    c.ehlo()
    r = c.send_message("alice@localhost", [RCPT], h.make_message(
        "forged", HAM, extra_headers=("X-Spam-Flag: YES",
                                      "X-Spam-Status: Yes, score=99.0 required=5.0")))
    c.close()
    assert r.code == 250, r
    head, _ = p.spool_message(h.queued_id(r)).headers_and_body()
    fields = spam_headers(head)
    assert fields.get("x-spam-status", "").startswith("No, score="), head
    assert head.lower().count(b"\nx-spam-status:") == 1, head
    assert b"score=99.0" not in head, head
    assert "x-spam-flag" not in fields, head


# -- spamc as an exec filter --------------------------------------------------


def test_spamc_refuses_gtube(petrel_factory, spamd):
    p = petrel_factory({"filters": [spamd.spamc_filter()]})
    r = send(p, [GTUBE], "gtube via spamc")
    assert r.code // 100 == 5, r
    assert p.spool_files() == [], p.spool_files()
    assert "filter=spamassassin" in p.log_text(), p.log_text()


def test_spamc_rewrites_ham_with_spamd_headers(petrel_factory, spamd):
    p = petrel_factory({"filters": [spamd.spamc_filter()]})
    r = send(p, HAM, "lunch")
    assert r.code == 250, r
    m = p.spool_message(h.queued_id(r))
    head, body = m.headers_and_body()
    fields = spam_headers(head)
    assert fields.get("x-spam-status", "").startswith("No, score="), head
    assert "SpamAssassin" in fields.get("x-spam-checker-version", ""), head
    # The message is spamd's rewrite of what petrel gave it: our Received:
    # field once, the original fields and body unchanged.
    assert head.count(b"Received: from client.example") == 1, head
    assert b"\nSubject: lunch\n" in head, head
    assert body == ("\n".join(HAM) + "\n").encode(), body


def test_spamc_tempfails_when_spamd_is_down(petrel_factory):
    # A spamd of this test's own, so stopping it leaves the module's alone.
    own = Spamd()
    try:
        own.start()
        p = petrel_factory({"filters": [own.spamc_filter()]})
        r = send(p, HAM, "while spamd runs")
        assert r.code == 250, r
        stored = set(p.spool_files())
        own.stop()  # SIGTERM to spamd's PID; its children go with it
        assert not h.port_is_listening(own.port)
        r = send(p, HAM, "while spamd is down")
        assert r.code // 100 == 4, r
        assert set(p.spool_files()) == stored, "a message passed unscanned"
        r = send(p, [GTUBE], "spam while spamd is down")
        assert r.code // 100 == 4, r
        assert set(p.spool_files()) == stored
    finally:
        own.cleanup()
