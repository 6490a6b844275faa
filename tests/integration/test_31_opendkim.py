"""t-31: opendkim, the real Debian daemon, signs through petrel's milter client.

opendkim runs in sign mode (`opendkim -f`, its own config file, a key made by
`opendkim-genkey`) on a loopback port chosen at run time, one daemon for the
module, stopped by PID. opendkim refuses a key or config file with a parent
that other users may write (so nothing under /tmp or /var/tmp): its files live
in a 0700 directory next to the petrel binary (the build directory).

The stored message is checked against the public key by two independent
verifiers: dkimpy (Debian python3-dkim) with the key record fed in place of a
DNS lookup, and opendkim itself in test mode (`opendkim -t`) with the key in
`TestPublicKeys`. A signature over what petrel stores proves that petrel gave
the milter exactly the header and body it spooled (unstuffed dots, body split
into chunks of at most 65535 bytes, header whitespace kept) and applied the
milter's header insertion as asked.
"""
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

import petrel_harness as h

OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"
DOMAIN = "dkim.example"
SELECTOR = "petrel"
RCPT = "bob@remote.example"  # relayed to a dead port, so the message stays in the spool


def _safe_dir(path):
    """True when no ancestor of `path` (itself included) is writable by group or others."""
    path = os.path.realpath(path)
    while True:
        st = os.stat(path)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _private_parent():
    candidates = [os.path.dirname(os.path.abspath(h.PETREL_BIN)), h.REPO,
                  os.path.expanduser("~")]
    for c in candidates:
        if os.path.isdir(c) and os.access(c, os.W_OK) and _safe_dir(c):
            return c
    pytest.fail(f"no directory without group/other-writable parents for opendkim's key "
                f"(tried {candidates})", pytrace=False)


def _txt_record(path):
    """The TXT data of an opendkim-genkey .txt file: its quoted strings joined."""
    with open(path, encoding="ascii") as f:
        return "".join(re.findall(r'"([^"]*)"', f.read()))


class OpenDKIM:
    def __init__(self):
        for tool in (OPENDKIM, GENKEY):
            if not os.access(tool, os.X_OK):
                pytest.fail(f"{tool} missing: install opendkim and opendkim-tools "
                            f"(scripts/install-deps.sh)", pytrace=False)
        self.dir = tempfile.mkdtemp(prefix="opendkim-", dir=_private_parent())
        os.chmod(self.dir, 0o700)
        self.port = h.free_port()
        self.proc = None
        self.stderr_path = os.path.join(self.dir, "opendkim.stderr")

    @property
    def address(self):
        return f"inet:127.0.0.1:{self.port}"

    def start(self):
        subprocess.run([GENKEY, "-b", "2048", "-d", DOMAIN, "-s", SELECTOR, "-D", self.dir],
                       check=True, capture_output=True, timeout=60)
        self.key = os.path.join(self.dir, SELECTOR + ".private")
        self.txt = _txt_record(os.path.join(self.dir, SELECTOR + ".txt"))
        assert self.txt.startswith("v=DKIM1;") and "p=" in self.txt, self.txt
        self.conf = os.path.join(self.dir, "opendkim.conf")
        with open(self.conf, "w") as f:
            f.write(f"Mode s\n"
                    f"Domain {DOMAIN}\n"
                    f"Selector {SELECTOR}\n"
                    f"KeyFile {self.key}\n"
                    f"Socket inet:{self.port}@127.0.0.1\n"
                    # simple: the signature breaks on any byte petrel changes
                    f"Canonicalization simple/simple\n"
                    f"InternalHosts 127.0.0.1\n"
                    f"Background no\n"
                    f"Syslog no\n"
                    f"PidFile {self.dir}/opendkim.pid\n")
        # Public keys for `opendkim -t` (verification without DNS).
        self.keys = os.path.join(self.dir, "test-keys")
        with open(self.keys, "w") as f:
            f.write(f"{SELECTOR}._domainkey.{DOMAIN} {self.txt}\n")
        self.verify_conf = os.path.join(self.dir, "verify.conf")
        with open(self.verify_conf, "w") as f:
            f.write(f"Mode v\nTestPublicKeys {self.keys}\nSyslog no\n")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", self.conf],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "wb"))
        if not h.wait_until(lambda: h.port_is_listening(self.port) or self.proc.poll() is not None,
                            15) or self.proc.poll() is not None:
            self.stop()
            pytest.fail("opendkim did not start: " + self.stderr(), pytrace=False)
        return self

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def opendkim_verify(self, message_crlf):
        """opendkim's own verdict on a message: (ok, output)."""
        path = os.path.join(self.dir, "verify-%d.eml" % time.time_ns())
        with open(path, "wb") as f:
            f.write(message_crlf)
        r = subprocess.run([OPENDKIM, "-x", self.verify_conf, "-vvv", "-t", path],
                           capture_output=True, text=True, timeout=30)
        out = r.stdout + r.stderr
        ok = re.search(r"verification \(s=%s, d=%s, [^)]*\) succeeded"
                       % (re.escape(SELECTOR), re.escape(DOMAIN)), out)
        return r.returncode == 0 and ok is not None and "dkim=pass" in out, out


