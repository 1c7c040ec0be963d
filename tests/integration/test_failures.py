#!/usr/bin/env python3
"""Failures mid-migration leave the guest running on the source and
nothing behind on the destination: abort, destination ferryd killed,
destination QEMU killed, link cut (abort and link cut also on multifd
channels, strategy auto's choice when it has room), and the source's own QEMU killed (the
guest then boots again on the source: it never ran anywhere else). The
job says failed (or cancelled) and why."""

import os
import signal

from ferrytest import (Cluster, assert_clean, ensure_guest, guest_spec, job, last_tick, log, main,
                       wait_for_console, wait_for_ticks, wait_job_done, wait_until)


# What strategy auto uses for a pre-copy with room to spare: channels
# that each carry their own TLS stream, compressed.
MULTIFD = ("--strategy", "manual", "--parallel-connections", "2", "--compress", "zstd")


def start_slow_migration(cluster, *options):
    """Starts a migration throttled so that it lasts long enough to break."""
    a, b = cluster.a, cluster.b
    a.cli("migrate", "vm1", b.url, "--live", "--bandwidth", "4", "--detach", *options)

    def streaming():
        info = job(a, "vm1")
        ram = info.get("stats", {}).get("ram", {})
        return info["state"] == "performing" and ram.get("transferred", 0) > 2 * 1024 * 1024
    wait_until("the migration to stream", streaming, timeout=120)
    assert "vm1" in b.vms(), "destination should hold the incoming VM while streaming"


def assert_guest_kept(cluster, tick, boot_id, expected_state, reason_fragment):
    a, b = cluster.a, cluster.b
    info = wait_job_done(a, "vm1", timeout=120)
    log(f"job ended: {info['state']}: {info.get('error')}")
    assert info["state"] == expected_state, info
    assert reason_fragment in (info.get("error") or ""), f"reason should mention '{reason_fragment}': {info}"
    assert a.vms()["vm1"]["state"] == "running", a.vms()
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick + 1, boot_id=boot_id)
    wait_until("the destination to be clean", lambda: assert_clean(b, "vm1") is None, timeout=60)
    return tick


