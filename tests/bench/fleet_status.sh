#!/usr/bin/env bash
# `edge-agent fleet status` on a synthetic fleet: DEVICES retained statuses (default
# 10,000; 60% on vibration 1, 40% on 2, every tenth device also running a second model,
# 5% offline) published to a loopback Mosquitto, then read back RUNS times each by
#   - the baseline: `mosquitto_sub -C DEVICES` on edge/+/status (the raw retained read),
#   - `fleet status --json` and `fleet status` (the table),
# each under /usr/bin/time for its wall time and peak RSS. Prints the medians and the
# ratio to the baseline, and checks that every run saw every device.
#
#   tests/bench/fleet_status.sh [BINARY] [DEVICES] [RUNS] [BROKER_LINE...]
#
# BROKER_LINEs go into the Mosquitto configuration. Mosquitto's default
# `max_queued_messages 1000` drops retained messages a client cannot take fast enough;
# past about 50,000 devices pass "max_queued_messages 0" (docs/fleet.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
DEVICES="${2:-10000}"
RUNS="${3:-3}"
shift $(($# < 3 ? $# : 3))
[ -x "$BIN" ] || BIN=target/debug/edge-agent
[ -x "$BIN" ] || { echo "fleet_status.sh: build the agent first (cargo build)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "fleet_status.sh: needs mosquitto (tests/run installs it)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "fleet_status.sh: needs GNU time (/usr/bin/time)" >&2; exit 2; }
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

. tests/bench/broker_env.sh
start_broker "$@"

# One MQTT 3.1.1 connection publishing every status retained at QoS 0, then a QoS 1
# marker whose PUBACK says the broker has handled everything before it.
python3 - "$PORT" "$DEVICES" <<'PY'
import json, socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])

def remaining(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def packet(kind, body):
    return bytes([kind]) + remaining(len(body)) + body

def utf8(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b

s = socket.create_connection(("127.0.0.1", port))
s.sendall(packet(0x10, utf8("MQTT") + bytes([4, 2]) + struct.pack(">H", 60) + utf8("bench-fleet")))
assert s.recv(4)[:1] == b"\x20", "no CONNACK"
buf = bytearray()
for i in range(n):
    models = {"vibration": "1" if i % 5 < 3 else "2"}
    if i % 10 == 0:
        models["keyword"] = "7"
    state = "offline" if i % 20 == 0 else "online"
    body = json.dumps({"state": state, "version": "0.1.0", "models": models, "since": "2026-12-07T10:00:00Z"})
    buf += packet(0x31, utf8(f"edge/dev-{i:06d}/status") + body.encode())
    if len(buf) > 1 << 16:
        s.sendall(buf)
        buf.clear()
buf += packet(0x32, utf8("bench/done") + struct.pack(">H", 1) + b"x")
s.sendall(buf)
while s.recv(4)[:1] != b"\x40":
    pass
s.sendall(b"\xe0\x00")
PY

measure() { # label, command...: appends "label wall_s peak_kb" to $TMP/results
    local label="$1"; shift
    /usr/bin/time -f "%e %M" -o "$TMP/time" "$@" > "$TMP/out" 2> "$TMP/err" || {
        echo "fleet_status.sh: $label failed:" >&2; cat "$TMP/err" >&2; exit 1; }
    echo "$label $(cat "$TMP/time")" >> "$TMP/results"
}

FLEET=("$BIN" fleet status --host 127.0.0.1 --port "$PORT")
for _ in $(seq "$RUNS"); do
    measure baseline mosquitto_sub -h 127.0.0.1 -p "$PORT" -t 'edge/+/status' -C "$DEVICES" -W 120
    [ "$(wc -l < "$TMP/out")" -eq "$DEVICES" ] || { echo "fleet_status.sh: the baseline missed statuses" >&2; exit 1; }
    measure json "${FLEET[@]}" --json
    python3 - "$TMP/out" "$DEVICES" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
s = doc["summary"]
assert doc["complete"] and s["devices"] == n, (doc["complete"], s["devices"])
assert s["offline"] == (n + 19) // 20, s["offline"]
PY
    measure table "${FLEET[@]}"
done

python3 - "$TMP/results" "$DEVICES" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, kb = line.split()
    rows.setdefault(label, []).append((float(wall), int(kb)))
base = statistics.median(w for w, _ in rows["baseline"])
print(f"fleet status on {sys.argv[2]} retained statuses (medians of {len(rows['baseline'])} runs)")
print("| run | wall s | peak RSS MiB | wall / baseline |")
print("|---|---|---|---|")
for label, what in [("baseline", "mosquitto_sub -C N (baseline)"), ("json", "fleet status --json"), ("table", "fleet status (table)")]:
    wall = statistics.median(w for w, _ in rows[label])
    rss = statistics.median(k for _, k in rows[label]) / 1024
    print(f"| {what} | {wall:.2f} | {rss:.1f} | {wall / base:.2f} |")
PY
