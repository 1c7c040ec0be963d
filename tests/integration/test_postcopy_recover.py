#!/usr/bin/env python3
"""Post-copy survives a broken link: the link is cut while the guest runs
on the destination with part of its memory still on the source; the guest
pauses there (never resumed on the source), and once the link is back
`ferry migrate NAME --recover` (or ferry's own retry) finishes the move.
The guest continues with the same boot id: a pause, no reboot, no memory
lost (a lost page would crash the guest kernel, as it did before the TCG
workaround). The source agent is restarted while the link is down: the
restarted agent takes the post-copy job up again and recovers it. On the
way back the link is cut and restored again, and nobody asks: ferry's
own retry with backoff resumes the stream."""

import os

from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main, wait_for_console,
                       wait_for_ticks, wait_until)


def events(host, vm):
    return [event["message"] for event in job(host, vm).get("events", [])]


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True, keepalive_timeout_ms=3000)
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=1024, dirty_mib=256, dirty_rate=20)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", r"dirtier mib=256 rate=20")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)

    # Slow enough that post-copy lasts a while after the switch.
    a.cli("migrate", "vm1", b.url, "--live", "--postcopy", "--postcopy-after", "1",
          "--bandwidth", "12", "--detach")
    wait_until("the switch to post-copy", lambda: job(a, "vm1")["state"] == "postcopy", timeout=120)
    wait_until("the guest to run on B", lambda: b.vms()["vm1"]["state"] == "running", timeout=60)
    log("post-copy running; cutting the link")
    cluster.link_down()
    try:
        wait_until("ferry to pause the stuck stream",
                   lambda: any("pausing the stream" in m or "post-copy paused" in m for m in events(a, "vm1")),
                   timeout=60)
        state = job(a, "vm1")["state"]
        assert state == "postcopy", f"the job must wait for recovery, not end: {state}"
        assert a.vms()["vm1"]["state"] != "running", "the source must never resume the guest"
        log("restarting the source agent while the link is down")
        a.stop_agent()
        a.start_agent()
        info = job(a, "vm1")
        assert info.get("active") and info["state"] == "postcopy", f"the restarted agent must carry on: {info}"
        assert a.vms()["vm1"]["state"] != "running", "the source must never resume the guest"
    finally:
        cluster.link_up()
    log("link restored; recovering")
    result = a.cli("migrate", "vm1", "--recover", check=False, timeout=300)
    log(result.stdout.strip() + result.stderr.strip())
    info = job(a, "vm1")
    if info.get("active"):
        wait_until("the recovered migration to end", lambda: not job(a, "vm1").get("active"), timeout=300)
        info = job(a, "vm1")
    assert info["state"] == "completed", info
    messages = [event["message"] for event in info["events"]]
    assert any("post-copy resumed" in m for m in messages), messages
    tick, _ = wait_for_ticks(b, "vm1", beyond=tick, boot_id=boot_id)
    log(f"guest continues on B: tick {tick}, same boot")
    assert b.console("vm1").count("ferry-guest boot_id=") == 0, "the guest rebooted on B"
    assert a.vms()["vm1"]["state"] == "shutoff"

    log("B → A, the link cut in post-copy and restored, no --recover: ferry's own retry resumes it")
    b.cli("migrate", "vm1", a.url, "--live", "--postcopy", "--postcopy-after", "1",
          "--bandwidth", "12", "--detach")
    wait_until("the switch to post-copy", lambda: job(b, "vm1")["state"] == "postcopy", timeout=120)
    wait_until("the guest to run on A", lambda: a.vms()["vm1"]["state"] == "running", timeout=60)
    cluster.link_down()
    try:
        wait_until("ferry to pause the stuck stream",
                   lambda: any("pausing the stream" in m or "post-copy paused" in m for m in events(b, "vm1")),
                   timeout=60)
        assert job(b, "vm1")["state"] == "postcopy", job(b, "vm1")
    finally:
        cluster.link_up()
    wait_until("ferry's retry to finish the move", lambda: not job(b, "vm1").get("active"), timeout=300)
    info = job(b, "vm1")
    messages = [event["message"] for event in info["events"]]
    assert info["state"] == "completed", (info.get("error"), messages)
    assert any("post-copy resumed" in m for m in messages), messages
    assert not any("recovery requested by the user" in m for m in messages), messages
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick, boot_id=boot_id)
    log(f"guest continues on A: tick {tick}, same boot")


if __name__ == "__main__":
    main(test)
