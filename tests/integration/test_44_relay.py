"""t-44: relay control. Who may send to a remote domain: relay.networks,
authenticated clients, unix listeners; nobody else, whatever the address
looks like.
"""

import os

import pytest

import petrel_harness as h
import tls_helpers as t

PASSWORD = "relay me"
LOCAL = "bob@localhost"
REMOTE_RCPT = f"friend@{h.REMOTE}"


@pytest.fixture(scope="module")
def bob_hash():
    return t.sha512_hash(PASSWORD)


def relay_server(petrel_factory, short_tmp, bob_hash, authenticated=True):
    sock = os.path.join(short_tmp, "smtp.sock")
    p = petrel_factory(t.tls_overrides(users={"bob": bob_hash}, networks=["127.0.0.1/32"],
                                       relay={"authenticated": authenticated}),
                       extra_listen=[{"address": f"unix:{sock}"}])
    assert h.wait_until(lambda: os.path.exists(sock), 5)
    return p, sock


def open_client(p, sock, kind):
    if kind == "unix":
        c = t.connect_unix(p, sock)
        c.ehlo()
        return c
    c = t.connect(p, source="127.0.0.1" if kind == "loopback" else t.OTHER_IP)
    c.ehlo()
    if kind == "authenticated":
        c.starttls()
        c.ehlo()
        assert c.auth_plain("bob", PASSWORD).code == 235
    return c


# client kind -> (reply to a local recipient, reply to a remote one)
MATRIX = {
    "loopback": (250, 250),     # 127.0.0.1, in relay.networks
    "non-relay": (250, 554),    # 127.0.0.2, outside relay.networks
    "authenticated": (250, 250),  # 127.0.0.2 after AUTH
    "unix": (250, 250),         # unix: listener
}


def test_relay_matrix(petrel_factory, short_tmp, bob_hash):
    p, sock = relay_server(petrel_factory, short_tmp, bob_hash)
    for kind, (want_local, want_remote) in MATRIX.items():
        for rcpt, want in ((LOCAL, want_local), (REMOTE_RCPT, want_remote)):
            c = open_client(p, sock, kind)
            assert c.mail("alice@localhost").code == 250
            r = c.rcpt(rcpt)
            assert r.code == want, (kind, rcpt, r)
            if want == 554:
                assert r.last == f"554 5.7.1 <{rcpt}>: Relay access denied", r
                # No transaction with only refused recipients.
                assert c.cmd("DATA").last.startswith("554 5.5.1")
            else:
                qid = h.queued_id(c.data(h.make_message(f"{kind} to {rcpt}")))
                if rcpt == REMOTE_RCPT:  # stays queued: its route is a dead port
                    assert t.wait_spool_message(p, qid).recipients == [rcpt]
            c.cmd("QUIT")
    assert p.wait_log(r"NOQUEUE: reject: RCPT from \[127\.0\.0\.2\]:\d+: 554 5\.7\.1 "
                      r"<friend@remote\.example>: Relay access denied")


def test_relay_authenticated_false(petrel_factory, short_tmp, bob_hash):
    p, _ = relay_server(petrel_factory, short_tmp, bob_hash, authenticated=False)
    c = open_client(p, None, "authenticated")
    assert c.mail("alice@localhost").code == 250
    assert c.rcpt(REMOTE_RCPT).last.startswith("554 5.7.1")
    assert c.rcpt(LOCAL).code == 250


# Classic open-relay probes: each must be refused, or accepted only as a
# local recipient of the local domain. open.example takes any local part.
TRICKS = [
    "friend%remote.example@{local}",
    '"friend@remote.example"@{local}',
    "@{local}:friend@remote.example",
    "remote.example!friend@{local}",
    "friend%remote.example%{local}@{local}",
    '"friend%remote.example"@{local}',
    "@{local},@other.example:friend@remote.example",
    "friend@remote.example@{local}",
    "friend@remote.example.",
    "friend@[127.0.0.1]",
    "friend@REMOTE.EXAMPLE",
]


@pytest.mark.parametrize("local", ["open.example", "localhost"])
def test_open_relay_tricks_are_not_relayed(petrel_factory, short_tmp, bob_hash, local):
    p, _ = relay_server(petrel_factory, short_tmp, bob_hash)
    accepted = []
    for trick in TRICKS:
        addr = trick.format(local=local)
        c = open_client(p, None, "non-relay")
        assert c.mail("alice@localhost").code == 250
        r = c.rcpt(addr)
        assert r.code in (250, 501, 550, 553, 554), (addr, r)
        if r.code == 250:
            qid = h.queued_id(c.data(h.make_message("probe")))
            accepted.append((addr, qid))
        c.cmd("QUIT")
    if local == "localhost":
        # users: [alice, bob]: none of these local parts exists.
        assert accepted == []
    for addr, qid in accepted:
        # Accepted means local: the envelope recipient is in the local domain,
        # and the queue runner delivers it locally, never to remote.example.
        line = p.wait_log(rf"^.*{qid}: to=<[^\n]*status=\w+.*$", timeout=10)
        assert line, f"{addr}: no delivery logged for {qid}"
        text = line.group(0)
        rcpt = text.split("to=<", 1)[1].split(">, ", 1)[0]
        assert rcpt.lower().endswith("@" + local), (addr, text)
        assert "relay=local" in text and "status=sent" in text, (addr, text)
    # The spool never held a remote-domain recipient from these probes.
    for name in p.spool_files():
        for r in p.spool_message(name).recipients:
            assert not r.lower().endswith("remote.example"), r
    if local == "open.example":
        # The ones that are plainly local parts of open.example were taken.
        assert {a for a, _ in accepted} >= {
            "friend%remote.example@open.example", '"friend@remote.example"@open.example',
            "remote.example!friend@open.example"}
