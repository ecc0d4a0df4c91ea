# Sourced by the local-API benchmarks: starts `$BIN serve` with the image classifier
# ($MODEL) on 127.0.0.1:$PORT (2 engine threads), logs in $TMP/serve.log, sets $PID,
# and waits until it is ready. The caller's EXIT trap stops it.
cat > "$TMP/serve.toml" <<TOML
[agent]
device_id = "bench"
state_dir = "$TMP/state"
[engine]
threads = 2
queue = 256
[api]
listen = "127.0.0.1:$PORT"
max_concurrency = 256
[[model]]
path = "$MODEL"
TOML
"$BIN" serve --config "$TMP/serve.toml" --log-level warn 2> "$TMP/serve.log" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
