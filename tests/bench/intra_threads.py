#!/usr/bin/env python3
"""Latency of one request at 1, 2 and 4 threads per model run (`engine.intra_threads`).

Runs `edge-agent bench --threads 1 --intra-threads N --no-baseline --json` on one model
for each N, alternating N round by round so that machine noise falls on every setting
alike, and prints a Markdown table of the engine's p50 and p99 with each setting's p50 as
a ratio to one thread's in the same round (median, min..max over rounds). The default
model is the largest real model of the test cache, the PP-OCR classifier; pass a
detection model's directory with --model when one is at hand.

    target/test-cache/venv/bin/python tests/bench/intra_threads.py \
        --bin target/release/edge-agent --rounds 3 -n 200
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("EDGE_TEST_CACHE", os.path.join(ROOT, "target", "test-cache"))


def bench(binary, model_dir, threads, n, warmup):
    out = subprocess.run(
        [binary, "bench", "--model", model_dir, "-n", str(n), "--warmup", str(warmup), "--threads", "1",
         "--intra-threads", str(threads), "--no-baseline", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["engine"]


def fmt(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "edge-agent"))
    ap.add_argument("--model", default=os.path.join(CACHE, "models", "ppocr-cls"))
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    settings = [int(t) for t in args.threads.split(",")]

    p50 = {t: [] for t in settings}
    p99 = {t: [] for t in settings}
    ratio = {t: [] for t in settings}
    for r in range(args.rounds):
        this_round = {}
        for t in settings:
            e = bench(args.bin, args.model, t, args.n, args.warmup)
            this_round[t] = e["p50_ms"]
            p50[t].append(e["p50_ms"])
            p99[t].append(e["p99_ms"])
            print(f"  round {r + 1}/{args.rounds}: intra_threads {t}: p50 {e['p50_ms']:.3f} ms", file=sys.stderr)
        for t in settings:
            ratio[t].append(this_round[t] / this_round[settings[0]])

    print(f"Model: {os.path.basename(os.path.normpath(args.model))}, one request at a time, 1 engine worker.\n")
    print(f"| intra_threads | p50 ms | p99 ms | p50 / {settings[0]} thread(s) |")
    print("|---|---|---|---|")
    for t in settings:
        print(f"| {t} | {fmt(p50[t])} | {fmt(p99[t])} | {fmt(ratio[t])} |")
    print(f"\nMedian (min..max) over {args.rounds} rounds of {args.n} requests each.")


if __name__ == "__main__":
    main()
