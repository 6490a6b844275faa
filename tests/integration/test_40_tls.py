"""t-40: STARTTLS and implicit TLS with real clients; certificates.

Each client completes a delivery (the message lands in the spool, to a remote
domain routed to a dead port so it stays there) and our Received: header
names the TLS version and cipher.
"""

import os
import re
import signal
import smtplib
import ssl

import pytest

import petrel_harness as h
import tls_helpers as t

RCPT = f"friend@{h.REMOTE}"
PASSWORD = "Correct horse 42"


@pytest.fixture(scope="module")
def alice_hash():
    return t.yescrypt_hash(PASSWORD)


@pytest.fixture
def message_file(tmp_path):
    path = tmp_path / "message.eml"
    path.write_bytes(h.make_message("tls client"))
    return str(path)


def check_tls_received(p, qid=None):
    msg = t.wait_spool_message(p, qid)
    tls = t.received_tls(msg)
    assert tls, msg.first_header()
    assert tls[0] in ("TLSv1.2", "TLSv1.3"), tls
    assert b"ESMTPS" in msg.first_header()
    return msg, tls


def test_swaks_starttls(server):
    rc, out = t.swaks(server.port, "--tls")
    assert rc == 0, out
    assert "<-  220 2.0.0 Ready to start TLS" in out, out
    m = re.search(r"=== TLS started with cipher (TLSv1\.[23]):([\w-]+):", out)
    assert m, out
    _, tls = check_tls_received(server, t.queued_id_in(out))
    assert tls == (m.group(1), m.group(2))
    assert server.wait_log(r"TLS connection established from \[127\.0\.0\.1\]:\d+: TLSv1\.[23] ")


def test_curl_ssl_reqd(server, message_file):
    rc, out = t.curl_send(f"smtp://127.0.0.1:{server.port}", message_file, "--ssl-reqd")
    assert rc == 0, out
    assert re.search(r"> STARTTLS", out), out
    m = re.search(r"SSL connection using (TLSv1\.[23]) / ([\w-]+)", out)
    assert m, out
    _, tls = check_tls_received(server, t.queued_id_in(out))
    assert tls == (m.group(1), m.group(2))


def test_openssl_s_client_starttls(server):
    e = t.Expect(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{server.port}",
                  "-name", "client.example", "-quiet", "-nocommands", "-crlf"])
    try:
        # s_client did EHLO and STARTTLS itself; the session restarted with TLS.
        e.send("EHLO client.example\n")
        e.expect(r"^250 CHUNKING")
        e.send(f"MAIL FROM:<alice@localhost>\nRCPT TO:<{RCPT}>\nDATA\n")
        e.expect(r"^354 ")
        e.send("Subject: s_client\n\nsent through openssl s_client\n.\n")
        m = e.expect(r"^250 2\.0\.0 Ok: queued as (\w+)")
        qid = m.group(1).decode()
        e.send("QUIT\n")
        e.expect(r"^221 ")
    finally:
        e.stop()
    msg, _ = check_tls_received(server, qid)
    assert b"sent through openssl s_client" in msg.message


