#!/usr/bin/env bash
# Load on the local API: requests per second and p99 latency of
# POST /v2/models/ppocr-cls/infer (the image classifier) with 1, 8 and 64 concurrent
# clients (wrk, a native load driver), next to the same work done in-process by
# `edge-agent bench` (tract called directly, and through the engine) with as many
# client threads. Rounds alternate the two so machine noise falls on both alike.
#
#   tests/bench/api_load.sh [BINARY] [SECONDS_PER_RUN] [ROUNDS]
#
# With API_JSON=FILE it also appends one JSON line per concurrency to FILE (for tests/bench/run).
#
# Needs the test cache (tests/run --prepare-only) and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
SECS="${2:-8}"
ROUNDS="${3:-3}"
CACHE="${EDGE_TEST_CACHE:-$PWD/target/test-cache}"
MODEL="$CACHE/models/ppocr-cls"
[ -x "$BIN" ] || { echo "api_load.sh: build $BIN first (cargo build --release)" >&2; exit 2; }
[ -f "$MODEL/model.onnx" ] || { echo "api_load.sh: run tests/run --prepare-only first" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
    apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends wrk >/dev/null
fi
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

. tests/bench/cls_request.sh
. tests/bench/cls_serve.sh     # $BIN serve on $PORT with the classifier; sets $PID

# wrk: "Requests/sec: N" and the 99% line of --latency, in ms.
wrk_run() {
    local c="$1" t=$(( $1 < 2 ? 1 : 2 ))
    wrk -t"$t" -c"$c" -d"${SECS}s" --latency -s "$TMP/post.lua" "http://127.0.0.1:$PORT/v2/models/ppocr-cls/infer" > "$TMP/wrk.txt"
    python3 - "$TMP/wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, p99, int(bad.group(1)) if bad else 0)
PY
}
inproc_run() {
    local c="$1"
    "$BIN" bench --model "$MODEL" --threads 2 --concurrency "$c" -n $(( c < 8 ? 400 : 800 )) --json |
        python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["tract_direct"]["throughput_rps"], v["tract_direct"]["p99_ms"], v["engine"]["throughput_rps"], v["engine"]["p99_ms"])'
}

echo "| clients | API req/s | API p99 ms | tract direct req/s | tract direct p99 ms | engine req/s | API / tract req/s | API / tract p99 | non-2xx |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in 1 8 64; do
    rows=()
    for _ in $(seq "$ROUNDS"); do
        read -r arps ap99 bad < <(wrk_run "$c")
        read -r drps dp99 erps ep99 < <(inproc_run "$c")
        rows+=("$arps $ap99 $drps $dp99 $erps $bad")
    done
    printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
c = int(sys.argv[1])
med = lambda i: st.median(r[i] for r in rows)
rng = lambda xs: f"{st.median(xs):.2f} ({min(xs):.2f}..{max(xs):.2f})"
print(f"| {c} | {med(0):.0f} | {med(1):.2f} | {med(2):.0f} | {med(3):.2f} | {med(4):.0f} | "
      f"{rng([r[0]/r[2] for r in rows])} | {rng([r[1]/r[3] for r in rows])} | {int(sum(r[5] for r in rows))} |")
if sys.argv[2]:  # API_JSON: one line per concurrency for tests/bench/report.py
    import json
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps({"clients": c, "api_rps": med(0), "api_p99": med(1), "tract_rps": med(2),
                            "tract_p99": med(3), "engine_rps": med(4), "rps_ratio": [r[0]/r[2] for r in rows],
                            "p99_ratio": [r[1]/r[3] for r in rows], "non2xx": int(sum(r[5] for r in rows))}) + "\n")
' "$c" "${API_JSON:-}"
done
echo
echo "Median (min..max) over $ROUNDS rounds of ${SECS} s (wrk) against in-process runs; server: 2 engine threads; the load driver shares the 2 cores."
