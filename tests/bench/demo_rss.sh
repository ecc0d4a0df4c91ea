#!/usr/bin/env bash
# Peak resident memory of `edge-agent run` on the demo: the demo config run at full speed
# for SECONDS*40 seconds of simulated signal, then at the demo's own 4x real-time pace
# for SECONDS wall seconds. Reads the agent's own report (VmHWM) from its final log line.
#
#   tests/bench/demo_rss.sh [BINARY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/edge-agent}"
SECS="${2:-30}"
[ -x "$BIN" ] || { echo "demo_rss.sh: build $BIN first (cargo build --release)" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
sed -e "s|path = \"models/vibration\"|path = \"$PWD/configs/models/vibration\"|" configs/demo.toml > "$TMP/paced.toml"
sed -e "s|speed = 4.0|speed = 0.0\nduration_s = $((SECS * 40))|" "$TMP/paced.toml" > "$TMP/fast.toml"

report() { # name, log file
    local line; line="$(grep '"edge-agent stopped"' "$2" | tail -1)"
    python3 -c 'import json,sys; v=json.loads(sys.argv[2]); print("%s: %d results, peak RSS %.1f MiB" % (sys.argv[1], v["results"], int(v["peak_rss_kib"]) / 1024))' "$1" "$line"
}
"$BIN" run --config "$TMP/fast.toml" --log-format json --quiet 2> "$TMP/fast.log"
report "full speed ($((SECS * 40)) s of signal)" "$TMP/fast.log"
timeout -s TERM "$SECS" "$BIN" run --config "$TMP/paced.toml" --log-format json --quiet 2> "$TMP/paced.log" || true
report "demo pace (${SECS} s wall, 4x real time)" "$TMP/paced.log"
