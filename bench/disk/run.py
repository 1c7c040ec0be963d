#!/usr/bin/env python3
"""Disk copy benchmark (issue 4): ferry's copy engine against `nbdcopy` and
`qemu-img convert` over NBD, each with its defaults, on the same two hosts
(network namespaces joined by veth), the same image (8 GiB virtual qcow2,
about 2 GiB of incompressible data in scattered extents) and the same
source export (qemu-nbd, read-only, TLS with client certificates), on an
unshaped and a 1 Gbit/s-shaped link.

    python3 bench/disk/run.py                 # writes bench/results/disk.{json,md}
    python3 bench/disk/run.py --links unshaped --data-mib 512 --out-dir /tmp/x

Measured per run: wall time, bytes on the wire (the source veth's tx bytes:
payload, TLS and TCP/IP headers), the destination's allocated size. ferry
runs as a whole cold migration (`ferry migrate --offline --copy-storage`),
so its time also includes the checks, volume creation, the export's start
and the digest comparison with the source; the peers only copy (their
source export is started before their clock). Each run's copy is durable
when its clock stops (ferry flushes as it goes, nbdcopy gets --flush,
qemu-img flushes on close), and every run starts after a sync, so no run
pays for an earlier one's writeback. Each tool runs --repeat times per
link, interleaved; the median is compared.
"""

import argparse
import datetime
import json
import os
import platform
import random
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

from ferrytest import FERRY, FERRYD, Cluster, StealMeter, ensure_guest, guest_spec, job, log, run  # noqa: E402

MIB = 1024 * 1024
VIRTUAL_GIB = 8
EXTENT_MIB = 16
NBD_PORT = 10809
LINKS = {"unshaped": "veth, unshaped", "1gbit": "veth, tc tbf 1 Gbit/s both ends"}
TOOLS = ("ferry", "nbdcopy", "qemu-img-convert")
TARGET_WIRE_FACTOR = 1.05


def make_image(path, data_mib, seed=4):
    """8 GiB qcow2 with data_mib of random bytes in EXTENT_MIB extents
    scattered over the disk (fixed seed: the same layout every run)."""
    raw = path + ".raw"
    rng = random.Random(seed)
    slots = (VIRTUAL_GIB * 1024) // EXTENT_MIB
    chosen = sorted(rng.sample(range(slots), data_mib // EXTENT_MIB))
    with open(raw, "wb") as handle:
        handle.truncate(VIRTUAL_GIB * 1024 * MIB)
        for slot in chosen:
            handle.seek(slot * EXTENT_MIB * MIB)
            handle.write(os.urandom(EXTENT_MIB * MIB))
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path])
    os.unlink(raw)
    return len(chosen) * EXTENT_MIB * MIB


def allocated(path):
    return os.stat(path).st_blocks * 512


class WireProfile:
    """Samples hosta's transmitted bytes every 50 ms (from /proc/PID/net/dev
    of a process in its namespace, no process per sample) while a tool
    runs: how fast the copy gets going, its steady rate, and its tail."""

    def __init__(self, cluster):
        self.host = cluster.a
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.time(), self.host.tx_bytes()))
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self, data_bytes):
        if len(self.samples) < 2:
            return None
        t0, b0 = self.samples[0]

        def when(fraction):
            for t, b in self.samples:
                if b - b0 >= fraction * data_bytes:
                    return t - t0
            return None
        t02, t10, t90, t98, t100 = (when(f) for f in (0.02, 0.10, 0.90, 0.98, 0.999))
        return {"to_2pct_s": round(t02, 2) if t02 is not None else None,
                "steady_mib_s": round(0.8 * data_bytes / MIB / (t90 - t10), 1) if t10 and t90 else None,
                "last_2pct_s": round(t100 - t98, 2) if t98 is not None and t100 is not None else None}


def set_link(cluster, link):
    if link == "1gbit":
        cluster.shape("1gbit")
    else:
        for host in (cluster.a, cluster.b):
            host.run_in("tc", "qdisc", "del", "dev", host.veth, "root", check=False)


