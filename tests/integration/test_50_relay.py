"""t-50: relay to other MTAs (SPEC §7 "Remote", "Batching"; issue 5).

Receiving MTAs are Postfix's smtp-sink and a private Postfix instance on
loopback; DNS is dnsmasq on a loopback port (queue.dns.nameservers). All are
started here and stopped by PID.
"""

import math
import os
import re

import pytest

import petrel_harness as h
import queue_helpers as q
import relay_peers as rp


def relay_petrel(petrel_factory, overrides=None, routes=None, nofile=None):
    """A petrel whose remote mail goes where `routes` (or, without routes,
    DNS) says. Retries are an hour away, so only `queue flush` retries."""
    cfg = {"queue": {"retry": {"min": "1h", "max": "2h"}}}
    if overrides:
        cfg = h.deep_merge(cfg, overrides)
    p = petrel_factory(cfg, start=False)
    if routes is None:
        del p.config["routes"]
    else:
        p.config["routes"] = routes
    p.write_config()
    p.start(nofile=nofile)
    return p


def flush(p):
    r = h.run_petrel("queue", "flush", "-c", p.config_path)
    assert r.returncode == 0, r.stdout + r.stderr


def sent_line(p, qid, to, timeout=20.0, status="sent"):
    line = q.delivery_line(p, qid, to, status=status, timeout=timeout)
    assert line, f"no status={status} line for {qid} to {to}:\n{p.log_text()[-3000:]}"
    return line


@pytest.fixture
def tmp(short_tmp):
    return short_tmp


@pytest.fixture
def peers():
    """Collects started peers and stops them by PID at teardown."""
    started = []
    yield started
    for peer in reversed(started):
        peer.stop()


def test_mx_preference_then_fallback_to_next_mx(petrel_factory, tmp, peers):
    port = h.free_port()
    dns = rp.DnsMasq(tmp, ["--mx-host=mx.test,mx1.mx.test,10", "--mx-host=mx.test,mx2.mx.test,20",
                           "--host-record=mx1.mx.test,127.0.0.3",
                           "--host-record=mx2.mx.test,127.0.0.4"])
    peers.append(dns)
    first = rp.Sink(tmp, "127.0.0.3", port, name="first").start()
    second = rp.Sink(tmp, "127.0.0.4", port, name="second").start()
    peers += [first, second]
    p = relay_petrel(petrel_factory, {"queue": {"port": port, "dns": {"nameservers": [dns.nameserver]}}})

    qid = q.submit(p, "alice@localhost", ["user@mx.test"], "to the best MX")
    line = sent_line(p, qid, "user@mx.test")
    assert f"relay=mx1.mx.test[127.0.0.3]:{port}" in line
    assert re.search(r"status=sent \(250 .*\)", line), line
    assert re.search(r"delay=\d+\.\d\d", line), line
    assert first.wait_messages(1) and second.messages() == 0
    assert "to the best MX" in first.dump_text()
    assert q.wait_queue_empty(p)

    # The preferred MX refuses connections: the next one gets the mail.
    first.stop()
    qid = q.submit(p, "alice@localhost", ["user@mx.test"], "to the backup MX")
    line = sent_line(p, qid, "user@mx.test")
    assert f"relay=mx2.mx.test[127.0.0.4]:{port}" in line
    assert second.wait_messages(1)
    assert "to the backup MX" in second.dump_text()


def test_each_address_of_a_host_is_tried_ipv4_then_ipv6(petrel_factory, tmp, peers):
    port = h.free_port()
    dns = rp.DnsMasq(tmp, ["--mx-host=dual.test,mx.dual.test,10",
                           "--host-record=mx.dual.test,127.0.0.9,::1"])
    peers.append(dns)
    sink = rp.Sink(tmp, "::1", port).start()  # nothing listens on 127.0.0.9
    peers.append(sink)
    p = relay_petrel(petrel_factory, {"queue": {"port": port, "dns": {"nameservers": [dns.nameserver]}}})
    qid = q.submit(p, "alice@localhost", ["user@dual.test"], "over IPv6")
    line = sent_line(p, qid, "user@dual.test")
    assert f"relay=mx.dual.test[::1]:{port}" in line, line
    assert sink.wait_messages(1)


