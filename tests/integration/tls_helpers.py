"""Helpers for the TLS, AUTH, relay and PROXY protocol tests (test_4*).

TLS clients over the byte-exact SmtpClient, clients bound to a second
loopback address, password hashes made the way users make them, external
clients (swaks, curl, openssl s_client) run with bounded time, and an HAProxy
started in the foreground and stopped by PID.
"""

import base64
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time

import petrel_harness as h

CLIENT_TIMEOUT = 20  # seconds for one external client run

# A second loopback address outside relay.networks in these tests.
OTHER_IP = "127.0.0.2"


def have_tool(name):
    return shutil.which(name) is not None


# --------------------------------------------------------------------------
# Config


def tls_overrides(users=None, passwd_file=None, require_tls=True, networks=("127.0.0.1/32",),
                  **extra):
    """Config overrides: auth users (name -> crypt hash) and relay networks."""
    auth = {"require_tls": require_tls}
    if users:
        auth["users"] = users
    if passwd_file:
        auth["passwd_file"] = passwd_file
    out = {"auth": auth, "relay": {"networks": list(networks)}}
    return h.deep_merge(out, extra)


def yescrypt_hash(password):
    """A `$y$` hash from `petrel passwd`, the password given on stdin (not a tty)."""
    r = subprocess.run([h.PETREL_BIN, "passwd"], input=password + "\n", capture_output=True,
                       text=True, timeout=CLIENT_TIMEOUT)
    assert r.returncode == 0, f"petrel passwd: {r.returncode} {r.stderr}"
    out = r.stdout.strip()
    assert out.startswith("$y$"), out
    assert password not in r.stdout + r.stderr
    return out


def sha512_hash(password):
    """A `$6$` hash from `openssl passwd -6`."""
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                       capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("$6$"), out
    return out


def make_cert(directory, cn, name="cert"):
    """A self-signed EC certificate for `cn`; returns (cert_path, key_path)."""
    cert = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}",
         "-keyout", key, "-out", cert],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return cert, key


# --------------------------------------------------------------------------
# SASL


def b64(s):
    return base64.b64encode(s.encode("utf-8")).decode("ascii")


def plain_response(user, password, authz=""):
    return b64(f"{authz}\0{user}\0{password}")


# --------------------------------------------------------------------------
# TLS clients


