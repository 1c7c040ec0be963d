#!/usr/bin/env python3
"""Warm migration benchmark (issue 5): a 1 GiB VM whose guest overwrites a
1 GiB data disk steadily, migrated warm between two hosts (network
namespaces joined by veth shaped to 1 Gbit/s), then the same VM migrated
cold, in one run.

    python3 bench/warm/run.py                 # writes bench/results/warm.{json,md}
    python3 bench/warm/run.py --churn-mib-s 4 --interval 10 --passes 3 --out-dir /tmp/x

Measured, per pre-copy pass: the data changed (dirty blocks the bitmap
marked, as written on the destination), the bytes read from the source,
the bytes on the wire (the source veth's tx counter between passes:
payload, TLS, TCP/IP), the pass duration and its throughput against the
link rate. At the cutover (after the catch-up passes ferry runs while the
guest still runs): the downtime as a user sees it — from the ACPI
shutdown request to the guest's first sign of life on the destination
(its first tick line) — against the bound the issue sets: the guest's
shutdown time + last delta / link rate + the guest's boot time + 2 s; and
the same downtime for a cold migration of the same VM (ACPI shutdown,
whole copy, start).
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
sys.path.insert(0, os.path.join(ROOT, "tests/integration"))
os.environ.setdefault("FERRY_BUILD_DIR", os.path.join(ROOT, "build"))
os.environ.setdefault("FERRY_SOURCE_DIR", ROOT)
os.environ.setdefault("FERRY_GUEST_DIR", os.path.join(os.environ["FERRY_BUILD_DIR"], "guest-image"))

from ferrytest import Cluster, StealMeter, ensure_guest, guest_spec, job, log, run, wait_until  # noqa: E402

MIB = 1024 * 1024
LINK_BYTES_S = 1e9 / 8
TICK = re.compile(r"tick (\d+) boot_id=([0-9a-f-]+)")


def first_tick_time(host, vm, after_boot_id, timeout=300):
    """Wall time at which the guest's first tick of a new boot appears."""
    def ticked():
        for number, boot_id in TICK.findall(host.console(vm)):
            if boot_id != after_boot_id:
                return time.time()
        return None
    return wait_until(f"{vm} to boot on {host.name}", ticked, timeout=timeout, interval=0.05)


def boot_id(host, vm):
    found = TICK.findall(host.console(vm))
    return found[-1][1] if found else None


def events(info):
    return info.get("events", [])


def event_time(info, fragment):
    for event in events(info):
        if fragment in event["message"]:
            return event["time_us"] / 1e6
    return None


def make_vm(cluster, kernel, initrd, churn_mib_s, name):
    a = cluster.a
    a.cli("volume", "create", "default", f"{name}-root.qcow2", "--size", "1G")
    a.cli("volume", "create", "default", f"{name}-data", "--size", "1G", "--format", "raw")
    root = os.path.join(a.state_dir, "pools", "default", f"{name}-root.qcow2")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256M", root])
    spec = guest_spec(os.path.join(cluster.workdir, f"{name}.json"), name, kernel, initrd, memory_mib=1024,
                      disks=[{"volume": f"{name}-root.qcow2", "format": "qcow2"},
                             {"volume": f"{name}-data", "format": "raw"}],
                      extra_cmdline=f"ferry.diskchurn=/dev/vdb ferry.diskchurn_mib_s={churn_mib_s} "
                                    "ferry.acpi_poweroff=1")
    a.cli("vm", "define", spec)


def start_and_time_boot(host, vm):
    started = time.time()
    previous = boot_id(host, vm)
    host.cli("vm", "start", vm)
    booted = first_tick_time(host, vm, previous)
    wait_until("the churn to run", lambda: "diskchurn total_mib" in host.console(vm), timeout=120)
    return booted - started


