#!/usr/bin/env bash
# End-to-end check of the peer against `edge-agent infer`, then a rough throughput number.
#
#   verify.sh [EDGE_AGENT_BINARY] [N_CHECK] [N_THROUGHPUT]
#
# Starts a loopback Mosquitto, runs the peer on the vibration demo model, publishes
# N_CHECK messages of 256 samples (golden cases and noise; some as {"id","data"} objects)
# on sensors/pump-1/accel, and compares every published result with what
# `edge-agent infer` gives for the same samples. Then publishes N_THROUGHPUT messages in
# one burst and times until the last result arrives.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# In the repo this lives at tests/bench/peer; elsewhere set REPO.
REPO="${REPO:-$(cd "$HERE/../../.." && pwd)}"
[ -d "$REPO/configs/models/vibration" ] || REPO=/work/main
BIN="${1:-$REPO/target/debug/edge-agent}"
N="${2:-100}"
NT="${3:-5000}"
MODEL="$REPO/configs/models/vibration"
PY="${PYTHON:-$HERE/venv/bin/python}"
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    [ -n "${PEER:-}" ] && kill "$PEER" 2>/dev/null || true
    [ -n "${SUB:-}" ] && kill "$SUB" 2>/dev/null || true
    [ -n "${BROKER:-}" ] && kill "$BROKER" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

. "$HERE/../broker_env.sh"
start_broker "max_queued_messages 0"

start_peer() {
    "$PY" "$HERE/peer.py" --host 127.0.0.1 --port "$PORT" --device bench --model "$MODEL" \
        --topic 'sensors/+/accel' --stream-level 1 --threads 1 2> "$TMP/peer.log" &
    PEER=$!
    # Ready once subscribed (the log says "connected ... subscribing").
    for _ in $(seq 50); do grep -q subscribing "$TMP/peer.log" && break; sleep 0.1; done
    sleep 0.2
}
stop_peer() {
    kill -TERM "$PEER"
    wait "$PEER" || { echo "peer exited with $?" >&2; cat "$TMP/peer.log" >&2; exit 1; }
    PEER=
}

# Messages: a deterministic mix of the model's golden cases and noise.
"$PY" - "$MODEL/golden.json" "$N" "$TMP/msgs.txt" "$TMP/all.json" <<'PY'
import json, sys
import numpy as np
golden, n, msgs, flat = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = np.random.default_rng(7)
cases = [np.array(c["input"], dtype=np.float32) for c in golden["cases"]]
samples = []
with open(msgs, "w") as f:
    for i in range(n):
        x = cases[i % len(cases)] if i % 4 else rng.normal(0, 0.5, 256).astype(np.float32)
        data = [float(v) for v in x]  # exact f32 values, printed as doubles
        samples += data
        f.write(json.dumps({"id": f"m-{i}", "data": data} if i % 3 == 0 else data) + "\n")
json.dump(samples, open(flat, "w"))
PY

EXPECT=$((2 * N - 1))
start_peer
timeout 60 mosquitto_sub -p "$PORT" -q 1 -t 'edge/bench/results/vibration' -C "$EXPECT" > "$TMP/results.txt" &
SUB=$!
sleep 0.3
mosquitto_pub -p "$PORT" -q 1 -t sensors/pump-1/accel -l < "$TMP/msgs.txt"
wait "$SUB" || true
SUB=
sleep 1  # anything beyond the expected count would arrive now
stop_peer
"$BIN" infer --model "$MODEL" --input "$TMP/all.json" --json > "$TMP/infer.json"

"$PY" - "$TMP/results.txt" "$TMP/infer.json" "$EXPECT" <<'PY'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = json.load(open(sys.argv[2]))["results"]
expect = int(sys.argv[3])
print(f"results: {len(got)} published, {expect} expected, {len(ref)} from edge-agent infer")
assert len(got) == expect == len(ref), "count mismatch"
maxdiff, labels_equal, ids = 0.0, 0, 0
for i, (g, r) in enumerate(zip(got, ref)):
    assert g["seq"] == i and g["window"] == r["window"] == i and g["offset"] == 128 * i, g
    assert g["stream"] == "pump-1" and g["place"] == "local" and g["device"] == "bench"
    go, ro = g["outputs"], r["outputs"]
    assert set(go) == set(ro), (go.keys(), ro.keys())
    assert (go["class"], go["label"], go["confident"]) == (ro["class"], ro["label"], ro["confident"]), (i, go, ro)
    labels_equal += 1
    assert [t["label"] for t in go["top"]] == [t["label"] for t in ro["top"]], (i, go, ro)
    maxdiff = max([maxdiff, abs(go["score"] - ro["score"])] +
                  [abs(a["score"] - b["score"]) for a, b in zip(go["top"], ro["top"])])
    # The window completed by message m carries m's id when m was an object.
    msg = (i + 1) // 2
    if msg % 3 == 0:
        assert g.get("input_id") == f"m-{msg}", (i, g.get("input_id"))
        ids += 1
    else:
        assert "input_id" not in g, g
from collections import Counter
print(f"labels/classes/top order equal on {labels_equal} windows; input_id on {ids}; "
      f"max |score diff| {maxdiff:.3g}; labels {dict(Counter(g['outputs']['label'] for g in got))}")
assert maxdiff <= 1e-5
print("example:", json.dumps(got[2]))
PY

# Rough throughput: NT messages in one burst, 1 intra-op thread.
"$PY" - "$NT" "$TMP/burst.txt" <<'PY'
import json, sys
import numpy as np
rng = np.random.default_rng(1)
with open(sys.argv[2], "w") as f:
    for _ in range(int(sys.argv[1])):
        f.write(json.dumps([round(float(v), 6) for v in rng.normal(0, 0.5, 256)]) + "\n")
PY
start_peer
EXPECT=$((2 * NT - 1))
timeout 600 mosquitto_sub -p "$PORT" -q 1 -t 'edge/bench/results/vibration' -C "$EXPECT" > "$TMP/burst-results.txt" &
SUB=$!
sleep 0.3
T0=$(date +%s.%N)
mosquitto_pub -p "$PORT" -q 1 -t sensors/pump-2/accel -l < "$TMP/burst.txt"
T1=$(date +%s.%N)
wait "$SUB" || true
T2=$(date +%s.%N)
SUB=
GOT=$(wc -l < "$TMP/burst-results.txt")
stop_peer
python3 -c "
t_pub, t_all = $T1 - $T0, $T2 - $T0
print(f'throughput: {$NT} messages ({$GOT}/{$EXPECT} results) in {t_all:.2f} s = {$NT / t_all:.0f} msg/s, {$GOT / t_all:.0f} results/s (publishing took {t_pub:.2f} s)')"
tail -n 1 "$TMP/peer.log"
