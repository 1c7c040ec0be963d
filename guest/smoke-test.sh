#!/usr/bin/env bash
# Boots the ferry test guest under TCG and checks that its workloads run:
#   smoke-test.sh OUTDIR
# Builds (or reuses) the guest in OUTDIR first.  Waits, bounded, for
# "tick 3", a "dirtier" line and "durable seq=" >= 10, stops QEMU, then
# checks with disk-check that every record reported durable is on the disk.
# Exit: 0 pass, 1 fail, 77 skipped (no QEMU).
#
# Environment: QEMU (default qemu-system-x86_64), FERRY_DISK_CHECK (default
# OUTDIR/disk-check), SMOKE_TIMEOUT seconds (default 120).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

GUEST_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTDIR=$1
QEMU=${QEMU:-qemu-system-x86_64}
TIMEOUT=${SMOKE_TIMEOUT:-120}
readonly POLL_INTERVAL=0.2
readonly WANT_DURABLE=10

log() { echo "smoke-test: $*" >&2; }

if ! command -v "$QEMU" >/dev/null; then
    log "SKIP: $QEMU not found"
    exit 77
fi

"$GUEST_SRC/build-guest.sh" "$OUTDIR"
DISK_CHECK=${FERRY_DISK_CHECK:-$OUTDIR/disk-check}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-smoke.XXXXXX")
QEMU_PID=
cleanup() {
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    log "FAIL: $*"
    log "---- serial log (last 40 lines) ----"
    tail -n 40 "$TMP/serial.log" >&2 2>/dev/null || true
    log "---- qemu stderr ----"
    cat "$TMP/qemu.err" >&2 2>/dev/null || true
    exit 1
}

truncate -s 64M "$TMP/disk.raw"
: >"$TMP/serial.log"

start_ns=$(date +%s%N)
"$QEMU" -accel tcg -m 256 -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$OUTDIR/vmlinuz" -initrd "$OUTDIR/initramfs.img" \
    -append 'console=ttyS0 quiet panic=-1 ferry.dirty_mib=32 ferry.dirty_rate=10 ferry.diskwriter=/dev/vda' \
    -drive "file=$TMP/disk.raw,format=raw,if=virtio" \
    -serial "file:$TMP/serial.log" \
    2>"$TMP/qemu.err" &
QEMU_PID=$!

last_durable() {
    { grep -o 'durable seq=[0-9]*' "$TMP/serial.log" || true; } |
        tail -n1 | cut -d= -f2
}

first_tick_ms=
deadline=$((SECONDS + TIMEOUT))
while :; do
    kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited early"
    if [[ -z $first_tick_ms ]] && grep -q '^tick 1 boot_id=' "$TMP/serial.log"; then
        first_tick_ms=$((($(date +%s%N) - start_ns) / 1000000))
        log "first tick after ${first_tick_ms} ms"
    fi
    durable=$(last_durable)
    if grep -q '^tick 3 boot_id=' "$TMP/serial.log" &&
        grep -q '^dirtier mib=32 rate=10' "$TMP/serial.log" &&
        [[ -n $durable ]] && ((durable >= WANT_DURABLE)); then
        break
    fi
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for tick 3, dirtier and durable seq>=$WANT_DURABLE"
    sleep "$POLL_INTERVAL"
done

grep -q '^ferry-guest boot_id=' "$TMP/serial.log" || fail "no ferry-guest boot_id line"
if grep -q 'insmod .* failed' "$TMP/serial.log"; then
    fail "a kernel module failed to load"
fi

kill "$QEMU_PID"
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=

# Only now is the last printed seq final: everything the guest called
# durable must be on the disk.
durable=$(last_durable)
log "last durable seq on console: $durable"
if ! report=$("$DISK_CHECK" --expect-at-least "$durable" "$TMP/disk.raw"); then
    log "disk-check: $report"
    fail "disk-check failed"
fi
log "disk-check: $report"
boot_ids=$(sed -n 's/.*"boot_ids": \([0-9]*\).*/\1/p' <<<"$report")
[[ $boot_ids == 1 ]] || fail "expected records from one boot, got boot_ids=$boot_ids"
log "PASS"
