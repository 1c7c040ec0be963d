#!/usr/bin/env python3
"""Live-migration benchmark (issue 3): QEMU's defaults as `virsh migrate
--live` leaves them against ferry's `--strategy auto`, on the same two hosts
(network namespaces joined by veth, ferryd on each, TLS) and the same guest
(1 GiB RAM, 1 vCPU, TCG), for three guest loads and two links.

    python3 bench/live/run.py            # everything; writes bench/results/live.{json,md}
    python3 bench/live/run.py --scenarios idle --links unshaped --out-dir /tmp/x

See bench/live/README.md for the method and what each number means.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
sys.path.insert(0, os.path.join(ROOT, "tests/integration"))
os.environ.setdefault("FERRY_BUILD_DIR", os.path.join(ROOT, "build"))
os.environ.setdefault("FERRY_SOURCE_DIR", ROOT)
os.environ.setdefault("FERRY_GUEST_DIR", os.path.join(os.environ["FERRY_BUILD_DIR"], "guest-image"))

from ferrytest import (FERRY, FERRYD, Cluster, StealMeter, _cleanup_all, ensure_guest, guest_spec,  # noqa: E402
                       job, last_tick, log, wait_for_console, wait_for_ticks, wait_until)

MIB = 1024 * 1024
# ferry's link probe (strategy.c PROBE_BYTES), sent by every ferry-auto run.
PROBE_BYTES = 32 * MIB
# The fixed part of QEMU's set-up in ferry's model (strategy.c SETUP_S).
MODEL_SETUP_S = 0.1
GUEST_MEMORY_MIB = 1024
DOWNTIME_LIMIT_MS = 300
CAP_S = 120

SCENARIOS = {
    # name: (dirty_mib, dirty_rate MiB/s; 0 = as fast as possible), label
    "idle": (0, 0, "idle (no dirtier)"),
    "dirty50": (256, 50, "dirtying 50 MB/s (256 MiB buffer)"),
    "dirtymax": (256, 0, "dirtying at the maximum (256 MiB buffer)"),
}
LINKS = {
    "unshaped": "veth, unshaped",
    "1gbit": "veth, tc tbf 1 Gbit/s both ends",
}
TOOLS = {
    # QEMU's defaults as `virsh migrate --live` leaves them: pre-copy only,
    # 300 ms downtime limit, no multifd, unlimited bandwidth (libvirt sets
    # it; ferry's manual mode does too). The two timeouts stand in for the
    # 120 s cap: 120 s per GiB of a 1 GiB guest; at the cap the migration is
    # aborted and the guest stays on the source ("did not finish").
    "qemu-defaults": ["--strategy", "manual", "--max-downtime", str(DOWNTIME_LIMIT_MS),
                      "--completion-timeout-per-gib", str(CAP_S), "--progress-timeout", str(CAP_S)],
    # ferry: --strategy auto is the default.
    "ferry-auto": [],
    # Not in the default run: the defaults with QEMU's postcopy-ram
    # capability on (ferry-auto's fallback) but never used, to measure what
    # the capability alone costs (`--tools qemu-defaults,defaults-postcopy-ram`).
    "defaults-postcopy-ram": ["--strategy", "manual", "--max-downtime", str(DOWNTIME_LIMIT_MS),
                              "--completion-timeout-per-gib", str(CAP_S), "--progress-timeout", str(CAP_S),
                              "--postcopy"],
    # Not in the default run: ferry-auto without the --estimate call before
    # it, to see what that call costs the migration that follows.
    "ferry-auto-no-estimate": [],
    # ... and with only part of what --estimate does before it: a dirty-rate
    # measurement (`ferry dirtyrate`, QEMU's calc-dirty-rate), or nothing
    # but as long a wait (the guest keeps running as it would meanwhile).
    "ferry-auto-after-dirtyrate": [],
    "ferry-auto-after-wait": [],
    # Not in the default run: QEMU's auto-converge (KubeVirt's
    # allowAutoConverge) on the defaults, QEMU's throttle steps.
    "defaults-auto-converge": ["--strategy", "manual", "--max-downtime", str(DOWNTIME_LIMIT_MS),
                               "--completion-timeout-per-gib", str(CAP_S), "--progress-timeout", str(CAP_S),
                               "--auto-converge"],
    # Not in the default run: the defaults with two multifd channels (two
    # TLS streams), and with zstd compression on them.
    "defaults-multifd2": ["--strategy", "manual", "--max-downtime", str(DOWNTIME_LIMIT_MS),
                          "--completion-timeout-per-gib", str(CAP_S), "--progress-timeout", str(CAP_S),
                          "--parallel-connections", "2"],
    "defaults-multifd2-zstd": ["--strategy", "manual", "--max-downtime", str(DOWNTIME_LIMIT_MS),
                               "--completion-timeout-per-gib", str(CAP_S), "--progress-timeout", str(CAP_S),
                               "--parallel-connections", "2", "--compress", "zstd"],
}
ESTIMATE_LIKE_WAIT_S = 3.5
# Every migration starts this long after the guest's previous one ended
# (or its boot was seen), whatever the tool does first (ferry-auto's
# --estimate runs inside it). Under TCG QEMU's set-up grows with the time
# a dirtying guest has run since it arrived: measured on dirty50, set-up
# was 0.5-0.7 s right away and 3.9-4.2 s after 3.5 s, so without a common
# start the tool that starts first is favoured.
SETTLE_S = 8.0
DEFAULT_TOOLS = ["qemu-defaults", "ferry-auto"]
# Hard stop for one migration command (the tools' own limits come first).
RUN_HARD_LIMIT_S = 300

TARGET_RATE_FACTOR = 1.5
TARGET_DOWNTIME_FACTOR = 1.2
TARGET_PREDICTION_ERROR = 0.25


# ---- hosts and guest ------------------------------------------------------------

def set_link(cluster, link):
    """Applies the link's shaping on both veth ends (or removes it)."""
    if link == "1gbit":
        cluster.shape("1gbit")
    else:
        unshape(cluster)


def unshape(cluster):
    for host in (cluster.a, cluster.b):
        host.run_in("tc", "qdisc", "del", "dev", host.veth, "root", check=False)


def qdisc(host):
    return host.run_in("tc", "qdisc", "show", "dev", host.veth, check=False).stdout.strip()


def where_is(cluster, vm):
    """The host on which the guest runs (None if on neither)."""
    for host in (cluster.a, cluster.b):
        state = host.vms().get(vm, {}).get("state")
        if state == "running":
            return host
    return None


def remove_guest(cluster, vm):
    for host in (cluster.a, cluster.b):
        vms = host.vms()
        if vm in vms and vms[vm].get("state") != "shutoff":
            host.cli("vm", "destroy", vm, check=False)
    for host in (cluster.a, cluster.b):
        if vm in host.vms():
            host.cli("vm", "undefine", vm, check=False)
    wait_until(f"{vm}'s QEMUs to go",
               lambda: not cluster.a.qemu_pids() and not cluster.b.qemu_pids(), timeout=60)


