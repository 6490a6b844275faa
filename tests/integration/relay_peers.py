"""Receiving MTAs and DNS for the relay tests (t-50 ..): Postfix's smtp-sink,
dnsmasq and a private Postfix instance, each started on loopback by the test
and stopped by PID. Every wait is bounded.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import petrel_harness as h

SMTP_SINK = "/usr/sbin/smtp-sink"
DNSMASQ = "/usr/sbin/dnsmasq"


def _stop(proc, timeout=5.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_listen(host, port, timeout=10.0):
    """Waits until host:port is in LISTEN state (no probe connection)."""
    return h.wait_until(lambda: h.port_is_listening(port, host), timeout, interval=0.05)


def established_to(port):
    """Local addresses of client-side ESTABLISHED TCP connections (IPv4) to
    any address on `port`."""
    local = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and int(parts[2].split(":")[1], 16) == port:
                local.add(parts[1])
    return local


class PeakConnections:
    """Samples established_to(port) every few milliseconds in a thread and
    keeps the peak number of connections open at once."""

    def __init__(self, port):
        import threading
        self.port, self.peak, self._stop = port, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        # /proc/net/tcp is no snapshot: when it is long (TIME_WAIT entries of
        # earlier tests) it is read in chunks, and a connection closed just
        # before the next one opens can show in one chunk while its successor
        # shows in a later one. Count only connections seen in two reads in a
        # row: any real excess lasts a whole SMTP session.
        while not self._stop.wait(0.005):
            both = established_to(self.port) & established_to(self.port)
            self.peak = max(self.peak, len(both))

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.peak


class Sink:
    """Postfix's smtp-sink on host:port: accepts (or, with `reject`, refuses
    with 4xx / 5xx) every transaction and appends each to a dump file.
    Counters come from its `-c` output: sessions ended and messages."""

    def __init__(self, tmp, host, port, soft_reject=(), hard_reject=(), name="sink"):
        self.host, self.port = host, port
        self.dump = os.path.join(tmp, f"{name}-{host}-{port}.dump")
        self.out = os.path.join(tmp, f"{name}-{host}-{port}.out")
        self.args = [SMTP_SINK, "-c", "-u", "root", "-D", self.dump]
        if soft_reject:
            self.args += ["-r", ",".join(soft_reject)]
        if hard_reject:
            self.args += ["-f", ",".join(hard_reject)]
        self.args += [f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "256"]
        self.proc = None

    def start(self):
        assert os.access(SMTP_SINK, os.X_OK), f"{SMTP_SINK} missing (apt-get install postfix)"
        self._outf = open(self.out, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._outf,
                                     stderr=subprocess.STDOUT, close_fds=True)
        assert wait_listen(self.host, self.port), f"smtp-sink on {self.host}:{self.port} not listening"
        return self

    def stop(self):
        _stop(self.proc)
        self.proc = None
        if getattr(self, "_outf", None):
            self._outf.close()
            self._outf = None

    def counters(self):
        """(sessions, messages) as smtp-sink last printed them."""
        try:
            with open(self.out, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            return 0, 0
        found = re.findall(r"sess=(\d+) quit=\d+ mesg=(\d+)", text)
        if not found:
            return 0, 0
        return int(found[-1][0]), int(found[-1][1])

    def messages(self):
        return self.counters()[1]

    def dump_text(self):
        try:
            with open(self.dump, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_messages(self, n, timeout=20.0):
        return h.wait_until(lambda: self.messages() >= n, timeout, interval=0.1)


class DnsMasq:
    """dnsmasq answering only from the given records (--mx-host=...,
    --host-record=...), NXDOMAIN for any other name under .test."""

    def __init__(self, tmp, records):
        assert os.access(DNSMASQ, os.X_OK), f"{DNSMASQ} missing (apt-get install dnsmasq-base)"
        self.port = free_udp_port()
        self.log = os.path.join(tmp, f"dnsmasq-{self.port}.log")
        args = [DNSMASQ, "-d", "-p", str(self.port), "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
                "--pid-file=", "--cache-size=0", "--conf-file=/dev/null", *records]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, close_fds=True)
        assert h.wait_until(self._answers, 10, interval=0.05), "dnsmasq does not answer"

    @property
    def nameserver(self):
        return f"127.0.0.1:{self.port}"

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {open(self.log).read()}")
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x04test\x00\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            s.sendto(q, ("127.0.0.1", self.port))
            try:
                s.recvfrom(512)
                return True
            except socket.timeout:
                return False

    def stop(self):
        _stop(self.proc)
        self._logf.close()


def free_udp_port():
    """A loopback port free for UDP and for TCP (dnsmasq binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


POSTFIX_MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance (its own config and queue directories in a
    temp dir, smtpd on host:port, everything discarded after acceptance).
    `main` adds main.cf lines. Started and stopped with `postfix -c DIR`;
    the system's /etc/postfix is never touched. Its log is `maillog`."""

    def __init__(self, host, port, main=""):
        self.host, self.port = host, port
        # Postfix daemons run as the postfix user: a world-traversable dir.
        self.dir = tempfile.mkdtemp(prefix="petrel-pf-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.conf = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "spool")
        data = os.path.join(self.dir, "data")
        for d in (self.conf, self.queue, data):
            os.makedirs(d)
        shutil.chown(data, "postfix")
        self.maillog = os.path.join(self.dir, "maillog")
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination = localhost, $myhostname
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard
local_transport = discard
relay_transport = discard
virtual_transport = discard
biff = no
syslog_name = postfix-peer
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
smtpd_banner = $myhostname ESMTP
multi_instance_enable = no
{main}
""")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(listen=f"{host}:{port}"))
        self.started = False

    def _postfix(self, *args, timeout=60):
        return subprocess.run(["/usr/sbin/postfix", "-c", self.conf, *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def start(self):
        self.started = True
        r = self._postfix("start")
        assert r.returncode == 0, f"postfix start failed: {r.stdout}{r.stderr}"
        assert wait_listen(self.host, self.port, 15), f"postfix smtpd not listening:\n{self.log()}"
        return self

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if not self.started:
            return
        pid = self.master_pid()
        self._postfix("stop", timeout=30)
        if pid:
            gone = h.wait_until(lambda: not _alive(pid), 15)
            if not gone:
                os.kill(pid, signal.SIGKILL)
        self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def self_signed_cert(directory, cn="peer.postfix.test"):
    """Writes key.pem and cert.pem (world-readable dir for Postfix); returns paths."""
    key = os.path.join(directory, "key.pem")
    cert = os.path.join(directory, "cert.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "2", "-subj", f"/CN={cn}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    os.chmod(key, 0o644)
    return key, cert
