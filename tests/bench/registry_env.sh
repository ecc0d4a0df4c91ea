# Sourced by the bench scripts that run an agent against a registry of their own
# (ota.sh, shadow.sh): a scratch directory, two loopback ports, clean-up of the agent
# and the registry server on exit, and a fresh repository signed by four new keys.
# Expects BIN (the edge-agent binary); leaves the shell in the scratch directory,
# with ROOT the checkout's root.
ROOT="$PWD"
TMP="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
API=$((PORT + 1))
cleanup() {
    [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
    [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP"
mkdir keys
for r in root targets snapshot timestamp; do "$BIN" registry keygen "keys/$r.key" >/dev/null 2>&1; done
"$BIN" registry init --repo reg --keys keys --root-key keys/root.key.pub --targets-key keys/targets.key.pub \
    --snapshot-key keys/snapshot.key.pub --timestamp-key keys/timestamp.key.pub 2>/dev/null
