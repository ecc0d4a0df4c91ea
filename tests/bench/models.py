#!/usr/bin/env python3
"""Latency of the real models in edge-agent (engine and direct tract calls) next to
onnxruntime (Python, 1 thread), measured in one run.

Each round runs `edge-agent bench --json` on a model and then the same number of
onnxruntime calls on an input of the same shape; the rounds alternate so that machine
noise falls on both sides alike. Prints a Markdown table of median ratios with the
min..max over rounds.

    target/test-cache/venv/bin/python tests/bench/models.py \
        --bin target/release/edge-agent --rounds 5 -n 300
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("EDGE_TEST_CACHE", os.path.join(ROOT, "target", "test-cache"))

MODELS = {
    "vibration": os.path.join(ROOT, "configs", "models", "vibration"),
    "ppocr-cls": os.path.join(CACHE, "models", "ppocr-cls"),
    "silero-vad": os.path.join(CACHE, "models", "silero-vad"),
}

# Inputs for onnxruntime: the data input's shape, plus zeros for recurrent state.
FEEDS = {
    "vibration": {"vibration": (1, 256)},
    "ppocr-cls": {"x": (1, 3, 48, 192)},
    "silero-vad": {"input": (1, 576), "state": (2, 1, 128)},
}


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def ort_bench(model_dir, feeds, n, warmup, threads=1):
    """onnxruntime's p50/p99 in ms; `threads` 0 leaves its thread pools at their defaults."""
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    inputs = {}
    for name, shape in feeds.items():
        if name == "state":
            inputs[name] = np.zeros(shape, dtype=np.float32)
        else:
            inputs[name] = rng.uniform(-1, 1, size=shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, inputs)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, inputs)
        lat.append((time.perf_counter() - t) * 1000.0)
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def agent_bench(binary, model_dir, n, warmup):
    out = subprocess.run(
        [binary, "bench", "--model", model_dir, "-n", str(n), "--warmup", str(warmup), "--threads", "1", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def fmt(values):
    med = statistics.median(values)
    return f"{med:.3f} ({min(values):.3f}..{max(values):.3f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "edge-agent"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()

    rows = []
    for name in args.models.split(","):
        model_dir = MODELS[name]
        eng, direct, onnx, overhead, tract_vs_ort, eng_vs_ort, rss = [], [], [], [], [], [], []
        for r in range(args.rounds):
            a = agent_bench(args.bin, model_dir, args.n, args.warmup)
            o = ort_bench(model_dir, FEEDS[name], args.n, args.warmup)
            eng.append(a["engine"]["p50_ms"])
            direct.append(a["tract_direct"]["p50_ms"])
            onnx.append(o["p50_ms"])
            overhead.append(a["overhead_p50"])
            tract_vs_ort.append(a["tract_direct"]["p50_ms"] / o["p50_ms"])
            eng_vs_ort.append(a["engine"]["p50_ms"] / o["p50_ms"])
            rss.append(a["peak_rss_bytes"] / 1048576)
            print(f"  {name} round {r + 1}/{args.rounds}: engine {eng[-1]:.3f} ms, tract {direct[-1]:.3f} ms, "
                  f"onnxruntime {onnx[-1]:.3f} ms", file=sys.stderr)
        rows.append((name, eng, direct, onnx, overhead, tract_vs_ort, eng_vs_ort, rss))

    print("| model | engine p50 ms | tract direct p50 ms | onnxruntime p50 ms | engine / tract | tract / onnxruntime | engine / onnxruntime | peak RSS MiB (bench) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, eng, direct, onnx, overhead, tvo, evo, rss in rows:
        print(f"| {name} | {fmt(eng)} | {fmt(direct)} | {fmt(onnx)} | {fmt(overhead)} | {fmt(tvo)} | {fmt(evo)} | {statistics.median(rss):.1f} |")
    print(f"\nMedian (min..max) over {args.rounds} rounds of {args.n} requests each, 1 thread; ratios below 1 mean the left side is faster.")


if __name__ == "__main__":
    main()
