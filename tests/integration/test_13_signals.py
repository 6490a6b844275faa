"""t-13: signals: SIGTERM/SIGINT stop gracefully (exit 0), SIGHUP reloads the config."""

import signal
import time

import petrel_harness as h

RCPT = f"friend@{h.REMOTE}"


def _greeting(p):
    c = p.connect(greet=False)
    r = c.reply()
    c.cmd("QUIT")
    c.close()
    return r.last


def test_sigterm_exits_0(server):
    kids = server.children()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0, server.log_text()
    # no child outlives the master
    assert h.wait_until(lambda: not any(h._proc_stat(k) for k in kids), 5), kids
    assert not h.port_is_listening(server.port)


def test_sigint_exits_0(server):
    server.signal(signal.SIGINT)
    assert server.wait_exit(15) == 0, server.log_text()


def test_sigterm_lets_session_finish(server):
    c = server.connect()
    c.ehlo()
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(RCPT).code == 250
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    # the session in progress can still complete its message
    qid = h.queued_id(c.data(h.make_message("during shutdown")))
    c.cmd("QUIT")
    assert server.wait_exit(15) == 0
    assert qid in server.spool_files()


def test_sighup_good_config_takes_effect(server):
    assert _greeting(server).startswith("220 mx.test.example ESMTP petrel")
    cfg = h.deep_merge(server.config, {"hostname": "reloaded.test.example"})
    server.write_config(cfg)
    server.signal(signal.SIGHUP)
    got = h.wait_until(lambda: "reloaded.test.example" in _greeting(server), 5, interval=0.1)
    assert got, server.log_text()
    assert server.proc.poll() is None


def test_sighup_new_limit_takes_effect(server):
    c = server.connect()
    c.ehlo()
    assert c.mail("alice@localhost", "SIZE=60000").code == 250
    c.close()
    server.write_config(h.deep_merge(server.config, {"limits": {"max_message_size": "1KiB"}}))
    server.signal(signal.SIGHUP)

    def refused():
        c = server.connect()
        c.ehlo()
        r = c.mail("alice@localhost", "SIZE=60000")
        c.close()
        return r.code == 552

    assert h.wait_until(refused, 5, interval=0.1), server.log_text()


def test_sighup_bad_config_keeps_serving(server):
    server.write_config(text="hostname: broken.example\nlimits:\n  max_workers: lots\n")
    server.signal(signal.SIGHUP)
    m = server.wait_log(r"reload failed|max_workers", 5)
    assert m, f"no reload error logged:\n{server.log_text()}"
    assert server.proc.poll() is None
    g = _greeting(server)
    assert g.startswith("220 mx.test.example"), g
    c = server.connect()
    c.ehlo()
    h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("after bad reload")))


def test_sighup_unparseable_yaml_keeps_serving(server):
    server.write_config(text="hostname: [unclosed\n  : : :\n")
    server.signal(signal.SIGHUP)
    assert server.wait_log(r"reload failed|petrel\.yaml:\d+", 5), server.log_text()
    assert server.proc.poll() is None
    assert _greeting(server).startswith("220 mx.test.example")


def test_sighup_then_sigterm(server):
    server.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert server.proc.poll() is None
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0
