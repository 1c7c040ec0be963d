#!/bin/sh
# Captures the QMP schema of the installed QEMU, so unit tests can check every
# command ferry builds against what the real binary accepts.
#
# Usage: scripts/capture-qmp-schema.sh OUTFILE [QEMU_BINARY]
#
# Writes OUTFILE (pretty JSON array of SchemaInfo) and OUTFILE's sibling
# <name>.version with the QEMU version. A q35 machine with TCG is used rather
# than -M none because some commands are only registered for real machines.
set -eu

out=${1:?usage: $0 OUTFILE [QEMU_BINARY]}
qemu=${2:-qemu-system-x86_64}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

# QEMU answers each line in order; quit last so it exits by itself.
printf '%s\n' \
  '{"execute":"qmp_capabilities"}' \
  '{"execute":"query-version","id":"version"}' \
  '{"execute":"query-qmp-schema","id":"schema"}' \
  '{"execute":"quit"}' |
  "$qemu" -M q35 -accel tcg -m 64 -S -nodefaults -display none -qmp stdio >"$tmp"

python3 - "$tmp" "$out" <<'PY'
import json, sys, os
src, out = sys.argv[1], sys.argv[2]
schema = version = None
with open(src) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("id") == "schema":
            schema = msg["return"]
        elif msg.get("id") == "version":
            version = msg["return"]
if schema is None or version is None:
    sys.exit("capture-qmp-schema: QEMU did not answer query-qmp-schema")
with open(out, "w") as f:
    json.dump(schema, f, indent=2, sort_keys=False)
    f.write("\n")
base = out[:-5] if out.endswith(".json") else out
q = version["qemu"]
with open(base + ".version", "w") as f:
    pkg = version.get("package", "").strip()
    f.write("%d.%d.%d%s\n" % (q["major"], q["minor"], q["micro"], " (%s)" % pkg if pkg else ""))
PY
