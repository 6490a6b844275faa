"""t-35: C plugins at work (SPEC §8, petrel-filters(7)): a DNSBL, a crash, a bad ABI.

The plugins are C sources in tests/integration/plugins/, compiled here with
`cc -shared -fPIC -Iinclude` into a temp dir (nothing prebuilt is used):

- dnsbl.c looks the client's IPv4 address up at RCPT in a DNSBL zone served
  by a real dnsmasq started here on loopback: a listed client has that RCPT
  refused with 5xx naming the zone while the session goes on; an unlisted
  client (another loopback address, or another zone) gets its mail through;
  with the DNS server gone the lookup fails and on_error (tempfail) answers.
- crash.c segfaults in scan on "Subject: crash": that session is lost (4xx or
  dropped connection, nothing stored), the master and other sessions live on
  and the next session works; on "Subject: hang" it spins until the filter's
  timeout ends the worker (SIGALRM), with the same outcome.
- bad_abi.c claims ABI version 999 (or, with -DMISSING_SYMBOL, needs a symbol
  no library has): check-config exits 78 naming the file and the reason, serve
  refuses to start, and a reload to it keeps the running configuration.

test_30_filters.py covers the rules plugin and a non-ELF "plugin" file.
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import petrel_harness as h

PLUGIN_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
DNSMASQ = "/usr/sbin/dnsmasq"
RCPT = "bob@remote.example"  # relayed to a dead port, so it stays in the spool
ZONE = "bl.test"             # lists 127.0.0.1 (1.0.0.127.bl.test A 127.0.0.2)
CLEAN_ZONE = "clean.test"    # lists nobody


# --------------------------------------------------------------------------
# Building the plugins


@pytest.fixture(scope="module")
def plugins():
    """{name: path of the .so} for every plugin, built for this test run."""
    cc = shutil.which("cc")
    assert cc, "no C compiler (cc) on PATH: the plugin tests build their plugins"
    out = tempfile.mkdtemp(prefix="petrel-plugins-")
    built = {}
    try:
        for name, src, flags in [("dnsbl", "dnsbl.c", []),
                                 ("crash", "crash.c", []),
                                 ("bad_abi", "bad_abi.c", []),
                                 ("missing_symbol", "bad_abi.c", ["-DMISSING_SYMBOL"])]:
            so = os.path.join(out, name + ".so")
            r = subprocess.run([cc, "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                                "-I", os.path.join(h.REPO, "include"), *flags,
                                os.path.join(PLUGIN_SRC, src), "-o", so],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"building {src} failed:\n{r.stderr}"
            built[name] = so
        yield built
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------
# dnsmasq serving the DNSBL zones


def dns_query(port, name, timeout=1.0):
    """(rcode, [A records]) for `name` from 127.0.0.1:port, or None on no answer."""
    qid = os.getpid() & 0xFFFF
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    pkt += b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    pkt += b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(pkt, ("127.0.0.1", port))
            r = s.recv(1500)
        except OSError:
            return None
    if len(r) < 12 or r[:2] != pkt[:2]:
        return None
    rcode, ancount = r[3] & 0x0F, struct.unpack(">H", r[6:8])[0]
    return rcode, [socket.inet_ntoa(r[-4:])] if ancount and r[-6:-4] == b"\0\4" else []


def free_udp_tcp_port():
    """A loopback port free for both UDP and TCP right now (dnsmasq binds both)."""
    for _ in range(20):
        port = h.free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free UDP+TCP port")


class Dnsmasq:
    def __init__(self, logdir):
        self.logdir = logdir
        self.proc = None
        self.port = None

    def start(self):
        assert os.access(DNSMASQ, os.X_OK), \
            f"{DNSMASQ} missing: the DNSBL test needs dnsmasq (Debian dnsmasq-base)"
        last = ""
        for _ in range(3):  # a port taken between choosing and binding: try another
            self.port = free_udp_tcp_port()
            log = open(os.path.join(self.logdir, "dnsmasq.log"), "ab")
            self.proc = subprocess.Popen(
                [DNSMASQ, "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                 "--keep-in-foreground", "--pid-file=", "--log-facility=-", "--log-queries",
                 f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                 f"--local=/{ZONE}/", f"--local=/{CLEAN_ZONE}/",
                 f"--host-record=1.0.0.127.{ZONE},127.0.0.2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
            log.close()
            answer = h.wait_until(
                lambda: self.proc.poll() is not None or dns_query(self.port, "1.0.0.127." + ZONE,
                                                                  timeout=0.2), 10)
            if self.proc.poll() is None and answer:
                assert answer == (0, ["127.0.0.2"]), answer
                return self
            self.stop()
            with open(os.path.join(self.logdir, "dnsmasq.log"), errors="replace") as f:
                last = f.read()
        raise RuntimeError(f"dnsmasq did not start:\n{last}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def dnsmasq(tmp_path):
    d = Dnsmasq(str(tmp_path)).start()
    yield d
    d.stop()


# --------------------------------------------------------------------------
# Helpers


def connect_from(p, source_ip):
    """An SMTP client to petrel whose socket is bound to `source_ip` (a loopback address)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(h.REPLY_TIMEOUT)
    s.bind((source_ip, 0))
    s.connect(("127.0.0.1", p.port))
    c = h.SmtpClient(s, h.REPLY_TIMEOUT)
    p._conns.append(c)
    r = c.reply()
    assert r.code == 220, r
    return c


