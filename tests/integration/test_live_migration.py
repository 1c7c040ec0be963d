#!/usr/bin/env python3
"""Live migration A→B→A while the guest dirties memory: the guest keeps
running (tick counter continues, same boot id) and B is clean afterwards."""

import os
import re

from ferrytest import (Cluster, assert_clean, ensure_guest, guest_spec, job, log, main,
                       wait_for_console, wait_for_ticks)


def assert_downtime_limits(host, stats, allowed_ms):
    """QEMU's downtime limit is the one ferry set: the plan's start or a
    raise of it, never over what the user allowed; job info says so."""
    start = stats["ferry-plan"]["options"]["downtime_start_ms"] or allowed_ms
    now = stats["ferry-downtime-limit-now-ms"]
    log(f"downtime limit: allowed {allowed_ms} ms, started at {start}, QEMU ended with {now}")
    assert stats["downtime-limit-ms"] == allowed_ms, stats
    assert stats["ferry-qemu-parameters"]["downtime-limit"] == now, stats["ferry-qemu-parameters"]
    assert start <= now <= allowed_ms, (start, now)
    human = host.cli("job", "info", "vm1", "--completed").stdout
    expected = f"{now} ms ({allowed_ms} allowed)" if now < allowed_ms else f"{allowed_ms} ms"
    assert re.search(r"Downtime limit: +" + re.escape(expected) + "\n", human), human


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster()
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=512, dirty_mib=64, dirty_rate=20)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", r"dirtier mib=64")
    before, boot_id = wait_for_ticks(a, "vm1", beyond=2)
    log(f"guest ticking on A: tick {before}, boot {boot_id}")

    result = a.cli("migrate", "vm1", b.url, "--live")
    log(result.stdout.strip())
    assert "migration completed" in result.stdout, result.stdout
    assert a.vms()["vm1"]["state"] == "shutoff", "source copy should be stopped"
    assert b.vms()["vm1"]["state"] == "running", "destination should run the guest"
    info = job(a, "vm1", completed=True)
    assert info["state"] == "completed"
    stats = info["stats"]
    assert stats["ram"]["transferred"] > 64 * 1024 * 1024, "the dirtied memory was sent"
    # Defaults: no 128 MiB/s cap, 300 ms downtime allowed; strategy auto's
    # plan may start QEMU lower (and raise it): QEMU has what ferry says.
    assert stats["ferry-qemu-parameters"]["max-bandwidth"] >= 2**40, stats["ferry-qemu-parameters"]
    assert_downtime_limits(a, stats, 300)
    assert stats["ferry-guest-downtime-ms"] >= stats["downtime"], stats
    # The destination's QEMU runs with PATH and the C locale only, not
    # with what its agent inherited (meson's MALLOC_PERTURB_, for one).
    for pid in b.qemu_pids():
        with open(f"/proc/{pid}/environ", "rb") as handle:
            names = sorted(entry.split(b"=", 1)[0].decode() for entry in handle.read().split(b"\0") if entry)
        assert names == ["LC_ALL", "PATH"], names
    assert stats["downtime"] >= 0 and stats["total-time"] > 0
    # The guest continues on B where it stopped on A: same boot, higher ticks.
    on_b, _ = wait_for_ticks(b, "vm1", beyond=before, boot_id=boot_id)
    log(f"guest ticking on B: tick {on_b}")

    # The way back with explicit limits: QEMU must report exactly them
    # (not its 128 MiB/s default), and TLS must be on.
    result = b.cli("migrate", "vm1", a.url, "--live", "--bandwidth", "300", "--max-downtime", "500")
    log(result.stdout.strip())
    assert "migration completed" in result.stdout, result.stdout
    stats = job(b, "vm1", completed=True)["stats"]
    parameters = stats["ferry-qemu-parameters"]
    assert parameters["max-bandwidth"] == 300 * 1024 * 1024, parameters
    assert_downtime_limits(b, stats, 500)
    assert parameters["tls-creds"] and parameters["tls-hostname"] == "hosta", parameters
    assert a.vms()["vm1"]["state"] == "running"
    back, _ = wait_for_ticks(a, "vm1", beyond=on_b, boot_id=boot_id)
    log(f"guest ticking on A again: tick {back}")
    # B held a transient copy: once the guest left, nothing of it remains.
    assert_clean(b, "vm1")
    # Both hops are in the console logs without a second boot line.
    assert a.console("vm1").count("ferry-guest boot_id=") == 1, "guest booted twice"


if __name__ == "__main__":
    main(test)