def boot_guest(cluster, kernel, initrd, scenario):
    dirty_mib, dirty_rate, _ = SCENARIOS[scenario]
    vm = scenario
    spec = guest_spec(os.path.join(cluster.workdir, f"{vm}.json"), vm, kernel, initrd,
                      memory_mib=GUEST_MEMORY_MIB, dirty_mib=dirty_mib, dirty_rate=dirty_rate)
    a = cluster.a
    a.cli("vm", "define", spec)
    a.cli("vm", "start", vm)
    if dirty_mib:
        wait_for_console(a, vm, rf"dirtier mib={dirty_mib} rate={dirty_rate}")
    tick, boot_id = wait_for_ticks(a, vm, beyond=2)
    log(f"guest {vm} running on {a.name}: tick {tick}, boot {boot_id}")
    return vm, tick, boot_id


# ---- one migration ----------------------------------------------------------------

class TickStallMeter:
    """The longest time the guest's tick counter (printed once a second,
    on whichever host runs it) stood still during a migration: what the
    guest's users see, whatever QEMU calls downtime. Reads the tail of
    both hosts' console logs every 0.1 s in a thread."""

    def __init__(self, cluster, vm):
        self.paths = [cluster.a.console_path(vm), cluster.b.console_path(vm)]
        self.stop = threading.Event()
        self.longest_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tick(self):
        best = 0
        for path in self.paths:
            try:
                with open(path, "rb") as handle:
                    handle.seek(max(0, os.path.getsize(path) - 4096))
                    best = max(best, last_tick(handle.read().decode("utf-8", "replace"))[0])
            except OSError:
                continue
        return best

    def _run(self):
        last, since = self._tick(), time.monotonic()
        while not self.stop.wait(0.1):
            tick, now = self._tick(), time.monotonic()
            if tick != last:
                last, since = tick, now
            self.longest_s = max(self.longest_s, now - since)

    def finish(self):
        """The longest stall in seconds, less the 1 s between two ticks."""
        self.stop.set()
        self.thread.join()
        return round(max(0.0, self.longest_s - 1.0), 1)


def cpu_bound_compression(record):
    """Did the plan count on the cores' compression speed rather than on
    the link times the ratio (strategy.c ferry_compressed_speedup)?"""
    measured = (record.get("estimate") or {}).get("measured", {})
    speed = measured.get("compress_mib_s") or 0
    channels = record.get("multifd_channels") or 1
    link = measured.get("link_mib_s") or 0
    cores = min(max(measured.get("free_cores") or 1, 1), channels)
    return speed > 0 and speed * cores < link * min(max(measured.get("compress_ratio") or 1, 1), 3)


def number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_migration(cluster, tool, source, destination, vm, scenario, link, tick, boot_id, settled_at):
    """One migration, started SETTLE_S after settled_at (monotonic); returns
    (record, where the guest is, its last tick, its boot id, when it ended)."""
    record = {
        "tool": tool, "scenario": scenario, "link": link,
        "source": source.name, "destination": destination.name,
        "command": None, "finished": False,
        "load_avg_before": round(os.getloadavg()[0], 2),
    }
    steal = StealMeter()

    if tool == "ferry-auto":
        estimate = source.cli("migrate", vm, destination.url, "--live", "--estimate", json_output=True)
        record["estimate"] = estimate
        record["predicted_total_s"] = number(estimate.get("prediction", {}).get("total_s"))
        record["estimate_strategy"] = estimate.get("strategy")
        log(f"  --estimate: {estimate.get('strategy')}, predicted total "
            f"{record['predicted_total_s']} s; {estimate.get('reason')}")

    if tool == "ferry-auto-after-dirtyrate":
        source.cli("dirtyrate", vm, "--period", "2")
    elif tool == "ferry-auto-after-wait":
        time.sleep(ESTIMATE_LIKE_WAIT_S)  # the variable under test, not a wait for an event

    # The variable under test is held equal, not an event waited for.
    time.sleep(max(0.0, settled_at + SETTLE_S - time.monotonic()))
    record["since_previous_s"] = round(time.monotonic() - settled_at, 1)

    args = ["migrate", vm, destination.url, "--live"] + TOOLS[tool]
    record["command"] = "ferry " + " ".join(["migrate", vm, "DEST", "--live"] + TOOLS[tool])
    argv = source.prefix() + [FERRY, "-c", source.url, "--tls-dir", cluster.client_tls] + args
    started = time.monotonic()
    stall = TickStallMeter(cluster, vm)
    tx_before = source.tx_bytes() if source.veth else None
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Poll the job meanwhile: the last snapshot with RAM counters is what an
    # aborted migration had sent (QEMU drops them once cancelled).
    last_ram_stats = None
    aborted_by_bench = False
    # Once a second: where QEMU was (its pass, what was left, its throttle),
    # to read a run's course afterwards.
    timeline = []
    while process.poll() is None:
        time.sleep(1.0)
        try:
            info = job(source, vm)
            if info.get("active") and isinstance(info.get("stats", {}).get("ram"), dict):
                last_ram_stats = info["stats"]
                ram = last_ram_stats["ram"]
                timeline.append({
                    "t_s": round(time.monotonic() - started, 1),
                    "status": last_ram_stats.get("status"),
                    "pass": ram.get("dirty-sync-count"),
                    "remaining_mib": round(ram.get("remaining", 0) / MIB, 1),
                    "sent_mib": round(ram.get("transferred", 0) / MIB, 1),
                    "throttle_pct": last_ram_stats.get("cpu-throttle-percentage", 0),
                })
        except Exception:  # noqa: BLE001 - the job may be between states
            pass
        if not aborted_by_bench and time.monotonic() - started > RUN_HARD_LIMIT_S:
            log(f"  {RUN_HARD_LIMIT_S} s passed: aborting")
            source.cli("job", "abort", vm, check=False)
            aborted_by_bench = True
    stdout, stderr = process.communicate()
    ended = time.monotonic()
    record["guest_tick_stall_s"] = stall.finish()
    wall_s = ended - started
    record["wall_s"] = round(wall_s, 2)
    record["cpu_steal_pct"] = steal.percent()
    record["exit_status"] = process.returncode
    record["cli_output"] = (stdout.strip() + "\n" + stderr.strip()).strip()
    record["timeline"] = timeline

    info = job(source, vm, completed=True)
    stats = info.get("stats", {})
    finished = process.returncode == 0 and "migration completed" in stdout and info.get("state") == "completed"
    record["finished"] = finished
    record["job_state"] = info.get("state")
    record["error"] = info.get("error")
    record["job_elapsed_ms"] = info.get("elapsed_ms")

    ram_stats = stats if isinstance(stats.get("ram"), dict) else (last_ram_stats or {})
    ram = ram_stats.get("ram", {})
    plan = stats.get("ferry-plan") or (last_ram_stats or {}).get("ferry-plan") or {}
    measured = plan.get("measured", {})
    record["qemu_status"] = stats.get("status")
    record["qemu_total_ms"] = number(stats.get("total-time")) if finished else None
    record["qemu_last_total_ms"] = number(ram_stats.get("total-time"))
    record["downtime_ms"] = number(stats.get("downtime")) if finished else None
    record["guest_paused_ms"] = number(stats.get("ferry-guest-downtime-ms")) if finished else None
    record["setup_ms"] = number(ram_stats.get("setup-time"))
    record["bytes"] = number(ram.get("transferred"))
    record["passes"] = number(ram.get("dirty-sync-count"))
    record["postcopy_requests"] = number(ram.get("postcopy-requests"))
    record["link_mib_s"] = number(measured.get("link_mib_s"))
    record["dirty_mib_s_measured"] = number(measured.get("dirty_mib_s"))
    record["dirty_1s_mib_s_measured"] = number(measured.get("dirty_1s_mib_s"))
    record["resident_mib"] = round(measured["resident_bytes"] / MIB, 1) if "resident_bytes" in measured else None
    record["strategy"] = plan.get("strategy")
    record["multifd_channels"] = (stats.get("ferry-qemu-parameters") or {}).get("multifd-channels") \
        if (stats.get("ferry-qemu-capabilities") or {}).get("multifd") else None
    record["multifd_compression"] = (stats.get("ferry-qemu-parameters") or {}).get("multifd-compression") \
        if record["multifd_channels"] else None
    # QEMU 7.2 counts multifd pages before compression, in multifd-bytes
    # too: what crossed is read off the source's veth (its counters take in
    # ferry's 32 MiB link probe, TLS and TCP; left out is the probe).
    if tx_before is not None:
        on_wire = source.tx_bytes() - tx_before - (PROBE_BYTES if plan.get("measured") else 0)
        record["wire_mib"] = round(on_wire / MIB, 1)
        record["compress_ratio_wire"] = round(ram["transferred"] / on_wire, 2) \
            if record["multifd_compression"] not in (None, "none") and ram.get("transferred") and on_wire > 0 else None
    record["compress_ratio_sampled"] = number(measured.get("compress_ratio"))
    record["compress_mib_s_sampled"] = number(measured.get("compress_mib_s"))
    record["plan_reason"] = plan.get("reason")
    record["plan_predicted_total_s"] = number(plan.get("prediction", {}).get("total_s"))
    revised = stats.get("ferry-revised") or (last_ram_stats or {}).get("ferry-revised") or {}
    record["revised_total_s"] = number(revised.get("prediction", {}).get("total_s"))
    record["revised_downtime_ms"] = number(revised.get("prediction", {}).get("downtime_ms"))
    record["revised_sync_us_per_page"] = number(revised.get("sync_us_per_page"))
    record["postcopy_after_s"] = number(plan.get("options", {}).get("postcopy_after_s")) \
        if plan.get("options", {}).get("postcopy") else None
    record["qemu_capabilities"] = stats.get("ferry-qemu-capabilities")
    record["qemu_parameters"] = stats.get("ferry-qemu-parameters")
    record["events"] = [f"{event.get('level')}: {event.get('message')}" for event in info.get("events", [])]
    record["switched_to_postcopy"] = any("→ postcopy" in e for e in record["events"])
    derive(record)

    # Where is the guest now, and does it still run the same boot?
    now_on = where_is(cluster, vm)
    record["guest_on"] = now_on.name if now_on else None
    try:
        if now_on is None:
            raise AssertionError(f"{vm} runs on neither host")
        if finished and now_on is not destination:
            raise AssertionError(f"migration completed but {vm} runs on {now_on.name}")
        if not finished:
            # The destination's incoming QEMU must go before the next run.
            other = destination if now_on is source else source
            wait_until(f"{other.name}'s incoming QEMU to go", lambda: not other.qemu_pids(), timeout=60)
        tick, _ = wait_for_ticks(now_on, vm, beyond=tick, boot_id=boot_id, timeout=90)
        record["guest_ok"] = True
        record["guest_tick_after"] = tick
    except AssertionError as error:
        record["guest_ok"] = False
        record["guest_error"] = str(error)
        log(f"  guest check FAILED: {error}")
        if now_on is not None:
            tick, seen_boot = last_tick(now_on.console(vm))
            boot_id = seen_boot or boot_id
    log("  " + summary_line(record))
    return record, now_on, tick, boot_id, ended


