#!/usr/bin/env python3
"""Warm migration: the disks go over in passes while the guest runs.

A VM with a 4 GiB qcow2 root (a few hundred MiB of scattered extents) and a
raw log disk its disk writer appends checksummed records to runs on hosta.

- Bad input: a warm migration of a shut-off VM (the message says to use a
  cold one), an interval below the minimum, a cutover time in the past, a
  time that is not one.
- Cancel during pre-copy: the guest never stopped (same boot, ticking),
  QEMU holds no ferry bitmap or snapshot node, hostb has no volume left.
- The migration itself, every 5 s: at least 3 passes, each after the first
  copying far less than the disk; hosta's agent, then hostb's, restarted
  between passes, and the next pass still copies only the changes; a cutover scheduled a
  few seconds ahead fires at its time; every record the writer reported
  durable is on hostb's log disk, every extent on its root disk, and the VM
  boots and runs there. The downtime is reported; hosta keeps no bitmap.
- A guest that ignores the ACPI request, with the cutover given when the
  migration starts: it fires, the guest is frozen after the timeout
  (--force-stop), and the VM runs on hostb with an identical disk.
"""

import json
import os
import re
import time

from ferrytest import (BUILD, Cluster, ensure_guest, guest_spec, job, log, main, run, wait_for_console,
                       wait_for_ticks, wait_job_done, wait_until)

MiB = 1024 * 1024
DISK_CHECK = os.path.join(BUILD, "guest/disk-check")
EXTENTS = [(0, 1, 0x11), (100, 64, 0x22), (700, 96, 0x33), (2048, 40, 0x55), (4095, 1, 0x77)]
INTERVAL_S = 5


def durable_seq(console_text):
    found = re.findall(r"durable seq=(\d+)", console_text)
    return int(found[-1]) if found else 0


def warm_state(host, vm, completed=False):
    info = job(host, vm, completed=completed)
    if not completed and info["state"] in ("failed", "cancelled"):
        raise AssertionError(f"the warm migration ended: {info['state']}: {info.get('error')}")
    return info["stats"].get("ferry-warm", {})


def iterations(host, vm):
    return warm_state(host, vm).get("iterations", [])


