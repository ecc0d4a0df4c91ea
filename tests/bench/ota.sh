#!/usr/bin/env bash
# Model updates, measured on loopback with one registry served by `edge-agent registry
# serve`:
#   1. the cost of an unchanged check: wall time and the agent's CPU time per check;
#   2. download + verification throughput of a large package, next to `curl` plus
#      `sha256sum` fetching the same file from the same server (the baseline), as a ratio;
#   3. activations under load: the simulated sensor as fast as the engine takes it while
#      versions are switched back and forth; requests failed and p99 before and during.
#
#   tests/bench/ota.sh [BINARY] [PACKAGE_MIB] [ACTIVATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${1:-target/release/edge-agent}")"
MIB="${2:-64}"
SWITCHES="${3:-20}"
[ -x "$BIN" ] || { echo "ota.sh: build $BIN first (cargo build --release)" >&2; exit 2; }
command -v curl >/dev/null || { echo "ota.sh: needs curl" >&2; exit 2; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
. tests/bench/registry_env.sh
version() { # version N [MiB of padding]: the demo model as version N
    mkdir -p "v$1"
    cp "$ROOT"/configs/models/vibration/{model.toml,model.onnx,selftest.json} "v$1/"
    sed -i "s/^version = \"1\"/version = \"$1\"/" "v$1/model.toml"
    if [ "${2:-0}" -gt 0 ]; then head -c "$(( $2 * 1048576 ))" /dev/urandom > "v$1/padding.bin"; fi
}
version 2 "$MIB"
version 3
version 4
for v in 2 3 4; do "$BIN" registry publish --repo reg --keys keys --model "v$v" --rollout 0 2>/dev/null; done
"$BIN" registry serve reg --listen "127.0.0.1:$PORT" > serve.out 2>/dev/null &
SERVER=$!
sleep 0.5
mkdir -p trust
cp reg/metadata/1.root.json trust/root.json
cat > agent.toml <<EOF
[agent]
device_id = "bench"
state_dir = "$TMP/state"
[log]
format = "json"
[api]
listen = "127.0.0.1:$API"
[engine]
queue = 256
deadline_ms = 5000
[[model]]
path = "$ROOT/configs/models/vibration"
[[source]]
kind = "simulated"
model = "vibration"
speed = 0
[output]
stdout = false
[ota]
url = "http://127.0.0.1:$PORT"
models = ["vibration"]
trusted_root = "$TMP/trust/root.json"
interval_s = 3600
download_timeout_s = 600
selftest_memory_mb = 4096
[ota.probation]
requests = 1000000
minutes = 600
EOF
start_agent() { # start_agent run|serve: `serve` leaves the simulated sensor out
    "$BIN" "$1" --config agent.toml 2> agent.log &
    AGENT=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/v2/health/ready" >/dev/null && break; sleep 0.1; done
}
stop_agent() { kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=; }
# Parts 1 and 2 without sensor traffic, so the CPU measured is the update work's.
start_agent serve
post() { curl -s -X POST -H 'content-type: application/json' -d "${2:-}" "http://127.0.0.1:$API$1"; }
post /ota/check >/dev/null

echo "== machine: $(nproc) cores, $(uname -m); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); command: tests/bench/ota.sh $*"
echo
echo "== 1. an unchanged check (50 in a row)"
C0=$(cpu_s "$AGENT"); T0=$(date +%s.%N)
for _ in $(seq 50); do post /ota/check >/dev/null; done
T1=$(date +%s.%N); C1=$(cpu_s "$AGENT")
python3 -c "print(f'   wall {($T1-$T0)/50*1000:.2f} ms per check, agent CPU {($C1-$C0)/50*1000:.2f} ms per check (clock ticks of 10 ms, averaged)')"
TS_BYTES=$(stat -c %s reg/metadata/timestamp.json)
echo "   on the wire: a 304 for timestamp.json (its body, $TS_BYTES bytes, is not sent) and a 404 for the next root"

echo
echo "== 2. download + verification of a ${MIB} MiB package"
TARGET=$(cd reg && ls targets/stable/vibration/*.2.tar)
SHA=$(basename "$TARGET" | cut -d. -f1)
T0=$(date +%s.%N)
curl -s -o curl.tar "http://127.0.0.1:$PORT/$TARGET"
echo "$SHA  curl.tar" | sha256sum -c --quiet
T1=$(date +%s.%N)
post /ota/apply '{"model":"vibration","version":"2"}' > apply.json
SECS=$(grep '"update-downloaded"' agent.log | tail -1 | json "json.loads(d['detail'])['seconds']")
BYTES=$(stat -c %s curl.tar)
python3 -c "
b=$BYTES; base=$T1-$T0; ours=$SECS
print(f'   curl + sha256sum: {base:.3f} s ({b/base/1e6:.0f} MB/s)')
print(f'   edge-agent (download, sha256 while writing, fsync): {ours:.3f} s ({b/ours/1e6:.0f} MB/s)')
print(f'   ratio edge-agent / baseline: {ours/base:.2f}')"

stop_agent
start_agent run

echo
echo "== 3. $SWITCHES activations under load (simulated sensor at full speed)"
status() { curl -s "http://127.0.0.1:$API/status"; }
S0=$(status)
sleep 2
S1=$(status)
for i in $(seq "$SWITCHES"); do
    v=$(( i % 2 == 0 ? 3 : 4 ))
    post /ota/apply "{\"model\":\"vibration\",\"version\":\"$v\"}" > /dev/null
done
S2=$(status)
python3 - "$S0" "$S1" "$S2" <<'PY'
import json, sys
s0, s1, s2 = (json.loads(a) for a in sys.argv[1:])
def n(s):
    m = s["models"]["vibration"]
    return m["ok"], sum(m["errors"].values()), sum(m["rejected"].values()), m["latency"]["p99_ms"]
ok0, e0, r0, _ = n(s0)
ok1, e1, r1, p99_before = n(s1)
ok2, e2, r2, p99_after = n(s2)
print(f"   requests during the activations: {ok2 - ok1} ok, {e2 - e1} failed, {r2 - r1} rejected")
print(f"   p99 of the model since the agent started: {p99_before:.3f} ms before the activations, {p99_after:.3f} ms after")
PY
ACTIVATED=$(grep -c '"model-activated"' agent.log || true)
echo "   model-activated events: $ACTIVATED"