def test_python_smtplib_starttls(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")  # no users configured
        s.starttls(context=t.client_context())
        version, cipher = s.sock.version(), s.sock.cipher()[0]
        s.ehlo("client.example")
        assert not s.has_extn("starttls")
        s.mail("alice@localhost")
        s.rcpt(RCPT)
        code, text = s.data(h.make_message("smtplib"))
        assert code == 250, text
        qid = t.queued_id_in("250 " + text.decode())
    _, tls = check_tls_received(server, qid)
    assert tls == (version, cipher)


def implicit_tls_server(petrel_factory, alice_hash):
    sport = h.free_port()
    p = petrel_factory(t.tls_overrides(users={"alice": alice_hash}),
                       extra_listen=[{"address": f"127.0.0.1:{sport}", "mode": "submissions"}])
    assert h.wait_until(lambda: h.port_is_listening(sport), 5)
    return p, sport


def test_swaks_implicit_tls_on_submissions(petrel_factory, alice_hash):
    p, sport = implicit_tls_server(petrel_factory, alice_hash)
    rc, out = t.swaks(sport, "--tlsc", "--auth", "LOGIN", "--auth-user", "alice",
                      "--auth-password", PASSWORD)
    assert rc == 0, out
    msg, _ = check_tls_received(p, t.queued_id_in(out))
    assert b"(authenticated)" in msg.first_header()


def test_curl_smtps_on_submissions(petrel_factory, alice_hash, message_file):
    p, sport = implicit_tls_server(petrel_factory, alice_hash)
    rc, out = t.curl_send(f"smtps://127.0.0.1:{sport}", message_file,
                          "--user", f"alice:{PASSWORD}", "--login-options", "AUTH=PLAIN")
    assert rc == 0, out
    msg, _ = check_tls_received(p, t.queued_id_in(out))
    assert b"(authenticated)" in msg.first_header()
    assert msg.fields.get("A") == "alice"
    assert b"ESMTPSA" in msg.first_header()


def test_submissions_without_auth_gets_530(petrel_factory, alice_hash):
    p, sport = implicit_tls_server(petrel_factory, alice_hash)
    c = t.connect(p, port=sport, implicit_tls=True)
    kw = t.ehlo_keywords(c.ehlo())
    assert "STARTTLS" not in kw
    assert kw.get("AUTH") == "AUTH PLAIN LOGIN"
    assert c.mail("alice@localhost").startswith("530 5.7.0")
    # A plaintext client on the implicit TLS port gets no SMTP at all.
    raw = h.SmtpClient.tcp("127.0.0.1", sport, timeout=3)
    p._conns.append(raw)
    raw.send(b"EHLO client.example\r\n")
    data, closed = raw.read_until_close(5)
    assert closed and b"250" not in data and not data.startswith(b"220")


def server_certificate_der(p):
    c = t.connect(p)
    c.ehlo()
    c.starttls()
    der = c.sock.getpeercert(binary_form=True)
    c.cmd("QUIT")
    return der


def test_self_signed_certificate_made_once_and_reused(petrel_factory):
    p = petrel_factory()
    cert = os.path.join(p.state_dir, "tls", "cert.pem")
    key = os.path.join(p.state_dir, "tls", "key.pem")
    assert p.wait_log(r"generated a self-signed certificate for mx\.test\.example in " +
                      re.escape(cert))
    assert os.path.isfile(cert) and os.path.isfile(key)
    assert os.stat(key).st_mode & 0o077 == 0, oct(os.stat(key).st_mode)
    with open(cert) as f:
        pem = f.read()
    first = server_certificate_der(p)
    assert first == ssl.PEM_cert_to_DER_cert(pem)
    # The certificate verifies against itself and names the hostname.
    c = t.connect(p)
    c.ehlo()
    c.starttls(t.client_context(cafile=cert))
    subject = dict(x[0] for x in c.sock.getpeercert()["subject"])
    assert subject["commonName"] == "mx.test.example"
    c.cmd("QUIT")

    assert p.stop() == 0
    p.start()
    assert p.wait_log(r"petrel started")
    assert len(re.findall(r"generated a self-signed certificate", p.log_text())) == 1
    assert server_certificate_der(p) == first
    with open(cert) as f:
        assert f.read() == pem


def test_configured_certificate_is_served_and_reloaded_on_sighup(petrel_factory, tmp_path):
    cert, key = t.make_cert(str(tmp_path), "configured.test.example")
    p = petrel_factory({"tls": {"cert": cert, "key": key}})
    c = t.connect(p)
    c.ehlo()
    c.starttls(t.client_context(cafile=cert))
    subject = dict(x[0] for x in c.sock.getpeercert()["subject"])
    assert subject["commonName"] == "configured.test.example"
    c.cmd("QUIT")
    assert not os.path.exists(os.path.join(p.state_dir, "tls", "cert.pem"))
    assert "generated a self-signed" not in p.log_text()

    # Replace the files and reload: new connections get the new certificate.
    cert2, key2 = t.make_cert(str(tmp_path), "renewed.test.example", name="new")
    os.replace(cert2, cert)
    os.replace(key2, key)
    p.signal(signal.SIGHUP)
    assert p.wait_log(r"reloaded configuration")
    c = t.connect(p)
    c.ehlo()
    c.starttls(t.client_context(cafile=cert))
    subject = dict(x[0] for x in c.sock.getpeercert()["subject"])
    assert subject["commonName"] == "renewed.test.example"


def test_unusable_configured_certificate_refuses_to_start(petrel_factory, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    p = petrel_factory({"tls": {"cert": str(bad), "key": str(bad)}}, start=False)
    p.start(wait=False)
    assert p.wait_exit(10) == 78
    assert "tls.cert" in p.log_text()


def test_min_version_1_3_refuses_a_tls_1_2_client(petrel_factory):
    p = petrel_factory({"tls": {"min_version": "1.3"}})
    c = t.connect(p)
    c.ehlo()
    with pytest.raises(ssl.SSLError):
        c.starttls(t.client_context(max_version=ssl.TLSVersion.TLSv1_2))
    assert p.wait_log(r"TLS handshake failed")
    # A TLS 1.3 client is served.
    c = t.connect(p)
    c.ehlo()
    c.starttls()
    assert c.tls_info()[0] == "TLSv1.3"
    c.ehlo()
    assert c.cmd("NOOP").code == 250


def test_tls_1_2_client_gets_forward_secret_aead_and_no_ticket(server):
    c = t.connect(server)
    c.ehlo()
    c.starttls(t.client_context(max_version=ssl.TLSVersion.TLSv1_2))
    version, cipher = c.tls_info()
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    c.ehlo()
    qid = h.queued_id(c.send_message("alice@localhost", [RCPT], h.make_message("tls12")))
    _, tls = check_tls_received(server, qid)
    assert tls == (version, cipher)
    assert not c.sock.session.has_ticket
    # TLS 1.3: no session ticket either (they arrive after the handshake).
    c = t.connect(server)
    c.ehlo()
    c.starttls()
    c.ehlo()
    assert c.cmd("NOOP").code == 250
    assert c.sock.session is not None and not c.sock.session.has_ticket