def test_implicit_mx_null_mx_and_nxdomain(petrel_factory, tmp, peers):
    port = h.free_port()
    dns = rp.DnsMasq(tmp, ["--host-record=implicit.test,127.0.0.5",
                           "--mx-host=nullmx.test,.,0"])
    peers.append(dns)
    sink = rp.Sink(tmp, "127.0.0.5", port).start()
    peers.append(sink)
    p = relay_petrel(petrel_factory, {"queue": {"port": port, "dns": {"nameservers": [dns.nameserver]}}})

    qid = q.submit(p, "alice@localhost", ["user@implicit.test"], "implicit")
    line = sent_line(p, qid, "user@implicit.test")
    assert f"relay=implicit.test[127.0.0.5]:{port}" in line
    assert sink.wait_messages(1)

    # Null MX (RFC 7505) and a domain that does not exist bounce at once,
    # one DSN per message naming both recipients.
    qid = q.submit(p, "alice@localhost", ["user@nullmx.test", "user@nosuch.test"], "nowhere")
    line = sent_line(p, qid, "user@nullmx.test", status="bounced")
    assert "5.1.10" in line
    line = sent_line(p, qid, "user@nosuch.test", status="bounced")
    assert "5.1.2" in line
    dsns = q.wait_maildir(os.path.join(p.tmpdir, "mail", "alice"), 1)
    assert len(dsns) == 1
    text = dsns[0].as_string()
    assert "Final-Recipient: rfc822; user@nullmx.test" in text
    assert "Final-Recipient: rfc822; user@nosuch.test" in text
    assert "Status: 5.1.10" in text
    assert q.wait_queue_empty(p)


def test_4xx_defers_then_delivers(petrel_factory, tmp, peers):
    port = h.free_port()
    sink = rp.Sink(tmp, "127.0.0.1", port, soft_reject=["RCPT"]).start()
    peers.append(sink)
    p = relay_petrel(petrel_factory, routes={"*": f"[127.0.0.1]:{port}"})
    qid = q.submit(p, "alice@localhost", ["user@remote.test"], "later")
    line = sent_line(p, qid, "user@remote.test", status="deferred")
    assert re.search(r"status=deferred \(.*4\d\d", line), line
    assert sink.messages() == 0
    assert p.spool_files(), "a deferred message must stay queued"

    sink.stop()
    sink = rp.Sink(tmp, "127.0.0.1", port, name="sink2").start()
    peers.append(sink)
    flush(p)
    line = sent_line(p, qid, "user@remote.test")
    assert f"relay=127.0.0.1[127.0.0.1]:{port}" in line
    assert sink.wait_messages(1)
    assert q.wait_queue_empty(p)


@pytest.fixture
def postfix(tmp, peers):
    """A real Postfix refusing bad@ with 550 and temp@ with 450, with a
    self-signed certificate for STARTTLS."""
    port = h.free_port()
    key, cert = rp.self_signed_cert(tmp)
    os.chmod(tmp, 0o755)
    pf = rp.Postfix("127.0.0.1", port, main=f"""\
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
smtpd_recipient_restrictions =
  check_recipient_access inline:{{ {{bad@peer.test=550 5.1.1 no such user}}, {{temp@peer.test=450 4.2.0 try later}} }},
  permit
""")
    peers.append(pf)
    pf.start()
    return pf


def test_5xx_on_one_of_three_recipients_bounces_only_that_one(petrel_factory, postfix):
    p = relay_petrel(petrel_factory, routes={"*": f"[127.0.0.1]:{postfix.port}"})
    rcpts = ["a@peer.test", "bad@peer.test", "b@peer.test"]
    qid = q.submit(p, "alice@localhost", rcpts, "one bad apple")
    for r in ("a@peer.test", "b@peer.test"):
        line = sent_line(p, qid, r)
        assert "queued as" in line, line
    line = sent_line(p, qid, "bad@peer.test", status="bounced")
    assert "550 5.1.1" in line, line
    dsns = q.wait_maildir(os.path.join(p.tmpdir, "mail", "alice"), 1)
    text = dsns[0].as_string()
    assert "Final-Recipient: rfc822; bad@peer.test" in text
    assert text.count("Final-Recipient:") == 1
    assert q.wait_queue_empty(p)
    # One transaction carried all three recipients.
    assert h.wait_until(lambda: len(re.findall(r"postfix-peer/cleanup\[\d+\]: \w+: message-id=",
                                               postfix.log())) == 1, 10)


def test_4xx_recipient_stays_queued_others_delivered_bounce_told_at_once(petrel_factory, postfix):
    p = relay_petrel(petrel_factory, routes={"*": f"[127.0.0.1]:{postfix.port}"})
    qid = q.submit(p, "alice@localhost", ["a@peer.test", "temp@peer.test", "bad@peer.test"],
                   "half now")
    sent_line(p, qid, "a@peer.test")
    line = sent_line(p, qid, "temp@peer.test", status="deferred")
    assert "450 4.2.0" in line
    sent_line(p, qid, "bad@peer.test", status="bounced")
    state = os.path.join(p.queue_dir, qid + ".state")
    assert h.wait_until(lambda: os.path.exists(state), 5), os.listdir(os.path.dirname(state))
    text = open(state).read()
    assert "\tdeferred\t" in text and "temp@peer.test" in text
    assert "\tbounced-notified\t" in text
    # The sender hears of bad@ now, not when temp@ is finally done; the
    # message stays queued for temp@.
    dsns = q.wait_maildir(os.path.join(p.tmpdir, "mail", "alice"), 1)
    assert len(dsns) == 1
    body = dsns[0].as_string()
    assert "Final-Recipient: rfc822; bad@peer.test" in body
    assert body.count("Final-Recipient:") == 1
    assert qid in p.spool_files()
    # A later attempt (flush) does not report bad@ again.
    flush(p)
    assert len(q.wait_log_count(p, re.escape(qid) + r": to=<temp@peer\.test>.*status=deferred", 2)) >= 2
    assert len(q.maildir(os.path.join(p.tmpdir, "mail", "alice"))) == 1


