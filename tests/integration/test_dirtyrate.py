#!/usr/bin/env python3
"""ferry dirtyrate measures what the guest really dirties (QEMU page
sampling), keeps the last measurement in vm info, and refuses bad input."""

import os

from ferrytest import Cluster, ensure_guest, guest_spec, log, main, wait_for_console, wait_for_ticks


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster()
    a = cluster.a
    busy = guest_spec(os.path.join(cluster.workdir, "busy.json"), "busy", kernel, initrd,
                      memory_mib=512, dirty_mib=192, dirty_rate=40)
    idle = guest_spec(os.path.join(cluster.workdir, "idle.json"), "idle", kernel, initrd,
                      memory_mib=256)
    a.cli("vm", "define", busy)
    a.cli("vm", "define", idle)

    refused = a.cli("dirtyrate", "busy", check=False)
    assert refused.returncode != 0 and "shutoff" in refused.stderr, refused.stderr
    refused = a.cli("dirtyrate", "busy", "--period", "0", check=False)
    assert refused.returncode == 2 and "--period" in refused.stderr, refused.stderr

    a.cli("vm", "start", "busy")
    a.cli("vm", "start", "idle")
    wait_for_console(a, "busy", r"dirtier mib=192 rate=40")
    wait_for_ticks(a, "idle", beyond=2)

    busy_rate = a.cli("dirtyrate", "busy", "--period", "2", json_output=True)
    idle_rate = a.cli("dirtyrate", "idle", "--period", "2", json_output=True)
    log(f"busy guest: {busy_rate['dirty_rate_mib_s']} MiB/s (dirtier set to 40), "
        f"idle guest: {idle_rate['dirty_rate_mib_s']} MiB/s")
    # Sampling is statistical: accept a generous band around the truth.
    assert 20 <= busy_rate["dirty_rate_mib_s"] <= 80, busy_rate
    assert idle_rate["dirty_rate_mib_s"] < 10, idle_rate
    assert busy_rate["period_s"] == 2 and busy_rate["mode"] == "page-sampling"

    info = a.cli("vm", "info", "busy", json_output=True)
    assert info["dirty_rate"]["dirty_rate_mib_s"] == busy_rate["dirty_rate_mib_s"], info
    human = a.cli("vm", "info", "busy").stdout
    assert "Dirty rate:" in human, human


if __name__ == "__main__":
    main(test)