@pytest.fixture(scope="module")
def opendkim():
    d = OpenDKIM()
    try:
        yield d.start()
    finally:
        d.stop()


def dkimpy_verify(message_crlf, txt):
    try:
        import dkim  # Debian python3-dkim
    except ImportError:
        pytest.fail("python3-dkim missing (scripts/install-deps.sh)", pytrace=False)
    want = f"{SELECTOR}._domainkey.{DOMAIN}."

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        assert name.rstrip(".") + "." == want, name
        return txt.encode()

    return dkim.verify(message_crlf, dnsfunc=dnsfunc)


def message(sender_domain, body_lines, subject, extra_headers=()):
    return h.make_message(subject, body_lines, extra_headers).replace(
        b"From: Alice <alice@localhost>", f"From: Alice <alice@{sender_domain}>".encode())


def send(p, content):
    c = p.connect()
    c.ehlo()
    r = c.send_message(f"alice@{DOMAIN}", [RCPT], content)
    c.close()
    return r


def stored(p, reply):
    m = p.spool_message(h.queued_id(reply))
    return m, m.message.replace(b"\n", b"\r\n")


def signature_of(head):
    m = re.search(rb"^DKIM-Signature:.*(?:\n[ \t].*)*", head, re.M | re.I)
    return m.group(0).decode() if m else None


def test_opendkim_signs_and_the_signature_verifies(petrel_factory, opendkim):
    p = petrel_factory({"filters": [{"name": "dkim", "milter": opendkim.address}]})
    body = ["Hello Bob,", "", "..a line that starts with a dot (stuffed on the wire)",
            "trailing spaces stay   ", "\tand a tab", "", "Alice"]
    # A folded signed field: with simple header canonicalization it must reach
    # the milter and the spool byte for byte.
    extra = ("Cc: Carol <carol@remote.example>,\r\n\tDave <dave@remote.example>",)
    r = send(p, message(DOMAIN, body, "signed by opendkim", extra))
    assert r.code == 250, r
    m, msg = stored(p, r)
    head, stored_body = m.headers_and_body()
    sig = signature_of(head)
    assert sig is not None, head
    assert f"d={DOMAIN}" in sig and f"s={SELECTOR}" in sig, sig
    assert "c=simple/simple" in sig, sig
    signed = re.search(r"[;\s]h=([^;]*);", sig).group(1).replace(" ", "").replace("\n", "")
    signed = signed.replace("\t", "").lower().split(":")
    assert {"from", "to", "subject", "cc"} <= set(signed), sig
    assert b"\nCc: Carol <carol@remote.example>,\n\tDave <dave@remote.example>\n" in head + b"\n"
    # Debian's opendkim inserts its field at index 0 (insheader.patch): above
    # everything, petrel's own Received: included, which comes right after.
    assert m.first_header().decode() == sig, head
    assert m.without_first_header().startswith(b"Received: from client.example"), head
    assert head.count(b"\nReceived: ") == 1, head
    # The body arrived unstuffed.
    assert b"\n.a line that starts with a dot" in b"\n" + stored_body, stored_body
    assert dkimpy_verify(msg, opendkim.txt), msg
    ok, out = opendkim.opendkim_verify(msg)
    assert ok, out
    # The checks are real: one changed byte in the body breaks the signature.
    tampered = msg.replace(b"Hello Bob", b"Hello Rob")
    assert tampered != msg
    assert not dkimpy_verify(tampered, opendkim.txt)
    ok, out = opendkim.opendkim_verify(tampered)
    assert not ok, out


