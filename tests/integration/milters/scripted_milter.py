#!/usr/bin/python3
"""A milter that does what a JSON script says, for petrel's integration tests.

Built on Debian's python3-milter (pymilter over the real libmilter), so the
protocol side is the one opendkim and friends use. It does what the real
daemons never do on demand: change and delete headers, replace the body,
add and delete recipients, change the sender, quarantine, send PROGRESS,
SKIP the body, hang, or die in the middle of a message.

    /usr/bin/python3 scripted_milter.py SOCKET SCRIPT.json

SOCKET is libmilter's form: "unix:/path/milter.sock" or "inet:PORT@127.0.0.1".
The milter writes "ready" on stdout once it accepts connections.

The script (every key optional):

    {
      "log": "/path/events.jsonl",      # one JSON object per callback, see below
      "negotiate": ["NR_HDR", "HDR_LEADSPC"],   # protocol flags to ask for
                                                # (P_* names without P_), on top of
                                                # pymilter's default
      "connect": ACTION, "helo": ACTION, "envfrom": ACTION,
      "envrcpt": ACTION or {"bad@example.net": ACTION, "*": ACTION},
      "data": ACTION, "header": ACTION, "eoh": ACTION, "body": ACTION,
      "eom_changes": [OP, ...],         # done in order at end of message
      "eom": ACTION                     # the final answer, after the changes
    }

ACTION: "continue" (default), "accept", "reject", "tempfail", "discard",
"skip" (body only), "hang" (sleep an hour: the MTA must time out), "exit"
(the whole milter process dies at once: the MTA sees the connection close
mid-message), or {"reply": ["550", "5.7.1", "text", ...]} (setreply, a multi-line
reply when given more than one text, then reject or tempfail by the code's
class).

OP: ["addheader", name, value], ["insheader", index, name, value],
["chgheader", name, index, value] (value "" deletes), ["replacebody", text],
["addrcpt", "<a@b>"], ["addrcpt_par", "<a@b>", "NOTIFY=NEVER"],
["delrcpt", "<a@b>"], ["chgfrom", "<a@b>"], ["quarantine", reason],
["progress"], ["sleep", seconds].

Log lines: {"event": "connect"|"helo"|"envfrom"|"envrcpt"|"data"|"header"|
"eoh"|"body"|"eom"|"abort"|"close", "args": [...], "macros": {name: value}},
and at "eom" also "headers" ([[name, value], ...] as received) and "body"
(the body bytes as received, latin-1 decoded). Each line is flushed at once.
"""

import json
import os
import socket
import sys
import threading
import time

import Milter

MACROS = ["j", "{daemon_name}", "_", "i", "{auth_authen}", "{client_addr}",
          "{client_port}", "{mail_addr}", "{rcpt_addr}", "{tls_version}", "{cipher}"]

RESULTS = {
    "continue": Milter.CONTINUE,
    "accept": Milter.ACCEPT,
    "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL,
    "discard": Milter.DISCARD,
    "skip": Milter.SKIP,
}


class Log:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def write(self, obj):
        if not self.path:
            return
        line = json.dumps(obj) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def text(v):
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return v