def ferry_block_objects(host, vm):
    """Bitmaps and snapshot nodes of ferry's in the VM's QEMU."""
    nodes = host.cli("vm", "block", vm, json_output=True)["nodes"]
    found = [node["node"] for node in nodes if node["node"] and node["node"].startswith("ferry-")]
    for node in nodes:
        # A backup job's own bitmaps have no name.
        found += [bitmap["name"] for bitmap in node["dirty_bitmaps"] if bitmap.get("name", "").startswith("ferry-")]
    return found


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True, agent_args={"hosta": ["--shutdown-timeout", "3"],
                                                   "hostb": ["--shutdown-timeout", "3"]})
    a, b = cluster.a, cluster.b
    a_pool = os.path.join(a.state_dir, "pools", "default")
    b_pool = os.path.join(b.state_dir, "pools", "default")

    a.cli("volume", "create", "default", "vm1-root.qcow2", "--size", "4G")
    a.cli("volume", "create", "default", "vm1-log", "--size", "64M", "--format", "raw")
    root_a = os.path.join(a_pool, "vm1-root.qcow2")
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset}M {length}M", root_a])
    data_bytes = sum(length for _, length, _ in EXTENTS) * MiB
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      disks=[{"volume": "vm1-root.qcow2", "format": "qcow2"},
                             {"volume": "vm1-log", "format": "raw"}],
                      extra_cmdline="ferry.diskwriter=/dev/vdb ferry.diskwriter_rate=50 ferry.acpi_poweroff=1")
    a.cli("vm", "define", spec)

    a.cli("volume", "create", "default", "vm2-root.qcow2", "--size", "256M")
    root2_a = os.path.join(a_pool, "vm2-root.qcow2")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 16M 8M", root2_a])
    spec2 = guest_spec(os.path.join(cluster.workdir, "vm2.json"), "vm2", kernel, initrd,
                       disks=[{"volume": "vm2-root.qcow2", "format": "qcow2"}])
    a.cli("vm", "define", spec2)
    a.cli("vm", "start", "vm2")
    log("bad input")
    refused = a.cli("migrate", "vm1", b.url, "--warm", check=False)
    assert refused.returncode != 0 and "use a cold migration" in refused.stderr, refused.stderr
    log(f"  shut-off VM: {refused.stderr.strip()}")
    a.cli("vm", "start", "vm1")
    _, boot_a = wait_for_ticks(a, "vm1", beyond=2)
    wait_for_console(a, "vm1", r"durable seq=[0-9]{2,}")
    refused = a.cli("migrate", "vm1", b.url, "--warm", "--precopy-interval", "2s", check=False)
    assert refused.returncode != 0 and "precopy_interval_s" in refused.stderr, refused.stderr
    log(f"  interval: {refused.stderr.strip()}")
    refused = a.cli("migrate", "vm1", b.url, "--warm", "--cutover", "2020-01-01T00:00:00Z", check=False)
    assert refused.returncode != 0 and "in the past" in refused.stderr, refused.stderr
    log(f"  cutover: {refused.stderr.strip()}")
    refused = a.cli("migrate", "vm1", b.url, "--warm", "--cutover", "teatime", check=False)
    assert refused.returncode == 2 and "ISO 8601" in refused.stderr, refused.stderr
    refused = a.cli("migrate", "cutover", "vm1", check=False)
    assert refused.returncode != 0 and "no outgoing migration" in refused.stderr, refused.stderr
    assert a.vms()["vm1"]["state"] == "running"

    def abort_and_check_clean():
        assert ferry_block_objects(a, "vm1"), "a warm migration tracks changes with a bitmap"
        a.cli("job", "abort", "vm1")
        info = wait_job_done(a, "vm1", timeout=120)
        assert info["state"] == "cancelled", info
        wait_for_ticks(a, "vm1", beyond=0, boot_id=boot_a)
        left = ferry_block_objects(a, "vm1")
        assert not left, f"left in QEMU after cancel: {left}"
        wait_until("hostb to remove its copies", lambda: not os.listdir(b_pool), timeout=60)
        assert "vm1" not in b.vms()
        assert not [f for f in os.listdir(os.path.join(a.state_dir, "run")) if f.startswith("ferry-snap")]

    log("cancel while the first pass copies (8 MiB/s): the guest never stops, nothing is left on either side")
    a.cli("migrate", "vm1", b.url, "--warm", "--precopy-interval", f"{INTERVAL_S}s", "--bandwidth", "8")
    # The first pass fills the bar from 5 to 60 %.
    percent = wait_until("the first pass to be under way",
                         lambda: (lambda p: p if 8 <= p < 55 else None)(
                             job(a, "vm1").get("progress", {}).get("percent", 0)), timeout=300)
    log(f"  aborting at {percent:.0f} %")
    abort_and_check_clean()

    log("cancel between passes: the guest never stops, nothing is left on either side")
    a.cli("migrate", "vm1", b.url, "--warm", "--precopy-interval", f"{INTERVAL_S}s")
    wait_until("the first pass", lambda: len(iterations(a, "vm1")) >= 1, timeout=300)
    abort_and_check_clean()

    log("warm migration, a pass every 5 s")
    a.cli("migrate", "vm1", b.url, "--warm", "--precopy-interval", f"{INTERVAL_S}s", "--force-stop")
    wait_until("3 passes", lambda: len(iterations(a, "vm1")) >= 3, timeout=300)
    passes = iterations(a, "vm1")
    log(f"passes: {json.dumps(passes)}")
    first = passes[0]
    assert first["bytes_copied"] >= data_bytes and first["bytes_copied"] <= data_bytes + 64 * MiB, first
    for later in passes[1:]:
        # The writer adds about 200 KiB/s: a pass copies that, not the disk.
        assert later["bytes_copied"] < 16 * MiB, later
        assert later["bytes_changed"] > 0, f"the guest wrote, yet pass {later['pass']} found nothing: {later}"

    log("hosta's agent restarted between passes: the next pass copies only the changes")
    wait_until("a pass to end", lambda: not warm_state(a, "vm1").get("pass_running"), timeout=120)
    done_before = len(iterations(a, "vm1"))
    a.stop_agent()
    a.start_agent()
    wait_until("the next pass after the restart", lambda: len(iterations(a, "vm1")) > done_before, timeout=180)
    after = iterations(a, "vm1")[-1]
    log(f"pass after restart: {json.dumps(after)}")
    assert after["bytes_copied"] < 16 * MiB and after["bytes_changed"] > 0, after

    log("hostb's agent restarted between passes too")
    wait_until("a pass to end", lambda: not warm_state(a, "vm1").get("pass_running"), timeout=120)
    done_before = len(iterations(a, "vm1"))
    b.stop_agent()
    b.start_agent()
    wait_until("the next pass after hostb's restart", lambda: len(iterations(a, "vm1")) > done_before,
               timeout=180)
    after = iterations(a, "vm1")[-1]
    log(f"pass after hostb's restart: {json.dumps(after)}")
    assert after["bytes_copied"] < 16 * MiB and after["bytes_changed"] > 0, after
    wait_for_ticks(a, "vm1", beyond=0, boot_id=boot_a)

    human = a.cli("job", "info", "vm1").stdout
    assert "Iterations:" in human and "Next pass:" in human and "Cutover:" in human, human
    log("job info:\n" + human)

    log("cutover scheduled 4 s ahead")
    at = int(time.time()) + 4
    a.cli("migrate", "cutover", "vm1", "--at", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at)))
    info = wait_job_done(a, "vm1", timeout=300)
    assert info["state"] == "completed", info
    info = job(a, "vm1", completed=True)
    events = info.get("events", [])
    reached = [e for e in events if "cutover time reached" in e["message"]]
    assert reached and reached[0]["time_us"] / 1e6 >= at, f"cutover fired early: {reached} (at {at})"
    shut = [e for e in events if "guest shut down; copying the last changes" in e["message"]]
    assert shut, "the guest powers off on the ACPI request: the cutover should not need --force-stop"
    assert "ferry-guest: ACPI power off" in a.console("vm1")
    downtime_ms = info["stats"]["ferry-guest-downtime-ms"]
    final = info["stats"]["ferry-warm"]["iterations"][-1]
    log(f"final pass: {json.dumps(final)}; downtime {downtime_ms} ms")
    assert final["final"] and final["bytes_copied"] < 16 * MiB, final
    assert 0 < downtime_ms < 120000, downtime_ms

    # The root disk is left alone by the guest: after the first pass its
    # bitmap marks nothing and the destination says so without
    # connecting, while the log disk got connections for its changes.
    incoming = [e["message"] for e in job(b, "vm1", completed=True)["events"]]
    root_copied = [m for m in incoming if "vm1-root.qcow2 changed since the last pass" in m]
    root_alone = [m for m in incoming if "disk default/vm1-root.qcow2 unchanged since the last pass" in m]
    log_passes = [m for m in incoming if "vm1-log changed since the last pass" in m]
    assert not root_copied and len(root_alone) >= 3, (root_copied, root_alone)
    assert not any("vm1-log unchanged" in m for m in incoming), incoming
    # Each later pass was announced before its snapshot, and the log
    # disk's copy took source connections opened meanwhile.
    ahead = [re.search(r"(\d+) source connections? opened ahead, (\d+) used", m)
             for m in incoming if "disk default/vm1-log: copy ended" in m]
    assert len(ahead) >= 4 and all(ahead[1:]), ahead
    assert sum(int(found.group(2)) for found in ahead[1:]) >= 1, ahead
    assert log_passes and all(re.search(r"MiB marked; [2-8] connections\)", m) for m in log_passes), log_passes

    log("hostb runs the VM from the copied disks; every durable record is there")
    last_durable = durable_seq(a.console("vm1"))
    assert last_durable > 50, f"the writer reported too little: {last_durable}"
    wait_for_ticks(b, "vm1", beyond=2)
    wait_for_console(b, "vm1", r"resume_seq=[0-9]+")
    resumed = int(re.findall(r"resume_seq=(\d+)", b.console("vm1"))[-1])
    assert resumed > last_durable, f"writer resumed at {resumed}, durable on hosta was {last_durable}"
    result = run([DISK_CHECK, "--expect-at-least", str(last_durable), os.path.join(b_pool, "vm1-log")],
                 check=False)
    assert result.returncode == 0, result.stdout
    for offset, length, pattern in EXTENTS:
        run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset}M {length}M",
             os.path.join(b_pool, "vm1-root.qcow2")])
    assert a.vms()["vm1"]["state"] == "shutoff", a.vms()
    image = json.loads(run(["qemu-img", "info", "-U", "--output=json", root_a]).stdout)
    bitmaps = image.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    assert not bitmaps, f"bitmaps stayed in hosta's image: {bitmaps}"
    b.cli("vm", "destroy", "vm1")

    log("a guest that ignores ACPI, cutover given at the start: frozen after the timeout (--force-stop)")
    wait_for_ticks(a, "vm2", beyond=2)
    at = int(time.time()) + 8
    a.cli("migrate", "vm2", b.url, "--warm", "--precopy-interval", "5s", "--force-stop",
          "--cutover", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at)))
    info = wait_job_done(a, "vm2", timeout=300)
    assert info["state"] == "completed", info
    messages = [e["message"] for e in job(a, "vm2", completed=True)["events"]]
    assert any("cutover scheduled at" in m for m in messages), messages
    assert any("it ignored the ACPI shutdown" in m for m in messages), messages
    wait_for_ticks(b, "vm2", beyond=2)
    assert run(["qemu-img", "compare", "-U", root2_a, os.path.join(b_pool, "vm2-root.qcow2")],
               check=False).returncode == 0, "vm2's disk differs"
    b.cli("vm", "destroy", "vm2")


if __name__ == "__main__":
    main(test)