def test_starttls_opportunistic_to_postfix(petrel_factory, postfix):
    p = relay_petrel(petrel_factory, {"queue": {"tls": "opportunistic"}},
                     routes={"*": f"[127.0.0.1]:{postfix.port}"})
    qid = q.submit(p, "alice@localhost", ["user@peer.test"], "over TLS")
    line = sent_line(p, qid, "user@peer.test")
    assert re.search(r"tls=TLSv1\.[23]", line), line
    assert h.wait_until(lambda: "TLS connection established from" in postfix.log(), 10), postfix.log()


def test_required_tls_defers_when_peer_has_no_starttls(petrel_factory, tmp, peers):
    port = h.free_port()
    sink = rp.Sink(tmp, "127.0.0.1", port).start()  # smtp-sink offers no STARTTLS
    peers.append(sink)
    p = relay_petrel(petrel_factory, {"queue": {"tls": "required"}},
                     routes={"*": f"[127.0.0.1]:{port}"})
    qid = q.submit(p, "alice@localhost", ["user@remote.test"], "secret")
    line = sent_line(p, qid, "user@remote.test", status="deferred")
    assert "4.7" in line, line
    assert sink.messages() == 0
    assert "secret" not in sink.dump_text()


def test_three_domains_share_two_connections(petrel_factory, tmp, peers):
    port = h.free_port()
    records = []
    sinks = {}
    for n, dom in enumerate(("a", "b", "c")):
        ip = f"127.0.0.{11 + n}"
        records += [f"--mx-host={dom}.test,mx.{dom}.test,10", f"--host-record=mx.{dom}.test,{ip}"]
        sinks[dom] = rp.Sink(tmp, ip, port, name=dom)
    dns = rp.DnsMasq(tmp, records)
    peers.append(dns)
    per_domain = 15
    p = relay_petrel(petrel_factory, {"queue": {
        "port": port, "dns": {"nameservers": [dns.nameserver]},
        "max_connections": 2, "max_connections_per_domain": 2, "max_messages_per_connection": 4}})
    # Queue everything while the sinks are down, then deliver in one go.
    ids = q.submit_many(p.port, "alice@localhost",
                        lambda i: f"user{i}@{'abc'[i % 3]}.test", 3 * per_domain)
    q.wait_log_count(p, r"status=deferred", 3 * per_domain, timeout=30)
    for s in sinks.values():
        s.start()
        peers.append(s)
    peak = rp.PeakConnections(port)
    flush(p)
    for s in sinks.values():
        assert s.wait_messages(per_domain, timeout=60), (s.host, s.counters())
    assert q.wait_queue_empty(p, 20)
    assert 1 <= peak.stop() <= 2, f"{peak.peak} connections open at once, max_connections is 2"
    sent = q.log_lines(p, r"status=sent")
    assert len(sent) == 3 * per_domain
    order = [re.search(r"relay=mx\.(\w)\.test", line).group(1) for line in sent]
    # No domain waits for another to finish: each one's first delivery comes
    # in the first half of all deliveries.
    for dom in "abc":
        assert order.index(dom) < len(order) / 2, order
    # Connections carried at most 4 messages each (smtp-sink counts a
    # session when it ends: idle connections say QUIT a second after their
    # last message).
    for dom, s in sinks.items():
        assert h.wait_until(lambda: s.counters()[0] >= math.ceil(per_domain / 4), 10), \
            (dom, s.counters())
    assert len(ids) == 3 * per_domain


