"""t-47: a client that stalls inside TLS is cut off after the command timeout
(5s in the test config), during the handshake and in the middle of a record.
"""

import os
import socket
import time

import tls_helpers as t

TIMEOUT = 5  # limits.timeouts.command in petrel_harness.base_config


def test_stalled_handshake_is_bounded(server):
    c = t.connect(server)
    c.ehlo()
    assert c.cmd("STARTTLS").code == 220
    c.send(b"\x16\x03\x01")  # the first octets of a ClientHello record, then silence
    start = time.monotonic()
    _, closed = c.read_until_close(TIMEOUT + 5)
    assert closed, "worker still waiting for the handshake"
    assert time.monotonic() - start >= TIMEOUT - 1
    assert server.wait_log(r"TLS handshake failed.* from \[127\.0\.0\.1\]:\d+")


def test_stalled_record_is_bounded(server):
    c = t.connect(server)
    c.ehlo()
    c.starttls()
    c.ehlo()
    # Half a TLS record on the raw socket: a header announcing 64 octets.
    raw = socket.socket(fileno=os.dup(c.sock.fileno()))
    try:
        raw.sendall(b"\x17\x03\x03\x00\x40")
        raw.settimeout(TIMEOUT + 5)
        start = time.monotonic()
        while raw.recv(65536):
            pass  # a close_notify alert may come first; then EOF
        assert time.monotonic() - start >= TIMEOUT - 1
    except socket.timeout:
        raise AssertionError("worker still waiting for the rest of the record")
    finally:
        raw.close()
    assert server.wait_log(r"disconnect from \[127\.0\.0\.1\]:\d+ messages=0")