class Scripted(Milter.Base):
    script = {}
    log = Log(None)

    def __init__(self):
        self.headers = []
        self.body_bytes = b""

    # ---- helpers

    def macros(self):
        out = {}
        for name in MACROS:
            v = self.getsymval(name)
            if v is not None:
                out[name] = v
        return out

    def note(self, event, *args, **extra):
        entry = {"event": event, "args": [text(a) for a in args], "macros": self.macros()}
        entry.update(extra)
        self.log.write(entry)

    def act(self, action):
        if action is None:
            return Milter.CONTINUE
        if isinstance(action, dict) and "reply" in action:
            code, xcode, *lines = action["reply"]
            self.setreply(code, xcode, *lines)
            return Milter.REJECT if code.startswith("5") else Milter.TEMPFAIL
        if action == "hang":
            time.sleep(3600)
            return Milter.TEMPFAIL
        if action == "exit":
            os._exit(3)
        return RESULTS[action]

    # ---- negotiation

    def negotiate(self, opts):
        rc = Milter.Base.negotiate(self, opts)
        for name in self.script.get("negotiate", []):
            opts[1] |= getattr(Milter, "P_" + name)
        return rc

    # ---- callbacks

    def connect(self, hostname, family, hostaddr):
        self.note("connect", hostname, str(family), json.dumps(hostaddr))
        return self.act(self.script.get("connect"))

    def hello(self, hostname):
        self.note("helo", hostname)
        return self.act(self.script.get("helo"))

    def envfrom(self, mailfrom, *params):
        self.headers = []
        self.body_bytes = b""
        self.note("envfrom", mailfrom, *params)
        return self.act(self.script.get("envfrom"))

    def envrcpt(self, rcpt, *params):
        self.note("envrcpt", rcpt, *params)
        rule = self.script.get("envrcpt")
        if isinstance(rule, dict) and "reply" not in rule:
            bare = rcpt.strip("<>")
            rule = rule.get(bare, rule.get("*"))
        return self.act(rule)

    def data(self):
        self.note("data")
        return self.act(self.script.get("data"))

    def header(self, name, value):
        self.headers.append([name, text(value)])
        self.note("header", name, value)
        return self.act(self.script.get("header"))

    def eoh(self):
        self.note("eoh")
        return self.act(self.script.get("eoh"))

    def body(self, chunk):
        self.body_bytes += chunk
        self.note("body", str(len(chunk)))
        return self.act(self.script.get("body"))

    def eom(self):
        self.note("eom", headers=self.headers, body=self.body_bytes.decode("latin-1"))
        for op in self.script.get("eom_changes", []):
            name, args = op[0], op[1:]
            if name == "addheader":
                self.addheader(args[0], args[1])
            elif name == "insheader":
                self.addheader(args[1], args[2], int(args[0]))
            elif name == "chgheader":
                self.chgheader(args[0], int(args[1]), args[2])
            elif name == "replacebody":
                self.replacebody(args[0].encode("latin-1"))
            elif name == "addrcpt":
                self.addrcpt(args[0])
            elif name == "addrcpt_par":
                self.addrcpt(args[0], args[1])
            elif name == "delrcpt":
                self.delrcpt(args[0])
            elif name == "chgfrom":
                self.chgfrom(args[0])
            elif name == "quarantine":
                self.quarantine(args[0])
            elif name == "progress":
                self.progress()
            elif name == "sleep":
                time.sleep(float(args[0]))
            else:
                raise ValueError("unknown op " + name)
        return self.act(self.script.get("eom"))

    def abort(self):
        self.note("abort")
        return Milter.CONTINUE

    def close(self):
        self.log.write({"event": "close", "args": [], "macros": {}})
        return Milter.CONTINUE


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: scripted_milter.py SOCKET SCRIPT.json")
    spec, script_path = sys.argv[1], sys.argv[2]
    with open(script_path, encoding="utf-8") as f:
        Scripted.script = json.load(f)
    Scripted.log = Log(Scripted.script.get("log"))
    Milter.factory = Scripted
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT
                     | Milter.ADDRCPT_PAR | Milter.DELRCPT | Milter.QUARANTINE
                     | Milter.CHGFROM)

    def announce():
        # Ready once a connection is accepted. The probe never reaches the
        # script: pymilter makes no Scripted object for a connection that
        # closes before negotiating.
        for _ in range(1000):
            try:
                if spec.startswith("unix:"):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(spec[5:])
                else:
                    port, _, host = spec[5:].partition("@")
                    s = socket.create_connection((host or "127.0.0.1", int(port)))
                s.close()
                break
            except OSError:
                time.sleep(0.01)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    Milter.runmilter("petrel-scripted", spec, timeout=600)


if __name__ == "__main__":
    main()