def test_5000_messages_few_connections_low_fd_limit(petrel_factory, tmp, peers):
    port = h.free_port()
    per_conn, per_domain, count = 100, 10, 5000
    p = relay_petrel(petrel_factory, {
        "queue": {"max_messages_per_connection": per_conn, "max_connections_per_domain": per_domain}},
        routes={"bulk.test": f"[127.0.0.1]:{port}"}, nofile=256)
    ids = q.submit_many(p.port, "alice@localhost", lambda i: f"user{i % 50}@bulk.test", count,
                        connections=8, timeout=240)
    assert len(set(ids)) == count
    q.wait_log_count(p, r"@bulk\.test>.*status=deferred", count, timeout=120)
    sink = rp.Sink(tmp, "127.0.0.1", port).start()
    peers.append(sink)
    flush(p)
    assert sink.wait_messages(count, timeout=240), sink.counters()
    assert q.wait_queue_empty(p, 60), len(p.spool_files())
    sessions, msgs = sink.counters()
    assert msgs == count
    assert sessions <= math.ceil(count / per_conn) + per_domain, sessions
    assert "Too many open files" not in p.log_text()
    assert p.proc.poll() is None


def test_server_connection_limit_lowers_concurrency(petrel_factory, tmp, peers):
    """A Postfix that takes 2 connections per client turns away the rest with
    421: petrel stops opening more than the 2 that work, and everything is
    delivered over them."""
    port = h.free_port()
    pf = rp.Postfix("127.0.0.1", port, main="""\
smtpd_client_connection_count_limit = 2
smtpd_client_event_limit_exceptions =
""")
    peers.append(pf)
    count = 40
    p = relay_petrel(petrel_factory, {"queue": {"max_connections_per_domain": 6,
                                                "max_messages_per_connection": 100}},
                     routes={"*": f"[127.0.0.1]:{port}"})
    ids = q.submit_many(p.port, "alice@localhost", lambda i: f"user{i}@peer.test", count)
    q.wait_log_count(p, r"status=deferred", count, timeout=30)
    pf.start()
    flush(p)
    assert p.wait_log(r"server refused a connection, [12] at once from now on", 30), p.log_text()[-3000:]
    # The few messages the refused connections held were deferred again;
    # one more flush sends them over the connections that work.
    assert h.wait_until(lambda: len(q.log_lines(p, r"status=sent")) + len(
        q.log_lines(p, r"status=deferred")) >= 2 * count, 30)
    flush(p)
    assert q.wait_queue_empty(p, 30), p.spool_files()
    assert len(q.log_lines(p, r"status=sent")) == count
    assert len(ids) == count


def test_smarthost_with_starttls_and_auth(petrel_factory, tmp_path):
    """Relay through a smarthost (a second petrel) that only relays for
    authenticated users, AUTH inside required STARTTLS; a wrong password
    defers, it never bounces."""
    import tls_helpers as t
    far = str(tmp_path / "far")
    smarthost = petrel_factory(t.tls_overrides(
        users={"relayer": t.sha512_hash("s3cret pw")}, networks=[],
        domains={"far.test": {"deliver": f"maildir:{far}/%u"}}))
    good = tmp_path / "good.pw"
    good.write_text("s3cret pw\n")
    bad = tmp_path / "bad.pw"
    bad.write_text("wrong\n")

    def sender_petrel(pwfile):
        return relay_petrel(petrel_factory, {"smarthost": {
            "host": f"[127.0.0.1]:{smarthost.port}", "tls": "required",
            "auth": {"user": "relayer", "password_file": str(pwfile)}}})

    p = sender_petrel(bad)
    qid = q.submit(p, "alice@localhost", ["bob@far.test"], "wrong password")
    line = sent_line(p, qid, "bob@far.test", status="deferred")
    assert "535" in line and "dsn=4." in line, line

    p = sender_petrel(good)
    qid = q.submit(p, "alice@localhost", ["bob@far.test"], "via the smarthost")
    line = sent_line(p, qid, "bob@far.test")
    assert f"relay=127.0.0.1[127.0.0.1]:{smarthost.port}" in line
    assert re.search(r"tls=TLSv1\.[23]", line), line
    got = q.wait_maildir(os.path.join(far, "bob"), 1)
    assert q.by_subject(got, "via the smarthost")


def test_smtputf8_message_to_server_without_smtputf8_bounces_5_6_7(petrel_factory, tmp, peers):
    port = h.free_port()
    sink = rp.Sink(tmp, "127.0.0.1", port).start()  # smtp-sink offers no SMTPUTF8
    peers.append(sink)
    p = relay_petrel(petrel_factory, routes={"*": f"[127.0.0.1]:{port}"})
    rcpt = "j\u00f6s\u00e9@remote.test"
    c = p.connect()
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@localhost> SMTPUTF8").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(q.message("utf8", to=rcpt) + b".\r\n")
        qid = h.queued_id(c.reply())
        c.cmd("QUIT")
    finally:
        c.close()
    line = sent_line(p, qid, rcpt, status="bounced")
    assert "dsn=5.6.7" in line, line
    assert sink.messages() == 0
    dsns = q.wait_maildir(os.path.join(p.tmpdir, "mail", "alice"), 1)
    assert "Status: 5.6.7" in dsns[0].as_string()
