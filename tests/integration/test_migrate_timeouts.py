#!/usr/bin/env python3
"""Issue 3: the two watchdogs and the action at a timeout.

--progress-timeout: the destination's QEMU is stopped (SIGSTOP) while the
stream runs, so what is left stops shrinking; after the timeout ferry
aborts, the guest runs on at the source and the destination's QEMU is gone.
--timeout-action postcopy: a completion timeout far shorter than the copy
switches to post-copy instead of aborting, and the migration completes.
The guest keeps ticking through both, never rebooted."""

import os
import signal
import threading
import time

from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main,
                       wait_for_console, wait_for_ticks, wait_until)

# At 8 MiB/s the first pass of this guest's ~100 MiB takes about 12 s:
# time to stop the destination mid-pass, and far more than the 4 s
# completion limit below.
BANDWIDTH_MIB = "8"


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True)
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=256, dirty_mib=32, dirty_rate=4)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", r"dirtier mib=32 rate=4")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)

    log("progress timeout 3 s, the destination's QEMU stopped mid-stream: abort")
    outcome = {}
    cli = threading.Thread(target=lambda: outcome.update(result=a.cli(
        "migrate", "vm1", b.url, "--live", "--strategy", "manual", "--bandwidth", BANDWIDTH_MIB,
        "--progress-timeout", "3", check=False)))
    cli.start()
    try:
        wait_until("the stream to run",
                   lambda: job(a, "vm1")["state"] == "performing"
                   and job(a, "vm1").get("stats", {}).get("ram", {}).get("transferred", 0) > 4 * 2**20,
                   timeout=60)
        pids = b.qemu_pids()
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGSTOP)
        stopped_at = time.monotonic()
    finally:
        cli.join(timeout=120)
    assert not cli.is_alive(), "ferry migrate did not return"
    waited_s = time.monotonic() - stopped_at
    result = outcome["result"]
    log(f"after {waited_s:.1f} s: {result.stderr.strip()}")
    assert result.returncode != 0, result.stdout
    assert "progress timeout: remaining data has not shrunk for 3 s" in result.stderr, result.stderr
    assert "the guest stays on the source" in result.stderr, result.stderr
    # Not before the timeout: the stream stood still only once the
    # socket buffers between the two QEMUs had filled.
    assert waited_s >= 3, waited_s
    assert a.vms()["vm1"]["state"] == "running", a.vms()
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick + 1, boot_id=boot_id)
    # The rollback's DELETE killed the stopped QEMU (SIGKILL needs no CONT).
    wait_until("the destination's QEMU to go", lambda: not b.qemu_pids(), timeout=30)
    assert "vm1" not in b.vms(), b.vms()

    log("completion timeout 4 s with --timeout-action postcopy: switch, complete")
    result = a.cli("migrate", "vm1", b.url, "--live", "--postcopy", "--timeout-action", "postcopy",
                   "--completion-timeout-per-gib", "16", "--bandwidth", BANDWIDTH_MIB)
    log(result.stdout.strip())
    assert "migration completed" in result.stdout, result.stdout + result.stderr
    info = job(a, "vm1", completed=True)
    messages = [e["message"] for e in info["events"]]
    switch = [m for m in messages if m.startswith("switching to post-copy")]
    assert len(switch) == 1 and "completion timeout: 4 s" in switch[0], messages
    assert any("performing → postcopy" in m for m in messages), messages
    assert info["stats"]["ferry-qemu-capabilities"]["postcopy-ram"], info["stats"]
    wait_for_ticks(b, "vm1", beyond=tick, boot_id=boot_id)
    wait_until("the source's QEMU to go", lambda: not a.qemu_pids(), timeout=30)


if __name__ == "__main__":
    main(test)
