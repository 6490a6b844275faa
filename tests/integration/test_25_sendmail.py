"""t-25: `petrel sendmail` (and a `sendmail` symlink, as cron and apps call it)
submits through STATE_DIR/submit.sock and the mail is delivered (SPEC §2);
with no server it exits 75 with a clear message."""

import os
import pwd
import re
import subprocess

import pytest

import petrel_harness as h
import queue_helpers as q


def box(p, *user):
    return os.path.join(p.tmpdir, "mail", *user)


def shell(cmd, env=None, timeout=20):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout,
                          env=full, stdin=subprocess.DEVNULL)


@pytest.fixture
def bindir(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("sendmail", "mailq"):
        os.symlink(h.PETREL_BIN, d / name)
    return d


def test_sendmail_t_from_a_shell(server, tmp_path):
    msg = tmp_path / "msg.txt"
    msg.write_text("From: Alice <alice@localhost>\n"
                   "To: Bob <bob@localhost>, \"Smith, Carol\" <carol@open.example>\n"
                   "Cc: alice@localhost\n"
                   "Bcc: dave@open.example\n"
                   "Subject: shell -t\n"
                   "\n"
                   "Hello from a shell.\n"
                   ".hidden line with a leading dot\n")
    r = shell(f"'{h.PETREL_BIN}' sendmail -c '{server.config_path}' -t < '{msg}'")
    assert r.returncode == 0, r.stderr
    user = pwd.getpwuid(os.getuid()).pw_name
    for path, rcpt in ((box(server, "bob"), "bob@localhost"),
                       (box(server, "alice"), "alice@localhost"),
                       (box(server, "open", "carol"), "carol@open.example"),
                       (box(server, "open", "dave"), "dave@open.example")):
        got = q.wait_maildir(path, 1)
        assert len(got) == 1, (path, server.log_text())
        m = got[0]
        q.assert_delivery_headers(m, f"{user}@mx.test.example", rcpt, rcpt)
        assert m["Subject"] == "shell -t"
        assert m["Bcc"] is None, "Bcc must not be delivered"
        assert m["From"] == "Alice <alice@localhost>"
        assert m["Message-ID"] and m["Date"], "sendmail adds Message-ID and Date"
        assert m.get_payload() == "Hello from a shell.\n.hidden line with a leading dot\n"
    assert server.wait_log(r": from=<" + re.escape(user) + r"@mx\.test\.example>, .*nrcpt=4, "
                           r"client=unix:", 2)


def test_sendmail_symlink_with_flags(server, tmp_path, bindir):
    msg = tmp_path / "msg.txt"
    msg.write_text("Subject: cron output\n\nline one\n.\nline after a lone dot\n")
    env = {"PETREL_CONFIG": server.config_path, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = shell(f"sendmail -i -f cron@localhost -F 'Cron Daemon' alice@localhost bob+cron@localhost "
              f"< '{msg}'", env=env)
    assert r.returncode == 0, r.stderr
    [a] = q.wait_maildir(box(server, "alice"), 1)
    [b] = q.wait_maildir(box(server, "bob"), 1)
    q.assert_delivery_headers(a, "cron@localhost", "alice@localhost", "alice@localhost")
    q.assert_delivery_headers(b, "cron@localhost", "bob+cron@localhost", "bob+cron@localhost")
    assert a["From"] == "Cron Daemon <cron@localhost>"
    assert a["Subject"] == "cron output"
    # -i: a lone dot is text, not the end
    assert a.get_payload() == "line one\n.\nline after a lone dot\n"

    # without -i a lone dot ends the message, as in sendmail(1)
    r = shell(f"sendmail -f cron@localhost alice@localhost < '{msg}'", env=env)
    assert r.returncode == 0, r.stderr
    got = q.wait_maildir(box(server, "alice"), 2)
    second = [m for m in got if m.get_payload() != a.get_payload()]
    assert len(second) == 1 and second[0].get_payload() == "line one\n", \
        [m.get_payload() for m in got]

    # mailq through its symlink, and sendmail -bp, list the queue
    assert q.wait_queue_empty(server)
    r = shell("mailq", env=env)
    assert r.returncode == 0 and "Mail queue is empty" in r.stdout, r
    r = shell("sendmail -bp", env=env)
    assert r.returncode == 0 and "Mail queue is empty" in r.stdout, r


def test_sendmail_without_server_exits_75(petrel_factory, tmp_path, bindir):
    p = petrel_factory(start=False)
    msg = tmp_path / "msg.txt"
    msg.write_text("Subject: lost?\n\nbody\n")
    r = shell(f"'{h.PETREL_BIN}' sendmail -c '{p.config_path}' alice@localhost < '{msg}'")
    assert r.returncode == 75, (r.returncode, r.stderr)
    assert "submit.sock" in r.stderr and "not sent" in r.stderr and "running" in r.stderr, r.stderr
    env = {"PETREL_CONFIG": p.config_path}
    r = shell(f"'{bindir}/sendmail' -t < '{msg}'", env=env)
    # no recipients is a usage error, checked before connecting
    assert r.returncode == 64, (r.returncode, r.stderr)
    r = shell(f"'{bindir}/sendmail' -i alice@localhost < '{msg}'", env=env)
    assert r.returncode == 75, (r.returncode, r.stderr)
    assert "is petrel running?" in r.stderr

    # the same command works once the server runs
    p.start()
    r = shell(f"'{bindir}/sendmail' -i alice@localhost < '{msg}'", env=env)
    assert r.returncode == 0, r.stderr
    assert q.wait_maildir(box(p, "alice"), 1)


def test_sendmail_unknown_recipient(server, tmp_path):
    msg = tmp_path / "msg.txt"
    msg.write_text("Subject: to nobody\n\nbody\n")
    r = shell(f"'{h.PETREL_BIN}' sendmail -c '{server.config_path}' nosuchuser@localhost < '{msg}'")
    assert r.returncode == 67, (r.returncode, r.stderr)  # EX_NOUSER
    assert "nosuchuser@localhost" in r.stderr and "550" in r.stderr


def test_sendmail_drops_an_mbox_from_line(server, tmp_path):
    msg = tmp_path / "msg.txt"
    msg.write_text("From app@localhost Mon Jan  1 00:00:00 2024\nSubject: from line\n\nbody\n")
    r = shell(f"'{h.PETREL_BIN}' sendmail -c '{server.config_path}' -t bob@localhost < '{msg}'")
    assert r.returncode == 0, r.stderr
    [m] = q.wait_maildir(box(server, "bob"), 1)
    assert m["Subject"] == "from line"
    assert m.get_payload() == "body\n"
    assert not any(k.startswith("From app") for k in m.keys())


def test_sendmail_declares_8bit_content(server, tmp_path):
    msg = tmp_path / "msg.txt"
    msg.write_bytes("Subject: Grüße\n\nSchöne Grüße aus Köln.\n".encode())
    r = shell(f"'{h.PETREL_BIN}' sendmail -c '{server.config_path}' friend@{h.REMOTE} < '{msg}'")
    assert r.returncode == 0, r.stderr
    [qid] = server.spool_files()
    m = server.spool_message(qid)
    assert m.fields["B"] == "8BITMIME"
    assert "Schöne Grüße aus Köln.".encode() in m.message