def test_field_without_space_after_the_colon_is_signed_as_sent(petrel_factory, opendkim):
    # The milter must see "Reply-To:<...>" exactly (SMFIP_HDR_LEADSPC, which
    # opendkim asks for): a space added or dropped anywhere breaks the simple
    # header canonicalization. Checked with dkimpy only: `opendkim -t` reads
    # such a field back with a space and fails it even when dkimpy signed it.
    p = petrel_factory({"filters": [{"name": "dkim", "milter": opendkim.address}]})
    r = send(p, message(DOMAIN, ["hi"], "no space", ("Reply-To:<alice@dkim.example>",)))
    assert r.code == 250, r
    m, msg = stored(p, r)
    head, _ = m.headers_and_body()
    sig = signature_of(head)
    assert sig is not None and re.search(r"[;\s]h=[^;]*Reply-To", sig, re.I), sig
    assert b"\nReply-To:<alice@dkim.example>\n" in head + b"\n", head
    assert dkimpy_verify(msg, opendkim.txt), msg


def test_signature_over_a_body_of_many_milter_chunks(petrel_factory, opendkim):
    # 200 KiB of body: at least four SMFIC_BODY chunks of <= 65535 bytes.
    p = petrel_factory({"limits": {"max_message_size": "1MiB"},
                        "filters": [{"name": "dkim", "milter": opendkim.address}]})
    body = ["line %06d %s" % (i, "x" * 60) for i in range(3000)]
    r = send(p, message(DOMAIN, body, "big"))
    assert r.code == 250, r
    m, msg = stored(p, r)
    assert len(m.message) > 200_000
    head, _ = m.headers_and_body()
    assert signature_of(head) is not None, head
    assert dkimpy_verify(msg, opendkim.txt)
    ok, out = opendkim.opendkim_verify(msg)
    assert ok, out


def test_two_messages_on_one_milter_connection(petrel_factory, opendkim):
    # One connection per worker, reused across transactions: both signed.
    p = petrel_factory({"filters": [{"name": "dkim", "milter": opendkim.address}]})
    c = p.connect()
    c.ehlo()
    replies = [c.send_message(f"alice@{DOMAIN}", [RCPT],
                              message(DOMAIN, ["message %d" % i], "n%d" % i)) for i in (1, 2)]
    c.close()
    for r in replies:
        assert r.code == 250, r
        _, msg = stored(p, r)
        assert dkimpy_verify(msg, opendkim.txt), msg


def test_mail_from_another_domain_is_passed_unsigned(petrel_factory, opendkim):
    p = petrel_factory({"filters": [{"name": "dkim", "milter": opendkim.address}]})
    r = send(p, message("elsewhere.example", ["not ours to sign"], "foreign"))
    assert r.code == 250, r
    m, _ = stored(p, r)
    head, body = m.headers_and_body()
    assert signature_of(head) is None, head
    assert body == b"not ours to sign\n", body
