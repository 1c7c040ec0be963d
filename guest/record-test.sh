#!/usr/bin/env bash
# Quick host-only test of the disk record format (no QEMU):
#   record-test.sh FERRY_DISKWRITER DISK_CHECK
# Writes logs with a host build of ferry-diskwriter into plain files and
# checks that disk-check accepts intact logs and rejects damaged ones.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 FERRY_DISKWRITER DISK_CHECK" >&2
    exit 2
fi
WRITER=$1
CHECK=$2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-record-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0

check() { # NAME WANT_EXIT JSON_FRAGMENT [disk-check args...]
    local name=$1 want=$2 fragment=$3 out rc=0
    shift 3
    out=$("$CHECK" "$@" 2>/dev/null) || rc=$?
    if [[ $rc -eq $want && $out == *"$fragment"* ]]; then
        passed=$((passed + 1))
    else
        echo "FAIL $name: exit $rc (want $want), output: $out (want $fragment)" >&2
        failed=$((failed + 1))
    fi
}

img=$TMP/disk.raw
truncate -s 1M "$img"                     # 256 record slots
check empty 0 '"last_seq": 0, "valid": 0, "first_bad_offset": null, "gaps": 0' "$img"
check empty-expect 1 '"last_seq": 0' --expect-at-least 1 "$img"

"$WRITER" --device "$img" --rate 0 --count 40 >"$TMP/w1.log"
grep -q '^durable seq=40$' "$TMP/w1.log" || { echo "FAIL: writer did not report seq 40" >&2; failed=$((failed + 1)); }
check intact 0 '"last_seq": 40, "valid": 40, "first_bad_offset": null, "gaps": 0, "boot_ids": 1' "$img"
check expect-met 0 '"last_seq": 40' --expect-at-least 40 "$img"
check expect-unmet 1 '"last_seq": 40' --expect-at-least 41 "$img"

# A restarted writer continues the sequence.
"$WRITER" --device "$img" --rate 0 --count 10 >"$TMP/w2.log"
grep -q 'resume_seq=41' "$TMP/w2.log" || { echo "FAIL: writer did not resume at 41" >&2; failed=$((failed + 1)); }
check resumed 0 '"last_seq": 50, "valid": 50, "first_bad_offset": null, "gaps": 0' "$img"

# A torn write after the last durable record is not an error.
printf 'FERRYREC-torn' | dd of="$img" bs=1 seek=$((50 * 4096)) conv=notrunc status=none
check torn-tail 0 '"last_seq": 50, "valid": 50, "first_bad_offset": null, "gaps": 0' "$img"

# One flipped byte inside the log is.
cp "$img" "$TMP/flip.raw"
printf 'X' | dd of="$TMP/flip.raw" bs=1 seek=$((9 * 4096 + 2000)) conv=notrunc status=none
check flipped 1 '"last_seq": 50, "valid": 49, "first_bad_offset": 36864, "gaps": 1' "$TMP/flip.raw"

# So is a lost write (zeroed slot) ...
cp "$img" "$TMP/lost.raw"
dd if=/dev/zero of="$TMP/lost.raw" bs=4096 seek=20 count=2 conv=notrunc status=none
check lost 1 '"last_seq": 50, "valid": 48, "first_bad_offset": 81920, "gaps": 2' "$TMP/lost.raw"

# ... and an intact record in the wrong slot (misdirected write).
cp "$img" "$TMP/moved.raw"
dd if="$img" of="$TMP/moved.raw" bs=4096 skip=3 seek=4 count=1 conv=notrunc status=none
check misplaced 1 '"valid": 49, "first_bad_offset": 16384, "gaps": 1' "$TMP/moved.raw"

# qcow2 must be converted first, not read as an empty log.
printf 'QFI\xfb' >"$TMP/fake.qcow2"
truncate -s 64K "$TMP/fake.qcow2"
check qcow2 2 '' "$TMP/fake.qcow2"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
