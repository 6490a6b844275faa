"""t-01: real SMTP clients (Python smtplib, swaks, curl) deliver into the spool."""

import shutil
import smtplib
import subprocess

import pytest

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"  # relayed (127.0.0.1 is in relay.networks), stays queued


def wait_one_message(server):
    files = h.wait_until(lambda: server.spool_files(), 5)
    assert len(files) == 1, f"spool: {files}"
    return server.spool_message(files[0])


def test_smtplib_delivers(server):
    msg = h.make_message("smtplib")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        code, _ = s.ehlo("smtplib.example")
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("8bitmime")
        refused = s.sendmail("alice@localhost", [RCPT], msg)
        assert refused == {}
    m = wait_one_message(server)
    assert m.sender == "alice@localhost"
    assert m.recipients == [RCPT]
    assert m.without_first_header() == h.crlf_to_lf(msg)


def test_smtplib_send_message_reports_queue_id(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.ehlo("smtplib.example")
        s.mail("alice@localhost")
        s.rcpt(RCPT)
        code, text = s.data(h.make_message("smtplib data"))
    assert code == 250
    text = text.decode()
    assert text.startswith("2.0.0 Ok: queued as ")
    qid = text.split()[-1]
    assert server.spool_files() == [qid]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_delivers(server):
    r = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(server.port),
         "--from", "alice@localhost", "--to", RCPT, "--helo", "swaks.example",
         "--header", "Subject: swaks test", "--body", "hello from swaks",
         "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queued as" in r.stdout
    m = wait_one_message(server)
    assert m.recipients == [RCPT]
    assert b"hello from swaks" in m.message
    assert b"Subject: swaks test" in m.message


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_delivers(server, tmp_path):
    msg = h.make_message("curl", ["hello from curl"])
    f = tmp_path / "msg.eml"
    f.write_bytes(msg)
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", f"smtp://127.0.0.1:{server.port}/curl.example",
         "--mail-from", "alice@localhost", "--mail-rcpt", RCPT, "-T", str(f)],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    m = wait_one_message(server)
    assert m.recipients == [RCPT]
    assert m.without_first_header() == h.crlf_to_lf(msg)


def test_queue_list_json_shows_message(server):
    c = server.connect()
    c.ehlo()
    r = c.send_message("alice@localhost", [RCPT, f"other@{h.REMOTE}"], h.make_message("qlist"))
    qid = h.queued_id(r)
    c.cmd("QUIT")
    entries = server.queue_list()
    assert isinstance(entries, list) and len(entries) == 1
    e = entries[0]
    assert e["id"] == qid
    assert e["sender"] == "alice@localhost"
    assert isinstance(e["size"], int) and e["size"] > 0
    assert e["held"] is False
    assert "T" in e["arrival"]  # RFC 3339
    assert [x["address"] for x in e["recipients"]] == [RCPT, f"other@{h.REMOTE}"]
    for x in e["recipients"]:
        assert x["status"] in ("pending", "deferred")
        assert "next_attempt" in x and "last_error" in x


def test_queue_list_null_sender_is_empty_string(server):
    c = server.connect()
    c.ehlo()
    h.queued_id(c.send_message("", [RCPT], h.make_message("bounce")))
    entries = server.queue_list()
    assert len(entries) == 1 and entries[0]["sender"] == ""


def test_queue_list_works_without_server(petrel_factory):
    p = petrel_factory(start=False)
    r = p.run_cli("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    import json
    assert json.loads(r.stdout) == []


def test_version():
    r = h.run_petrel("version")
    assert r.returncode == 0
    assert "petrel" in r.stdout.lower()
