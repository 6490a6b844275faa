"""t-21: retries and bounces (SPEC §7).

A pipe exiting 75 is retried with backoff and delivered once it exits 0; one
exiting 1 is bounced with an RFC 3464 DSN to the sender's Maildir; a <>
sender never gets one; retry.lifetime bounces; warn_after sends a delay
notification first.
"""

import os
import re

import pytest

import queue_helpers as q

SENDER = "alice@localhost"


def pipe_script(tmp_path):
    """deliver: pipe to this with the local part as $1, which picks the behaviour."""
    runs = tmp_path / "runs"
    runs.mkdir()
    return q.write_script(str(tmp_path / "app.sh"), f"""#!/bin/sh
dir="{runs}"
n=$(( $(cat "$dir/$1.count" 2>/dev/null || echo 0) + 1 ))
echo $n > "$dir/$1.count"
cat > "$dir/$1.$n.msg"
case "$1" in
  flaky) [ $n -ge 3 ] && exit 0; echo "not yet, try $n"; exit 75 ;;
  fail) echo "no such list here" >&2; exit 1 ;;
  later) echo "busy"; exit 75 ;;
  *) exit 0 ;;
esac
"""), str(runs)


@pytest.fixture
def app(petrel_factory, tmp_path):
    script, runs = pipe_script(tmp_path)

    def make(retry, **extra):
        p = petrel_factory({
            "domains": {"pipe.example": {"deliver": ["pipe:", script, "%u"]}},
            "queue": {"retry": retry},
            **extra,
        })
        p.runs = runs
        return p

    return make


def alice_box(p):
    return os.path.join(p.tmpdir, "mail", "alice")


def count(p, name):
    try:
        with open(os.path.join(p.runs, f"{name}.count")) as f:
            return int(f.read())
    except FileNotFoundError:
        return 0


def test_tempfail_is_retried_then_delivered(app):
    p = app({"min": "1s", "max": "2s"})
    qid = q.submit(p, SENDER, "flaky@pipe.example", "flaky")
    assert q.delivery_line(p, qid, "flaky@pipe.example", "sent", timeout=15), p.log_text()
    deferred = q.log_lines(p, re.escape(qid) + r": to=<flaky@pipe\.example>, relay=pipe, "
                                               r"delay=[\d.]+, (dsn=[\d.]+, )?status=deferred \(.*not yet")
    assert len(deferred) == 2, p.log_text()
    assert count(p, "flaky") == 3
    # backoff: the retries are at least retry.min apart (jitter: 80-100%)
    times = [q.log_time(x) for x in deferred] + \
        [q.log_time(q.delivery_line(p, qid, "flaky@pipe.example", "sent"))]
    assert all(b - a >= 0.5 for a, b in zip(times, times[1:])), times
    assert p.wait_log(re.escape(qid) + r": removed$", 5)
    assert q.wait_queue_empty(p)
    assert q.maildir_paths(alice_box(p)) == [], "no DSN for a delivered message"


def test_permanent_failure_bounces_with_dsn(app):
    p = app({"min": "1s", "max": "2s"})
    qid = q.submit(p, SENDER, ["fail@pipe.example", "ok@pipe.example"], "doomed")
    line = q.delivery_line(p, qid, "fail@pipe.example", "bounced")
    assert line and "no such list here" in line, p.log_text()
    assert q.delivery_line(p, qid, "ok@pipe.example", "sent"), p.log_text()
    assert p.wait_log(re.escape(qid) + r": sender non-delivery notification: \S+", 5)

    dsns = q.wait_maildir(alice_box(p), 1)
    assert len(dsns) == 1, p.log_text()
    dsn = dsns[0]
    q.assert_delivery_headers(dsn, "", "alice@localhost", "alice@localhost")
    assert "MAILER-DAEMON@mx.test.example" in dsn["From"]
    assert dsn["To"] == "<alice@localhost>"
    assert dsn["Auto-Submitted"] == "auto-replied"
    text, blocks, returned = q.dsn_parts(dsn)
    assert "no such list here" in text
    assert blocks[0]["Reporting-MTA"] == "dns; mx.test.example"
    assert blocks[0]["Arrival-Date"]
    assert len(blocks) == 2, "one block per failed recipient only"
    r = blocks[1]
    assert r["Final-Recipient"] == "rfc822; fail@pipe.example"
    assert r["Original-Recipient"] == "rfc822; fail@pipe.example"
    assert r["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", r["Status"]), r["Status"]
    assert "no such list here" in r["Diagnostic-Code"]
    # the original headers come back
    assert returned["Subject"] == "doomed"
    assert returned["Message-ID"] and returned["Message-ID"].endswith("doomed@client.example>")
    assert returned["Received"] and qid in returned["Received"]
    assert q.wait_queue_empty(p)


def test_no_dsn_for_null_sender(app):
    p = app({"min": "1s", "max": "2s"})
    qid = q.submit(p, "", "fail@pipe.example", "from the void")
    assert q.delivery_line(p, qid, "fail@pipe.example", "bounced"), p.log_text()
    assert p.wait_log(re.escape(qid) + r": sender is <>, no bounce sent", 5), p.log_text()
    assert q.wait_queue_empty(p)
    assert not q.log_lines(p, r"non-delivery notification")
    assert count(p, "fail") == 1


