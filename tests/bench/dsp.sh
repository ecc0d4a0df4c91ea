#!/usr/bin/env bash
# The cost of a declared DSP front end ([pre.dsp]) next to the model behind it, per model
# input, measured in one run by crates/edge-infer/examples/dsp_cost.rs (streaming front
# end, the same inputs recomputed from their samples, the model run).
#
#   tests/bench/dsp.sh [MODEL_DIR] [SECONDS]
#
# MODEL_DIR defaults to the openWakeWord embedding model that tests/run prepares.
# Built in the release profile in a target directory of its own, so that it does not
# disturb the development build; DSP_BENCH_PROFILE=dev uses the development build
# instead (quick where it is already built, and what docs/model-spec.md quotes).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${EDGE_TEST_CACHE:-$PWD/target/test-cache}"
MODEL="${1:-$CACHE/models/oww-embedding}"
SECONDS_OF_AUDIO="${2:-30}"
[ -f "$MODEL/model.toml" ] || { echo "no model at $MODEL (run tests/run --prepare-only first)" >&2; exit 1; }
if [ "${DSP_BENCH_PROFILE:-release}" = dev ]; then
    exec cargo run --quiet -p edge-infer --example dsp_cost -- "$MODEL" "$SECONDS_OF_AUDIO"
fi
CARGO_TARGET_DIR="${DSP_BENCH_TARGET:-$PWD/target/bench-dsp}" \
    cargo run --quiet --release -p edge-infer --example dsp_cost -- "$MODEL" "$SECONDS_OF_AUDIO"