def derive(record):
    """Numbers computed from the raw ones, and the per-run target checks
    (None where they do not apply). Rerun by --from-json."""
    # The downtime limit ferry started QEMU with and raised it to, from the
    # job's events (also for runs recorded before these fields).
    record["downtime_start_ms"] = record["downtime_limit_end_ms"] = None
    for event in record.get("events") or []:
        started = re.search(r"downtime limit (\d+) ms to start", event)
        raised = re.search(r"downtime limit raised from \d+ to (\d+) ms", event)
        if started:
            record["downtime_start_ms"] = record["downtime_limit_end_ms"] = int(started.group(1))
        elif raised:
            record["downtime_limit_end_ms"] = int(raised.group(1))
    if record["finished"]:
        record["total_ms"] = record["qemu_total_ms"]
        record["total_ms_source"] = "query-migrate total-time"
    else:
        # QEMU's counters stop with the abort (and its replies lag while a
        # slow dirty-bitmap sync holds it), so the job's own clock says how
        # long the run took: ferry's measuring + the migration until the cap.
        record["total_ms"] = record["job_elapsed_ms"] or round(record["wall_s"] * 1000)
        record["total_ms_source"] = "job elapsed until the abort"
    streaming_ms = (record["qemu_total_ms"] or record["qemu_last_total_ms"] or 0) - (record["setup_ms"] or 0) \
        - (record["downtime_ms"] or 0)
    record["stream_mib_s"] = round(record["bytes"] / MIB / (streaming_ms / 1000), 1) \
        if record["bytes"] and streaming_ms > 0 and not record.get("switched_to_postcopy") else None
    evaluate(record)


def evaluate(record):
    checks = {}
    total_s = record["total_ms"] / 1000 if record["total_ms"] is not None else None
    if record["finished"] and record["bytes"] and record["link_mib_s"]:
        wire_s = record["bytes"] / (record["link_mib_s"] * MIB)
        record["wire_time_s"] = round(wire_s, 2)
        record["total_over_wire"] = round(total_s / wire_s, 2)
        checks["total_le_1.5x_wire"] = total_s <= TARGET_RATE_FACTOR * wire_s
    else:
        record["wire_time_s"] = None
        record["total_over_wire"] = None
        checks["total_le_1.5x_wire"] = None
    limit = DOWNTIME_LIMIT_MS * TARGET_DOWNTIME_FACTOR
    checks["downtime_le_1.2x_limit"] = (record["downtime_ms"] <= limit) if record["downtime_ms"] is not None else None
    checks["guest_paused_le_1.2x_limit"] = (record["guest_paused_ms"] <= limit) \
        if record["guest_paused_ms"] is not None else None
    predicted = record.get("predicted_total_s")
    if predicted is not None and record["finished"] and total_s:
        error = (predicted - total_s) / total_s
        record["prediction_error"] = round(error, 3)
        checks["prediction_within_25pct"] = abs(error) <= TARGET_PREDICTION_ERROR
    else:
        record["prediction_error"] = None
        checks["prediction_within_25pct"] = None
    revised = record.get("revised_total_s")
    record["revised_error"] = round((revised - total_s) / total_s, 3) \
        if revised is not None and record["finished"] and total_s else None
    checks["finished_within_cap"] = record["finished"] and total_s is not None and total_s <= CAP_S
    record["checks"] = checks