def dnsbl_filter(plugin, zone, port):
    return {"filters": [{"name": "dnsbl", "plugin": plugin, "timeout": "5s",
                         "options": {"zone": zone, "nameserver": f"127.0.0.1:{port}",
                                     "timeout_ms": "500"}}]}


def send_ok(c, subject):
    r = c.send_message("alice@localhost", [RCPT], h.make_message(subject))
    assert r.code == 250, r
    return h.queued_id(r)


# --------------------------------------------------------------------------
# DNSBL


def test_dnsbl_refuses_listed_client_at_rcpt_and_session_goes_on(petrel_factory, plugins,
                                                                 dnsmasq):
    p = petrel_factory(dnsbl_filter(plugins["dnsbl"], ZONE, dnsmasq.port))

    # 127.0.0.1 is listed: each RCPT is refused with 5xx naming the zone...
    c = connect_from(p, "127.0.0.1")
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    r = c.rcpt(RCPT)
    assert r.code == 554 and r.last.startswith("554 5.7.1 ") and ZONE in r.text, r
    assert "[127.0.0.1]" in r.text, r
    # ... and the session goes on: another RCPT, RSET, a new MAIL, QUIT.
    r = c.rcpt("alice@localhost")
    assert r.code == 554 and ZONE in r.text, r
    r = c.cmd("DATA")
    assert r.code // 100 == 5, r  # no valid recipients
    assert c.cmd("RSET").code == 250
    assert c.mail("alice@localhost").code == 250
    assert c.cmd("NOOP").code == 250
    r = c.cmd("QUIT")
    assert r.code == 221, r
    assert c.is_closed()
    assert p.spool_files() == []
    assert p.wait_log(r"filter=dnsbl stage=rcpt verdict=reject"), p.log_text()

    # 127.0.0.2 is not listed in the same zone: its mail goes through.
    c = connect_from(p, "127.0.0.2")
    c.ehlo()
    qid = send_ok(c, "clean client")
    assert p.spool_message(qid).recipients == [RCPT]
    assert c.cmd("QUIT").code == 221
    assert p.proc.poll() is None


def test_dnsbl_other_zone_lets_client_through_and_dns_down_tempfails(petrel_factory, plugins,
                                                                    dnsmasq):
    # A second config whose zone does not list 127.0.0.1: its mail is accepted.
    p = petrel_factory(dnsbl_filter(plugins["dnsbl"], CLEAN_ZONE, dnsmasq.port))
    c = connect_from(p, "127.0.0.1")
    c.ehlo()
    qid = send_ok(c, "not listed here")
    assert qid in p.spool_files()
    assert "stage=rcpt" not in p.log_text()  # no objection at RCPT

    # The DNS server gone: the lookup is a filter error and on_error
    # (tempfail by default) answers that RCPT with 4xx; never a silent pass.
    dnsmasq.stop()
    assert c.mail("alice@localhost").code == 250
    r = c.rcpt(RCPT)
    assert r.code // 100 == 4, r
    assert c.cmd("RSET").code == 250
    assert c.cmd("QUIT").code == 221
    assert p.spool_files() == [qid]


# --------------------------------------------------------------------------
# A plugin that crashes


