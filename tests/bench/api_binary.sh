#!/usr/bin/env bash
# The local API with binary tensors against JSON: requests per second of
# POST /v2/models/ppocr-cls/infer (the image classifier) with the input as JSON numbers
# (about 500 KB) and with the binary tensor extension (a JSON header and 110,592 raw
# bytes, the output asked for as binary too, as tritonclient sends by default), driven
# by wrk with 1 and 8 connections, next to the same work in-process (`edge-agent bench`:
# tract called directly, with as many client threads). Rounds alternate the three so
# machine noise falls on all alike.
#
#   tests/bench/api_binary.sh [BINARY] [SECONDS_PER_RUN] [ROUNDS]
#
# Needs the test cache (tests/run --prepare-only) and wrk (installed when missing).
# Traffic goes to 127.0.0.1 only; every run is bounded by SECONDS_PER_RUN.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
SECS="${2:-5}"
ROUNDS="${3:-3}"
CACHE="${EDGE_TEST_CACHE:-$PWD/target/test-cache}"
MODEL="$CACHE/models/ppocr-cls"
[ -x "$BIN" ] || { echo "api_binary.sh: build $BIN first" >&2; exit 2; }
[ -f "$MODEL/model.onnx" ] || { echo "api_binary.sh: run tests/run --prepare-only first" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
    apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends wrk >/dev/null
fi
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

. tests/bench/cls_request.sh   # $TMP/body.json and $TMP/post.lua (JSON)
# The binary request: header length in a header, the tensor as little-endian f32.
HEADER_LEN="$(python3 - "$CACHE/reference/cls_case0.json" "$TMP/body.bin" <<'PY'
import json, struct, sys
data = json.load(open(sys.argv[1]))
raw = struct.pack("<%df" % len(data), *data)
header = json.dumps({
    "inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)}}],
    "outputs": [{"name": "save_infer_model/scale_0.tmp_1", "parameters": {"binary_data": True}}],
}).encode()
open(sys.argv[2], "wb").write(header + raw)
print(len(header))
PY
)"
cat > "$TMP/binary.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "$HEADER_LEN"
local f = io.open("$TMP/body.bin", "rb")
wrk.body = f:read("*a")
f:close()
LUA
. tests/bench/cls_serve.sh     # $BIN serve on $PORT with the classifier; sets $PID
# Both bodies must be answered 200 before anything is measured.
curl -sf -o /dev/null --data-binary @"$TMP/body.json" "http://127.0.0.1:$PORT/v2/models/ppocr-cls/infer"
curl -sf -o /dev/null -H "Inference-Header-Content-Length: $HEADER_LEN" --data-binary @"$TMP/body.bin" \
    "http://127.0.0.1:$PORT/v2/models/ppocr-cls/infer"

# wrk: requests/s and non-2xx answers.
wrk_run() {
    local c="$1" script="$2" t=$(( $1 < 2 ? 1 : 2 ))
    wrk -t"$t" -c"$c" -d"${SECS}s" -s "$script" "http://127.0.0.1:$PORT/v2/models/ppocr-cls/infer" > "$TMP/wrk.txt"
    python3 - "$TMP/wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, int(bad.group(1)) if bad else 0)
PY
}
inproc_run() {
    "$BIN" bench --model "$MODEL" --threads 2 --concurrency "$1" -n $(( $1 < 8 ? 400 : 800 )) --json |
        python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["tract_direct"]["throughput_rps"])'
}

echo "| clients | JSON req/s | binary req/s | tract direct req/s | binary / JSON | JSON / tract | binary / tract | non-2xx |"
echo "|---|---|---|---|---|---|---|---|"
for c in 1 8; do
    rows=()
    for _ in $(seq "$ROUNDS"); do
        read -r jrps jbad < <(wrk_run "$c" "$TMP/post.lua")
        read -r brps bbad < <(wrk_run "$c" "$TMP/binary.lua")
        read -r drps < <(inproc_run "$c")
        rows+=("$jrps $brps $drps $((jbad + bbad))")
    done
    printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
c = int(sys.argv[1])
med = lambda i: st.median(r[i] for r in rows)
rng = lambda xs: f"{st.median(xs):.2f} ({min(xs):.2f}..{max(xs):.2f})"
print(f"| {c} | {med(0):.0f} | {med(1):.0f} | {med(2):.0f} | {rng([r[1]/r[0] for r in rows])} | "
      f"{rng([r[0]/r[2] for r in rows])} | {rng([r[1]/r[2] for r in rows])} | {int(sum(r[3] for r in rows))} |")
' "$c"
done
echo
echo "Median (min..max) over $ROUNDS rounds of ${SECS} s (wrk) against in-process runs; server: 2 engine threads; the load driver shares the 2 cores."
