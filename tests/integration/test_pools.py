#!/usr/bin/env python3
"""Storage pools and volumes: pools from --pool and the default one,
volume create/list/delete, a VM booted with volume disks, and the refusals
(unknown pool, clashing name, a format the content contradicts, deleting a
volume a VM uses, a bad --pool)."""

import json
import os
import shutil
import subprocess
import tempfile

from ferrytest import (FERRYD, Cluster, ensure_guest, guest_spec, log, main, wait_for_ticks,
                       wait_until)

MiB = 1024 * 1024


def expect_error(result, *fragments):
    assert result.returncode != 0, f"expected a failure, got success: {result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"error should mention '{fragment}': {result.stderr!r}"
    log(f"refused as expected: {result.stderr.strip()}")


def api(host, method, path, body=None):
    """(HTTP status, parsed reply) of a raw API call, for bodies the CLI
    never sends."""
    tls = host.cluster.client_tls
    argv = ["curl", "-sS", "--cacert", os.path.join(tls, "ca-cert.pem"),
            "--cert", os.path.join(tls, "cert.pem"), "--key", os.path.join(tls, "key.pem"),
            "-X", method, "-w", "\n%{http_code}", host.url + path]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    text, status = host.run_in(*argv).stdout.rsplit("\n", 1)
    return int(status), json.loads(text)


def qemu_cmdline(pid):
    with open(f"/proc/{pid}/cmdline") as handle:
        return handle.read().split("\0")


def test():
    kernel, initrd = ensure_guest()
    fast_dir = tempfile.mkdtemp(prefix="ferry-it-fast-")
    try:
        run_test(kernel, initrd, fast_dir)
    finally:
        shutil.rmtree(fast_dir, ignore_errors=True)


