#!/usr/bin/env python3
"""Issue 3: strategy auto finishes a guest that speeds up after ferry
measured it. Quiet while measured, the guest's pre-copy goes over multifd
channels, which QEMU cannot switch to post-copy. Once the migration runs
the guest dirties at its maximum, far beyond the bandwidth limit: ferry
cancels the multifd stream (the guest runs on at the source meanwhile) and
starts again as one stream with post-copy. The guest ends on the
destination, still ticking, not rebooted; no QEMU is left on the source and
one on the destination."""

import os
import re
import threading
import time

from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main,
                       wait_for_console, wait_for_ticks, wait_until)

# The guest dirties 1 MiB/s for RAMP_AFTER_S, then as fast as it can: long
# enough for ferry to measure it quiet (done about 5 s after the dirtier
# starts), short enough to fall inside the first pass (about 11 s at
# BANDWIDTH_MIB for the 180 MiB this guest touched, from about 5 s on).
RAMP_AFTER_S = 9
BANDWIDTH_MIB = 16
DIRTY_MIB = 64
# Room below the allowed downtime for the plan to start QEMU lower: it
# does so only when what a quiet second of the guest dirties fits in half
# the allowed stop or less, and page sampling measures that second
# anywhere from 30 to over 150 ms of this link.
MAX_DOWNTIME_MS = 1000


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True)
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=256, dirty_mib=DIRTY_MIB, dirty_rate=1,
                      extra_cmdline=f"ferry.dirty_ramp_after={RAMP_AFTER_S} ferry.dirty_ramp_rate=0")
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", rf"dirtier mib={DIRTY_MIB} rate=1")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)

    log(f"strategy auto under a {BANDWIDTH_MIB} MiB/s limit; the guest speeds up {RAMP_AFTER_S} s in")
    outcome = {}
    cli = threading.Thread(target=lambda: outcome.update(result=a.cli_on_terminal(
        "migrate", "vm1", b.url, "--live", "--bandwidth", str(BANDWIDTH_MIB), "--max-downtime", str(MAX_DOWNTIME_MS),
        "--completion-timeout-per-gib", "600")))
    cli.start()
    progress = []  # (restarted yet, percent, eta_s) from job info, while it runs
    try:
        # The premise: the guest sped up while the migration ran, after the plan.
        wait_for_console(a, "vm1", r"dirtier ramp rate=0", timeout=60)
        assert job(a, "vm1")["state"] not in ("completed", "failed", "cancelled"), \
            "the migration ended before the guest sped up: nothing to restart"
        deadline = time.monotonic() + 300
        while cli.is_alive() and time.monotonic() < deadline:
            info = job(a, "vm1")
            if info.get("active") and "progress" in info:
                restarted = "ferry-restart" in info.get("stats", {})
                progress.append((restarted, info["progress"]["percent"], info["progress"].get("eta_s")))
            time.sleep(0.3)
    finally:
        cli.join(timeout=300)
    assert not cli.is_alive(), "ferry migrate did not return"
    result = outcome["result"]
    log(result.stdout.strip())
    info = job(a, "vm1", completed=True)
    messages = [e["message"] for e in info["events"]]
    assert info["state"] == "completed" and result.returncode == 0, (result.stderr[-2000:], messages)
    # The command says the numbers are the second stream's; job info too.
    assert "started again as one stream with post-copy" in result.stdout, result.stdout
    human = a.cli("job", "info", "vm1", "--completed").stdout
    assert re.search(r"Restarted: +after [0-9.]+ s of multifd .* starting again as one stream", human), human

    # Progress never went back, though the stream started over: in job
    # info, sampled through the restart...
    log(f"job info progress: {len(progress)} samples, {progress[0][1]:.0f} → {progress[-1][1]:.0f} %")
    assert any(not restarted for restarted, _, _ in progress), "no sample of the first stream"
    assert any(restarted for restarted, _, _ in progress), "no sample of the second stream"
    percents = [percent for _, percent, _ in progress]
    assert all(later >= earlier for earlier, later in zip(percents, percents[1:])), progress
    assert any(eta is not None and eta >= 0 for _, _, eta in progress), progress
    # ...and in the progress bar the command drew on the terminal.
    frames = re.findall(r"\r(\S+)\s+\[[#-]{30}\]\s+(\d+)%[^\r]*?ETA\s+(\S+)", result.stderr)
    log(f"progress bar: {len(frames)} frames, {frames[0]} … {frames[-1]}")
    bar = [int(percent) for _, percent, _ in frames]
    assert len(frames) >= 10 and bar[-1] == 100, frames[-5:]
    assert all(later >= earlier for earlier, later in zip(bar, bar[1:])), frames
    assert any(eta.rstrip("s").isdigit() for _, _, eta in frames), frames

    plan = info["stats"]["ferry-plan"]
    log(f"plan: {plan['strategy']}: {plan['reason']}")
    assert plan["measured"]["cpus"] >= 2, "multifd needs two CPUs: this host cannot run the test"
    assert plan["measured"]["dirty_mib_s"] < BANDWIDTH_MIB / 2, plan["measured"]
    assert plan["options"]["parallel_connections"] >= 2 and not plan["options"]["postcopy"], plan["options"]

    restart = info["stats"].get("ferry-restart")
    log(f"restart: {restart}")
    assert restart is not None, messages
    assert restart["passes"] >= 3 and "pre-copy is not converging" in restart["reason"], restart
    # The stalled passes left about a quarter of what the guest touched:
    # a first pass still pays before the switch.
    assert restart["switch_at_pass"] == 2, restart
    assert any(m.startswith("cancelling the multifd stream") for m in messages), messages
    # The plan started QEMU below the allowed downtime (the quiet guest's
    # pre-copy converged in few passes at any limit); the first stalled
    # pass raised it to the allowed one before the next one started over.
    assert 0 < plan["options"]["downtime_start_ms"] < MAX_DOWNTIME_MS, (plan["options"], plan["measured"])
    raised = [i for i, m in enumerate(messages) if "downtime limit raised" in m
              and m.endswith(f"to {MAX_DOWNTIME_MS} ms ({MAX_DOWNTIME_MS} allowed)")]
    cancelled = next(i for i, m in enumerate(messages) if m.startswith("cancelling the multifd stream"))
    assert raised and raised[0] < cancelled, messages
    assert any("performing → preparing" in m for m in messages), messages
    # QEMU got multifd first, then one stream with post-copy.
    capabilities = [m for m in messages if m.startswith("QEMU capabilities on:")]
    assert len(capabilities) == 2, capabilities
    assert "multifd" in capabilities[0] and "postcopy-ram" not in capabilities[0], capabilities
    assert "postcopy-ram" in capabilities[1] and "multifd" not in capabilities[1], capabilities
    final = info["stats"]["ferry-qemu-capabilities"]
    assert final["postcopy-ram"] and not final["multifd"] and not final["auto-converge"], final
    assert any(m.startswith("switching to post-copy: the first pass is done") for m in messages), messages
    assert info["stats"]["status"] == "completed", info["stats"]

    # The guest: on B, ticking on from where it was, same boot.
    wait_for_ticks(b, "vm1", beyond=tick, boot_id=boot_id)
    assert a.vms()["vm1"]["state"] == "shutoff", "the source keeps only its inactive definition"
    wait_until("the source's QEMU to go", lambda: not a.qemu_pids(), timeout=30)
    assert len(b.qemu_pids()) == 1, b.qemu_pids()


if __name__ == "__main__":
    main(test)
