#!/usr/bin/env python3
"""Records real QMP exchanges with the installed QEMU for tests/unit/test-qmp.c.

Usage: scripts/record-qmp-transcripts.py OUTDIR [QEMU_BINARY]

Each transcript is one monitor connection, one line per JSON message:
    > {...}   what the client sent (ids are "r<N>"; the replay server maps
              them onto the ids the client under test uses)
    < {...}   what QEMU sent, verbatim except the trailing "\\r\\n"
    !eof      QEMU closed the connection here
    # ...     comment
A transcript that does not end in !eof stops recording while QEMU still runs
(the rest of the session is not recorded).

The monitor is a socketpair end passed to QEMU as a file descriptor, so no
socket path has to be polled for.
"""
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

QEMU = sys.argv[2] if len(sys.argv) > 2 else "qemu-system-x86_64"
BASE_ARGS = ["-M", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none"]


class Session:
    def __init__(self, name, extra_args, comment):
        self.name = name
        self.lines = ["# " + c for c in comment.split("\n")]
        self.recording = True
        self.next_id = 0
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.proc = subprocess.Popen(
            [QEMU] + BASE_ARGS + extra_args +
            ["-chardev", "socket,id=qmp,fd=%d" % theirs.fileno(),
             "-mon", "chardev=qmp,mode=control"],
            pass_fds=[theirs.fileno()])
        theirs.close()
        self.buf = b""
        self.eof = False
        greeting = self.read_line()
        assert "QMP" in greeting

    def record(self, line):
        if self.recording:
            self.lines.append(line)

    def read_line(self, timeout=30):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from QEMU (%s)" % self.name)
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                # QEMU may exit with our last bytes unread; that is EOF too.
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.decode().rstrip("\r")
        self.record("< " + text)
        return json.loads(text)

    def execute(self, command, arguments=None):
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        msg["id"] = "r%d" % self.next_id
        self.next_id += 1
        text = json.dumps(msg)
        self.record("> " + text)
        self.sock.sendall(text.encode() + b"\n")
        while True:
            reply = self.read_line()
            if reply is None:
                raise RuntimeError("%s: EOF waiting for %s" % (self.name, command))
            if reply.get("id") == msg["id"]:
                return reply

    def wait_event(self, name, pred=lambda data: True):
        while True:
            msg = self.read_line()
            if msg is None:
                raise RuntimeError("%s: EOF waiting for %s" % (self.name, name))
            if msg.get("event") == name and pred(msg.get("data", {})):
                return msg

    def stop_recording(self):
        self.recording = False

    def quit(self):
        self.execute("quit")
        while self.read_line() is not None:
            pass
        self.record("!eof")
        self.proc.wait(timeout=30)
        self.sock.close()

    def save(self, outdir):
        with open(os.path.join(outdir, self.name + ".txt"), "w") as f:
            f.write("\n".join(self.lines) + "\n")


def simple(outdir, name, comment, steps, extra_args=("-S",), end_with_quit=False):
    s = Session(name, list(extra_args), comment)
    s.execute("qmp_capabilities")
    steps(s)
    if not end_with_quit:
        s.stop_recording()
    s.quit()
    s.save(outdir)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    hdr = "recorded by scripts/record-qmp-transcripts.py from " + version + "\n"

    simple(outdir, "connect", hdr + "greeting and capabilities negotiation", lambda s: None)
    simple(outdir, "query-status", hdr + "query-status of a VM started with -S",
           lambda s: s.execute("query-status"))
    simple(outdir, "query-migrate", hdr + "query-migrate before any migration",
           lambda s: s.execute("query-migrate"))
    simple(outdir, "migrate-capabilities", hdr + "enable migration events, read parameters",
           lambda s: (s.execute("migrate-set-capabilities",
                                {"capabilities": [{"capability": "events", "state": True}]}),
                      s.execute("query-migrate-parameters")))
    simple(outdir, "error-bad-argument", hdr + "max-bandwidth given as a string",
           lambda s: s.execute("migrate-set-parameters", {"max-bandwidth": "fast"}))
    simple(outdir, "error-unknown-command", hdr + "a command QEMU does not have",
           lambda s: s.execute("no-such-command"))
    simple(outdir, "stop-cont", hdr + "cont then stop: RESUME and STOP arrive before the replies",
           lambda s: (s.execute("cont"), s.execute("stop")))
    simple(outdir, "quit", hdr + "quit: SHUTDOWN, the reply, then QEMU closes the monitor",
           lambda s: s.execute("query-status"), end_with_quit=True)

    # Migration between two QEMUs over a unix socket.
    with tempfile.TemporaryDirectory() as tmp:
        uri = "unix:" + os.path.join(tmp, "mig.sock")
        dst = Session("migration-destination", ["-incoming", "defer"],
                      hdr + "destination of a live migration (-incoming defer)")
        src = Session("migration-source", [],
                      hdr + "source of a live migration of a running 64 MiB guest")
        for s in (dst, src):
            s.execute("qmp_capabilities")
            s.execute("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate-set-parameters", {"max-bandwidth": 1073741824, "downtime-limit": 300})
        src.execute("migrate", {"uri": uri})
        src.wait_event("MIGRATION", lambda d: d.get("status") in ("completed", "failed"))
        dst.wait_event("RESUME")
        src.execute("query-migrate")
        dst.execute("query-status")
        for s in (dst, src):
            s.stop_recording()
            s.quit()
            s.save(outdir)


if __name__ == "__main__":
    main()
