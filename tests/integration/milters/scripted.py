"""Runs scripted_milter.py for an integration test.

    from milters.scripted import ScriptedMilter

    with ScriptedMilter(short_tmp, {"eom_changes": [["addheader", "X-A", "1"]]}) as m:
        p = petrel_factory({"filters": [{"name": "scripted", "milter": m.address}]})
        ...
        assert m.events("eom")[0]["body"] == "Hi\\r\\n"

`directory` must be short (a unix socket path stays under 108 bytes): use
the `short_tmp` fixture. With `port=N` the milter listens on 127.0.0.1:N
(TCP) instead of the unix socket. The milter is started with /usr/bin/python3 (where
Debian's python3-milter lives), waited for until it accepts connections,
and stopped by its PID. See scripted_milter.py for the script's keys.
"""

import json
import os
import select
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripted_milter.py")


class ScriptedMilter:
    def __init__(self, directory, script, name="milter", port=None):
        self.dir = str(directory)
        self.port = port
        self.stderr_path = os.path.join(self.dir, name + ".stderr")
        self.socket = os.path.join(self.dir, name + ".sock")
        self.log = os.path.join(self.dir, name + ".events.jsonl")
        self.script_path = os.path.join(self.dir, name + ".script.json")
        self.script = dict(script, log=self.log)
        self.proc = None

    # petrel's form of the address, for `filters: - milter:`.
    @property
    def address(self):
        if self.port:
            return f"inet:127.0.0.1:{self.port}"
        return "unix:" + self.socket

    @property
    def libmilter_spec(self):
        if self.port:
            return f"inet:{self.port}@127.0.0.1"
        return "unix:" + self.socket

    def start(self, timeout=15):
        with open(self.script_path, "w", encoding="utf-8") as f:
            json.dump(self.script, f)
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["/usr/bin/python3", SCRIPT, self.libmilter_spec, self.script_path],
                stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready and b"ready" in self.proc.stdout.readline():
                return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("scripted milter did not start; see " + self.stderr_path)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                # libmilter takes ~5s to stop once it has served a session
                # (its worker threads wait on a 5s timer); the script keeps no
                # state worth that wait.
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def events(self, kind=None):
        """The callbacks the milter saw, oldest first (optionally one kind)."""
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as f:
            out = [json.loads(line) for line in f if line.strip()]
        return [e for e in out if kind is None or e["event"] == kind]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
