#!/usr/bin/env bash
# Cloud fallback costs, each measured against its baseline in the same run:
#
#  1. Added latency of the fallback path: the image classifier (ppocr-cls) served by
#     `edge-agent serve` as the cloud, called directly by wrk, against the same requests
#     sent to an agent that lacks the model and forwards them (model-missing route):
#     p50 and p99 at 1 and 8 concurrent clients, and their ratios.
#  2. Throughput with the breaker open: an agent forced to a dead cloud (breaker open
#     after the first failure) answering locally, marked degraded, against the same
#     agent with no fallback; and with when_unavailable = "reject".
#  3. The routing decision per request, from `edge-agent bench` (in-process), as a share
#     of a local inference of the image classifier.
#
#   tests/bench/fallback.sh [BINARY] [SECONDS_PER_RUN] [ROUNDS]
#
# Rounds alternate the runs being compared so that machine noise falls on both alike.
# Needs the test cache (tests/run --prepare-only) and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
SECS="${2:-5}"
ROUNDS="${3:-3}"
CACHE="${EDGE_TEST_CACHE:-$PWD/target/test-cache}"
MODEL="$CACHE/models/ppocr-cls"
[ -x "$BIN" ] || { echo "fallback.sh: build $BIN first (cargo build --release)" >&2; exit 2; }
[ -f "$MODEL/model.onnx" ] || { echo "fallback.sh: run tests/run --prepare-only first" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
    apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends wrk >/dev/null
fi
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

. tests/bench/cls_request.sh

# start NAME BODY: an agent with the API on a free port, kept in PORT[NAME].
declare -A PORT
start() {
    local name="$1" body="$2" p
    p="$(port)"
    PORT[$name]="$p"
    cat > "$TMP/$name.toml" <<TOML
[agent]
device_id = "$name"
state_dir = "$TMP/$name-state"
[engine]
threads = 2
queue = 256
[api]
listen = "127.0.0.1:$p"
max_concurrency = 256
$body
TOML
    "$BIN" run --config "$TMP/$name.toml" --log-level warn > /dev/null 2> "$TMP/$name.log" &
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/health/ready" >/dev/null && return; sleep 0.1; done
    echo "fallback.sh: $name did not start: $(cat "$TMP/$name.log")" >&2
    exit 1
}

start cloud "[[model]]
path = \"$MODEL\""
CLOUD="${PORT[cloud]}"
start forward "[fallback]
[[fallback.model]]
model = \"ppocr-cls\"
url = \"http://127.0.0.1:$CLOUD\"
spec = \"$MODEL\"
max_concurrency = 64"
DEAD="$(port)"
start local "[[model]]
path = \"$MODEL\""
start degrade "[[model]]
path = \"$MODEL\"
[fallback]
failures_to_open = 1
open_s = 86400
[[fallback.model]]
model = \"ppocr-cls\"
url = \"http://127.0.0.1:$DEAD\"
force = true
retries = 0"
start reject "[[model]]
path = \"$MODEL\"
[fallback]
failures_to_open = 1
open_s = 86400
when_unavailable = \"reject\"
[[fallback.model]]
model = \"ppocr-cls\"
url = \"http://127.0.0.1:$DEAD\"
force = true
retries = 0"
FORWARD="${PORT[forward]}" LOCAL="${PORT[local]}" DEGRADE="${PORT[degrade]}" REJECT="${PORT[reject]}"

# wrk_run PORT CONNECTIONS -> "rps p50_ms p99_ms non2xx"
wrk_run() {
    local p="$1" c="$2" t=$(( $2 < 2 ? 1 : 2 ))
    wrk -t"$t" -c"$c" -d"${SECS}s" --latency -s "$TMP/post.lua" "http://127.0.0.1:$p/v2/models/ppocr-cls/infer" > "$TMP/wrk.txt"
    python3 - "$TMP/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(f"{rps:.1f} {ms(50):.3f} {ms(99):.3f} {bad.group(1) if bad else 0}")
PY
}

# Warm every path once (connections, first runs), then open the dead breakers.
for p in "$CLOUD" "$FORWARD" "$LOCAL" "$DEGRADE" "$REJECT"; do
    curl -s -o /dev/null -H 'Content-Type: application/json' --data @"$TMP/body.json" "http://127.0.0.1:$p/v2/models/ppocr-cls/infer"
done

declare -A SUM
for r in $(seq "$ROUNDS"); do
    for c in 1 8; do
        for run in "direct $CLOUD" "fallback $FORWARD"; do
            set -- $run
            read -r rps p50 p99 bad < <(wrk_run "$2" "$c")
            echo "round $r c=$c $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $bad" >&2
            SUM["$1-$c"]+="$rps $p50 $p99 $bad;"
        done
    done
    for run in "local $LOCAL" "degraded $DEGRADE" "rejected $REJECT"; do
        set -- $run
        read -r rps p50 p99 bad < <(wrk_run "$2" 8)
        echo "round $r c=8 $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $bad" >&2
        SUM["$1-8"]+="$rps $p50 $p99 $bad;"
    done
done

ROUTING="$("$BIN" bench --model "$MODEL" -n 400 --rounds 4 --no-baseline --json)"

python3 - "$ROUTING" <<PY
import json, statistics, sys
runs = {
$(for k in "${!SUM[@]}"; do echo "    \"$k\": \"${SUM[$k]}\","; done)
}
def med(key, i):
    rows = [r.split() for r in runs[key].strip(";").split(";")]
    return statistics.median(float(r[i]) for r in rows)
print("## Cloud fallback (ppocr-cls, medians of $ROUNDS rounds of ${SECS} s)")
print()
print("| clients | direct p50 ms | fallback p50 ms | ratio | direct p99 ms | fallback p99 ms | ratio |")
print("|---|---|---|---|---|---|---|")
for c in (1, 8):
    d50, f50 = med(f"direct-{c}", 1), med(f"fallback-{c}", 1)
    d99, f99 = med(f"direct-{c}", 2), med(f"fallback-{c}", 2)
    print(f"| {c} | {d50:.2f} | {f50:.2f} | {f50/d50:.2f} | {d99:.2f} | {f99:.2f} | {f99/d99:.2f} |")
print()
local = med("local-8", 0)
print("| 8 clients | req/s | vs local | non-2xx per run |")
print("|---|---|---|---|")
for name in ("local", "degraded", "rejected"):
    rps = med(f"{name}-8", 0)
    print(f"| {name} | {rps:.0f} | {rps/local:.2f} | {med(f'{name}-8', 3):.0f} |")
r = json.loads(sys.argv[1])
print()
print(f"Routing decision: {r['routing_ns']:.0f} ns per request, {r['routing_share']*100:.4f}% of a local "
      f"ppocr-cls inference through the engine (mean {r['engine']['mean_ms']:.3f} ms).")
PY
