#!/usr/bin/env bash
# Shadow runs under full sensor load: the active version's latency (message window to
# answer, queue wait included) with and without a shadow candidate beside it, measured
# in one run of one agent, as a ratio. Simulated sensors at full speed (as fast as the
# engine takes their windows) feed the demo model; after the baseline phase, an identical
# version 2 is installed in shadow (`POST /ota/apply {"shadow": true}`) with limits that
# keep it running, and the same load goes on. Each phase's p50/p99 come from the
# results' own `latency_ms`, split at the moment the shadow run started.
#
#   tests/bench/shadow.sh [BINARY] [SECONDS_PER_PHASE] [STREAMS]
#
# SHADOW=0 leaves the second phase without a shadow run too (an A/A run: how much the
# two phases differ by themselves on this machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${1:-target/release/edge-agent}")"
SECS="${2:-20}"
STREAMS="${3:-2}"
[ -x "$BIN" ] || { echo "shadow.sh: build $BIN first" >&2; exit 2; }
command -v curl >/dev/null || { echo "shadow.sh: needs curl" >&2; exit 2; }
. tests/bench/registry_env.sh
mkdir v2
cp "$ROOT"/configs/models/vibration/{model.toml,model.onnx,selftest.json} v2/
sed -i 's/^version = "1"/version = "2"/' v2/model.toml
"$BIN" registry publish --repo reg --keys keys --model v2 --rollout 0 \
    --shadow-limits '{"requests":100000000,"minutes":600}' 2>/dev/null
"$BIN" registry serve reg --listen "127.0.0.1:$PORT" > serve.out 2>/dev/null &
SERVER=$!
mkdir -p trust
cp reg/metadata/1.root.json trust/root.json
{
    cat <<EOF
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
[output]
stdout = true
[ota]
url = "http://127.0.0.1:$PORT"
models = ["vibration"]
trusted_root = "$TMP/trust/root.json"
interval_s = 3600
selftest_memory_mb = 4096
EOF
    for s in $(seq "$STREAMS"); do
        printf '[[source]]\nkind = "simulated"\nmodel = "vibration"\nstream = "sim-%s"\nseed = %s\nspeed = 0\n' "$s" "$s"
    done
} > agent.toml
sleep 0.5
"$BIN" run --config agent.toml > results.jsonl 2> agent.log &
AGENT=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/v2/health/ready" >/dev/null && break; sleep 0.1; done
post() { curl -s -X POST -H 'content-type: application/json' -d "${2:-}" "http://127.0.0.1:$API$1"; }

echo "== machine: $(nproc) cores, $(uname -m); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); binary: $BIN; command: tests/bench/shadow.sh $*"
echo "== $STREAMS simulated sensors at full speed into the demo model; ${SECS} s per phase"
sleep 2   # warm-up, left out of both phases
A0=$(wc -l < results.jsonl)
sleep "$SECS"
A1=$(wc -l < results.jsonl)
if [ "${SHADOW:-1}" = 0 ]; then
    echo '{"action":"none (SHADOW=0)"}' > apply.json
else
    post /ota/apply '{"model":"vibration","version":"2","shadow":true}' > apply.json
fi
B0=$(wc -l < results.jsonl)
sleep "$SECS"
B1=$(wc -l < results.jsonl)
curl -s "http://127.0.0.1:$API/status" > status.json
python3 - "$A0" "$A1" "$B0" "$B1" <<'PY'
import json, sys
a0, a1, b0, b1 = (int(x) for x in sys.argv[1:])
apply = json.load(open("apply.json"))
aa = apply.get("action") == "none (SHADOW=0)"
assert aa or apply.get("action") == "shadowing", f"the shadow run did not start: {apply}"
lines = open("results.jsonl").read().splitlines()
def latencies(lo, hi):
    out = []
    for line in lines[lo:hi]:
        try:
            out.append(json.loads(line)["latency_ms"])
        except (ValueError, KeyError):
            pass
    return sorted(out)
def q(xs, p):
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
base, shadow = latencies(a0, a1), latencies(b0, b1)
s = json.load(open("status.json"))
m = s["models"]["vibration"]
n = None if aa else s["ota"]["models"]["vibration"]["shadow"]["numbers"]
for name, xs in (("without shadow", base), ("without shadow" if aa else "with shadow", shadow)):
    print(f"   {name:15} {len(xs):7} results  p50 {q(xs, .5):8.3f} ms  p99 {q(xs, .99):8.3f} ms")
print(f"   ratio of p99 (with / without): {q(shadow, .99) / q(base, .99):.2f}; of p50: {q(shadow, .5) / q(base, .5):.2f}")
if n: print(f"   shadow: {n['compared']} compared, skipped {n['skipped']}, agreement {n['agreement']}, "
      f"candidate p95 run {n['run_p95_ms']} ms against {n['active_run_p95_ms']} ms")
print(f"   active requests rejected over both phases: {m['rejected']}")
PY