def run_test(kernel, initrd, fast_dir):
    cluster = Cluster(agent_args={"hosta": ["--pool", f"fast={fast_dir}"]})
    a = cluster.a
    work = cluster.workdir
    default_dir = os.path.join(a.state_dir, "pools", "default")

    log("pool list: the default pool and the configured one")
    pools = {pool["name"]: pool for pool in a.cli("pool", "list", json_output=True)["pools"]}
    assert set(pools) == {"default", "fast"}, pools
    assert pools["default"]["path"] == default_dir and os.path.isdir(default_dir), pools
    assert pools["fast"]["path"] == fast_dir, pools
    assert pools["fast"]["volumes"] == 0 and pools["fast"]["capacity_bytes"] > 0, pools
    assert 0 < pools["fast"]["available_bytes"] <= pools["fast"]["capacity_bytes"], pools
    human = a.cli("pool", "list").stdout
    assert "default" in human and fast_dir in human, human
    log(human.rstrip())

    log("volume create, list, info")
    out = a.cli("volume", "create", "default", "vm1-root.qcow2", "--size", "64M").stdout
    assert "vm1-root.qcow2" in out and "qcow2" in out, out
    created = a.cli("volume", "create", "fast", "vm1-data", "--size", "1M", "--format", "raw",
                    json_output=True)
    assert created == {"name": "vm1-data", "format": "raw", "virtual_size": MiB,
                       "allocated_bytes": created["allocated_bytes"]}, created
    volumes = a.cli("volume", "list", "default", json_output=True)["volumes"]
    assert [(v["name"], v["format"], v["virtual_size"]) for v in volumes] == \
        [("vm1-root.qcow2", "qcow2", 64 * MiB)], volumes
    info = a.cli("pool", "info", "fast", json_output=True)
    assert info["volumes"] == 1 and info["volume_list"][0]["name"] == "vm1-data", info
    human = a.cli("volume", "list", "default").stdout
    assert "vm1-root.qcow2" in human and "64.0" in human and "MiB" in human, human
    log(a.cli("pool", "info", "default").stdout.rstrip())

    log("bad input: unknown pool, clashing name, bad size, bad volume name")
    expect_error(a.cli("volume", "list", "nope", check=False), "pool 'nope' does not exist")
    expect_error(a.cli("volume", "create", "nope", "x", "--size", "1M", check=False),
                 "pool 'nope' does not exist")
    expect_error(a.cli("volume", "create", "default", "vm1-root.qcow2", "--size", "1M", check=False),
                 "already exists")
    expect_error(a.cli("volume", "create", "default", "y", "--size", "4X", check=False), "--size", "4X")
    expect_error(a.cli("volume", "create", "default", "y", "--size", "1K", check=False), "size_bytes")
    expect_error(a.cli("volume", "create", "default", ".hidden", "--size", "1M", check=False), "volume")
    expect_error(a.cli("volume", "delete", "default", "nosuch", check=False), "does not exist")
    assert not os.path.exists(os.path.join(default_dir, "y"))
    if shutil.which("curl"):
        for body, fragment in (({"name": "y", "size_bytes": MiB, "colour": "red"}, "colour"),
                               ({"name": "y", "size_bytes": MiB, "format": "vmdk"}, "format"),
                               ({"name": "y", "size_bytes": 65 << 40}, "size_bytes"),
                               ({"size_bytes": MiB}, "name")):
            status, reply = api(a, "POST", "/v1/pools/default/volumes", body)
            assert status == 400 and fragment in reply["error"]["message"], (body, status, reply)
            log(f"API refused {body}: {reply['error']['message']}")
        status, reply = api(a, "GET", "/v1/pools/default/volumes/vm1-root.qcow2")
        assert status == 200 and reply["format"] == "qcow2", reply
        status, reply = api(a, "GET", "/v1/pools/default/volumes/y")
        assert status == 404, reply
    assert not os.path.exists(os.path.join(default_dir, "y"))

    log("specs: unknown pool, missing volume, and a qcow2 name over raw content")
    bad = guest_spec(os.path.join(work, "bad.json"), "bad", kernel, initrd,
                     disks=[{"pool": "nope", "volume": "x", "format": "raw"}])
    expect_error(a.cli("vm", "define", bad, check=False), "disks[0].pool", "'nope'")
    bad = guest_spec(os.path.join(work, "bad.json"), "bad", kernel, initrd,
                     disks=[{"volume": "missing", "format": "raw"}])
    expect_error(a.cli("vm", "define", bad, check=False), "disks[0].volume", "missing")
    with open(os.path.join(default_dir, "x.qcow2"), "wb") as handle:
        handle.truncate(MiB)
    bad = guest_spec(os.path.join(work, "bad.json"), "bad", kernel, initrd,
                     disks=[{"volume": "vm1-root.qcow2", "format": "qcow2"},
                            {"volume": "x.qcow2", "format": "qcow2"}])
    expect_error(a.cli("vm", "define", bad, check=False),
                 "disks[1].format: volume 'default/x.qcow2' claims qcow2 but its content is raw")
    bad = guest_spec(os.path.join(work, "bad.json"), "bad", kernel, initrd,
                     disks=[{"path": "/a", "volume": "x.qcow2", "format": "raw"}])
    expect_error(a.cli("vm", "define", bad, check=False), "disks[0]: give either path or volume")
    assert a.vms() == {}, "nothing was defined"

    log("a VM with volume disks boots with them attached")
    spec = guest_spec(os.path.join(work, "vm1.json"), "vm1", kernel, initrd,
                      disks=[{"volume": "vm1-root.qcow2", "format": "qcow2"},
                             {"pool": "fast", "volume": "vm1-data", "format": "raw"}])
    a.cli("vm", "define", spec)
    shown = a.cli("vm", "info", "vm1").stdout
    assert "volume default/vm1-root.qcow2 (qcow2)" in shown and "volume fast/vm1-data (raw)" in shown, shown
    stored = a.cli("vm", "info", "vm1", json_output=True)["spec"]["disks"]
    assert stored[0]["pool"] == "default" and "path" not in stored[0], stored
    a.cli("vm", "start", "vm1")
    wait_for_ticks(a, "vm1", beyond=1)
    argv = " ".join(qemu_cmdline(a.vms()["vm1"]["pid"]))
    assert f"filename={default_dir}/vm1-root.qcow2," in argv, argv
    assert f"filename={fast_dir}/vm1-data," in argv, argv
    assert "driver=qcow2,file=disk0-file" in argv and "driver=raw,file=disk1-file" in argv, argv

    log("a volume in use cannot be deleted, not even while the VM runs")
    expect_error(a.cli("volume", "delete", "default", "vm1-root.qcow2", check=False),
                 "vm1", "disks[0]")
    expect_error(a.cli("volume", "delete", "fast", "vm1-data", check=False), "vm1", "disks[1]")
    # qemu-img reads an image a running QEMU holds (shared lock).
    volumes = a.cli("volume", "list", "default", json_output=True)["volumes"]
    assert {v["name"]: v["format"] for v in volumes} == {"vm1-root.qcow2": "qcow2", "x.qcow2": "raw"}, volumes

    log("pools survive an agent restart")
    a.stop_agent()
    a.start_agent()
    assert {p["name"] for p in a.cli("pool", "list", json_output=True)["pools"]} == {"default", "fast"}

    log("start checks the volumes again")
    a.cli("vm", "destroy", "vm1")
    wait_until("vm1 to stop", lambda: a.vms()["vm1"]["state"] == "shutoff", timeout=60)
    data = os.path.join(fast_dir, "vm1-data")
    os.rename(data, data + ".moved")
    expect_error(a.cli("vm", "start", "vm1", check=False), "disks[1].volume", "fast/vm1-data")
    os.rename(data + ".moved", data)
    assert a.vms()["vm1"]["state"] == "shutoff"

    log("once the VM is gone, its volumes can be deleted")
    expect_error(a.cli("volume", "delete", "default", "vm1-root.qcow2", check=False), "vm1")
    a.cli("vm", "undefine", "vm1")
    assert "deleted" in a.cli("volume", "delete", "default", "vm1-root.qcow2").stdout
    a.cli("volume", "delete", "fast", "vm1-data")
    assert not os.path.exists(os.path.join(fast_dir, "vm1-data"))
    names = [v["name"] for v in a.cli("volume", "list", "default", json_output=True)["volumes"]]
    assert names == ["x.qcow2"], names

    log("a bad --pool stops ferryd with a message naming it")
    for args, fragment in ((["--pool", "bad/name=/tmp"], "'bad/name' is not a pool name"),
                           (["--pool", "x=relative"], "--pool x: 'relative' is not an absolute path"),
                           (["--pool", f"x={work}/missing"], "No such file or directory"),
                           (["--pool", f"x={fast_dir}", "--pool", f"y={fast_dir}"], "already pool 'x'")):
        result = subprocess.run([FERRYD, "--state-dir", os.path.join(work, "badpool"),
                                 "--tls-dir", a.tls_dir, "--listen", "127.0.0.1:1"] + args,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and fragment in result.stderr, (args, result.stderr)
        log(f"ferryd refused: {result.stderr.strip()}")


if __name__ == "__main__":
    main(test)