def cut_link_mid_migration(cluster, tick, boot_id, options):
    """The link goes down while the stream runs: the job fails, the guest
    stays on the source, and the destination drops its incoming VM."""
    a, b = cluster.a, cluster.b
    log_mark = os.path.getsize(os.path.join(a.state_dir, "vms", "vm1", "qemu.log"))
    start_slow_migration(cluster, *options)
    cluster.link_down()
    try:
        info = wait_job_done(a, "vm1", timeout=120)
        log(f"job ended: {info['state']}: {info.get('error')}")
        assert info["state"] == "failed", info
        assert "unreachable" in info["error"], info
        assert a.vms()["vm1"]["state"] == "running"
        if options:
            # The channels' writes end with the job, link still down:
            # QEMU logs them failing. QEMU 7.2's cancel alone left
            # multifd channels blocked in their writes until the link came
            # back (their errors logged then, 1.4 s after the link was up);
            # ferry yanks the migration's connections.
            qemu_log = os.path.join(a.state_dir, "vms", "vm1", "qemu.log")

            def writes_failed():
                with open(qemu_log, errors="replace") as handle:
                    return "Cannot write to TLS channel" in handle.read()[log_mark:]
            wait_until("the multifd channels' writes to fail, link down", writes_failed, timeout=5)
        tick, _ = wait_for_ticks(a, "vm1", beyond=tick + 1, boot_id=boot_id)
        # B's lease on the incoming VM expires on its own, link or not.
        wait_until("B to drop the incoming VM", lambda: not b.qemu_pids(), timeout=60)
    finally:
        cluster.link_up()
    wait_until("the destination to be clean", lambda: assert_clean(b, "vm1") is None, timeout=60)
    b_job = job(b, "vm1")
    assert b_job["state"] == "failed" and "silent" in b_job["error"], b_job
    return tick


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True, keepalive_timeout_ms=3000)
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=256, dirty_mib=96, dirty_rate=10)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", r"dirtier mib=96")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)

    log("1. abort mid-migration")
    start_slow_migration(cluster)
    a.cli("job", "abort", "vm1")
    tick = assert_guest_kept(cluster, tick, boot_id, "cancelled", "aborted")

    log("1b. abort mid-migration on multifd channels")
    start_slow_migration(cluster, *MULTIFD)
    assert job(a, "vm1")["stats"]["ferry-qemu-capabilities"]["multifd"], job(a, "vm1")["stats"]
    a.cli("job", "abort", "vm1")
    tick = assert_guest_kept(cluster, tick, boot_id, "cancelled", "aborted")
    # The aborted streams' passes cleared QEMU's dirty bitmap: the next
    # set-up syncs only what the guest dirtied since, and the plan knows.
    plan = a.cli("migrate", "vm1", b.url, "--live", "--estimate", json_output=True)
    assert plan["measured"]["since_last_sync_s"] > 0, plan["measured"]

    log("2. destination ferryd killed mid-migration")
    start_slow_migration(cluster)
    b.stop_agent(kill=True)
    tick = assert_guest_kept_without_agent(cluster, tick, boot_id)

    log("3. destination QEMU dies mid-migration")
    start_slow_migration(cluster)
    for pid in b.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    tick = assert_guest_kept(cluster, tick, boot_id, "failed", "destination")

    log("4. link cut mid-migration")
    tick = cut_link_mid_migration(cluster, tick, boot_id, ())

    log("4b. link cut mid-migration on multifd channels")
    tick = cut_link_mid_migration(cluster, tick, boot_id, MULTIFD)

    log("5. the source's QEMU dies mid-migration: the guest ran only there, so it boots there again")
    start_slow_migration(cluster)
    for pid in a.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    info = wait_job_done(a, "vm1", timeout=120)
    log(f"job ended: {info['state']}: {info.get('error')}")
    assert info["state"] == "failed" and "source QEMU exited" in (info.get("error") or ""), info
    # Killed, this QEMU said nothing: the errors it logged when the link
    # was cut in step 4 are not why it exited now.
    assert "TLS channel" not in info["error"], info

    def booted_again():
        number, seen = last_tick(a.console("vm1"))
        return (number, seen) if seen not in (None, boot_id) and number >= 1 else None
    tick, boot_id = wait_until("vm1 to boot again on hosta", booted_again, timeout=180)
    assert a.vms()["vm1"]["state"] == "running", a.vms()
    events = [e["message"] for e in job(a, "vm1", completed=True)["events"]]
    assert any("starting it again here" in m for m in events), events
    assert any("started again on this host" in m for m in events), events
    wait_until("the destination to be clean", lambda: assert_clean(b, "vm1") is None, timeout=60)

    log("6. the source's agent and QEMU both die mid-migration: the restarted agent boots the guest again")
    start_slow_migration(cluster)
    a.stop_agent(kill=True)
    for pid in a.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until("hosta's QEMU to be gone", lambda: not a.qemu_pids(), timeout=30)
    a.start_agent()
    tick, boot_id = wait_until("vm1 to boot again on hosta", booted_again, timeout=180)
    assert a.vms()["vm1"]["state"] == "running", a.vms()
    info = job(a, "vm1", completed=True)
    assert info["state"] == "failed" and "source QEMU is gone" in (info.get("error") or ""), info
    events = [e["message"] for e in info["events"]]
    assert any("started again on this host" in m for m in events), events
    wait_until("the destination to be clean", lambda: assert_clean(b, "vm1") is None, timeout=60)

    log("7. after all that, a migration still works")
    result = a.cli("migrate", "vm1", b.url, "--live")
    assert "migration completed" in result.stdout, result.stdout
    # The guest's QEMU was started again in step 6: its dirty bitmap began
    # all dirty, and the plan counted every page for set-up.
    plan = job(a, "vm1", completed=True)["stats"]["ferry-plan"]
    assert plan["measured"]["since_last_sync_s"] == 0, plan["measured"]
    wait_for_ticks(b, "vm1", beyond=tick, boot_id=boot_id)


def assert_guest_kept_without_agent(cluster, tick, boot_id):
    a, b = cluster.a, cluster.b
    info = wait_job_done(a, "vm1", timeout=120)
    log(f"job ended: {info['state']}: {info.get('error')}")
    assert info["state"] == "failed", info
    assert "destination agent unreachable" in info["error"], info
    assert a.vms()["vm1"]["state"] == "running"
    tick, _ = wait_for_ticks(a, "vm1", beyond=tick + 1, boot_id=boot_id)
    # The destination QEMU loses its stream and exits; the restarted agent
    # finds the unfinished incoming job and removes the definition.
    wait_until("B's incoming QEMU to exit", lambda: not b.qemu_pids(), timeout=60)
    b.start_agent()
    wait_until("the destination to be clean", lambda: assert_clean(b, "vm1") is None, timeout=60)
    b_job = job(b, "vm1")
    assert b_job["state"] == "failed", b_job
    return tick


if __name__ == "__main__":
    main(test)
