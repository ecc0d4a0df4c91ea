#!/usr/bin/env bash
# Sensor message -> result published, through a loopback Mosquitto, on a tiny model (the
# demo classifier without windows: one 256-sample JSON message, one result): messages per
# second and end-to-end p50/p99 latency at rising offered rates, next to the same model
# called in-process (`edge-agent bench`, the baseline), and the agent's peak RSS.
#
#   tests/bench/mqtt.sh [BINARY] [MESSAGES_PER_RUN] [3.1.1|5]
#
# The load driver is Mosquitto's own C client (`mosquitto_pub -l`, QoS 1) fed by a small
# pacing script; results are collected by `mosquitto_sub` with its receive time stamps.
# Latency is receive time minus send time, both read from this machine's clock.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
N="${2:-20000}"
# MQTT version of the agent's connection: 3.1.1 or 5.
VERSION="${3:-3.1.1}"
[ -x "$BIN" ] || { echo "mqtt.sh: build $BIN first (cargo build --release)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "mqtt.sh: needs mosquitto and mosquitto-clients (tests/run installs them)" >&2; exit 2; }
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
    [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# The demo model without windows.
mkdir -p "$TMP/flat"
cp configs/models/vibration/* "$TMP/flat/"
python3 - "$TMP/flat/model.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read().replace('name = "vibration"', 'name = "flat"', 1)
s = s.replace("[pre.window]\nsize = 256\nhop = 128\n", "")
open(p, "w").write(s)
PY

. tests/bench/broker_env.sh
start_broker "max_queued_messages 0"

cat > "$TMP/agent.toml" <<TOML
[agent]
device_id = "bench"
state_dir = "$TMP/state"
[output]
stdout = false
[[model]]
path = "$TMP/flat"
[mqtt]
host = "127.0.0.1"
port = $PORT
version = "$VERSION"
[[mqtt.sensor]]
topic = "sensors/+/accel"
model = "flat"
stream_level = 1
[telemetry]
interval_s = 0
TOML
"$BIN" run --config "$TMP/agent.toml" --quiet 2> "$TMP/agent.log" &
AGENT=$!
for _ in $(seq 100); do grep -q "MQTT connected" "$TMP/agent.log" && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(uname -m); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "command: tests/bench/mqtt.sh $BIN $N $VERSION"
echo
echo "baseline, in-process (edge-agent bench, 1 thread):"
"$BIN" bench --model "$TMP/flat" -n 20000 --json 2>/dev/null | python3 -c '
import json, sys
e = json.load(sys.stdin)["engine"]
print("  engine p50 %.3f ms, p99 %.3f ms, %.0f inferences/s" % (e["p50_ms"], e["p99_ms"], e["throughput_rps"]))
' || echo "  (bench output not understood)"
echo
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$AGENT/status"; }
echo "agent RSS idle after start: $(rss) MiB"
echo
printf "%-10s %10s %10s %10s %10s %12s\n" offered/s "results/s" "p50 ms" "p99 ms" "lost" "RSS MiB"
for RATE in ${RATES:-1000 2000 5000 10000 0}; do
    RUN="$TMP/run-$RATE"
    mkdir -p "$RUN"
    mosquitto_sub -p "$PORT" -q 1 -t 'edge/bench/results/#' -F '%U %p' > "$RUN/recv.txt" &
    SUB=$!
    sleep 0.3
    # Four sensors; the pacing script writes each message when it is due and records
    # when it handed it over.
    python3 - "$RATE" "$N" "$RUN" "$PORT" <<'PY'
import json, math, subprocess, sys, time
rate, n, run, port = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = json.dumps([round(math.sin(i * 0.3) * 0.1, 3) for i in range(256)])
pubs = [subprocess.Popen(["mosquitto_pub", "-p", port, "-q", "1", "-l", "-t", f"sensors/s{k}/accel"],
                         stdin=subprocess.PIPE) for k in range(4)]
sent = open(f"{run}/sent.txt", "w")
start = time.time()
for i in range(n):
    if rate > 0:
        due = start + i / rate
        d = due - time.time()
        if d > 0:
            time.sleep(d)
    t = time.time()
    p = pubs[i % 4].stdin
    p.write(f'{{"id":{i},"data":{data}}}\n'.encode())
    p.flush()
    sent.write(f"{i} {t:.6f}\n")
for p in pubs:
    p.stdin.close()
for p in pubs:
    p.wait()
PY
    # Wait until every result is in, or none came for 5 s.
    LAST=-1
    STILL=0
    while true; do
        sleep 1
        NOW=$(wc -l < "$RUN/recv.txt")
        [ "$NOW" -ge "$N" ] && break
        if [ "$NOW" -eq "$LAST" ]; then STILL=$((STILL + 1)); else STILL=0; fi
        [ "$STILL" -ge 5 ] && break
        LAST=$NOW
    done
    kill $SUB 2>/dev/null || true
    python3 - "$RUN" "$N" "$RATE" <<'PY'
import json, sys
run, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sent = {}
for line in open(f"{run}/sent.txt"):
    i, t = line.split()
    sent[int(i)] = float(t)
lat, first, last, seen = [], None, None, set()
for line in open(f"{run}/recv.txt"):
    t, payload = line.split(" ", 1)
    t = float(t)
    r = json.loads(payload)
    i = r["input_id"]
    if i in seen:
        continue
    seen.add(i)
    lat.append((t - sent[i]) * 1000)
    last = t if last is None else max(last, t)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
span = last - min(sent.values()) if last else float("nan")
print("%-10s %10.0f %10.2f %10.2f %10d" % (rate if rate != "0" else "max", len(seen) / span, q(0.5), q(0.99), n - len(seen)), end="")
PY
    printf " %12s\n" "$(rss)"
done
echo
grep -E "VmHWM|VmRSS" /proc/$AGENT/status | sed 's/^/agent /'
grep -E "WARN|ERROR" "$TMP/agent.log" | head -5 | sed 's/^/agent log: /'
