"""Helpers for petrel's integration tests: run the real binary, talk raw SMTP.

Everything here is bounded in time: every wait has a deadline, every socket a
timeout, and processes are stopped by PID (SIGTERM, then SIGKILL), never by
name.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PETREL_BIN = os.environ.get("PETREL_BIN", os.path.join(REPO, "build", "petrel"))

START_TIMEOUT = 10.0  # seconds for a master to start listening
STOP_TIMEOUT = 15.0  # seconds for SIGTERM before SIGKILL
REPLY_TIMEOUT = 10.0  # seconds to wait for one SMTP reply

LOG_LINE = re.compile(r"^\S.*? petrel/[\w.-]+\[\d+\]: ")


# --------------------------------------------------------------------------
# Ports and processes


def free_port(host="127.0.0.1"):
    """A loopback TCP port that is free right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _proc_stat(pid):
    """(ppid, starttime) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2:].split()
    state = rest[0]
    if state == "Z":
        return None
    return int(rest[1]), int(rest[19])


def children_of(pid):
    """PIDs whose parent is `pid` (scans /proc; needs no CONFIG_PROC_CHILDREN)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st and st[0] == pid:
            out.append(int(name))
    return sorted(out)


def descendants_of(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children_of(p):
            out.append(c)
            todo.append(c)
    return out


def _socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(int(m.group(1)))
    except OSError:
        pass
    return inodes


def _server_side_inode(server_port, client_port):
    """Inode of the accepted socket for a loopback connection client->server."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            lport = int(local.rsplit(":", 1)[1], 16)
            rport = int(remote.rsplit(":", 1)[1], 16)
            if lport == server_port and rport == client_port and inode:
                return inode
    return None


def _proc_net_address(host):
    """`host` (IPv4, or IPv6 without brackets) as /proc/net/tcp{,6} print it."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        # Four 32-bit words, each in host byte order.
        return "".join(raw[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    return socket.inet_aton(host)[::-1].hex().upper()


def port_is_listening(port, host=None):
    """True when something listens on `port` (on any address, or on `host`
    only), read from /proc: no probe connection."""
    want = _proc_net_address(host) if host else None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, _, lport = parts[1].rpartition(":")
            if parts[3] == "0A" and int(lport, 16) == port and (want is None or addr == want):
                return True
    return False


def wait_until(predicate, timeout, interval=0.05):
    """Polls `predicate` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------
# Config


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    # JSON is valid YAML flow syntax for strings, numbers, lists and maps.
    return json.dumps(v, ensure_ascii=False)


def to_yaml(d, indent=0):
    """Block YAML for nested dicts; lists and scalars in JSON flow style."""
    lines = []
    pad = "  " * indent
    for k, v in d.items():
        key = str(k)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            key = _yaml_scalar(key)
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(v, indent + 1))
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(v)}")
    return "\n".join(lines)


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# A domain outside `domains`: mail to it is relayed. Routes send it to a dead
# port so it stays deferred in the spool, whatever the queue runner does.
REMOTE = "remote.example"


def base_config(tmpdir, port, dead_port):
    return {
        "hostname": "mx.test.example",
        "state_dir": os.path.join(tmpdir, "state"),
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "limits": {
            "max_message_size": "64KiB",
            "max_recipients": 5,
            "timeouts": {"command": "5s"},
        },
        "relay": {"networks": ["127.0.0.0/8", "::1/128"]},
        "domains": {
            "localhost": {
                "deliver": f"maildir:{tmpdir}/mail/%u",
                "users": ["alice", "bob"],
            },
            "open.example": {"deliver": f"maildir:{tmpdir}/mail/open/%u"},
            "catch.example": {
                "deliver": f"maildir:{tmpdir}/mail/catch/%u",
                "users": ["alice"],
                "catch_all": "alice",
            },
        },
        "recipient_delimiter": "+",
        "routes": {"*": f"[127.0.0.1]:{dead_port}"},
        "filter_dir": os.path.join(tmpdir, "filters.d"),
    }


# --------------------------------------------------------------------------
# Spool


class SpoolMessage:
    def __init__(self, path, data):
        self.path = path
        self.raw = data
        end = data.find(b"\n.\n")
        assert data.startswith(b"PETREL1\n") and end >= 0, f"bad spool file {path}"
        self.envelope_text = data[: end + 1].decode("utf-8", "replace")
        self.message = data[end + 3:]
        self.fields = {}
        self.recipients = []
        for line in self.envelope_text.splitlines()[1:]:
            key, _, value = line.partition(" ")
            if key == "R":
                self.recipients.append(value)
            else:
                self.fields[key] = value
        self.id = self.fields.get("I")
        self.sender = self.fields.get("S", "")

    def headers_and_body(self):
        head, _, body = self.message.partition(b"\n\n")
        return head, body

    def first_header(self):
        """The first header field of the stored message, unfolded lines joined with LF."""
        lines = self.message.split(b"\n")
        out = [lines[0]]
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                out.append(line)
            else:
                break
        return b"\n".join(out)

    def without_first_header(self):
        """The stored message minus its first header field (our Received:)."""
        first = self.first_header()
        return self.message[len(first) + 1:]


# --------------------------------------------------------------------------
# Server


class Petrel:
    """One `petrel serve` master, started on a config written by the test."""

    def __init__(self, tmpdir, overrides=None, extra_listen=None, name="petrel"):
        self.tmpdir = str(tmpdir)
        self.port = free_port()
        self.dead_port = free_port()
        cfg = base_config(self.tmpdir, self.port, self.dead_port)
        if overrides:
            cfg = deep_merge(cfg, overrides)
        if extra_listen:
            cfg["listen"] = list(cfg["listen"]) + list(extra_listen)
        self.config = cfg
        self.state_dir = cfg["state_dir"]
        self.config_path = os.path.join(self.tmpdir, f"{name}.yaml")
        self.log_path = os.path.join(self.tmpdir, f"{name}.log")
        self.proc = None
        self.pid = None
        self._known = {}  # pid -> starttime, every descendant we have seen
        self._conns = []
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(os.path.join(self.tmpdir, "filters.d"), exist_ok=True)
        self.write_config(cfg)

    # -- config --------------------------------------------------------

    def write_config(self, cfg=None, text=None):
        if text is None:
            text = to_yaml(cfg if cfg is not None else self.config) + "\n"
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(text)

    # -- lifecycle -----------------------------------------------------

    def start(self, wait=True, nofile=None):
        """Starts the master; `nofile` caps its open files (RLIMIT_NOFILE)."""
        self._log = open(self.log_path, "ab")
        preexec = None
        if nofile is not None:
            import resource

            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [PETREL_BIN, "serve", "-c", self.config_path],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            close_fds=True,
            preexec_fn=preexec,
        )
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        """Waits until the main TCP listener is in LISTEN state.

        Deliberately does not connect: a probe connection would occupy a
        worker slot and skew max_workers / max_per_ip tests.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"petrel exited with {self.proc.returncode} at start:\n{self.log_text()}")
            if port_is_listening(self.port):
                self.remember_children()
                return
            time.sleep(0.02)
        raise RuntimeError(f"petrel did not listen on {self.port} in {timeout}s:\n{self.log_text()}")

    def remember_children(self):
        if self.pid is None:
            return []
        found = descendants_of(self.pid)
        for p in found:
            st = _proc_stat(p)
            if st:
                self._known.setdefault(p, st[1])
        return found

    def children(self):
        """Live direct children of the master (queue runner and workers)."""
        kids = children_of(self.pid)
        self.remember_children()
        return kids

    def signal(self, sig):
        self.remember_children()
        os.kill(self.pid, sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close_clients(self):
        for c in self._conns:
            c.close()
        self._conns = []

    def stop(self):
        """SIGTERM, bounded wait, SIGKILL; then kill leftover descendants by PID."""
        self.close_clients()
        if self.proc is not None:
            self.remember_children()
            if self.proc.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                if self.wait_exit(STOP_TIMEOUT) is None:
                    os.kill(self.pid, signal.SIGKILL)
                    self.wait_exit(5)
            self.kill_leftovers()
            self._log.close()
        return self.proc.returncode if self.proc else None

    def kill_leftovers(self):
        for pid, start in list(self._known.items()):
            st = _proc_stat(pid)
            if st and st[1] == start:  # same process, not a recycled PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for pid, start in list(self._known.items()):
            while time.monotonic() < deadline:
                st = _proc_stat(pid)
                if not st or st[1] != start:
                    break
                time.sleep(0.02)

    # -- observation ---------------------------------------------------

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=5.0):
        """Waits for a log line matching regex `pattern`; returns the match or None."""
        rx = re.compile(pattern, re.M)
        return wait_until(lambda: rx.search(self.log_text()), timeout)

    @property
    def queue_dir(self):
        return os.path.join(self.state_dir, "queue")

    def spool_files(self):
        """Names of committed message files (not .tmp-*, not *.state)."""
        try:
            names = os.listdir(self.queue_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and "." not in n)

    def tmp_files(self):
        try:
            return sorted(n for n in os.listdir(self.queue_dir) if n.startswith(".tmp-"))
        except FileNotFoundError:
            return []

    def spool_message(self, qid):
        path = os.path.join(self.queue_dir, qid)
        with open(path, "rb") as f:
            return SpoolMessage(path, f.read())

    def queue_list(self):
        r = self.run_cli("queue", "list", "--json")
        assert r.returncode == 0, f"queue list failed: {r.returncode}\n{r.stderr}"
        return json.loads(r.stdout)

    def run_cli(self, *args, timeout=20):
        return run_petrel(args[0], *args[1:], "-c", self.config_path, timeout=timeout)

    # -- clients -------------------------------------------------------

    def connect(self, host="127.0.0.1", port=None, greet=True, timeout=REPLY_TIMEOUT):
        c = SmtpClient.tcp(host, port or self.port, timeout=timeout)
        self._conns.append(c)
        if greet:
            r = c.reply()
            assert r.code == 220, f"greeting: {r}"
            c.greeting = r
        return c

    def connect_unix(self, path, greet=True, timeout=REPLY_TIMEOUT):
        c = SmtpClient.unix(path, timeout=timeout)
        self._conns.append(c)
        if greet:
            r = c.reply()
            assert r.code == 220, f"greeting: {r}"
            c.greeting = r
        return c

    def worker_pid_for(self, client, timeout=3.0):
        """PID of the worker serving `client`: the descendant holding its peer socket."""
        server_port = client.sock.getpeername()[1]
        client_port = client.sock.getsockname()[1]

        def find():
            inode = _server_side_inode(server_port, client_port)
            if inode is None:
                return None
            for pid in descendants_of(self.pid):
                if inode in _socket_inodes(pid):
                    return pid
            return None

        pid = wait_until(find, timeout)
        self.remember_children()
        return pid


def run_petrel(*args, timeout=20, **kw):
    return subprocess.run([PETREL_BIN, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


# --------------------------------------------------------------------------
# Raw SMTP client


class Reply:
    def __init__(self, lines):
        self.lines = lines  # decoded text lines without CRLF
        self.code = int(lines[-1][:3])
        self.texts = [line[4:] for line in lines]
        self.text = "\n".join(self.texts)

    @property
    def last(self):
        return self.lines[-1]

    def startswith(self, prefix):
        return self.last.startswith(prefix)

    def __repr__(self):
        return "Reply(" + " | ".join(self.lines) + ")"


class SmtpClient:
    """A byte-exact SMTP client: what we send is what goes on the wire."""

    def __init__(self, sock, timeout):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buf = b""
        self.greeting = None
        self.eof = False

    @classmethod
    def tcp(cls, host, port, timeout=REPLY_TIMEOUT):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((host, port))
        return cls(s, timeout)

    @classmethod
    def unix(cls, path, timeout=REPLY_TIMEOUT):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from server in time; buffered: %r" % self.buf[-200:])
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no reply from server in time; buffered: %r" % self.buf[-200:])
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise ConnectionError("server closed the connection; buffered: %r" % self.buf)
        self.buf += chunk

    def readline(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        """One reply, multiline aware."""
        lines = []
        while True:
            line = self.readline(timeout).decode("utf-8", "replace")
            assert re.match(r"^\d{3}[ -]", line) or re.match(r"^\d{3}$", line), \
                f"malformed reply line {line!r}"
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        """Sends one command line (CRLF added) and returns its reply."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def ehlo(self, name="client.example"):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, f"EHLO: {r}"
        return r

    def pending(self, wait=0.3):
        """Bytes the server sent that nobody has read (waits `wait` seconds)."""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        return self.buf

    def read_until_close(self, timeout=5.0):
        """Everything the server sends until it closes (or `timeout`); returns (data, closed)."""
        end = time.monotonic() + timeout
        while not self.eof and time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        data, self.buf = self.buf, b""
        return data, self.eof

    def is_closed(self, timeout=5.0):
        _, closed = self.read_until_close(timeout)
        return closed

    # -- whole transactions ----------------------------------------------

    def mail(self, sender, params=""):
        return self.cmd(f"MAIL FROM:<{sender}>{(' ' + params) if params else ''}")

    def rcpt(self, rcpt):
        return self.cmd(f"RCPT TO:<{rcpt}>")

    def data(self, content):
        """DATA, then `content` (bytes, already CRLF and dot-stuffed) and the final dot.

        Returns the reply to the final dot. `content` should end with CRLF.
        """
        r = self.cmd("DATA")
        assert r.code == 354, f"DATA: {r}"
        self.send(content + b".\r\n")
        return self.reply()

    def send_message(self, sender, rcpts, content):
        r = self.mail(sender)
        assert r.code == 250, f"MAIL: {r}"
        for rc in rcpts:
            r = self.rcpt(rc)
            assert r.code == 250, f"RCPT {rc}: {r}"
        return self.data(content)


def queued_id(reply):
    m = re.match(r"250 2\.0\.0 Ok: queued as (\S+)", reply.last)
    assert m, f"not a queued reply: {reply}"
    return m.group(1)


def make_message(subject="test", body_lines=None, extra_headers=()):
    """A small RFC 5322 message with CRLF line ends, ending with CRLF."""
    body_lines = body_lines if body_lines is not None else ["Hello from the petrel tests."]
    head = [
        "From: Alice <alice@localhost>",
        "To: Bob <bob@remote.example>",
        f"Subject: {subject}",
        "Message-ID: <%d.%s@client.example>" % (time.time_ns(), subject.replace(" ", "-")),
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
        *extra_headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(body_lines) + "\r\n").encode("utf-8")


def crlf_to_lf(b):
    return b.replace(b"\r\n", b"\n")


def unstuff(b):
    """Undo SMTP dot-stuffing on CRLF content."""
    out = []
    for line in b.split(b"\r\n"):
        out.append(line[1:] if line.startswith(b".") else line)
    return b"\r\n".join(out)
