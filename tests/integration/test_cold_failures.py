#!/usr/bin/env python3
"""Cold migration with disks when things go wrong.

- An interrupted copy (link cut, destination ferryd restarted, then the
  source ferryd restarted) resumes: the bytes read from the source over
  every attempt stay close to the data, not data plus what was copied
  before; the result is identical.
- A destination pool too small (tmpfs) is refused before the guest stops:
  it keeps running, same boot.
- A destination that fills up mid-copy anyway: the job fails naming the
  lack of space, the partial files are removed and the source VM runs
  again from intact disks.
- Bad input: unknown source pool in the storage map, a map to a pool the
  destination lacks, a volume whose content contradicts its declared
  format, a path disk, conflicting options."""

import os
import re
import shutil
import subprocess
import tempfile

from test_bad_input import finish_get, start_get
from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main, run, wait_for_ticks,
                       wait_until)

MiB = 1024 * 1024
EXTENTS = [(0, 1, 0x11), (64, 96, 0x22), (300, 96, 0x33), (900, 64, 0x44), (1500, 64, 0x55),
           (2047, 1, 0x66)]
DATA = sum(length for _, length, _ in EXTENTS) * MiB


def expect_error(result, *fragments):
    assert result.returncode != 0, f"expected a failure, got success: {result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"error should mention '{fragment}': {result.stderr!r}"
    log(f"refused as expected: {result.stderr.strip()}")


def make_root(host, name, pool_dir):
    host.cli("volume", "create", "default", name, "--size", "2G")
    path = os.path.join(pool_dir, name)
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset}M {length}M", path])
    return path


def mount_tmpfs(size_mib):
    path = tempfile.mkdtemp(prefix="ferry-it-tmpfs-")
    run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", path])
    return path


def copy_progress(host, vm):
    return job(host, vm).get("stats", {}).get("ferry-copy", {})


def test():
    kernel, initrd = ensure_guest()
    mounts = []
    try:
        run_test(kernel, initrd, mounts)
    finally:
        for path in mounts:
            subprocess.run(["umount", "-l", path], capture_output=True)
            shutil.rmtree(path, ignore_errors=True)