def source_export(cluster, image):
    """qemu-nbd on hosta: read-only, TLS with client certificates (as ferry's)."""
    creds = os.path.join(cluster.a.state_dir, "qemu-tls")
    argv = cluster.a.prefix() + [
        "qemu-nbd", "--read-only", "--format", "qcow2", "--export-name", "disk0", "--persistent",
        "--shared", "16", "--bind", cluster.a.address, "--port", str(NBD_PORT),
        "--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={creds},verify-peer=on",
        "--tls-creds", "tls0", image]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = cluster.b.run_in("bash", "-c", f"exec 3<>/dev/tcp/{cluster.a.address}/{NBD_PORT}", check=False)
        if probe.returncode == 0:
            return process
        time.sleep(0.1)
    process.kill()
    raise SystemExit("qemu-nbd on hosta did not listen")


def run_peer(cluster, tool, image, destination):
    """nbdcopy or qemu-img convert on hostb pulling from hosta's export
    into a local qcow2 (nbdcopy writes through a local qemu-nbd)."""
    b_creds = os.path.join(cluster.b.state_dir, "qemu-tls")
    export = source_export(cluster, image)
    helper = None
    try:
        if tool == "nbdcopy":
            run(["qemu-img", "create", "-q", "-f", "qcow2", destination, f"{VIRTUAL_GIB}G"])
            socket = destination + ".sock"
            helper = subprocess.Popen(["qemu-nbd", "--format", "qcow2", "--socket", socket, "--shared", "16",
                                       "--persistent", destination], stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while not os.path.exists(socket) and time.monotonic() < deadline:
                time.sleep(0.05)
            # --flush: the copy is on disk when nbdcopy ends, as ferry's is
            # (ferry flushes as it goes; it resumes from what is durable).
            argv = cluster.b.prefix() + [
                "nbdcopy", "--flush", f"nbds://{cluster.a.address}:{NBD_PORT}/disk0?tls-certificates={b_creds}",
                f"nbd+unix:///?socket={socket}"]
        else:
            argv = cluster.b.prefix() + [
                "qemu-img", "convert", "-O", "qcow2",
                "--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={b_creds}",
                "--image-opts",
                f"driver=nbd,server.type=inet,server.host={cluster.a.address},server.port={NBD_PORT},"
                f"export=disk0,tls-creds=tls0",
                destination]
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"{tool} failed: {result.stderr}")
        return elapsed
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait()
        export.terminate()
        export.wait()


def run_ferry(cluster, vm):
    started = time.monotonic()
    cluster.a.cli("migrate", vm, cluster.b.url, "--offline", "--copy-storage", "--persistent")
    elapsed = time.monotonic() - started
    info = job(cluster.a, vm, completed=True)
    events = [("source", event) for event in info.get("events", [])]
    events += [("destination", event) for event in job(cluster.b, vm, completed=True).get("events", [])]
    events.sort(key=lambda pair: pair[1]["time_us"])
    first = events[0][1]["time_us"] if events else 0
    # Where the time outside the copy goes: both sides' events (one clock:
    # the hosts share a machine), in seconds from the first.
    timeline = [[round((event["time_us"] - first) / 1e6, 3), side, event["message"]] for side, event in events]
    return elapsed, info["stats"]["ferry-copy"], timeline


def one_run(cluster, tool, link, kernel, initrd, image_a, data_bytes):
    a_pool = os.path.join(cluster.a.state_dir, "pools", "default")
    b_pool = os.path.join(cluster.b.state_dir, "pools", "default")
    destination = os.path.join(b_pool, "bench.qcow2")
    for path in (destination, destination + ".sock"):
        if os.path.exists(path):
            os.unlink(path)
    # Every run starts with nothing dirty in the page cache: the kernel
    # writing back an earlier run's data would slow the next one.
    os.sync()
    before = cluster.a.tx_bytes()
    record = {"tool": tool, "link": link}
    steal = StealMeter()
    if tool == "ferry":
        vm = "bench"
        spec = guest_spec(os.path.join(cluster.workdir, "bench.json"), vm, kernel, initrd,
                          disks=[{"volume": "bench.qcow2", "format": "qcow2"}])
        cluster.a.cli("vm", "define", spec)
        with WireProfile(cluster) as profile:
            elapsed, copy, record["ferry_timeline"] = run_ferry(cluster, vm)
        record["ferry_bytes_read"] = copy["bytes_read"]
        # The copy and verification alone (the destination's pull), without
        # the migration's checks, exports, definition and the CLI.
        record["ferry_copy_s"] = round(copy["elapsed_ms"] / 1000, 2)
        cluster.b.cli("vm", "undefine", vm)
        cluster.a.cli("vm", "undefine", vm)
    else:
        with WireProfile(cluster) as profile:
            elapsed = run_peer(cluster, tool, image_a, destination)
    record["wire_profile"] = profile.summary(data_bytes)
    wire = cluster.a.tx_bytes() - before
    record.update({
        "cpu_steal_pct": steal.percent(),
        "seconds": round(elapsed, 2),
        "wire_bytes": wire,
        "data_bytes": data_bytes,
        "wire_over_data": round(wire / data_bytes, 3),
        "mib_s_of_data": round(data_bytes / MIB / elapsed, 1),
        "source_allocated": allocated(image_a),
        "destination_allocated": allocated(destination),
    })
    identical = subprocess.run(["qemu-img", "compare", "-q", "-U", image_a, destination]).returncode == 0
    record["identical"] = identical
    os.unlink(destination)
    return record


