"""t-16: 421 and close: max_workers, max_per_ip, command timeout, max_errors."""

import time

import petrel_harness as h


def test_max_workers_421(petrel_factory):
    p = petrel_factory({"limits": {"max_workers": 2, "max_per_ip": 10}})
    a = p.connect()
    b = p.connect()
    c = p.connect(greet=False)
    r = c.reply()
    assert r.startswith("421 4.7.0"), r
    assert c.is_closed(5)
    # the first two are still served
    assert a.cmd("NOOP").code == 250 and b.cmd("NOOP").code == 250
    # a freed slot is usable again
    a.cmd("QUIT")
    a.close()

    def slot_free():
        d = p.connect(greet=False)
        ok = d.reply().code == 220
        d.close()
        return ok

    assert h.wait_until(slot_free, 5, interval=0.2)


def test_max_per_ip_421(petrel_factory):
    p = petrel_factory({"limits": {"max_workers": 50, "max_per_ip": 1}})
    a = p.connect()
    b = p.connect(greet=False)
    r = b.reply()
    assert r.startswith("421 4.7.0"), r
    assert b.is_closed(5)
    assert a.cmd("NOOP").code == 250
    a.cmd("QUIT")
    a.close()

    def slot_free():
        d = p.connect(greet=False)
        ok = d.reply().code == 220
        d.close()
        return ok

    assert h.wait_until(slot_free, 5, interval=0.2)


def test_command_timeout_421(petrel_factory):
    p = petrel_factory({"limits": {"timeouts": {"command": "2s"}}})
    c = p.connect()
    c.ehlo()
    t0 = time.monotonic()
    r = c.reply(timeout=10)
    elapsed = time.monotonic() - t0
    assert r.code == 421 and r.last[4:6] == "4.", r
    assert 1.0 <= elapsed <= 8.0, elapsed
    assert c.is_closed(5)


def test_command_timeout_421_before_helo(petrel_factory):
    p = petrel_factory({"limits": {"timeouts": {"command": "2s"}}})
    c = p.connect()
    r = c.reply(timeout=10)
    assert r.code == 421, r
    assert c.is_closed(5)


def test_partial_command_line_times_out(petrel_factory):
    p = petrel_factory({"limits": {"timeouts": {"command": "2s"}}})
    c = p.connect()
    c.send(b"EHLO never-finished")
    r = c.reply(timeout=10)
    assert r.code == 421, r
    assert c.is_closed(5)


def test_max_errors_421(petrel_factory):
    p = petrel_factory({"limits": {"max_errors": 3}})
    c = p.connect()
    c.ehlo()
    assert c.cmd("XYZZY").startswith("500 5.5.2")
    assert c.cmd("PLUGH").startswith("500 5.5.2")
    r = c.cmd("FOO")
    assert r.startswith("421 4.7.0"), r
    assert c.is_closed(5)


def test_max_errors_counts_bad_sequence(petrel_factory):
    p = petrel_factory({"limits": {"max_errors": 3}})
    c = p.connect()
    c.ehlo()
    assert c.cmd("XYZZY").code == 500
    assert c.rcpt("alice@localhost").code == 503
    r = c.cmd("DATA")
    assert r.startswith("421 4.7.0"), r
    assert c.is_closed(5)


def test_default_max_errors_is_10(server):
    c = server.connect()
    c.ehlo()
    for i in range(9):
        assert c.cmd(f"BAD{i}").code == 500
    assert c.cmd("BAD9").startswith("421 4.7.0")
    assert c.is_closed(5)


def test_good_commands_do_not_count(petrel_factory):
    p = petrel_factory({"limits": {"max_errors": 3}})
    c = p.connect()
    c.ehlo()
    for _ in range(20):
        assert c.cmd("NOOP").code == 250
    assert c.cmd("XYZZY").code == 500
    assert c.cmd("NOOP").code == 250