def test_plugin_segfault_in_scan_costs_that_session_only(petrel_factory, plugins):
    p = petrel_factory({"filters": [{"name": "crash", "plugin": plugins["crash"]}]})

    # A session opened before the crash, idle meanwhile.
    other = p.connect()
    other.ehlo()

    victim = p.connect()
    victim.ehlo()
    worker = p.worker_pid_for(victim)
    assert worker, "no worker found for the session"
    try:
        r = victim.send_message("alice@localhost", [RCPT], h.make_message("crash"))
        answered = r.code
    except (ConnectionError, TimeoutError):
        answered = None
    # A 4xx or a dropped connection; never a 250, never a 5xx.
    assert answered is None or answered // 100 == 4, answered
    assert victim.is_closed(), "the crashed session's connection stays open"
    assert p.spool_files() == []
    assert p.wait_log(rf"worker {worker} killed by signal {int(signal.SIGSEGV)}"), p.log_text()
    assert h.wait_until(lambda: not p.tmp_files(), 3), p.tmp_files()

    # The master lives, the idle session was not touched, the next one works.
    assert p.proc.poll() is None, "the master died with its worker"
    qid = send_ok(other, "after the crash")
    head, _ = p.spool_message(qid).headers_and_body()
    assert b"X-Crash-Test: survived" in head, head
    other.cmd("QUIT")
    c = p.connect()
    c.ehlo()
    qid2 = send_ok(c, "next session")
    assert sorted(p.spool_files()) == sorted([qid, qid2])
    assert p.proc.poll() is None


def test_plugin_hanging_in_scan_is_ended_at_its_timeout(petrel_factory, plugins):
    p = petrel_factory({"filters": [{"name": "crash", "plugin": plugins["crash"],
                                      "timeout": "1s"}]})
    c = p.connect()
    c.ehlo()
    worker = p.worker_pid_for(c)
    assert worker
    t0 = time.monotonic()
    try:
        r = c.send_message("alice@localhost", [RCPT], h.make_message("hang"))
        answered = r.code
    except (ConnectionError, TimeoutError):
        answered = None
    assert answered is None or answered // 100 == 4, answered
    assert c.is_closed()
    assert time.monotonic() - t0 < 6, "the hung scan was not cut at its 1s timeout"
    assert p.wait_log(rf"worker {worker} killed by signal {int(signal.SIGALRM)}"), p.log_text()
    assert p.spool_files() == []
    assert p.proc.poll() is None
    c = p.connect()
    c.ehlo()
    send_ok(c, "after the hang")


# --------------------------------------------------------------------------
# A plugin petrel must refuse to load


def bad_config(tmp_path, plugin, port=None):
    cfg = tmp_path / "bad.yaml"
    listen = f"listen: [{{address: \"127.0.0.1:{port}\"}}]\n" if port else ""
    cfg.write_text(f"state_dir: {tmp_path}/state\n{listen}filters:\n"
                   f"  - {{name: bad, plugin: {plugin}}}\n")
    return str(cfg)


def test_wrong_abi_version_fails_check_config_and_serve(tmp_path, plugins):
    so = plugins["bad_abi"]
    cfg = bad_config(tmp_path, so)
    r = h.run_petrel("check-config", "-c", cfg)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert so in r.stderr and "ABI version 999" in r.stderr, r.stderr

    # serve does not start with it either (and says why).
    port = h.free_port()
    cfg = bad_config(tmp_path, so, port)
    r = h.run_petrel("serve", "-c", cfg, timeout=15)
    assert r.returncode != 0, (r.returncode, r.stderr)
    assert "ABI version 999" in r.stderr, r.stderr
    assert not h.port_is_listening(port)


def test_missing_symbol_fails_check_config(tmp_path, plugins):
    so = plugins["missing_symbol"]
    r = h.run_petrel("check-config", "-c", bad_config(tmp_path, so))
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert so in r.stderr and "petrel_test_no_such_function" in r.stderr, r.stderr


def test_reload_to_a_bad_plugin_keeps_the_running_chain(petrel_factory, plugins):
    p = petrel_factory({"filters": [{"name": "crash", "plugin": plugins["crash"]}]})
    cfg = dict(p.config)
    cfg["filters"] = [{"name": "bad", "plugin": plugins["bad_abi"]}]
    p.write_config(cfg)
    p.signal(signal.SIGHUP)
    assert p.wait_log(r"reload failed: .*ABI version 999"), p.log_text()
    assert p.wait_log(r"reload failed: keeping the previous configuration|"
                      r"keeping the previous configuration"), p.log_text()
    c = p.connect()
    c.ehlo()
    qid = send_ok(c, "after a failed reload")
    head, _ = p.spool_message(qid).headers_and_body()
    assert b"X-Crash-Test: survived" in head, head
    assert p.proc.poll() is None
