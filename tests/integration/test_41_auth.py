"""t-41: AUTH PLAIN and LOGIN against crypt(3) hashes in auth.users and
auth.passwd_file; refusals (535, 538, 421 after three failures); what is
logged and recorded.
"""

import concurrent.futures
import os
import re
import select
import subprocess
import time

import pytest

import petrel_harness as h
import tls_helpers as t

RCPT = f"friend@{h.REMOTE}"

# user -> (password, where its hash lives, hash kind)
USERS = {
    "alice": ("Alice pw 1!", "users", "y"),
    "carol": ("carol:Pw 2", "users", "6"),
    "dave": ("dave pw \u00e9 3", "passwd_file", "y"),
    "erin": ("erin-pw-4", "passwd_file", "6"),
}


@pytest.fixture(scope="module")
def hashes():
    out = {}
    for user, (pw, _where, kind) in USERS.items():
        out[user] = t.yescrypt_hash(pw) if kind == "y" else t.sha512_hash(pw)
    return out


def auth_server(petrel_factory, tmp_path, hashes, **kw):
    passwd = tmp_path / "passwd"
    lines = ["# user:hash"]
    lines += [f"{u}:{hashes[u]}" for u, v in USERS.items() if v[1] == "passwd_file"]
    passwd.write_text("\n".join(lines) + "\n")
    users = {u: hashes[u] for u, v in USERS.items() if v[1] == "users"}
    return petrel_factory(t.tls_overrides(users=users, passwd_file=str(passwd), **kw))


@pytest.fixture
def server(petrel_factory, tmp_path, hashes):
    return auth_server(petrel_factory, tmp_path, hashes)


def tls_session(p, source=None):
    c = t.connect(p, source=source)
    kw = t.ehlo_keywords(c.ehlo())
    assert "AUTH" not in kw, "AUTH offered before TLS"
    c.starttls()
    kw = t.ehlo_keywords(c.ehlo())
    assert kw.get("AUTH") == "AUTH PLAIN LOGIN"
    return c


def test_plain_and_login_succeed_for_yescrypt_and_sha512_hashes(server):
    for user, (pw, where, kind) in USERS.items():
        for mech in ("PLAIN", "LOGIN"):
            c = tls_session(server)
            r = c.auth_plain(user, pw) if mech == "PLAIN" else c.auth_login(user, pw)
            assert r.last == "235 2.7.0 Authentication successful", (user, where, kind, mech, r)
            c.cmd("QUIT")
    for user in USERS:
        assert server.wait_log(rf"sasl_username={user}$")


def test_wrong_password_fails_with_535(server):
    def attempt(args):
        user, mech = args
        c = tls_session(server, source=t.OTHER_IP)
        pw = USERS[user][0] + "x" if user in USERS else "whatever"
        r = c.auth_plain(user, pw) if mech == "PLAIN" else c.auth_login(user, pw)
        # Still unauthenticated: relaying from outside relay.networks is refused.
        assert c.mail("alice@localhost").code == 250
        relay = c.rcpt(RCPT)
        c.cmd("QUIT")
        return r, relay

    cases = [("alice", "PLAIN"), ("carol", "LOGIN"), ("dave", "LOGIN"), ("erin", "PLAIN"),
             ("nobody", "PLAIN")]
    # In parallel: each failure is answered after a deliberate delay.
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as ex:
        results = list(ex.map(attempt, cases))
    for (user, mech), (r, relay) in zip(cases, results):
        assert r.last.startswith("535 5.7.8"), (user, mech, r)
        assert relay.code == 554, (user, relay)
    assert server.wait_log(r"authentication failed for nobody")
    assert "sasl_username" not in server.log_text()


def test_auth_before_starttls_is_538(server):
    c = t.connect(server)
    c.ehlo()
    r = c.cmd("AUTH PLAIN " + t.plain_response("alice", USERS["alice"][0]))
    assert r.last.startswith("538 5.7.11"), r
    assert c.cmd("AUTH LOGIN").last.startswith("538 5.7.11")
    # The session goes on, and TLS then AUTH works.
    c.starttls()
    c.ehlo()
    assert c.auth_plain("alice", USERS["alice"][0]).code == 235


def test_require_tls_false_allows_plaintext_auth(petrel_factory, tmp_path, hashes):
    p = auth_server(petrel_factory, tmp_path, hashes, require_tls=False)
    c = t.connect(p, source=t.OTHER_IP)
    kw = t.ehlo_keywords(c.ehlo())
    assert kw.get("AUTH") == "AUTH PLAIN LOGIN"
    assert c.auth_login("erin", USERS["erin"][0]).code == 235
    qid = h.queued_id(c.send_message("erin@localhost", [RCPT], h.make_message("plain auth")))
    msg = t.wait_spool_message(p, qid)
    assert msg.fields.get("A") == "erin"
    assert b"(authenticated)" in msg.first_header()
    assert t.received_tls(msg) is None


