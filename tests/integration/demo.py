#!/usr/bin/env python3
"""make demo: two hosts, a real guest, live-migrated A→B and back while it
dirties memory, with a summary per hop."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FERRY_BUILD_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))
os.environ.setdefault("FERRY_GUEST_DIR", os.path.join(os.environ["FERRY_BUILD_DIR"], "guest-image"))

from ferrytest import (Cluster, ensure_guest, guest_spec, job, log, main,  # noqa: E402
                       wait_for_console, wait_for_ticks)


def hop(source, destination, number, boot_id, tick):
    log(f"hop {number}: {source.name} → {destination.name} (live, TLS)")
    result = source.cli("migrate", "vm1", destination.url, "--live")
    info = job(source, "vm1", completed=True)
    stats = info["stats"]
    total_ms = stats["total-time"]
    sent = stats["ram"]["transferred"]
    paused = stats.get("ferry-guest-downtime-ms")
    print(f"  hop {number} {source.name} → {destination.name}: total {total_ms} ms, "
          f"downtime {stats['downtime']} ms (guest paused {paused} ms, stop to resume), "
          f"sent {sent / 2**20:.1f} MiB, "
          f"throughput {sent / 2**20 / max(total_ms / 1000, 0.001):.1f} MiB/s, "
          f"{stats['ram']['dirty-sync-count']} passes", flush=True)
    assert "migration completed" in result.stdout
    tick, _ = wait_for_ticks(destination, "vm1", beyond=tick, boot_id=boot_id)
    log(f"  guest continues on {destination.name}: tick {tick}, same boot {boot_id}")
    return tick


def demo():
    log("building the guest kit (cached after the first run)")
    kernel, initrd = ensure_guest()
    cluster = Cluster()
    a, b = cluster.a, cluster.b
    where = "network namespaces joined by veth" if cluster.root else "loopback (not root)"
    log(f"two hosts on {where}: {a.name} {a.url}, {b.name} {b.url}")
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=512, dirty_mib=64, dirty_rate=20)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    log("guest booting on hosta (TCG)")
    wait_for_console(a, "vm1", r"dirtier mib=64")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=2)
    log(f"guest running on hosta: tick {tick}, boot {boot_id}, dirtying 64 MiB at 20 MB/s")
    tick = hop(a, b, 1, boot_id, tick)
    tick = hop(b, a, 2, boot_id, tick)
    boots = len(re.findall(r"ferry-guest boot_id=", a.console("vm1")))
    assert boots == 1, "the guest rebooted"
    log("demo done: the guest ran through both hops without a reboot")


if __name__ == "__main__":
    main(demo)