def summary_line(r):
    parts = [f"{r['tool']} {r['scenario']} {r['link']}: "
             + ("finished" if r["finished"] else f"DID NOT FINISH ({r.get('error')})"),
             f"total {fmt_s(r['total_ms'])} s (wall {r['wall_s']:.1f} s)"]
    if r["downtime_ms"] is not None:
        parts.append(f"downtime {r['downtime_ms']} ms, guest paused {r['guest_paused_ms']} ms")
    if r["bytes"] is not None:
        parts.append(f"sent {r['bytes'] / MIB:.0f} MiB")
    if r["link_mib_s"] is not None:
        parts.append(f"link {r['link_mib_s']:.0f} MiB/s")
    if r.get("predicted_total_s") is not None:
        parts.append(f"predicted {r['predicted_total_s']:.1f} s")
    parts.append(f"strategy {r['strategy']}")
    return ", ".join(parts)


# ---- report ---------------------------------------------------------------------

def fmt_s(ms):
    return "–" if ms is None else f"{ms / 1000:.1f}"


def fmt(value, pattern="{:.0f}"):
    return "–" if value is None else pattern.format(value)


def total_cell(r):
    return fmt_s(r["total_ms"]) if r["finished"] else f"cap ({fmt_s(r['total_ms'])})"


def paused_cell(r):
    if r["guest_paused_ms"] is not None:
        return fmt(r["guest_paused_ms"])
    return "n/r" if r["finished"] else "–"


def minutes(seconds):
    count = max(1, round(seconds / 60))
    return f"{count} minute" + ("s" if count != 1 else "")


def mark(value):
    return "–" if value is None else ("yes" if value else "**no**")


def targets(runs):
    ferry = [r for r in runs if r["tool"] == "ferry-auto"]
    defaults = [r for r in runs if r["tool"] == "qemu-defaults"]
    limit = DOWNTIME_LIMIT_MS * TARGET_DOWNTIME_FACTOR

    def where(r):
        return f"{r['scenario']}/{r['link']}"

    result = []

    unfinished = [where(r) for r in ferry if not r["finished"]]
    result.append({
        "target": "ferry finishes every scenario (cap 120 s)",
        "met": bool(ferry) and not unfinished,
        "detail": (f"{len(ferry) - len(unfinished)}/{len(ferry)} finished"
                   + (f"; not: {', '.join(unfinished)}" if unfinished else "")),
    })
    max_1g = [r for r in defaults if r["scenario"] == "dirtymax" and r["link"] == "1gbit"]
    if max_1g:
        result.append({
            "target": "QEMU defaults do not finish dirtymax at 1 Gbit/s (the baseline's expected failure)",
            "met": not max_1g[0]["finished"],
            "detail": ("did not finish: " + str(max_1g[0].get("error"))) if not max_1g[0]["finished"]
            else f"finished in {fmt_s(max_1g[0]['total_ms'])} s",
        })
    rate = [r for r in ferry if r["checks"]["total_le_1.5x_wire"] is not None]
    bad = [f"{where(r)}: {fmt_s(r['total_ms'])} s = {r['total_over_wire']}× {r['wire_time_s']} s"
           for r in rate if not r["checks"]["total_le_1.5x_wire"]]
    result.append({
        "target": "ferry total time ≤ 1.5 × (RAM sent / link rate)",
        "met": bool(rate) and not bad and len(rate) == len(ferry),
        "detail": f"{len(rate) - len(bad)}/{len(ferry)} runs" + (f"; over: {'; '.join(bad)}" if bad else ""),
    })
    down = [r for r in ferry if r["checks"]["downtime_le_1.2x_limit"] is not None]
    bad = [f"{where(r)}: {r['downtime_ms']} ms" for r in down if not r["checks"]["downtime_le_1.2x_limit"]]
    result.append({
        "target": f"ferry downtime (QEMU's) ≤ 1.2 × {DOWNTIME_LIMIT_MS} ms = {limit:.0f} ms",
        "met": bool(down) and not bad and len(down) == len(ferry),
        "detail": f"{len(down) - len(bad)}/{len(ferry)} runs" + (f"; over: {'; '.join(bad)}" if bad else ""),
    })
    paused = [r for r in ferry if r["checks"]["guest_paused_le_1.2x_limit"] is not None]
    bad = [f"{where(r)}: {r['guest_paused_ms']} ms" for r in paused
           if not r["checks"]["guest_paused_le_1.2x_limit"]]
    missing = [where(r) for r in ferry if r["checks"]["guest_paused_le_1.2x_limit"] is None]
    result.append({
        "target": f"(stricter reading) ferry guest pause, source stop → destination resume, ≤ {limit:.0f} ms",
        "met": bool(paused) and not bad and len(paused) == len(ferry),
        "detail": f"{len(paused) - len(bad)}/{len(ferry)} runs" + (f"; over: {'; '.join(bad)}" if bad else "")
        + (f"; not recorded by ferry (post-copy): {', '.join(missing)}" if missing else ""),
    })
    pred = [r for r in ferry if r["checks"]["prediction_within_25pct"] is not None]
    bad = [f"{where(r)}: predicted {r['predicted_total_s']:.1f} s, actual {fmt_s(r['total_ms'])} s "
           f"({r['prediction_error']:+.0%})" for r in pred if not r["checks"]["prediction_within_25pct"]]
    result.append({
        "target": "ferry --estimate total time within ±25 % of the actual",
        "met": bool(pred) and not bad and len(pred) == len(ferry),
        "detail": f"{len(pred) - len(bad)}/{len(ferry)} runs" + (f"; off: {'; '.join(bad)}" if bad else ""),
    })
    return result