def test_fourth_auth_after_three_failures_gets_421_and_close(server):
    c = tls_session(server)
    pw = USERS["alice"][0]
    assert c.auth_plain("alice", "wrong 1").last.startswith("535 5.7.8")
    assert c.auth_login("alice", "wrong 2").last.startswith("535 5.7.8")
    assert c.auth_plain("carol", "wrong 3").last.startswith("535 5.7.8")
    r = c.auth_plain("alice", pw)  # even the right password
    assert r.last.startswith("421 4.7.0"), r
    assert c.is_closed(5)
    assert server.wait_log(r"too many AUTH failures from \[127\.0\.0\.1\]")
    assert "sasl_username" not in server.log_text()


def test_initial_response_forms_and_cancel(server):
    pw = USERS["carol"][0]
    c = tls_session(server)
    # PLAIN without an initial response: empty challenge, then the response.
    assert c.cmd("AUTH PLAIN").lines == ["334 "]
    assert c.cmd("*").last.startswith("501 5.7.0")
    # LOGIN with the user name as initial response.
    r = c.cmd("AUTH LOGIN " + t.b64("carol"))
    assert r.last == "334 UGFzc3dvcmQ6"
    assert c.cmd("*").last.startswith("501 5.7.0")
    # Cancelling is not a failure: three cancels and AUTH still works.
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd("*").code == 501
    assert c.cmd("AUTH PLAIN").code == 334
    assert c.cmd(t.plain_response("carol", pw)).last == "235 2.7.0 Authentication successful"
    assert c.cmd("AUTH PLAIN " + t.plain_response("carol", pw)).last.startswith("503 5.5.1")

    c = tls_session(server)
    assert c.cmd("AUTH PLAIN " + t.plain_response("dave", USERS["dave"][0])).code == 235
    c = tls_session(server)
    assert c.cmd("AUTH LOGIN " + t.b64("dave")).code == 334
    assert c.cmd(t.b64(USERS["dave"][0])).code == 235
    c = tls_session(server)
    assert c.cmd("AUTH PLAIN !!!").last.startswith("501 5.5.2")
    assert c.cmd("AUTH CRAM-MD5").last.startswith("504 5.5.4")


def test_success_is_logged_and_recorded_without_the_password(server, tmp_path):
    user, pw = "dave", USERS["dave"][0]
    rc, out = t.swaks(server.port, "--tls", "--auth", "PLAIN", "--auth-user", user,
                      "--auth-password", pw, "--local-interface", t.OTHER_IP)
    assert rc == 0, out
    qid = t.queued_id_in(out)
    msg = t.wait_spool_message(server, qid)
    first = msg.first_header().decode()
    assert "(authenticated)" in first
    assert "ESMTPSA" in first
    assert msg.fields.get("A") == user
    assert server.wait_log(rf"\[127\.0\.0\.2\]:\d+: sasl_username={user}$")
    # The password appears nowhere: spool, mail, state, log.
    c = tls_session(server)
    assert c.auth_login("carol", USERS["carol"][0]).code == 235
    c.cmd("QUIT")
    server.wait_log(r"sasl_username=carol")
    everything = t.all_text_under(server.tmpdir)
    for secret in (pw, USERS["carol"][0]):
        for form in (secret.encode(), t.b64(secret).encode(),
                     t.plain_response(user, secret).encode()):
            assert form not in everything, form


def test_petrel_passwd():
    one = t.yescrypt_hash("same password")
    two = t.yescrypt_hash("same password")
    assert one != two, "salt not random"
    assert re.fullmatch(r"\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]+\$[./A-Za-z0-9]+", one), one
    assert h.run_petrel("passwd", "extra").returncode == 64
    r = t.run([h.PETREL_BIN, "passwd"], input=b"")
    assert r.returncode == 64 and r.stdout == b""


def _pty_read_until(fd, marker, timeout=5.0):
    buf, end = b"", time.monotonic() + timeout
    while marker not in buf and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.mark.parametrize("second", ["tty secret 9", "different"])
def test_petrel_passwd_on_a_terminal_does_not_echo(second):
    master, slave = os.openpty()
    proc = subprocess.Popen([h.PETREL_BIN, "passwd"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=slave, close_fds=True, start_new_session=True)
    os.close(slave)
    try:
        shown = _pty_read_until(master, b"Password: ")
        assert shown.endswith(b"Password: "), shown
        os.write(master, b"tty secret 9\n")
        shown = _pty_read_until(master, b"Again: ")
        assert shown.endswith(b"Again: "), shown
        os.write(master, second.encode() + b"\n")
        out, _ = proc.communicate(timeout=10)
        shown += _pty_read_until(master, b"\n", 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert b"secret" not in shown and b"different" not in shown, shown
    if second == "different":
        assert proc.returncode == 64 and out == b""
    else:
        assert proc.returncode == 0, shown
        assert re.fullmatch(rb"\$y\$\S+\n", out), out
