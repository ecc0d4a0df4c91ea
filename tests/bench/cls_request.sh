# Sourced by the wrk benchmarks: writes $TMP/body.json (an OIP v2 request for the image
# classifier, from the reference input in the test cache) and $TMP/post.lua (wrk posts
# it as JSON). Needs TMP and CACHE set.
python3 - "$CACHE/reference/cls_case0.json" > "$TMP/body.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
print(json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": data}]}))
PY
cat > "$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$TMP/body.json", "rb")
wrk.body = f:read("*a")
f:close()
LUA
