"""t-14: `petrel check-config`: exit 0 and the effective config, or 78 with FILE:LINE: KEY: REASON."""

import os
import re

import petrel_harness as h


def _check(tmp_path, text, name="petrel.yaml"):
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(text)
    return path, h.run_petrel("check-config", "-c", path)


def test_good_config_exit_0(tmp_path):
    path, r = _check(tmp_path, f"""\
hostname: mx.check.example
state_dir: {tmp_path}/state
listen: [{{address: "127.0.0.1:2599"}}]
limits: {{max_message_size: 64KiB, max_recipients: 5, timeouts: {{command: 3s}}}}
relay: {{networks: ["127.0.0.0/8"]}}
domains: {{localhost: {{deliver: "maildir:{tmp_path}/mail/%u", users: [alice, bob], catch_all: ""}}}}
recipient_delimiter: "+"
""")
    assert r.returncode == 0, r.stderr
    assert "127.0.0.1:2599" in r.stdout
    assert "localhost" in r.stdout
    assert "mx.check.example" in r.stdout


def test_empty_config_is_valid(tmp_path):
    _, r = _check(tmp_path, "")
    assert r.returncode == 0, r.stderr


def test_harness_config_is_valid(petrel_factory):
    p = petrel_factory(start=False)
    r = p.run_cli("check-config")
    assert r.returncode == 0, r.stderr


def _assert_error(r, path, line, key):
    assert r.returncode == 78, (r.returncode, r.stderr)
    pat = re.escape(f"{path}:{line}: {key}:") + r" \S"
    assert re.search(pat, r.stderr), f"expected '{path}:{line}: {key}: ...' in:\n{r.stderr}"


def test_bad_duration(tmp_path):
    path, r = _check(tmp_path, "hostname: x.example\nqueue:\n  retry:\n    min: soon\n")
    _assert_error(r, path, 4, "queue.retry.min")
    assert "soon" in r.stderr


def test_bad_size(tmp_path):
    path, r = _check(tmp_path, "limits:\n  max_message_size: huge\n")
    _assert_error(r, path, 2, "limits.max_message_size")


def test_unknown_key(tmp_path):
    path, r = _check(tmp_path, "hostname: x.example\n\nfrobnicate: 1\n")
    _assert_error(r, path, 3, "frobnicate")


def test_unknown_nested_key(tmp_path):
    path, r = _check(tmp_path, "limits:\n  max_workers: 10\n  max_wrokers: 20\n")
    _assert_error(r, path, 3, "limits.max_wrokers")


def test_wrong_type(tmp_path):
    path, r = _check(tmp_path, "limits:\n  max_workers: lots\n")
    _assert_error(r, path, 2, "limits.max_workers")


def test_bad_cidr(tmp_path):
    path, r = _check(tmp_path, 'relay:\n  networks: ["127.0.0.0/8", "10.0.0.0/33"]\n')
    assert r.returncode == 78
    assert re.search(re.escape(path) + r":2: relay\.networks(\[1\])?: ", r.stderr), r.stderr


def test_bad_listen_address(tmp_path):
    path, r = _check(tmp_path, 'listen:\n  - address: "127.0.0.1:notaport"\n')
    assert r.returncode == 78
    assert re.search(re.escape(path) + r":2: listen(\[0\])?\.address: ", r.stderr), r.stderr


def test_several_errors_all_reported(tmp_path):
    path, r = _check(tmp_path, "limits:\n  max_workers: lots\nqueue:\n  retry:\n    max: soon\n")
    assert r.returncode == 78
    assert f"{path}:2: limits.max_workers:" in r.stderr
    assert f"{path}:5: queue.retry.max:" in r.stderr


def test_yaml_syntax_error(tmp_path):
    path, r = _check(tmp_path, "hostname: [unclosed\n")
    assert r.returncode == 78
    assert path in r.stderr


def test_missing_file(tmp_path):
    r = h.run_petrel("check-config", "-c", os.path.join(str(tmp_path), "nope.yaml"))
    assert r.returncode == 78
    assert "nope.yaml" in r.stderr


def test_serve_refuses_bad_config(tmp_path):
    path, _ = _check(tmp_path, "limits:\n  max_workers: lots\n")
    r = h.run_petrel("serve", "-c", path, timeout=15)
    assert r.returncode == 78
    assert f"{path}:2: limits.max_workers:" in r.stderr


def test_petrel_config_env(tmp_path):
    path, _ = _check(tmp_path, "limits:\n  max_workers: lots\n")
    r = h.run_petrel("check-config", env={**os.environ, "PETREL_CONFIG": path})
    assert r.returncode == 78
    assert path in r.stderr


def test_retry_min_and_max(tmp_path):
    path, r = _check(tmp_path, "queue:\n  retry:\n    min: 1h\n    max: 2h\n")
    assert r.returncode == 0, (r.returncode, r.stderr)


def test_empty_catch_all_means_none(tmp_path):
    # `catch_all: ""` (as in the documented test config) means "no catch-all".
    path, r = _check(tmp_path, 'domains:\n  localhost:\n    deliver: discard\n'
                               '    users: [alice]\n    catch_all: ""\n')
    assert r.returncode == 0, (r.returncode, r.stderr)