# Runs inside a host's network namespace for the whole warm run: answers
# "job VM" with the job's JSON over one kept-alive HTTPS connection.
# Polling 10 times a second through the CLI (a process and a TLS handshake
# each) took a sixth of the two cores the migration runs on.
WATCHER = r"""
import http.client, json, os, ssl, sys, urllib.parse
url, tls = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=os.path.join(tls, "ca-cert.pem"))
context.check_hostname = False
context.load_cert_chain(os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem"))
connection = http.client.HTTPSConnection(url.hostname, url.port, context=context)
for line in sys.stdin:
    _, vm = line.split()
    connection.request("GET", f"/v1/vms/{urllib.parse.quote(vm)}/job")
    print(json.dumps(json.loads(connection.getresponse().read())), flush=True)
"""


class Watcher:
    def __init__(self, host):
        self.host = host
        self.process = subprocess.Popen(host.prefix() + [sys.executable, "-c", WATCHER, host.url,
                                                         host.cluster.client_tls],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline()

    def job(self, vm):
        return json.loads(self.ask(f"job {vm}"))

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


def warm_run(cluster, vm, interval_s, passes_wanted):
    a, b = cluster.a, cluster.b
    a.cli("migrate", vm, b.url, "--warm", "--precopy-interval", f"{interval_s}s", "--force-stop")
    # The source's veth counter at each pass boundary gives the wire bytes
    # of the pass (the only traffic between the hosts is this migration).
    wire_at = {}
    seen = 0
    deadline = time.time() + 1800
    watcher = Watcher(a)
    while time.time() < deadline:
        info = watcher.job(vm)
        warm = info["stats"].get("ferry-warm", {})
        its = warm.get("iterations", [])
        if warm.get("pass_running") and warm.get("pass") not in wire_at:
            wire_at[warm["pass"]] = a.tx_bytes()
        if len(its) > seen:
            seen = len(its)
            wire_at[f"end{its[-1]['pass']}"] = a.tx_bytes()
            log(f"  pass {its[-1]['pass']}: {its[-1]['bytes_changed'] // MIB} MiB changed, "
                f"{its[-1]['bytes_copied'] // MIB} MiB copied in {its[-1]['duration_s']:.1f} s")
        if seen >= passes_wanted and not warm.get("pass_running"):
            break
        time.sleep(0.1)
    watcher.close()
    before_cutover_boot = boot_id(b, vm)
    asked = time.time()
    a.cli("migrate", "cutover", vm)
    booted = first_tick_time(b, vm, before_cutover_boot)
    info = job(a, vm, completed=True)
    assert info["state"] == "completed", info
    its = info["stats"]["ferry-warm"]["iterations"]
    # The destination's own account of each pass (when each disk's copy
    # ended, when its digests agreed), seconds since its job began.
    incoming = job(b, vm, completed=True)
    destination_events = [f"+{(e['time_us'] - incoming['created_us']) / 1e6:.3f} s {e['message']}"
                          for e in incoming.get("events", [])]
    passes = []
    for entry in its:
        start_wire, end_wire = wire_at.get(entry["pass"]), wire_at.get(f"end{entry['pass']}")
        record = dict(entry)
        if start_wire is not None and end_wire is not None:
            record["wire_bytes"] = end_wire - start_wire
        changed = max(entry["bytes_changed"], 1)
        record["copied_over_changed"] = round(entry["bytes_copied"] / changed, 3)
        if "wire_bytes" in record:
            record["wire_over_changed"] = round(record["wire_bytes"] / changed, 3)
        # Throughput of the copy itself (the destination's time, digest
        # check included) and of the whole pass (snapshot to cleanup).
        copy_s = max(entry.get("copy_s") or entry["duration_s"], 1e-3)
        record["throughput_mib_s"] = round(entry["bytes_copied"] / MIB / copy_s, 1)
        record["of_link_rate"] = round(entry["bytes_copied"] / copy_s / LINK_BYTES_S, 3)
        record["pass_of_link_rate"] = round(entry["bytes_copied"] / max(entry["duration_s"], 1e-3) / LINK_BYTES_S, 3)
        passes.append(record)
    shut_down = event_time(info, "guest shut down")
    # Passes at the cutover run with the guest up: the downtime starts with
    # the ACPI request.
    stopping = event_time(info, "precopy → cutover") or asked
    return {
        "passes": passes,
        "catch_up_passes": sum(1 for e in events(info) if "one more pass before the guest stops" in e["message"]),
        "downtime_s": round(booted - stopping, 2),
        "shutdown_s": round(shut_down - stopping, 2) if shut_down else None,
        "cutover_asked_to_running_s": round(booted - asked, 2),
        "ferry_downtime_ms": info["stats"].get("ferry-guest-downtime-ms"),
        "last_delta_bytes": passes[-1]["bytes_copied"],
        "elapsed_s": round(info["elapsed_ms"] / 1000, 1),
        "destination_events": destination_events,
        # The source's account, on the same clock as the destination's.
        "source_events": [f"+{(e['time_us'] - incoming['created_us']) / 1e6:.3f} s {e['message']}"
                          for e in info.get("events", [])],
    }


def cold_run(cluster, vm):
    a, b = cluster.a, cluster.b
    before = boot_id(b, vm)
    asked = time.time()
    a.cli("migrate", vm, b.url, "--offline", "--copy-storage", "--persistent", "--start", "--force-stop")
    booted = first_tick_time(b, vm, before)
    info = job(a, vm, completed=True)
    shut_down = event_time(info, "guest shut down")
    return {"downtime_s": round(booted - asked, 2), "shutdown_s": round(shut_down - asked, 2) if shut_down else None,
            "bytes_read": info["stats"]["ferry-copy"]["bytes_read"], "elapsed_s": round(info["elapsed_ms"] / 1000, 1)}


def markdown(report):
    warm, cold = report["warm"], report["cold"]
    lines = [f"# Warm migration benchmark ({report['started']})", "",
             f"VM: 1 GiB RAM, a 1 GiB qcow2 root (256 MiB data) and a 1 GiB raw data disk the guest overwrites at "
             f"{report['config']['churn_mib_s']} MiB/s; passes every {report['config']['interval_s']} s. Link: "
             f"veth shaped to 1 Gbit/s with tc tbf; hosts are network namespaces on one machine "
             f"({report['environment']['cpus']} CPUs, TCG guests). Rerun: `python3 bench/warm/run.py`.", "",
             "| pass | changed MiB | copied MiB | wire MiB | copied / changed | wire / changed | pass s | copy s | "
             "copy MiB/s | copy / link rate | pass / link rate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in warm["passes"]:
        wire = f"{p['wire_bytes'] / MIB:.1f}" if "wire_bytes" in p else "-"
        lines.append(f"| {p['pass']}{' (final)' if p['final'] else ''} | {p['bytes_changed'] / MIB:.1f} | "
                     f"{p['bytes_copied'] / MIB:.1f} | {wire} | {p['copied_over_changed']} | "
                     f"{p.get('wire_over_changed', '-')} | {p['duration_s']:.2f} | {p.get('copy_s', 0):.2f} | "
                     f"{p['throughput_mib_s']} | {p['of_link_rate']} | {p['pass_of_link_rate']} |")
    lines += ["", "| cutover | downtime s (ACPI request → first tick on the destination) | guest shutdown s | "
              "bound s |", "|---|---|---|---|",
              f"| warm | {warm['downtime_s']} | {warm['shutdown_s']} | {report['bound_s']} |",
              f"| cold (same VM) | {cold['downtime_s']} | {cold['shutdown_s']} | - |", "",
              f"ferry's own downtime figure (guest SHUTDOWN event → destination QEMU running): "
              f"{warm['ferry_downtime_ms']} ms. Boot time of the guest: {report['boot_s']} s. Catch-up passes "
              f"at the cutover (guest still running): {warm['catch_up_passes']}; from `ferry migrate cutover` "
              f"to the guest running on the destination: {warm['cutover_asked_to_running_s']} s.", "",
              "## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- {'met' if t['met'] else '**missed**'}: {t['target']} ({t['detail']})")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report.get("notes", [])] + [""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--churn-mib-s", type=int, default=16)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/warm/run.py needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    started_wall = datetime.datetime.now().astimezone()
    steal = StealMeter()
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True, agent_args={"hosta": ["--shutdown-timeout", "30"],
                                                   "hostb": ["--shutdown-timeout", "30"]})
    cluster.shape("1gbit")
    vm = "warm"
    make_vm(cluster, kernel, initrd, options.churn_mib_s, vm)
    boot_s = round(start_and_time_boot(cluster.a, vm), 2)
    log(f"guest boots in {boot_s} s; warm migration, a pass every {options.interval} s")
    warm = warm_run(cluster, vm, options.interval, options.passes)
    log(f"warm cutover downtime {warm['downtime_s']} s (shutdown {warm['shutdown_s']} s)")

    log("the same VM, cold, back to hosta")
    cluster.a.cli("vm", "undefine", vm)
    for volume in (f"{vm}-root.qcow2", f"{vm}-data"):
        cluster.a.cli("volume", "delete", "default", volume)
    wait_until("the churn to run on hostb", lambda: "diskchurn total_mib" in cluster.b.console(vm), timeout=120)
    cold = cold_run(type("Swapped", (), {"a": cluster.b, "b": cluster.a})(), vm)
    log(f"cold downtime {cold['downtime_s']} s (shutdown {cold['shutdown_s']} s)")

    bound = round((warm["shutdown_s"] or 0) + warm["last_delta_bytes"] / LINK_BYTES_S + boot_s + 2, 2)
    later = [p for p in warm["passes"] if p["pass"] > 1 and not p["final"]]
    targets = [
        {"target": "pre-copy passes copy ≤ 1.1× the changed data",
         "met": all(p["copied_over_changed"] <= 1.1 for p in later),
         "detail": ", ".join(f"pass {p['pass']}: {p['copied_over_changed']}× copied, "
                             f"{p.get('wire_over_changed', '-')}× on the wire" for p in later)},
        {"target": "pre-copy passes run at ≥ 90 % of the link rate",
         "met": all(p["of_link_rate"] >= 0.9 for p in later),
         "detail": ", ".join(f"pass {p['pass']}: {p['of_link_rate'] * 100:.0f} %" for p in later)},
        {"target": "cutover downtime ≤ shutdown + last delta / link rate + boot + 2 s",
         "met": warm["downtime_s"] <= bound, "detail": f"{warm['downtime_s']} s vs {bound} s"},
    ]
    steal_pct = steal.percent()
    report = {
        "benchmark": "warm migration, issue 5",
        "started": started_wall.isoformat(timespec="seconds"),
        "environment": {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                        "qemu": run(["qemu-img", "--version"]).stdout.splitlines()[0],
                        "git": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip(),
                        "cpu_steal_pct": steal_pct},
        "config": {"churn_mib_s": options.churn_mib_s, "interval_s": options.interval, "passes": options.passes,
                   "link": "veth, tc tbf 1 Gbit/s both ends"},
        "boot_s": boot_s, "bound_s": bound, "warm": warm, "cold": cold, "targets": targets,
        "notes": ["'changed' is what the dirty bitmap marked (64 KiB granularity) and the destination wrote; "
                  "the guest writes 1 MiB blocks, so it equals the data the guest wrote in the pass.",
                  "'copy s' is the destination's time for the pass (pull and digest check); 'pass s' runs "
                  "from the snapshot to the source's cleanup and adds the snapshot, the hand-over and up to "
                  "one poll interval (250 ms) before the source notices the end. The rate target is judged "
                  "on the copy.",
                  f"CPU time the hypervisor under this machine gave to others during the run: "
                  f"{steal_pct} % (/proc/stat's steal)."],
    }
    os.makedirs(options.out_dir, exist_ok=True)
    with open(os.path.join(options.out_dir, "warm.json"), "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    with open(os.path.join(options.out_dir, "warm.md"), "w") as handle:
        handle.write(markdown(report))
    for t in targets:
        log(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
