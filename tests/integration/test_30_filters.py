"""t-30: content filters run in the worker before the 250 (SPEC §8).

The shipped rules plugin tags ham and rejects GTUBE; exec filters answer by
exit code (0 accept, 1/20 reject, 75 tempfail, 99 discard, other = on_error),
add headers or rewrite the message; filter_dir drop-ins run after the list.
"""
import os
import stat

import petrel_harness as h

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
RULES_SO = os.path.join(os.path.dirname(h.PETREL_BIN), "rules.so")
RCPT = "bob@remote.example"  # relayed, so the message stays in the spool


def script(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return str(path)


def send(p, body_lines, subject="t"):
    c = p.connect()
    c.ehlo()
    r = c.send_message("alice@localhost", [RCPT], h.make_message(subject, body_lines))
    c.close()
    return r


def test_rules_plugin_tags_ham_and_rejects_gtube(petrel_factory):
    assert os.path.exists(RULES_SO), RULES_SO
    p = petrel_factory({"filters": [{"name": "rules", "plugin": RULES_SO,
                                      "options": {"tag_threshold": "-100",
                                                  "reject_threshold": "10"}}]})
    r = send(p, ["Hello, see you at lunch."])
    assert r.code == 250, r
    m = p.spool_message(h.queued_id(r))
    head, _ = m.headers_and_body()
    assert b"X-Spam-Status: No" in head, head
    assert b"X-Spam-Score:" in head, head
    r = send(p, [GTUBE])
    assert r.code == 550 and "5.7.1" in r.last, r
    assert len(p.spool_files()) == 1
    assert "filter=rules" in p.log_text()


def test_exec_exit_codes(petrel_factory, tmp_path):
    code_file = tmp_path / "code"
    f = script(tmp_path / "f.sh",
               f'cat >/dev/null; echo "told to exit" >&2; exit $(cat {code_file})')
    p = petrel_factory({"filters": [{"name": "x", "exec": [f], "timeout": "10s"}]})
    expect = {"0": 250, "1": 550, "20": 550, "75": 451, "99": 250, "3": 451}
    for code, reply in expect.items():
        code_file.write_text(code)
        before = set(p.spool_files())
        r = send(p, ["exit " + code])
        assert r.code == reply, (code, r)
        stored = set(p.spool_files()) - before
        assert len(stored) == (1 if code == "0" else 0), (code, stored)
    log = p.log_text()
    assert "discarded by filter x" in log, log
    assert "told to exit" in log or "told to exit" in open(p.log_path).read()


def test_exec_headers_mode_and_env(petrel_factory, tmp_path):
    f = script(tmp_path / "h.sh",
               'cat >/dev/null; echo "X-Checked: yes"; echo "X-Sender: $PETREL_SENDER"; '
               'echo "X-Chasquid-From: $MAIL_FROM"')
    p = petrel_factory({"filters": [{"name": "hdr", "exec": [f]}]})
    r = send(p, ["body"])
    assert r.code == 250, r
    head, _ = p.spool_message(h.queued_id(r)).headers_and_body()
    assert b"X-Checked: yes" in head
    assert b"X-Sender: alice@localhost" in head
    assert b"X-Chasquid-From: alice@localhost" in head


def test_exec_rewrite_mode(petrel_factory, tmp_path):
    f = script(tmp_path / "rw.sh", "sed 's/secret/[redacted]/'")
    p = petrel_factory({"filters": [{"name": "rw", "exec": [f], "mode": "rewrite"}]})
    r = send(p, ["the secret word"])
    assert r.code == 250, r
    _, body = p.spool_message(h.queued_id(r)).headers_and_body()
    assert b"the [redacted] word" in body, body


def test_filter_dir_dropin_runs_after_listed_filters(petrel_factory, tmp_path):
    order = tmp_path / "order"
    listed = script(tmp_path / "listed.sh", f"cat >/dev/null; echo listed >> {order}")
    p = petrel_factory({"filters": [{"name": "listed", "exec": [listed]}]}, start=False)
    script(os.path.join(p.tmpdir, "filters.d", "10-dropin"),
           f"cat >/dev/null; echo dropin >> {order}; echo 'refused by drop-in' >&2; exit 1")
    p.start()
    r = send(p, ["x"])
    assert r.code == 550 and "refused by drop-in" in r.last, r
    assert order.read_text().split() == ["listed", "dropin"]


def test_check_config_reports_a_bad_plugin(tmp_path):
    bad = tmp_path / "not-a-plugin.so"
    bad.write_bytes(b"garbage")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\nfilters:\n"
                   f"  - {{name: bad, plugin: {bad}}}\n")
    r = h.run_petrel("check-config", "-c", str(cfg))
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "bad" in r.stderr, r.stderr