def summarize(runs):
    """One row per link and tool: the median run (by time) of its repeats,
    with every repeat's time, so noise on a shared 2-core host shows."""
    rows = []
    for link in dict.fromkeys(r["link"] for r in runs):
        for tool in dict.fromkeys(r["tool"] for r in runs if r["link"] == link):
            same = sorted((r for r in runs if r["link"] == link and r["tool"] == tool), key=lambda r: r["seconds"])
            median = dict(same[len(same) // 2])
            median["all_seconds"] = [r["seconds"] for r in runs if r["link"] == link and r["tool"] == tool]
            median["all_steal_pct"] = [r.get("cpu_steal_pct") for r in runs if r["link"] == link and r["tool"] == tool]
            median["identical"] = all(r["identical"] for r in same)
            median["destination_allocated"] = max(r["destination_allocated"] for r in same)
            rows.append(median)
    return rows


def targets(rows):
    out = []
    for link in sorted({r["link"] for r in rows}):
        by_tool = {r["tool"]: r for r in rows if r["link"] == link}
        ferry, nbdcopy = by_tool.get("ferry"), by_tool.get("nbdcopy")
        if ferry and nbdcopy:
            out.append({"target": f"{link}: at least as fast as nbdcopy (median time)",
                        "met": ferry["seconds"] <= nbdcopy["seconds"],
                        "detail": f"ferry {ferry['seconds']} s, nbdcopy {nbdcopy['seconds']} s"})
        if ferry:
            out.append({"target": f"{link}: bytes on the wire ≤ {TARGET_WIRE_FACTOR}× the data",
                        "met": ferry["wire_over_data"] <= TARGET_WIRE_FACTOR,
                        "detail": f"{ferry['wire_over_data']}×"})
            out.append({"target": f"{link}: destination allocated ≤ source (largest of the repeats)",
                        "met": ferry["destination_allocated"] <= ferry["source_allocated"],
                        "detail": f"{ferry['destination_allocated'] / 1024:.0f} KiB vs "
                                  f"{ferry['source_allocated'] / 1024:.0f} KiB"})
    return out


def every_run(row):
    steal = row.get("all_steal_pct") or [None] * len(row["all_seconds"])
    return ", ".join(f"{t} ({s} %)" if s is not None else str(t) for t, s in zip(row["all_seconds"], steal))


def markdown(report):
    lines = [f"# Disk copy benchmark ({report['started']})", "",
             f"Image: {VIRTUAL_GIB} GiB qcow2, {report['config']['data_mib']} MiB of random data in "
             f"{EXTENT_MIB} MiB extents. Hosts: two network namespaces on one machine "
             f"({report['environment']['cpus']} CPUs), TLS on every run. Rerun: `python3 bench/disk/run.py`.",
             f"Each tool ran {report['config']['repeat']} times per link, interleaved; the row is the median run "
             "(every run's time in the last column, with the CPU time the hypervisor took from the machine "
             "during it: a run with a few % of steal is slower for any tool).",
             "", "| link | tool | time s (median) | MiB/s (data) | wire / data | dest allocated KiB | src allocated KiB "
             "| identical | every run s (steal %) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        lines.append(f"| {r['link']} | {r['tool']} | {r['seconds']} | {r['mib_s_of_data']} | {r['wire_over_data']} | "
                     f"{r['destination_allocated'] // 1024} | {r['source_allocated'] // 1024} | {r['identical']} | "
                     f"{every_run(r)} |")
    lines += ["", "## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- {'met' if t['met'] else '**missed**'}: {t['target']} ({t['detail']})")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report.get("notes", [])] + [""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", default=",".join(LINKS))
    parser.add_argument("--data-mib", type=int, default=2048)
    parser.add_argument("--tools", default=",".join(TOOLS), help="a subset of " + ",".join(TOOLS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per link and tool (the median is reported)")
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/disk/run.py needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    for program in ("nbdcopy", "qemu-nbd", "qemu-img"):
        if subprocess.run(["which", program], capture_output=True).returncode != 0:
            print(f"{program} is missing (scripts/install-deps.sh installs it)", file=sys.stderr)
            return 2
    started_wall = datetime.datetime.now().astimezone()
    started = time.monotonic()
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True)
    image_a = os.path.join(cluster.a.state_dir, "pools", "default", "bench.qcow2")
    log(f"making the image: {VIRTUAL_GIB} GiB virtual, {options.data_mib} MiB of data")
    data_bytes = make_image(image_a, options.data_mib)
    runs = []
    for link in [link for link in options.links.split(",") if link]:
        set_link(cluster, link)
        tools = [tool for tool in options.tools.split(",") if tool in TOOLS]
        for repeat, tool in [(repeat, tool) for repeat in range(options.repeat) for tool in tools]:
            log(f"{tool} over {link} ({repeat + 1}/{options.repeat})")
            record = one_run(cluster, tool, link, kernel, initrd, image_a, data_bytes)
            log(f"  {record['seconds']} s, {record['mib_s_of_data']} MiB/s, wire/data {record['wire_over_data']}, "
                f"dest {record['destination_allocated'] // MIB} MiB, identical {record['identical']}")
            runs.append(record)
    set_link(cluster, "unshaped")
    report = {
        "benchmark": "disk copy, issue 4",
        "started": started_wall.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "environment": {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                        "qemu": run(["qemu-img", "--version"]).stdout.splitlines()[0],
                        "nbdcopy": run(["nbdcopy", "--version"]).stdout.splitlines()[0],
                        "git": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()},
        "config": {"virtual_gib": VIRTUAL_GIB, "data_mib": options.data_mib, "extent_mib": EXTENT_MIB,
                   "repeat": options.repeat,
                   "tools": {"ferry": "ferry migrate NAME DEST --offline --copy-storage --persistent",
                             "nbdcopy": "nbdcopy --flush nbds://A/disk0 nbd+unix:///?socket=local-qemu-nbd "
                                        "(defaults, plus a flush at the end so the copy is durable as ferry's)",
                             "qemu-img-convert": "qemu-img convert -O qcow2 (nbd+TLS source, defaults)"}},
        "runs": runs,
        "notes": ["ferry's time is its whole cold migration as the CLI sees it: the destination's checks, "
                  "volume creation and export, the copy with every chunk's digest compared with the source's, "
                  "the definition on the destination, and the CLI's own start and TLS set-up; 'ferry_copy_s' in "
                  "the JSON is the copy and verification alone. The peers only copy: their source export is "
                  "started before their clock.",
                  "Both hosts share the same 2 CPUs: unshaped, the copy is bound by the CPU (TLS on both ends, "
                  "the servers' copies, the digests); at 1 Gbit/s by the link (1e9/8 bytes/s = 119.2 MiB/s, "
                  "of which TCP/TLS leave about 111 MiB/s). 'cpu_steal_pct' in the JSON is the CPU time the "
                  "hypervisor under this machine gave to others during the run (/proc/stat); it accrues only while "
                  "the machine wants the CPU, so a CPU-bound (unshaped) run shows more of it than a link-bound "
                  "one.",
                  "'wire_profile' in the JSON samples hosta's transmitted bytes every 50 ms: steady_mib_s is the "
                  "rate between 10 % and 90 % of the data, to_2pct_s the time from the sampler's start (before "
                  "ferry's CLI; before the peers' export and destination are started) to 2 % of the data, "
                  "last_2pct_s the tail. 'ferry_timeline' lists both agents' job events.",
                  "Until 2026-11-23 ferry's qemu-tls directory had no dh-params.pem, so each TLS server object "
                  "(the source's qemu-nbd here) generated Diffie-Hellman parameters at start-up: 0.1-1.7 s before "
                  "the first byte moved, which was most of ferry's deficit at 1 Gbit/s."],
    }
    report["summary"] = summarize(runs)
    report["targets"] = targets(report["summary"])
    os.makedirs(options.out_dir, exist_ok=True)
    with open(os.path.join(options.out_dir, "disk.json"), "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    with open(os.path.join(options.out_dir, "disk.md"), "w") as handle:
        handle.write(markdown(report))
    for t in report["targets"]:
        log(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