def client_context(min_version=None, max_version=None, cafile=None):
    """A client context; no verification unless `cafile` is given (then the
    chain is checked but not the host name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if cafile:
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


class TlsClient(h.SmtpClient):
    """SmtpClient that can switch to TLS; TLS end-of-stream counts as a close."""

    def _fill(self, deadline):
        try:
            super()._fill(deadline)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.eof = True
            raise ConnectionError("server closed the TLS connection; buffered: %r" % self.buf)

    def read_until_close(self, timeout=5.0):
        try:
            return super().read_until_close(timeout)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLError):
            self.eof = True
            data, self.buf = self.buf, b""
            return data, True

    def pending(self, wait=0.3):
        try:
            return super().pending(wait)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.eof = True
            return self.buf

    def wrap(self, ctx=None, server_hostname="mx.test.example"):
        """TLS handshake on the current socket (after 220 to STARTTLS, or at once)."""
        assert self.buf == b"", f"unread plaintext before the handshake: {self.buf!r}"
        ctx = ctx or client_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock.settimeout(self.timeout)
        return self.sock

    def starttls(self, ctx=None):
        r = self.cmd("STARTTLS")
        assert r.code == 220, f"STARTTLS: {r}"
        return self.wrap(ctx)

    def tls_info(self):
        return self.sock.version(), self.sock.cipher()[0]

    def auth_plain(self, user, password):
        return self.cmd("AUTH PLAIN " + plain_response(user, password))

    def auth_login(self, user, password):
        r = self.cmd("AUTH LOGIN")
        assert r.code == 334 and r.text == "VXNlcm5hbWU6", f"AUTH LOGIN: {r}"
        r = self.cmd(b64(user))
        assert r.code == 334 and r.text == "UGFzc3dvcmQ6", f"AUTH LOGIN user: {r}"
        return self.cmd(b64(password))


def open_socket(host, port, source=None, timeout=h.REPLY_TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def connect(petrel, port=None, source=None, greet=True, implicit_tls=False, ctx=None,
            timeout=h.REPLY_TIMEOUT):
    """A TlsClient to petrel (registered for cleanup), from `source` if given.

    implicit_tls: handshake first (a `submissions` listener)."""
    c = TlsClient(open_socket("127.0.0.1", port or petrel.port, source, timeout), timeout)
    petrel._conns.append(c)
    if implicit_tls:
        c.wrap(ctx)
    if greet:
        r = c.reply()
        assert r.code == 220, f"greeting: {r}"
        c.greeting = r
    return c


def connect_unix(petrel, path, timeout=h.REPLY_TIMEOUT):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    c = TlsClient(s, timeout)
    petrel._conns.append(c)
    r = c.reply()
    assert r.code == 220, f"greeting: {r}"
    return c


def ehlo_keywords(reply):
    return {t.split(" ", 1)[0].upper(): t for t in reply.texts[1:]}


# --------------------------------------------------------------------------
# Observing results


def wait_spool_message(petrel, qid=None, timeout=5.0):
    """The spooled message `qid` (or the only one); waits for it to appear."""
    def find():
        names = petrel.spool_files()
        if qid is not None:
            return qid if qid in names else None
        return names[0] if len(names) == 1 else None

    name = h.wait_until(find, timeout)
    assert name, f"message {qid or ''} not in the spool: {petrel.spool_files()}"
    return petrel.spool_message(name)


def received_tls(msg):
    """(version, cipher) named by our Received: header, or None."""
    first = msg.first_header().decode("utf-8", "replace")
    m = re.search(r"\(using (TLSv1\.[0-9]) with cipher ([A-Za-z0-9_-]+)\)", first)
    return (m.group(1), m.group(2)) if m else None


def queued_id_in(text):
    m = re.search(r"250[ -]2\.0\.0 Ok: queued as ([A-Za-z0-9]+)", text)
    return m.group(1) if m else None


def all_text_under(path):
    """Every byte of every file under `path` (spool, maildirs, logs), concatenated."""
    out = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    out.append(fh.read())
            except OSError:
                pass
    return b"\n".join(out)


# --------------------------------------------------------------------------
# External clients


def run(cmd, input=None, timeout=CLIENT_TIMEOUT):
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def swaks(port, *args, to=f"friend@{h.REMOTE}", sender="alice@localhost", timeout=CLIENT_TIMEOUT):
    r = run(["swaks", "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to,
             "--ehlo", "client.example", "--timeout", "10", *args], timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def curl_send(url, message_path, *args, to=f"friend@{h.REMOTE}", sender="alice@localhost"):
    r = run(["curl", "-sS", "-v", "-k", "--max-time", "15", url, "--mail-from", sender,
             "--mail-rcpt", to, "-T", message_path, *args])
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


class Expect:
    """Drives an interactive client (openssl s_client) line by line."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = b""

    def send(self, text):
        self.proc.stdin.write(text.encode("utf-8"))
        self.proc.stdin.flush()

    def expect(self, pattern, timeout=10.0):
        rx = re.compile(pattern.encode("utf-8"), re.M)
        deadline = time.monotonic() + timeout
        while not rx.search(self.out):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{pattern!r} not seen; got {self.out[-500:]!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise ConnectionError(f"{pattern!r} not seen before EOF; got {self.out[-500:]!r}")
                self.out += chunk
        return rx.search(self.out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# --------------------------------------------------------------------------
# HAProxy


class Haproxy:
    """`haproxy -db` in the foreground with a tcp-mode config in `directory`.

    frontends: list of (listen_port, backend_port, send_proxy option), e.g.
    (12345, 2525, "send-proxy-v2")."""

    def __init__(self, directory, frontends):
        self.dir = str(directory)
        self.cfg_path = os.path.join(self.dir, "haproxy.cfg")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.frontends = frontends
        lines = [
            "global",
            "  maxconn 200",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 30s",
            "  timeout server 30s",
        ]
        for i, (port, backend_port, option) in enumerate(frontends):
            lines += [
                f"frontend f{i}",
                f"  bind 127.0.0.1:{port}",
                f"  default_backend b{i}",
                f"backend b{i}",
                f"  server s{i} 127.0.0.1:{backend_port} {option}",
            ]
        with open(self.cfg_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10.0):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["haproxy", "-f", self.cfg_path, "-db"],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, close_fds=True)
        ports = [p for p, _, _ in self.frontends]
        ok = h.wait_until(lambda: self.proc.poll() is not None
                          or all(h.port_is_listening(p) for p in ports), timeout)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"haproxy did not start:\n{self.log_text()}")
        return self

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class PrefixedTls:
    """A TLS client whose ClientHello goes out in the same write as `prefix`
    (a PROXY header, say), so the server receives both in one segment."""

    def __init__(self, sock, prefix, ctx=None, timeout=5.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or client_context()).wrap_bio(self.inc, self.out,
                                                      server_hostname="mx.test.example")
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.sock.sendall(prefix + self.out.read())
        self._pump(self.obj.do_handshake)

    def _pump(self, op):
        """Runs `op` until it stops wanting to read; returns its result."""
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                pending = self.out.read()
                if pending:
                    self.sock.sendall(pending)
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection during TLS")
                self.inc.write(data)
                continue
            pending = self.out.read()
            if pending:
                self.sock.sendall(pending)
            return result

    def version(self):
        return self.obj.version()

    def send(self, data):
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def read_line(self):
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += self._pump(lambda: self.obj.read(1))
        return buf.decode("utf-8", "replace")

    def reply(self):
        lines = [self.read_line()]
        while lines[-1][3:4] == "-":
            lines.append(self.read_line())
        return h.Reply([line.rstrip("\r\n") for line in lines])
