#!/usr/bin/env bash
# Data per day on the demo: the demo config (simulated pump, vibration model, real time)
# against a loopback Mosquitto, once per way of publishing results (every result, on
# change, a summary per minute), telemetry at its defaults (every 60 s, JSON). Each run
# lasts SECONDS; the agent's own count of bytes to and from the broker (usage.broker in
# /status: TCP payload, so MQTT and TLS framing included) over that time is extrapolated
# to a day. The first reading is taken once the agent is connected, so the connection's
# set-up (once a day on a stable link) is not multiplied.
#
#   tests/bench/data_usage.sh [BINARY] [SECONDS]
#
# Writes docs/bench/data-usage.md (the table and how it was measured) and puts it into
# docs/benchmarks.md as section 7 (tests/bench/report.py --data-usage-only).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
SECONDS_PER_RUN="${2:-300}"
[ -x "$BIN" ] || BIN=target/debug/edge-agent
[ -x "$BIN" ] || { echo "data_usage.sh: build the agent first (cargo build)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "data_usage.sh: needs mosquitto (tests/run installs it)" >&2; exit 2; }
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
API=$((PORT + 1))
cleanup() {
    [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
    [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

. tests/bench/broker_env.sh
start_broker

broker_bytes() {
    python3 - "$API" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status"))
b = s["usage"]["broker"]
print(b["sent"], b["received"], s["mqtt"]["published"])
PY
}

run_mode() {
    local name="$1" mode="$2"
    rm -rf "$TMP/state"
    cat > "$TMP/agent.toml" <<TOML
[agent]
device_id = "demo"
state_dir = "$TMP/state"
[log]
level = "warn"
[output]
stdout = false
[[model]]
path = "$PWD/configs/models/vibration"
publish = $mode
[[source]]
kind = "simulated"
model = "vibration"
stream = "pump-1"
sample_rate = 1000
chunk_ms = 100
speed = 1.0
anomaly_every_s = 6.0
anomaly_len_s = 2.0
[api]
listen = "127.0.0.1:$API"
[mqtt]
host = "127.0.0.1"
port = $PORT
TOML
    "$BIN" run --config "$TMP/agent.toml" --quiet 2> "$TMP/agent.log" &
    AGENT=$!
    for _ in $(seq 100); do
        if broker_bytes > /dev/null 2>&1 && grep -q . <(broker_bytes | awk '$3 > 0'); then break; fi
        sleep 0.1
    done
    read -r s0 r0 p0 < <(broker_bytes)
    sleep "$SECONDS_PER_RUN"
    read -r s1 r1 p1 < <(broker_bytes)
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
    python3 - "$name" "$SECONDS_PER_RUN" "$s0" "$r0" "$p0" "$s1" "$r1" "$p1" <<'PY'
import sys
mode, t = sys.argv[1], float(sys.argv[2])
s0, r0, p0, s1, r1, p1 = map(int, sys.argv[3:])
day = 86400 / t
sent, recv, msgs = (s1 - s0) * day, (r1 - r0) * day, (p1 - p0) * day
print(f"| {mode} | {msgs:,.0f} | {sent / 1e6:,.2f} | {recv / 1e6:,.2f} | {(sent + recv) / 1e6:,.2f} |")
PY
}

OUT=docs/bench/data-usage.md
{
echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') at commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\` by"
echo "\`tests/bench/data_usage.sh\` with \`$BIN\`, ${SECONDS_PER_RUN} s per mode (bytes do not"
echo "depend on the build)."
echo
echo "The demo's setting (\`configs/demo.toml\`: a simulated pump at 1 kHz, the vibration model with"
echo "256-sample windows every 128 samples, so 7.8 results a second) at real time, against a"
echo "loopback Mosquitto without TLS, telemetry at its defaults (every 60 s, JSON). For each way"
echo "of publishing results the agent runs ${SECONDS_PER_RUN} s; its own count of bytes to and from the"
echo "broker (\`usage.broker\` in \`/status\`: every byte of the TCP connection, MQTT framing"
echo "and acknowledgements included) between a reading taken once it is connected and one"
echo "${SECONDS_PER_RUN} s later is multiplied to 24 h. Messages/day counts the agent's publishes the broker"
echo "acknowledged (results or summaries, telemetry, events). TLS would add about 22 bytes per"
echo "message (one TLS 1.3 record each) and a handshake per connection; TCP/IP headers"
echo "(some 52 bytes per segment each way) are not counted."
echo
echo "| results published | messages/day | sent MB/day | received MB/day | total MB/day |"
echo "|---|---|---|---|---|"
run_mode "every result (\`every\`, the default)" '{ mode = "every" }'
run_mode "on change (\`change\`)" '{ mode = "change" }'
run_mode "a summary per minute (\`summary\`, \`interval_s = 60\`)" '{ mode = "summary", interval_s = 60 }'
} > "$TMP/table.md"
python3 - "$TMP/table.md" <<'PY' >> "$TMP/table.md"
import sys
rows = [l for l in open(sys.argv[1]) if l.startswith("| ") and "MB/day" not in l]
total = [float(r.split("|")[5].replace(",", "")) for r in rows]
less = lambda t: f"{total[0] / t:.0f} times less" if t > 0 else "nothing measured (run longer)"
print(f"\nAgainst every result: on change {less(total[1])}, a summary per minute {less(total[2])}."
      f" Telemetry at its defaults is part of each row (one report a minute); in the summary row"
      f" it is about half of the messages.")
PY
cat "$TMP/table.md" | tee "$TMP/fragment.md"
cp "$TMP/fragment.md" "$OUT"
# report.py imports the benchmark modules (numpy): the test venv's Python has them.
PY="${EDGE_TEST_CACHE:-target/test-cache}/venv/bin/python"
[ -x "$PY" ] || PY=python3
"$PY" tests/bench/report.py --peer-python "$PY" --data-usage-only
