#!/usr/bin/env python3
"""Cold migration with disks between two namespace hosts with separate pools.

A VM with two volumes (a 4 GiB qcow2 with a few hundred MiB written in
scattered extents, and a raw disk its disk writer logs to) runs on hosta.
`ferry migrate --offline --copy-storage` shuts it down, copies and verifies
both disks: the destination files are sparse and identical to the source
(checksums), every record the writer reported durable is there, and the VM
boots on hostb; a chunk damaged on arrival (a test hook) is caught by the
digest check and copied again. Then back to hosta with --storage-map, --start,
--undefine-source and --delete-source-disks: it starts there and hostb is
left with nothing. A destination with a VM of the same name refuses before
copying anything."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

from ferrytest import (BUILD, Cluster, ensure_guest, guest_spec, job, log, main, run,
                       wait_for_console, wait_for_ticks, wait_until)

MiB = 1024 * 1024
DISK_CHECK = os.path.join(BUILD, "guest/disk-check")
# Scattered extents written into the qcow2 root disk before the VM runs:
# (offset MiB, length MiB, byte pattern).
EXTENTS = [(0, 1, 0x11), (100, 64, 0x22), (700, 96, 0x33), (1500, 8, 0x44), (2048, 80, 0x55),
           (3000, 40, 0x66), (4095, 1, 0x77)]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def allocated(path):
    return os.stat(path).st_blocks * 512


def same_content(a_path, a_format, b_path, b_format):
    result = run(["qemu-img", "compare", "-U", "-f", a_format, "-F", b_format, a_path, b_path],
                 check=False)
    return result.returncode == 0


def durable_seq(console_text):
    found = re.findall(r"durable seq=(\d+)", console_text)
    return int(found[-1]) if found else 0


def disk_check(path, at_least):
    result = run([DISK_CHECK, "--expect-at-least", str(at_least), path], check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0, f"disk-check {path}: {report}"
    return report


def test():
    kernel, initrd = ensure_guest()
    fast_dir = tempfile.mkdtemp(prefix="ferry-it-fast-")
    try:
        run_test(kernel, initrd, fast_dir)
    finally:
        shutil.rmtree(fast_dir, ignore_errors=True)


def run_test(kernel, initrd, fast_dir):
    # hostb's first read of chunk 6 (the root disk's 100 MiB extent) is
    # damaged on arrival: the digest check must catch it and copy it again.
    cluster = Cluster(need_netns=True,
                      agent_args={"hosta": ["--pool", f"fast={fast_dir}", "--shutdown-timeout", "3"],
                                  "hostb": ["--shutdown-timeout", "3"]},
                      agent_env={"hostb": {"FERRY_FAULT_CORRUPT_CHUNK": "6"}})
    a, b = cluster.a, cluster.b
    a_default = os.path.join(a.state_dir, "pools", "default")
    b_default = os.path.join(b.state_dir, "pools", "default")

    log("two volumes on hosta: a 4 GiB qcow2 with scattered data, a raw log disk")
    a.cli("volume", "create", "default", "vm1-root.qcow2", "--size", "4G")
    a.cli("volume", "create", "default", "vm1-log", "--size", "64M", "--format", "raw")
    root_a = os.path.join(a_default, "vm1-root.qcow2")
    log_a = os.path.join(a_default, "vm1-log")
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset}M {length}M", root_a])
    data_bytes = sum(length for _, length, _ in EXTENTS) * MiB

    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      disks=[{"volume": "vm1-root.qcow2", "format": "qcow2"},
                             {"volume": "vm1-log", "format": "raw"}],
                      extra_cmdline="ferry.diskwriter=/dev/vdb ferry.diskwriter_rate=50")
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    _, boot_a = wait_for_ticks(a, "vm1", beyond=2)
    wait_for_console(a, "vm1", r"durable seq=[0-9]{2,}")

    log("migrate the running VM cold with its disks (it is shut down first)")
    result = a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent", "--force-stop",
                   "--verbose")
    log(result.stdout.rstrip())
    assert "2 disks" in result.stdout and "copied and verified" in result.stdout, result.stdout
    info = job(a, "vm1", completed=True)
    assert info["state"] == "completed", info
    events = " | ".join(event["message"] for event in info.get("events", []))
    copy = info["stats"]["ferry-copy"]
    log(f"copy: {json.dumps(copy)}")
    # Only data crosses the wire: the written extents (and a little
    # metadata-rounding), not the 4 GiB.
    assert copy["bytes_read"] <= data_bytes + 64 * MiB + 8 * MiB, copy
    assert all(disk["verified"] for disk in copy["disks"]), copy
    incoming = job(b, "vm1", completed=True)
    recopied = [e["message"] for e in incoming.get("events", []) if "differ from the source" in e["message"]]
    assert recopied == ["disk default/vm1-root.qcow2: 1 chunks differ from the source; copying them again"], \
        f"the damaged chunk should be found and copied again: {recopied}"
    log(f"damaged chunk caught: {recopied[0]}")

    last_durable = durable_seq(a.console("vm1"))
    assert last_durable > 10, f"the disk writer reported too little: {last_durable}"
    assert a.vms()["vm1"]["state"] == "shutoff", a.vms()
    assert b.vms()["vm1"]["state"] == "shutoff", b.vms()

    log("the destination volumes are identical and sparse")
    root_b = os.path.join(b_default, "vm1-root.qcow2")
    log_b = os.path.join(b_default, "vm1-log")
    assert same_content(root_a, "qcow2", root_b, "qcow2"), "root disk differs"
    assert sha256(log_a) == sha256(log_b), "log disk differs"
    log(f"allocated: root {allocated(root_a) // MiB} → {allocated(root_b) // MiB} MiB, "
        f"log {allocated(log_a) // MiB} → {allocated(log_b) // MiB} MiB")
    # qcow2 metadata (L2 tables, refcount blocks) may land in a few more
    # clusters when chunks arrive out of order; data never doubles.
    assert allocated(root_b) <= allocated(root_a) + 2 * MiB, "destination root is not sparse"
    assert allocated(log_b) <= allocated(log_a), "destination log disk is not sparse"
    report = disk_check(log_b, last_durable)
    log(f"every durable record is on the destination: {report}")
    assert report["last_seq"] >= last_durable, report

    log("the source keeps its definition and disks (not asked to remove them)")
    assert os.path.exists(root_a) and os.path.exists(log_a)

    log("the VM boots on hostb from the copied disks and its writer continues")
    b.cli("vm", "start", "vm1")
    _, boot_b = wait_for_ticks(b, "vm1", beyond=2)
    assert boot_b != boot_a
    wait_for_console(b, "vm1", rf"resume_seq={last_durable + 1}\b|resume_seq=[0-9]+")
    resumed = int(re.findall(r"resume_seq=(\d+)", b.console("vm1"))[-1])
    assert resumed > last_durable, f"writer resumed at {resumed}, durable was {last_durable}"

    log("back to hosta: refused while hosta still defines vm1")
    refused = b.cli("migrate", "vm1", a.url, "--offline", "--copy-storage", "--persistent", "--force-stop",
                    check=False)
    assert refused.returncode != 0 and "already defined on host hosta" in refused.stderr, refused.stderr
    log(f"refused as expected: {refused.stderr.strip()}")
    assert b.vms()["vm1"]["state"] == "running", "a refused migration leaves the VM running"
    assert not os.path.exists(os.path.join(fast_dir, "vm1-root.qcow2"))

    a.cli("vm", "undefine", "vm1")
    a.cli("volume", "delete", "default", "vm1-root.qcow2")
    a.cli("volume", "delete", "default", "vm1-log")

    log("back to hosta into pool 'fast', started there, hostb cleaned up")
    result = b.cli("migrate", "vm1", a.url, "--offline", "--copy-storage", "--persistent", "--force-stop",
                   "--storage-map", "default=fast", "--start", "--undefine-source",
                   "--delete-source-disks", "--parallel-disks", "1", "--verbose")
    log(result.stdout.rstrip())
    wait_for_ticks(a, "vm1", beyond=2)
    assert "vm1" not in b.vms(), b.vms()
    assert not os.path.exists(root_b) and not os.path.exists(log_b), "source disks should be deleted"
    stored = a.cli("vm", "info", "vm1", json_output=True)["spec"]["disks"]
    assert [disk["pool"] for disk in stored] == ["fast", "fast"], stored
    assert os.path.exists(os.path.join(fast_dir, "vm1-root.qcow2"))
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-U", "-f", "qcow2", "-r", "-c", f"read -P {pattern} {offset}M {length}M",
             os.path.join(fast_dir, "vm1-root.qcow2")])
    log("all extents read back with their patterns on hosta")
    a.cli("vm", "destroy", "vm1")


if __name__ == "__main__":
    main(test)