def run_test(kernel, initrd, mounts):
    tiny = mount_tmpfs(64)
    mounts.append(tiny)
    small = mount_tmpfs(420)
    mounts.append(small)
    cluster = Cluster(need_netns=True,
                      agent_args={"hosta": ["--shutdown-timeout", "3"],
                                  "hostb": ["--pool", f"tiny={tiny}", "--pool", f"small={small}",
                                            "--shutdown-timeout", "3"]})
    a, b = cluster.a, cluster.b
    a_default = os.path.join(a.state_dir, "pools", "default")
    b_default = os.path.join(b.state_dir, "pools", "default")
    root_a = make_root(a, "vm1-root.qcow2", a_default)
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      disks=[{"volume": "vm1-root.qcow2", "format": "qcow2"}])
    a.cli("vm", "define", spec)

    log("bad input is refused with the field named, nothing stops")
    expect_error(a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent",
                       "--storage-map", "nope=default", check=False),
                 "storage_map[0]", "pool 'nope' does not exist on host hosta")
    expect_error(a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent",
                       "--storage-map", "default=missing", check=False),
                 "disks[0].pool", "'missing' does not exist on host hostb")
    expect_error(a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent",
                       "--delete-source-disks", check=False), "delete_source_disks", "undefine_source")
    expect_error(a.cli("migrate", "vm1", b.url, "--live", "--copy-storage", "--postcopy", check=False),
                 "copy_storage", "post-copy")
    expect_error(a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent",
                       "--storage-map", "default", check=False), "storage_map[0]", "SRCPOOL=DSTPOOL")
    path_disk = os.path.join(cluster.workdir, "plain.raw")
    run(["truncate", "-s", "16M", path_disk])
    plain = guest_spec(os.path.join(cluster.workdir, "plain.json"), "plain", kernel, initrd,
                       disks=[{"path": path_disk, "format": "raw"}])
    a.cli("vm", "define", plain)
    expect_error(a.cli("migrate", "plain", b.url, "--offline", "--copy-storage", "--persistent",
                       check=False), "disks[0]", "is a path, not a pool volume")
    liar = os.path.join(a_default, "liar.qcow2")
    a.cli("volume", "create", "default", "liar.qcow2", "--size", "16M")
    lying = guest_spec(os.path.join(cluster.workdir, "liar.json"), "liar", kernel, initrd,
                       disks=[{"volume": "liar.qcow2", "format": "qcow2"}])
    a.cli("vm", "define", lying)
    with open(liar, "wb") as handle:  # replaced behind ferry's back by raw bytes
        handle.write(b"\xab" * MiB)
    expect_error(a.cli("migrate", "liar", b.url, "--offline", "--copy-storage", "--persistent",
                       check=False), "disks[0].format", "raw")
    assert os.listdir(b_default) == [], f"nothing copied: {os.listdir(b_default)}"

    log("a destination pool too small is refused before the guest stops")
    a.cli("vm", "start", "vm1")
    _, boot = wait_for_ticks(a, "vm1", beyond=2)
    expect_error(a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent",
                       "--force-stop", "--storage-map", "default=tiny", check=False),
                 "pool 'tiny' on host hostb has", "MiB free")
    assert a.vms()["vm1"]["state"] == "running", a.vms()
    number, _ = wait_for_ticks(a, "vm1", beyond=0, boot_id=boot)
    wait_for_ticks(a, "vm1", beyond=number, boot_id=boot)
    assert os.listdir(tiny) == [], os.listdir(tiny)

    log("the destination fills up mid-copy: the job fails, the source VM runs again")
    result = a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent", "--force-stop",
                   "--storage-map", "default=small", "--bandwidth", "20", "--detach")
    wait_until("the copy to start", lambda: copy_progress(a, "vm1").get("bytes_read", 0) > 20 * MiB,
               timeout=120)
    # The destination's copy job runs before its VM is defined there: a
    # request following its events (job events --follow) is still held
    # until a new event comes, not answered at once over and over.
    seen = len(b.cli("job", "info", "vm1", "--events", json_output=True)["events"])
    status, held, seconds = finish_get(start_get(b, f"/v1/vms/vm1/job?wait_ms=3000&events_after={seen}",
                                                 cluster.client_tls))
    log(f"a request following the destination's events came back after {seconds:.2f} s "
        f"with {len(held.get('events', [])) - seen} new")
    assert status == 200 and held["active"], held
    assert seconds > 1 or len(held["events"]) > seen, (seconds, len(held["events"]), seen)
    filler = os.path.join(small, ".filler")
    subprocess.run(["fallocate", "-l", f"{400 * MiB}", filler], capture_output=True)
    if not os.path.exists(filler) or os.path.getsize(filler) == 0:
        run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=400"], check=False)
    info = wait_until("the migration to fail", lambda: (lambda i: i if not i.get("active") else None)(job(a, "vm1")),
                      timeout=300)
    log(f"source job: {info['state']}: {info.get('error')}")
    assert info["state"] == "failed", info
    assert "space" in info.get("error", "").lower(), info
    os.unlink(filler)
    assert os.listdir(small) == [], f"partial copies left: {os.listdir(small)}"
    assert "vm1" not in b.vms(), b.vms()
    wait_until("vm1 to run again on hosta", lambda: a.vms()["vm1"]["state"] == "running", timeout=60)
    wait_for_ticks(a, "vm1", beyond=2)
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset}M {length}M", root_a])

    log("an interrupted copy resumes: link cut, destination and source agents restarted")
    a.cli("vm", "destroy", "vm1")
    a.cli("migrate", "vm1", b.url, "--offline", "--copy-storage", "--persistent", "--bandwidth", "16",
          "--detach")
    wait_until("100 MiB copied", lambda: copy_progress(a, "vm1").get("bytes_read", 0) >= 100 * MiB,
               timeout=120)
    cluster.link_down()
    wait_until("the destination to notice", lambda: any(
        "retrying" in event["message"]
        for event in b.cli("job", "info", "vm1", "--events", json_output=True).get("events", [])),
        timeout=90)
    done_before_restart = copy_progress(b, "vm1").get("disks", [{}])[0].get("chunks_done", 0)
    b.stop_agent()
    b.start_agent()
    cluster.link_up()
    before = copy_progress(b, "vm1").get("bytes_read", 0)
    wait_until("the copy to move on", lambda: copy_progress(b, "vm1").get("bytes_read", 0) > before + 32 * MiB,
               timeout=120)
    a.stop_agent()
    a.start_agent()
    info = wait_until("the migration to end",
                      lambda: (lambda i: i if not i.get("active") else None)(job(a, "vm1")), timeout=300)
    assert info["state"] == "completed", info
    copy = info["stats"]["ferry-copy"]
    events = [event["message"] for event in b.cli("job", "info", "vm1", "--completed", "--events",
                                                    json_output=True).get("events", [])]
    log(f"bytes read from the source over every attempt: {copy['bytes_read'] // MiB} MiB "
        f"for {DATA // MiB} MiB of data; attempts {[d['attempts'] for d in copy['disks']]}")
    # The restarted destination copies only what was not done: chunks
    # reported done before the restart are not copied again.
    left = [int(m.group(1)) for m in (re.search(r"(\d+) of 128 chunks left to copy", message)
                                      for message in events) if m]
    log(f"chunks done before the destination restart: {done_before_restart}; left after: {left}")
    assert left and done_before_restart > 0, events
    assert left[0] <= 128 - done_before_restart, (left, done_before_restart)
    # A resumed copy loses only the chunks in flight (16 MiB each, 8
    # connections) at each of the two interruptions.
    assert copy["bytes_read"] <= DATA + 2 * 8 * 16 * MiB, copy
    root_b = os.path.join(b_default, "vm1-root.qcow2")
    compare = run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", root_a, root_b], check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    log("identical after the interruptions")


if __name__ == "__main__":
    main(test)
