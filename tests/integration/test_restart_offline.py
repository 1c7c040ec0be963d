#!/usr/bin/env python3
"""ferryd restarted while a VM runs reattaches to it; offline migration
with --persistent --undefine-source moves the definition."""

import os
import signal

from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main, wait_for_ticks,
                       wait_until)


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster()
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)
    pid = a.vms()["vm1"]["pid"]

    log("restart ferryd (SIGKILL, as a crash) while the VM runs")
    a.stop_agent(kill=True)
    a.start_agent()
    vm = a.vms()["vm1"]
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick, boot_id=boot_id)
    # The reattached monitor works: a clean shutdown goes through it.
    a.cli("vm", "shutdown", "vm1", "--wait", "--timeout", "5")
    assert a.vms()["vm1"]["state"] == "shutoff"

    log("QEMU dies under the agent: the agent notices")
    a.cli("vm", "start", "vm1")
    pid = a.vms()["vm1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until("the agent to see QEMU gone", lambda: a.vms()["vm1"]["state"] == "shutoff", timeout=30)
    assert "pid" not in a.vms()["vm1"]

    log("offline migration with --persistent --undefine-source")
    refused = a.cli("migrate", "vm1", b.url, "--offline", check=False)
    assert refused.returncode != 0 and "persistent" in refused.stderr, refused.stderr
    result = a.cli("migrate", "vm1", b.url, "--offline", "--persistent", "--undefine-source")
    log(result.stdout.strip())
    assert "vm1" not in a.vms(), "source definition should be gone"
    vm = b.vms()["vm1"]
    assert vm["state"] == "shutoff" and vm["persistent"], vm
    assert job(a, "vm1")["state"] == "completed"
    b.cli("vm", "start", "vm1")
    wait_for_ticks(b, "vm1", beyond=0)
    # It stays defined after it stops (persistent).
    b.cli("vm", "destroy", "vm1")
    wait_until("vm1 to stop on B", lambda: b.vms()["vm1"]["state"] == "shutoff", timeout=60)


if __name__ == "__main__":
    main(test)