def test_bounce_of_a_bounce_is_dropped(app):
    """The sender's own address fails too: its DSN (sender <>) is logged and dropped."""
    p = app({"min": "1s", "max": "2s"})
    qid = q.submit(p, "fail@pipe.example", "fail@pipe.example", "loop bait")
    m = p.wait_log(re.escape(qid) + r": sender non-delivery notification: (\S+)", 10)
    assert m, p.log_text()
    dsn_id = m.group(1)
    assert q.delivery_line(p, dsn_id, "fail@pipe.example", "bounced"), p.log_text()
    assert p.wait_log(re.escape(dsn_id) + r": sender is <>, no bounce sent", 5), p.log_text()
    assert q.wait_queue_empty(p)
    assert count(p, "fail") == 2
    assert len(q.log_lines(p, r"non-delivery notification")) == 1


def test_delay_warning_then_lifetime_bounce(app):
    p = app({"min": "1s", "max": "1s", "lifetime": "4s", "warn_after": "1s"})
    qid = q.submit(p, SENDER, "later@pipe.example", "slow")
    assert p.wait_log(re.escape(qid) + r": sender delay notification: \S+", 8), p.log_text()
    line = q.delivery_line(p, qid, "later@pipe.example", "bounced", timeout=10)
    assert line and "expired" in line, p.log_text()
    assert count(p, "later") >= 3

    dsns = q.wait_maildir(alice_box(p), 2)
    assert len(dsns) == 2, p.log_text()
    delayed = [m for m in dsns if "Delayed" in m["Subject"]]
    failed = [m for m in dsns if "Undelivered" in m["Subject"]]
    assert len(delayed) == 1 and len(failed) == 1, [m["Subject"] for m in dsns]

    _, blocks, returned = q.dsn_parts(delayed[0])
    assert blocks[1]["Action"] == "delayed"
    assert re.fullmatch(r"4\.\d{1,3}\.\d{1,3}", blocks[1]["Status"]), blocks[1]["Status"]
    assert blocks[1]["Final-Recipient"] == "rfc822; later@pipe.example"
    assert returned["Subject"] == "slow"

    _, blocks, returned = q.dsn_parts(failed[0])
    assert blocks[1]["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", blocks[1]["Status"]), blocks[1]["Status"]
    assert "expired" in blocks[1]["Diagnostic-Code"]
    assert returned["Subject"] == "slow"
    assert q.wait_queue_empty(p)
    # only one warning, however many retries
    assert len(q.log_lines(p, re.escape(qid) + r": sender delay notification")) == 1


def test_alias_pipe_failure_dsn_names_the_address(app):
    """Final-Recipient is an address, not the alias's command (RFC 3464 2.3.2)."""
    p = app({"min": "1s", "max": "2s"},
            aliases={"map": {"helpdesk": ["|echo ticket system down >&2; exit 1", "bob"]}})
    qid = q.submit(p, SENDER, "helpdesk@localhost", "help me")
    assert q.delivery_line(p, qid, "bob@localhost", "sent"), p.log_text()
    assert q.log_lines(p, re.escape(qid) + r": to=<\|echo ticket.*>, orig_to=<helpdesk@localhost>, "
                                           r"relay=pipe, .*status=bounced \(.*ticket system down")
    [dsn] = q.wait_maildir(alice_box(p), 1)
    _, blocks, returned = q.dsn_parts(dsn)
    assert len(blocks) == 2
    assert blocks[1]["Final-Recipient"] == "rfc822; helpdesk@localhost"
    assert blocks[1]["Action"] == "failed"
    assert blocks[1]["Status"].startswith("5.")
    assert "ticket system down" in blocks[1]["Diagnostic-Code"]
    assert returned["Subject"] == "help me"
    assert q.wait_queue_empty(p)


def test_missing_include_waits_for_the_admin(app, tmp_path):
    """A config problem while resolving (4.3.0) defers; fixed, the mail goes out."""
    lst = tmp_path / "crew.list"
    p = app({"min": "1s", "max": "1s"}, aliases={"map": {"crew": [f":include:{lst}"]}})
    qid = q.submit(p, SENDER, "crew@localhost", "crew news")
    line = q.delivery_line(p, qid, "crew@localhost", "deferred")
    assert line and "crew.list" in line, p.log_text()
    [entry] = p.queue_list()
    assert entry["recipients"][0]["status"] == "deferred"
    assert "crew.list" in entry["recipients"][0]["last_error"]
    lst.write_text("bob\n")
    line = q.delivery_line(p, qid, "bob@localhost", "sent", timeout=10)
    assert line and "orig_to=<crew@localhost>" in line, p.log_text()
    [m] = q.wait_maildir(os.path.join(p.tmpdir, "mail", "bob"), 1)
    q.assert_delivery_headers(m, SENDER, "bob@localhost", "crew@localhost")
    assert q.wait_queue_empty(p)
    assert q.maildir_paths(alice_box(p)) == [], "no bounce"
