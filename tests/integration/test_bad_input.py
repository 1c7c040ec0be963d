#!/usr/bin/env python3
"""Bad input gets a clear error that names the problem; nothing crashes,
nothing is lost."""

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys

from ferrytest import FERRY, Cluster, ensure_guest, guest_spec, job, log, main, run, wait_for_ticks, wait_until


def expect_error(result, *fragments):
    assert result.returncode != 0, f"expected a failure, got success: {result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"error should mention '{fragment}': {result.stderr!r}"
    log(f"refused as expected: {result.stderr.strip()}")


def raw_post(host, path, body, cert_dir):
    """POST with a hand-made HTTP request (to control the body size)."""
    context = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca-cert.pem"))
    context.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
    prefix = host.prefix()
    assert not prefix, "raw_post runs in the caller's namespace"
    with socket.create_connection((host.address, 7711), timeout=30) as sock:
        with context.wrap_socket(sock, server_hostname=host.address) as tls:
            head = (f"POST {path} HTTP/1.1\r\nHost: {host.address}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            tls.sendall(head)
            try:
                tls.sendall(body)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the agent may answer and close before reading it all
            reply = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                reply += chunk
    return reply.decode("utf-8", "replace")


def raw_get(host, path, cert_dir):
    """GET over a fresh mutual-TLS connection: (status, JSON body)."""
    context = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
    connection = http.client.HTTPSConnection(host.address, 7711, context=context, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def start_get(host, path, cert_dir):
    """raw_get in a process inside the host's namespace (the agent's
    address is only reachable there); finish_get collects
    (status, JSON body, seconds the request took)."""
    script = (f"import json, sys, time\nsys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
              "from test_bad_input import raw_get\n"
              "class H: pass\n"
              "h = H(); h.address = sys.argv[1]\n"
              "started = time.monotonic()\n"
              "status, body = raw_get(h, sys.argv[2], sys.argv[3])\n"
              "print(json.dumps([status, body, time.monotonic() - started]))\n")
    return subprocess.Popen(host.prefix() + [sys.executable, "-c", script, host.address, path, cert_dir],
                            stdout=subprocess.PIPE, text=True)


def finish_get(process):
    out, _ = process.communicate(timeout=60)
    return json.loads(out)


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster()
    a, b = cluster.a, cluster.b
    work = cluster.workdir

    log("malformed spec: the error names the field")
    bad = os.path.join(work, "bad.yaml")
    with open(bad, "w") as handle:
        handle.write("name: vm1\nmemory: 8\n")
    expect_error(a.cli("vm", "define", bad, check=False), "memory")
    with open(bad, "w") as handle:
        handle.write("name: vm1\nvcpus: 1\ndisks:\n  - path: relative.img\n    format: raw\n")
    expect_error(a.cli("vm", "define", bad, check=False), "disks[0].path")
    with open(bad, "w") as handle:
        handle.write("name: 'bad name!'\n")
    expect_error(a.cli("vm", "define", bad, check=False), "name")
    assert a.vms() == {}, "nothing was defined"

    log("unknown VM")
    expect_error(a.cli("vm", "info", "nosuchvm", check=False), "nosuchvm")
    expect_error(a.cli("vm", "start", "nosuchvm", check=False), "nosuchvm")
    expect_error(a.cli("migrate", "nosuchvm", b.url, "--live", check=False), "nosuchvm")

    log("live migration of a shut-off VM")
    spec = guest_spec(os.path.join(work, "vm1.json"), "vm1", kernel, initrd)
    a.cli("vm", "define", spec)
    expect_error(a.cli("migrate", "vm1", b.url, "--live", check=False), "shutoff", "--offline")

    log("CLI argument errors")
    expect_error(a.cli("migrate", "vm1", b.url, check=False), "--live, --offline or --warm")
    expect_error(a.cli("migrate", "vm1", b.url, "--live", "--bandwidth", "-5", check=False), "--bandwidth")
    expect_error(a.cli("migrate", "vm1", "ftp://x", "--offline", "--persistent", check=False), "https")

    log("a certificate from another CA is refused")
    other = os.path.join(work, "other-pki")
    run([FERRY, "pki", "init", "--dir", other])
    run([FERRY, "pki", "issue-client", "intruder", "--dir", other])
    intruder = os.path.join(other, "clients", "intruder")
    # The intruder trusts our CA (so it could talk) but its own certificate is not ours.
    with open(os.path.join(cluster.pki_dir, "ca-cert.pem")) as src, \
            open(os.path.join(intruder, "ca-cert.pem"), "w") as dst:
        dst.write(src.read())
    result = run(a.prefix() + [FERRY, "-c", a.url, "--tls-dir", intruder, "vm", "list"], check=False)
    expect_error(result, "certificate")
    # And the CLI refuses an agent whose certificate is not from the CA it trusts.
    run([FERRY, "pki", "issue-client", "outsider", "--dir", other])
    outsider = os.path.join(other, "clients", "outsider")
    result = run(a.prefix() + [FERRY, "-c", a.url, "--tls-dir", outsider, "vm", "list"], check=False)
    expect_error(result, "TLS")

    log("unreachable destination")
    a.cli("vm", "start", "vm1")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=0)
    result = a.cli("migrate", "vm1", "https://10.255.255.1:7711" if cluster.root else "https://127.0.0.9:1",
                   "--live", check=False)
    expect_error(result, "10.255.255.1" if cluster.root else "127.0.0.9")
    assert a.vms()["vm1"]["state"] == "running"
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick, boot_id=boot_id)

    log("a destination whose certificate is from another CA is refused")
    b.stop_agent()
    run([FERRY, "pki", "issue-host", "hostb", "--address", b.address, "--dir", other])
    genuine_tls = b.tls_dir
    b.tls_dir = os.path.join(other, "hosts", "hostb")
    b.start_agent_unchecked()
    try:
        result = a.cli("migrate", "vm1", b.url, "--live", check=False)
        expect_error(result, "TLS")
        assert a.vms()["vm1"]["state"] == "running"
        tick, _ = wait_for_ticks(a, "vm1", beyond=tick, boot_id=boot_id)
    finally:
        b.stop_agent()
        b.tls_dir = genuine_tls
        b.start_agent()
    assert "vm1" not in b.vms()

    log("an API body over the size limit")
    if a.prefix():
        # Talk to the agent from inside its namespace with a helper process.
        script = os.path.join(work, "big.py")
        with open(script, "w") as handle:
            handle.write(
                "import os, socket, ssl, sys\n"
                f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
                "from test_bad_input import raw_post\n"
                "class H: pass\n"
                "h = H(); h.address = sys.argv[1]; h.prefix = lambda: []\n"
                "print(raw_post(h, '/v1/vms', b'{' + b' ' * (2 * 1024 * 1024) + b'}', sys.argv[2]))\n")
        reply = a.run_in("python3", script, a.address, cluster.client_tls).stdout
    else:
        reply = raw_post(a, "/v1/vms", b"{" + b" " * (2 * 1024 * 1024) + b"}", cluster.client_tls)
    log(f"reply to the oversized body: {reply.splitlines()[0] if reply else '(none)'}")
    assert " 413 " in reply.splitlines()[0], reply[:500]
    assert "over the limit" in reply, reply[:500]
    # The agent is still fine.
    assert a.vms()["vm1"]["state"] == "running"

    log("a kernel QEMU cannot boot: the start error quotes QEMU")
    bad_kernel = os.path.join(work, "not-a-kernel")
    with open(bad_kernel, "wb") as handle:
        handle.write(bytes(range(256)) * 16)
    a.cli("vm", "define", guest_spec(os.path.join(work, "vm2.json"), "vm2", bad_kernel, initrd))
    expect_error(a.cli("vm", "start", "vm2", check=False), "QEMU failed to start: qemu:", "kernel")
    assert a.vms()["vm2"]["state"] == "shutoff", a.vms()
    a.cli("vm", "undefine", "vm2")

    log("a request waiting for a job's end is answered when the job ends")
    status, reply, _ = finish_get(start_get(a, "/v1/vms/vm1/job?wait_ms=soon", cluster.client_tls))
    assert status == 400 and "wait_ms" in reply["error"]["message"], (status, reply)
    status, reply, _ = finish_get(start_get(a, "/v1/vms/vm1/job?wait_ms=100&events_after=-1", cluster.client_tls))
    assert status == 400 and "events_after" in reply["error"]["message"], (status, reply)
    a.cli("migrate", "vm1", b.url, "--live", "--bandwidth", "1", "--detach")
    wait_until("the migration to run", lambda: job(a, "vm1").get("active"), timeout=60)
    # Events the client has not seen are answered at once, however long it would wait.
    status, info, seconds = finish_get(start_get(a, "/v1/vms/vm1/job?wait_ms=10000&events_after=0",
                                                 cluster.client_tls))
    assert status == 200 and info["active"] and len(info["events"]) > 0 and seconds < 5, (seconds, info)
    waiting = start_get(a, "/v1/vms/vm1/job?wait_ms=10000", cluster.client_tls)
    # The request is held while the job runs (no answer within a second) ...
    try:
        waiting.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass
    assert waiting.poll() is None, "the request was answered while the job still ran"
    # ... and answered when the abort ends the job, not at the 10 s limit.
    a.cli("job", "abort", "vm1")
    status, info, seconds = finish_get(waiting)
    log(f"the waiting request came back after {seconds:.2f} s: job {info['state']}")
    assert status == 200 and not info["active"], info
    assert seconds < 9, seconds
    wait_until("vm1 to run on hosta after the abort", lambda: a.vms()["vm1"]["state"] == "running", timeout=60)

    log("QEMU stopped by a signal: vm info says what QEMU said")
    pid = a.cli("vm", "info", "vm1", json_output=True)["pid"]
    os.kill(pid, signal.SIGTERM)
    info = wait_until("vm1 to be shut off", lambda: (lambda i: i if i["state"] == "shutoff" else None)(
        a.cli("vm", "info", "vm1", json_output=True)), timeout=60)
    log(f"QEMU's last words: {info.get('qemu_last_words')}")
    assert "terminating on signal 15" in info.get("qemu_last_words", ""), info
    shown = a.cli("vm", "info", "vm1").stdout
    assert "QEMU said:" in shown and "signal 15" in shown, shown


if __name__ == "__main__":
    main(test)
