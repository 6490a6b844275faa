"""Fixtures for petrel's integration tests.

`petrel_factory(overrides=None, extra_listen=None, start=True)` starts a
master on a fresh loopback port with a config written into the test's tmp dir
(see petrel_harness.base_config; `overrides` is merged into it); `server` is one with the default test config. Every master is stopped by PID
at teardown, and any process it left behind is killed by PID.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import petrel_harness as h  # noqa: E402


def pytest_report_header(config):
    return f"petrel binary: {h.PETREL_BIN}"


@pytest.fixture(scope="session", autouse=True)
def _petrel_binary():
    if not (os.path.isfile(h.PETREL_BIN) and os.access(h.PETREL_BIN, os.X_OK)):
        pytest.fail(f"petrel binary not found at {h.PETREL_BIN} (set PETREL_BIN)", pytrace=False)


@pytest.fixture
def short_tmp():
    """A short directory under /tmp (unix socket paths must stay < 108 bytes)."""
    d = tempfile.mkdtemp(prefix="petrel-t-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def petrel_factory(tmp_path):
    """make(overrides=None, extra_listen=None, start=True) -> a Petrel (started)."""
    started = []

    def make(overrides=None, extra_listen=None, start=True):
        d = tmp_path / f"p{len(started)}"
        d.mkdir()
        p = h.Petrel(d, overrides=overrides, extra_listen=extra_listen)
        started.append(p)
        if start:
            p.start()
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def server(petrel_factory):
    return petrel_factory()


@pytest.fixture
def client(server):
    c = server.connect()
    c.ehlo()
    return c
