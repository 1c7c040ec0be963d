#!/usr/bin/env python3
"""The migration stream is encrypted: a capture on the veth between the
hosts never shows the plaintext marker the guest keeps in memory. The
same capture of a --no-tls migration must show it, which proves the
capture would catch a leak."""

import os
import signal
import subprocess
import time

from ferrytest import Cluster, ensure_guest, guest_spec, log, main, wait_for_console, wait_for_ticks

MARKER = "FERRY-SECRET-MARKER-7f3a9c"


def capture_migration(cluster, source, destination, extra_args):
    pcap = os.path.join(cluster.workdir, f"capture-{'plain' if '--no-tls' in extra_args else 'tls'}.pcap")
    veth = source.veth
    tcpdump = subprocess.Popen(source.prefix() + ["tcpdump", "-i", veth, "-U", "-s", "0", "-w", pcap, "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on" once the capture runs.
    line = tcpdump.stderr.readline().decode()
    assert "listening" in line, f"tcpdump did not start: {line}"
    try:
        result = source.cli("migrate", "vm1", destination.url, "--live", *extra_args)
        log(result.stdout.strip())
        assert "migration completed" in result.stdout
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=30)
    with open(pcap, "rb") as handle:
        data = handle.read()
    log(f"captured {len(data)} bytes")
    return data


def test():
    kernel, initrd = ensure_guest()
    cluster = Cluster(need_netns=True)
    a, b = cluster.a, cluster.b
    spec = guest_spec(os.path.join(cluster.workdir, "vm1.json"), "vm1", kernel, initrd,
                      memory_mib=256, dirty_mib=32, dirty_rate=5, marker=MARKER)
    a.cli("vm", "define", spec)
    a.cli("vm", "start", "vm1")
    wait_for_console(a, "vm1", r"dirtier mib=32")
    tick, boot_id = wait_for_ticks(a, "vm1", beyond=1)

    # Uncompressed, so that a leak would show the marker: strategy auto
    # compresses a guest whose memory compresses, which would hide it.
    # Multifd, so that its channels' TLS is covered besides the main one.
    uncompressed = ["--strategy", "manual", "--parallel-connections", "2"]
    encrypted = capture_migration(cluster, a, b, uncompressed)
    assert len(encrypted) > 32 * 1024 * 1024, "the capture holds the migration stream"
    assert MARKER.encode() not in encrypted, "plaintext marker found in a TLS migration stream"
    tick, _ = wait_for_ticks(b, "vm1", beyond=tick, boot_id=boot_id)

    plain = capture_migration(cluster, b, a, uncompressed + ["--no-tls"])
    assert MARKER.encode() in plain, "control: a --no-tls stream should show the marker"
    wait_for_ticks(a, "vm1", beyond=tick, boot_id=boot_id)


if __name__ == "__main__":
    main(test)