def markdown(report):
    runs = report["runs"]
    lines = [
        "# Live migration: QEMU defaults (as virsh leaves them) vs ferry --strategy auto",
        "",
        f"Run {report['started']} on {report['environment']['host']}: {report['environment']['cpus']} cores, "
        f"{report['environment']['qemu']}, accel {report['environment']['accel']}, "
        f"ferry {report['environment']['git']}. Two hosts = two network namespaces joined by veth, "
        f"ferryd on each, TLS on. Guest: {GUEST_MEMORY_MIB} MiB RAM, 1 vCPU. "
        f"Whole run: {report['duration_s'] / 60:.1f} min.",
        "",
        "- **qemu-defaults**: `ferry migrate NAME DEST --live --strategy manual --max-downtime 300 "
        "--completion-timeout-per-gib 120 --progress-timeout 120` — pre-copy, 300 ms downtime limit, "
        "no multifd, unlimited bandwidth (what `virsh migrate --live` leaves), aborted at the 120 s cap.",
        "- **ferry-auto**: `ferry migrate NAME DEST --live` (strategy auto: measures link and dirty "
        "rate, predicts, chooses pre-copy or post-copy, and for a pre-copy with room to spare multifd "
        "channels, with zstd when the guest's memory compresses), preceded by `--estimate --json` for the "
        "prediction.",
        "",
        "Columns: total = QEMU's `total-time` (cap (N) = did not finish, aborted at the 120 s cap after "
        "N s of job time); setup = QEMU's `setup-time`, part of total (dominated by the first dirty-bitmap "
        "sync); wall = the `ferry migrate` command end to end (also ferry's ~3 s of measuring and the "
        "destination's set-up); downtime = QEMU's `downtime`; paused = ferry's guest pause, source stop → "
        "destination resume (n/r = ferry recorded none; happens in some post-copy runs); stalled = the longest "
        "time the guest's once-a-second tick stood still during the migration, less that second (what the "
        "guest's users see: QEMU's set-up sync under TCG holds its lock, and the guest's timers with it); "
        "link = the link rate ferry "
        "measured for that run (its 32 MiB probe); stream = what QEMU's pre-copy stream actually reached, "
        "sent / (total − setup − downtime); wire = sent / link (QEMU 7.2 counts multifd pages as sent before "
        "compression, so with zstd total / wire can be under 1); predicted = `--estimate`'s total.",
        "",
        "| scenario | link | tool | finished | strategy | total s | of which setup s | wall s | downtime ms "
        "| paused ms | stalled s | sent MiB | link MiB/s | stream MiB/s | total / wire | ≤1.5× | predicted s "
        "| pred. error | ≤±25 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        strategy = r["strategy"] or "–"
        if r.get("multifd_channels"):
            strategy += f", {r['multifd_channels']} multifd channels"
            if r.get("multifd_compression") not in (None, "none"):
                strategy += f" + {r['multifd_compression']}"
        if r.get("switched_to_postcopy") and strategy != "post-copy":
            strategy += " → switched to post-copy"
        lines.append(
            f"| {r['scenario']} | {r['link']} | {r['tool']} | {'yes' if r['finished'] else '**no**'} "
            f"| {strategy} | {total_cell(r)} | {fmt_s(r['setup_ms'])} | {r['wall_s']:.1f} "
            f"| {fmt(r['downtime_ms'])} | {paused_cell(r)} | {fmt(r.get('guest_tick_stall_s'), '{:.1f}')} "
            f"| {fmt(r['bytes'] / MIB if r['bytes'] else None)} "
            f"| {fmt(r['link_mib_s'])} | {fmt(r['stream_mib_s'])} | {fmt(r['total_over_wire'], '{:.2f}')} "
            f"| {mark(r['checks']['total_le_1.5x_wire'])} | {fmt(r.get('predicted_total_s'), '{:.1f}')} "
            f"| {fmt(r.get('prediction_error'), '{:+.0%}')} | {mark(r['checks']['prediction_within_25pct'])} |")
    lines += ["", "## Targets", "", "| target | met | numbers |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | {t['detail']} |")
    repeat = report.get("config", {}).get("repeat", 1) or 1
    lines += ["", "## Notes", ""]
    lines += report["notes"]
    lines += [
        "",
        "## How to rerun",
        "",
        "```",
        "ninja -C build                 # if the binaries are missing",
        "sudo python3 bench/live/run.py" + (f" --repeat {repeat}" if repeat > 1 else "")
        + " # needs root (network namespaces, tc)",
        "```",
        "",
        f"It takes about {minutes(report['duration_s'])} on this machine "
        f"({2 * repeat} of the runs may sit at the 120 s cap) and rewrites `bench/results/live.json` "
        "and `bench/results/live.md`. `--scenarios`, `--links` and `--out-dir` run a subset "
        "elsewhere; `--from-json FILE` recomputes checks and notes of an earlier run without migrating; "
        "see `bench/live/README.md` for the method.",
        "",
    ]
    return "\n".join(lines)


def span(values, pattern="{:.0f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return pattern.format(low) if pattern.format(low) == pattern.format(high) \
        else pattern.format(low) + "–" + pattern.format(high)


def runs_per_cell(runs):
    """How many runs of each tool each cell has, said for the caveats."""
    counts = {}
    for r in runs:
        key = (r["tool"], r["scenario"], r["link"])
        counts[key] = counts.get(key, 0) + 1
    most = max(counts.values(), default=0)
    if most <= 1:
        return "One run per cell, no error bars."
    return (f"{most} runs of each tool per cell, interleaved (--repeat {most}), each a row of the table: "
            "their spread is the error bar.")


def notes(runs):
    out = []
    by = {(r["tool"], r["scenario"], r["link"]): r for r in runs}
    for scenario in SCENARIOS:
        for link in LINKS:
            d, f = by.get(("qemu-defaults", scenario, link)), by.get(("ferry-auto", scenario, link))
            if not d or not f:
                continue
            text = f"- **{scenario} / {link}**: defaults "
            text += (f"finished in {fmt_s(d['total_ms'])} s ({d['passes']} passes, downtime "
                     f"{d['downtime_ms']} ms)" if d["finished"] else
                     f"did not finish: aborted at the cap after {fmt_s(d['total_ms'])} s and "
                     f"{fmt(d['bytes'] / MIB if d['bytes'] else None)} MiB sent ({d['passes']} passes), "
                     f"the guest stayed on the source")
            text += "; ferry "
            if f["finished"]:
                text += (f"chose {f['strategy']}"
                         + (" and switched to post-copy" if f["switched_to_postcopy"] and f["strategy"] != "post-copy"
                            else "")
                         + f", finished in {fmt_s(f['total_ms'])} s ({fmt_s(f['setup_ms'])} s of it QEMU "
                         f"set-up), downtime {f['downtime_ms']} ms, guest paused "
                         + (f"{f['guest_paused_ms']} ms" if f["guest_paused_ms"] is not None else "not recorded"))
            else:
                text += f"did not finish ({f.get('error')})"
            guest = [r for r in (d, f) if not r.get("guest_ok")]
            if guest:
                text += "; guest check failed: " + "; ".join(r.get("guest_error", "?") for r in guest)
            out.append(text + ".")
    out.append("")
    out.append("- The guest kept ticking with the same boot id after every run (`guest_ok` in the JSON)."
               if all(r.get("guest_ok") for r in runs) else
               "- **The guest check failed in at least one run** (see `guest_error` in the JSON).")

    ferry = [r for r in runs if r["tool"] == "ferry-auto" and r["finished"]]
    precopy = [r for r in runs if r["finished"] and not r["switched_to_postcopy"]]
    postcopy = [r for r in ferry if r["switched_to_postcopy"]]
    busy = [r for r in runs if r["scenario"] != "idle"]
    idle = [r for r in runs if r["scenario"] == "idle"]

    out.append("")
    out.append("What the numbers say about the misses:")
    out.append("")
    limit = DOWNTIME_LIMIT_MS * TARGET_DOWNTIME_FACTOR
    if busy:
        ferry_busy = [r for r in busy if r["tool"] == "ferry-auto" and r["setup_ms"]]
        defaults_busy = [r for r in busy if r["tool"] == "qemu-defaults" and r["setup_ms"]]
        out.append(
            f"- **QEMU's set-up is slow for a dirtying guest.** `setup-time` (migration start → first pass "
            f"under way; mostly the first dirty-bitmap sync) was "
            f"{span([r['setup_ms'] / 1000 for r in idle if r['setup_ms']], '{:.1f}')} s for the idle guest but "
            f"{span([r['setup_ms'] / 1000 for r in defaults_busy], '{:.1f}')} s (defaults) and "
            f"{span([r['setup_ms'] / 1000 for r in ferry_busy], '{:.1f}')} s (ferry) for the dirtying ones, "
            f"varying a lot between runs of the same guest. This is the TCG 8 KiB-padding side effect: "
            f"the padded RAM takes QEMU's page-at-a-time sync, which scans the vCPU's TLB for each dirty "
            f"page (with the padding switched off by a local patch, set-up took 3–17 ms and one guest of "
            f"four came back broken). Per page of the guest's RAM that is "
            f"{span([r['setup_ms'] * 1000 / (GUEST_MEMORY_MIB * 256) for r in busy if r['setup_ms']], '{:.0f}')} µs "
            f"in these runs; ferry's model counts 0.45 µs plus 0.0223 µs × (MiB/s of dirty rate)^1.55 "
            f"(fitted on the runs of 2026-11-23 and 24: 9.3-12.5 µs at 50 MiB/s, 36-47 at the maximum; "
            f"runs before paid more, 16 µs at 50 MiB/s) for each page the sync finds dirty. That is every page of RAM on a QEMU that never ran a migration (the guest arrived by "
            f"one: the bitmap starts all dirty), but only what the guest dirtied since on one whose "
            f"migration was cancelled, as the defaults' dirtymax runs are before ferry's start from the "
            f"same QEMU (QEMU trace, 2026-11-24: 63 828 pages, 3.1 s, against 262 144 pages, 11 s); "
            f"ferry counts that since 2026-11-24. The guest stands still through a sync (QEMU's trace: no "
            f"page written during an 11.4 s set-up sync; no tick either), and QEMU does not count it as "
            f"downtime.")
        by = {(r["tool"], r["scenario"], r["link"]): r for r in busy}
        pairs = [(by[("qemu-defaults", r["scenario"], r["link"])], r) for r in ferry_busy
                 if ("qemu-defaults", r["scenario"], r["link"]) in by
                 and by[("qemu-defaults", r["scenario"], r["link"])]["setup_ms"]]
        longer = [f"{f['scenario']}/{f['link']} {f['setup_ms'] / 1000:.1f} vs {d['setup_ms'] / 1000:.1f} s"
                  for d, f in pairs if f["setup_ms"] > d["setup_ms"]]
        if pairs:
            out[-1] += (f" ferry's set-up was longer than the defaults' in {len(longer)} of {len(pairs)} dirtying "
                        f"cells" + (f" ({'; '.join(longer)})" if longer else "")
                        + f". Measured apart (dirty50, unshaped, 2026-11-22): not the postcopy-ram capability "
                        "(the defaults with it: 0.87–1.21 s, without: 0.95–1.34 s), but how long the guest had "
                        "run on its host since it arrived: set-up 0.5–0.7 s when ferry-auto started right "
                        "away, 2.1–2.4 s after a `ferry dirtyrate`, 2.4–2.6 s after `--estimate`, 3.9–4.2 s "
                        "after a plain 3.5 s wait. Until then the defaults started right after the guest "
                        f"arrived and ferry-auto after its `--estimate`; every run now starts {SETTLE_S:.0f} s "
                        "after the previous one ended.")
        excl = [(r, (r["total_ms"] - (r["setup_ms"] or 0)) / 1000 / r["wire_time_s"]) for r in ferry
                if r["wire_time_s"]]
        missed = [(r, ratio) for r, ratio in excl if not r["checks"]["total_le_1.5x_wire"]]
        if missed:
            within = [f"{r['scenario']}/{r['link']}" for r, ratio in missed if ratio <= TARGET_RATE_FACTOR]
            still = [f"{r['scenario']}/{r['link']}" for r, ratio in missed if ratio > TARGET_RATE_FACTOR]
            text = ("  Without the set-up, ferry's total / wire would be "
                    + ", ".join(f"{r['scenario']}/{r['link']} {ratio:.2f}" for r, ratio in excl) + ".")
            if within:
                text += f" Of the runs over 1.5×, {', '.join(within)} would then be within."
            if still:
                text += (f" {', '.join(still)} would still be over 1.5×: the post-copy switchover "
                         f"(below) is the other part.")
            out.append(text)
    stalls = [r for r in runs if r.get("guest_tick_stall_s") is not None and r["finished"]]
    if stalls:
        out.append(
            "- **What the guest saw.** The longest time its tick counter stood still during a finished "
            "migration (the table's 'stalled'): "
            + ", ".join(f"{r['scenario']}/{r['link']}/{r['tool']} {r['guest_tick_stall_s']:.1f} s "
                        f"(QEMU downtime {fmt(r['downtime_ms'])} ms, set-up {fmt_s(r['setup_ms'])} s)"
                        for r in stalls)
            + ". Where it is near the set-up time, the guest stood still through QEMU's set-up sync "
              "(TCG with the padding; ferry warns of it before and after).")
    lowered = [r for r in ferry if r.get("finished") and r.get("downtime_start_ms")]
    if lowered:
        out.append(
            f"- **Downtime limit.** ferry's plan started QEMU below the allowed {DOWNTIME_LIMIT_MS} ms in {len(lowered)} of "
            f"{len(ferry)} runs (where a pass or two more cost at most a tenth more time): "
            + ", ".join(f"{r['scenario']}/{r['link']} at {r['downtime_start_ms']:.0f} ms"
                        + (f", raised to {r['downtime_limit_end_ms']:.0f}"
                           if (r.get("downtime_limit_end_ms") or 0) > r["downtime_start_ms"] else "")
                        + f" (downtime {r['downtime_ms']} ms, guest paused {r['guest_paused_ms']} ms)"
                        for r in lowered)
            + ". The defaults' downtime in the same cells: "
            + ", ".join(f"{r['scenario']}/{r['link']} {r['downtime_ms']} ms" for r in runs
                        if r["tool"] == "qemu-defaults" and r.get("finished")
                        and any(l["scenario"] == r["scenario"] and l["link"] == r["link"] for l in lowered))
            + ".")
    if postcopy:
        planned = [r for r in postcopy if r["strategy"] == "post-copy"]
        switched = [r for r in postcopy if r["strategy"] != "post-copy"]
        text = f"- **Post-copy.** ferry went to post-copy in {len(postcopy)} of {len(ferry)} runs"
        if planned:
            text += (f"; as planned in {', '.join(r['scenario'] + '/' + r['link'] for r in planned)} (pre-copy "
                     f"cannot converge: measured dirty rate {span([r['dirty_mib_s_measured'] for r in planned])} "
                     f"MiB/s over 2 s, {span([r.get('dirty_1s_mib_s_measured') for r in planned])} over 1 s, "
                     f"against a link of {span([r['link_mib_s'] for r in planned])} MiB/s)")
        if switched:
            text += (f"; from pre-copy, by its convergence watchdog, in "
                     f"{', '.join(r['scenario'] + '/' + r['link'] for r in switched)} ("
                     + "; ".join(next((e.split('switching to post-copy: ', 1)[1] for e in r["events"]
                                       if "switching to post-copy: " in e), "?") for r in switched)
                     + ")")
        text += (". QEMU's downtime at the switch: "
                 + ", ".join(f"{r['scenario']}/{r['link']} {r['downtime_ms']} ms" for r in postcopy) + ".")
        slow = [r for r in postcopy if r["downtime_ms"] > limit]
        if slow:
            text += (f" Over {limit:.0f} ms: {', '.join(r['scenario'] + '/' + r['link'] for r in slow)} — "
                     f"the stop, final bitmap sync of a guest with many dirty pages and device state before "
                     f"the destination runs; the same slow sync as above. Set-up and switchover together took "
                     + ", ".join(f"{((r['setup_ms'] or 0) + r['downtime_ms']) / 1000:.1f} of "
                                 f"{r['total_ms'] / 1000:.1f} s" for r in slow)
                     + " of those runs; the rest is pre-copy before the switch and the post-copy tail. "
                     "ferry predicted the stop beforehand ("
                     + ", ".join(f"{r['scenario']}/{r['link']}: {predicted_stop(r)}" for r in slow)
                     + "): what the guest rewrote between the sync before the switch and the stop (it stands "
                       "still during a TCG sync, not between syncs), which the stopped guest's sync collects.")
        missing = [r for r in postcopy if r["guest_paused_ms"] is None]
        if missing:
            text += (f" ferry's own guest-pause figure (`ferry-guest-downtime-ms`) is missing from "
                     f"{len(missing)} of the {len(postcopy)} post-copy jobs "
                     f"({', '.join(r['scenario'] + '/' + r['link'] for r in missing)}; n/r in the table).")
        out.append(text)
    streams = [r["stream_mib_s"] for r in precopy if r["stream_mib_s"]]
    if streams:
        out.append(
            f"- **ferry's link probe against QEMU's stream.** Its 32 MiB HTTPS probe measured "
            f"{span([r['link_mib_s'] for r in runs if r['link'] == 'unshaped'])} MiB/s on the unshaped veth and "
            f"{span([r['link_mib_s'] for r in runs if r['link'] == '1gbit'])} MiB/s at 1 Gbit/s (nominal "
            f"119 MiB/s), while QEMU's own TLS pre-copy stream reached roughly "
            f"{span([r['stream_mib_s'] for r in precopy if r['link'] == 'unshaped'])} MiB/s and "
            f"{span([r['stream_mib_s'] for r in precopy if r['link'] == '1gbit'])} MiB/s (until 2026-11-22 "
            f"the probe timed its own TLS handshake and the making of its random body and read 48–97 MiB/s "
            f"unshaped). The ≤ 1.5 × check divides by the probe's rate.")
    compressed = [r for r in ferry if r.get("compress_ratio_wire")]
    if compressed:
        out.append(
            "- **Compression.** Where ferry chose zstd, its sample of the guest's pages (libzstd at multifd's "
            "level, the plan's `compress_ratio`, counted at most 3:1) against what crossed the source's veth "
            "(QEMU's pages sent over the veth's bytes less ferry's probe, TLS and TCP included): "
            + ", ".join(f"{r['scenario']}/{r['link']} sampled {r['compress_ratio_sampled']:.2f}:1 at "
                        f"{r['compress_mib_s_sampled']:.0f} MiB/s a core, on the wire {r['compress_ratio_wire']:.2f}:1"
                        for r in compressed)
            + ". The plan counts on the link's rate times the ratio, or on the cores' speed where that is "
              "less (" + (", ".join(f"{r['scenario']}/{r['link']}" for r in compressed if cpu_bound_compression(r))
                          or "none of these runs: the link was the slower") + ").")
    pred = [r for r in ferry if r.get("prediction_error") is not None]
    if pred:
        over = [r for r in pred if r["prediction_error"] > TARGET_PREDICTION_ERROR]
        under = [r for r in pred if r["prediction_error"] < -TARGET_PREDICTION_ERROR]
        text = (f"- **--estimate vs actual**: {sum(1 for r in pred if r['checks']['prediction_within_25pct'])}"
                f"/{len(pred)} within ±25 %.")
        if over:
            text += (" Too long for " + ", ".join(f"{r['scenario']}/{r['link']} ({r['prediction_error']:+.0%})"
                                                  for r in over)
                     + ": the model expects more and longer passes than QEMU made (its sync cost is a "
                       "fit to a noisy effect)"
                     + (" (and ferry then cut pre-copy short by switching to post-copy)"
                        if any(r["switched_to_postcopy"] and r["strategy"] != "post-copy" for r in over) else "")
                     + ".")
        if under:
            # Which part ran long: set-up against the model's (its fixed
            # part plus the predicted sync), or the stream after it.
            def setup_ran_long(r):
                predicted_setup_s = MODEL_SETUP_S + (r["estimate"].get("setup_stall_s") or 0)
                return (r["setup_ms"] or 0) / 1000 > 1.25 * predicted_setup_s

            def memory_rate(r):
                moving_s = ((r["qemu_total_ms"] or 0) - (r["setup_ms"] or 0) - (r["downtime_ms"] or 0)) / 1000
                return (r["bytes"] or 0) / MIB / moving_s if moving_s > 0 else None

            slow_setup = [r for r in under if setup_ran_long(r)]
            slow_stream = [r for r in under if not setup_ran_long(r)]
            if slow_setup:
                text += (" Too short for " + ", ".join(f"{r['scenario']}/{r['link']} ({r['prediction_error']:+.0%})"
                                                       for r in slow_setup)
                         + ": QEMU's set-up took longer than the model's sync cost gives (a fit to a noisy "
                           "effect, above).")
            if slow_stream:
                text += (" Too short for " + ", ".join(
                    f"{r['scenario']}/{r['link']} ({r['prediction_error']:+.0%}; set-up "
                    f"{(r['setup_ms'] or 0) / 1000:.2f} s, then {fmt(memory_rate(r), '{:.0f}')} MiB/s of memory "
                    f"where the plan counted on {r['link_mib_s']:.0f} MiB/s"
                    + (f" × {min(max(r['estimate']['measured'].get('compress_ratio', 1), 1), 3):.1f} compressed"
                       if r.get("multifd_compression") == "zstd" else "") + ")"
                    for r in slow_stream)
                         + ": set-up took what the model said; the stream after it did not reach the probe's "
                           "rate (on the unshaped veth, CPU-bound: both QEMUs, TLS and zstd share two cores, "
                           "which the probe, one TLS stream of ferryd's, does not show).")
        text += (" The measurements are also noisy: the run's own plan, measured seconds after the estimate, "
                 "predicted " + ", ".join(f"{r['scenario']}/{r['link']} {fmt(r['plan_predicted_total_s'], '{:.1f}')} s "
                                          f"(estimate {r['predicted_total_s']:.1f} s)" for r in pred) + ".")
        out.append(text)
    revised = [r for r in runs if r["tool"] == "ferry-auto" and r.get("revised_error") is not None]
    if revised:
        close = [r for r in revised if abs(r["revised_error"]) <= TARGET_PREDICTION_ERROR]
        out.append(
            f"- **Revised after QEMU's set-up** (the job's `ferry-revised`: the plan again with the sync cost per "
            f"page that set-up showed): within ±25 % of the actual total in {len(close)}/{len(revised)} runs: "
            + ", ".join(f"{r['scenario']}/{r['link']} {r['revised_total_s']:.1f} s against {fmt_s(r['total_ms'])} s "
                        f"({r['revised_error']:+.0%}; {fmt(r.get('revised_sync_us_per_page'), '{:.0f}')} µs a page, "
                        f"stop {fmt(r.get('revised_downtime_ms'), '{:.0f}')} ms against {fmt(r.get('downtime_ms'), '{:.0f}')})"
                        for r in revised) + ".")
    out += [
        "",
        "Caveats:",
        "",
        "- TCG: under QEMU 7.2 TCG, ferryd pads guest RAM by 8 KiB to avoid QEMU losing dirty "
        "pages; with that padding QEMU's dirty-bitmap sync is slow when many pages are dirty. Downtime and "
        "set-up here are as measured, including that effect; under KVM they would differ.",
        "- Two cores are shared by both QEMUs (source and destination), both ferryds, TLS and, for the "
        "max scenario, a vCPU that dirties memory flat out; other work on the machine "
        f"(load average before the runs: {span([r['load_avg_before'] for r in runs], '{:.1f}')}) disturbs the "
        "numbers, and so does the hypervisor under this machine (CPU time stolen during the runs: "
        f"{span([r.get('cpu_steal_pct', 0) for r in runs], '{:.1f}')} %; QEMU's set-up time, pure CPU under "
        "TCG, follows it). " + runs_per_cell(runs),
        "- The defaults' cap is ferry's completion timeout (120 s per GiB, counted from the start of the "
        "stream); the job time shown for those runs also holds ferry's measuring, the destination's "
        "set-up and the abort. Their stream rate is low because every pass ends in a slow bitmap sync.",
    ]
    return out


# ---- main -----------------------------------------------------------------------

def environment(cluster):
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:  # noqa: BLE001
            return "?"
    git = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "?"),
        "qemu": first_line(["qemu-system-x86_64", "--version"]),
        "accel": cluster.accel,
        "git": git + ("+local changes" if dirty else ""),
        "ferryd": FERRYD,
        "binaries_sha256": {os.path.basename(path): sha256(path)[:16] for path in (FERRYD, FERRY)},
        "binaries_mtime": {os.path.basename(path): datetime.datetime.fromtimestamp(os.path.getmtime(path))
                           .astimezone().isoformat(timespec="seconds") for path in (FERRYD, FERRY)},
    }


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predicted_stop(record):
    """--estimate's predicted stop at the switch, as text."""
    downtime = (record.get("estimate") or {}).get("prediction", {}).get("downtime_ms")
    return f"{downtime / 1000:.1f} s" if isinstance(downtime, (int, float)) else "none recorded"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--links", default=",".join(LINKS), help="comma-separated: " + ", ".join(LINKS))
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help="comma-separated, run in this order in every cell: " + ", ".join(TOOLS))
    parser.add_argument("--repeat", type=int, default=1, help="runs of the tools per cell (interleaved)")
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    parser.add_argument("--qemu", metavar="PATH",
                        help="the QEMU binary both agents run (ferryd --qemu), e.g. a wrapper that adds "
                             "QEMU trace options to study a run")
    parser.add_argument("--from-json", metavar="LIVE_JSON",
                        help="do not migrate: recompute checks, targets and notes of an earlier run's "
                             "live.json and rewrite live.json and live.md in --out-dir")
    options = parser.parse_args()
    if options.from_json:
        with open(options.from_json) as handle:
            report = json.load(handle)
        for record in report["runs"]:
            derive(record)
        write_report(report, options.out_dir)
        return 0
    scenarios = [s for s in options.scenarios.split(",") if s]
    links = [link for link in options.links.split(",") if link]
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name}")
    for name in links:
        if name not in LINKS:
            parser.error(f"unknown link {name}")
    tools = [t for t in options.tools.split(",") if t]
    for name in tools:
        if name not in TOOLS:
            parser.error(f"unknown tool {name}")
    if os.geteuid() != 0:
        print("bench/live/run.py needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    for binary in (FERRY, FERRYD):
        if not os.path.exists(binary):
            print(f"{binary} is missing: run ninja -C {os.environ['FERRY_BUILD_DIR']}", file=sys.stderr)
            return 2

    started_wall = datetime.datetime.now().astimezone()
    started = time.monotonic()
    log("guest kit (cached after the first build)")
    kernel, initrd = ensure_guest()
    qemu_args = ["--qemu", options.qemu] if options.qemu else []
    cluster = Cluster(need_netns=True, agent_args={"hosta": qemu_args, "hostb": qemu_args})
    log(f"hosts: {cluster.a.name} {cluster.a.url} ({cluster.netns[0]}), "
        f"{cluster.b.name} {cluster.b.url} ({cluster.netns[1]})")
    env = environment(cluster)
    runs = []
    for scenario in scenarios:
        unshape(cluster)
        vm, tick, boot_id = boot_guest(cluster, kernel, initrd, scenario)
        settled_at = time.monotonic()
        here = cluster.a
        for link in links:
            set_link(cluster, link)
            log(f"{scenario} / {link}: qdisc {qdisc(cluster.a).splitlines()[0] if qdisc(cluster.a) else '?'}")
            for tool in tools * max(1, options.repeat):
                there = cluster.b if here is cluster.a else cluster.a
                log(f"{tool}: {scenario} over {link}, {here.name} → {there.name}")
                record, now_on, tick, boot_id, settled_at = run_migration(
                    cluster, tool, here, there, vm, scenario, link, tick, boot_id, settled_at)
                runs.append(record)
                if now_on is None:
                    raise SystemExit(f"{vm} is lost: it runs on neither host")
                here = now_on
        remove_guest(cluster, vm)
    unshape(cluster)

    duration = time.monotonic() - started
    report = {
        "benchmark": "live migration, issue 3",
        "started": started_wall.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "environment": env,
        "config": {
            "guest": {"memory_mib": GUEST_MEMORY_MIB, "vcpus": 1},
            "scenarios": {name: {"dirty_mib": SCENARIOS[name][0], "dirty_rate_mib_s": SCENARIOS[name][1],
                                 "label": SCENARIOS[name][2]} for name in scenarios},
            "links": {name: LINKS[name] for name in links},
            "tools": {name: "ferry migrate NAME DEST --live " + " ".join(TOOLS[name]) for name in tools},
            "repeat": options.repeat,
            "cap_s": CAP_S,
            "downtime_limit_ms": DOWNTIME_LIMIT_MS,
            "targets": {"total_over_wire_max": TARGET_RATE_FACTOR,
                        "downtime_over_limit_max": TARGET_DOWNTIME_FACTOR,
                        "prediction_error_max": TARGET_PREDICTION_ERROR},
        },
        "runs": runs,
    }
    write_report(report, options.out_dir)
    return 0


def write_report(report, out_dir):
    report["targets"] = targets(report["runs"])
    report["notes"] = notes(report["runs"])
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "live.json")
    md_path = os.path.join(out_dir, "live.md")
    with open(json_path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    with open(md_path, "w") as handle:
        handle.write(markdown(report))
    log(f"wrote {json_path} and {md_path} (the run took {report['duration_s'] / 60:.1f} min)")
    for t in report["targets"]:
        log(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['detail']}")


if __name__ == "__main__":
    status = 1
    try:
        status = main()
    finally:
        _cleanup_all()
    sys.exit(status)
