#!/usr/bin/env python3
"""Load time of the three test models from NNEF (`model.nnef.tgz`, as `registry publish`
writes it) against loading the same model from ONNX, measured in one run.

For each model, a copy of its folder stays ONNX only and a second copy is converted with
`edge-agent model convert`; then the rounds alternate between the two copies, each
round one `edge-agent model inspect --json`, whose `load_ms` (reading and parsing the
file) and `optimise_ms` (typing, the engine's rewrites, tract's optimisation, the run
plan) are the agent's own timings of one load. Process start and printing are not in
them. Prints a Markdown table of medians and the NNEF/ONNX ratio; --json prints the
same as JSON.

    python3 tests/bench/nnef_load.py --bin target/release/edge-agent --rounds 15
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("EDGE_TEST_CACHE", os.path.join(ROOT, "target", "test-cache"))

MODELS = {
    "vibration": os.path.join(ROOT, "configs", "models", "vibration"),
    "silero-vad": os.path.join(CACHE, "models", "silero-vad"),
    "ppocr-cls": os.path.join(CACHE, "models", "ppocr-cls"),
}


def inspect(binary, model_dir):
    out = subprocess.run(
        [binary, "model", "inspect", "--model", model_dir, "--json"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"inspect {model_dir} failed: {out.stderr}")
    return json.loads(out.stdout)


def measure(binary, name, src, work, rounds):
    onnx_dir = os.path.join(work, name + "-onnx")
    nnef_dir = os.path.join(work, name + "-nnef")
    shutil.copytree(src, onnx_dir)
    shutil.copytree(src, nnef_dir)
    conv = subprocess.run(
        [binary, "model", "convert", "--model", nnef_dir, "--json"], capture_output=True, text=True, check=False
    )
    if conv.returncode != 0:
        sys.exit(f"convert {name} failed: {conv.stdout}{conv.stderr}")
    samples = {"onnx": {"load": [], "total": []}, "nnef": {"load": [], "total": []}}
    formats = {}
    for r in range(rounds + 1):
        # The two sides swap order every round, so drift in the machine falls on both.
        order = [("onnx", onnx_dir), ("nnef", nnef_dir)]
        if r % 2:
            order.reverse()
        for side, d in order:
            v = inspect(binary, d)
            formats[side] = v["format"]
            if r == 0:
                continue  # a warm-up round: the page cache, the first run's faults
            samples[side]["load"].append(v["load_ms"])
            samples[side]["total"].append(v["load_ms"] + v["optimise_ms"])
    if formats != {"onnx": "onnx", "nnef": "nnef"}:
        sys.exit(f"{name}: loaded {formats}, expected each copy from its own format")
    med = {side: {k: statistics.median(v) for k, v in s.items()} for side, s in samples.items()}
    return {
        "model": name,
        "rounds": rounds,
        "onnx_bytes": os.path.getsize(os.path.join(onnx_dir, "model.onnx")),
        "nnef_bytes": os.path.getsize(os.path.join(nnef_dir, "model.nnef.tgz")),
        "onnx_parse_ms": med["onnx"]["load"],
        "nnef_parse_ms": med["nnef"]["load"],
        "onnx_load_ms": med["onnx"]["total"],
        "nnef_load_ms": med["nnef"]["total"],
        "ratio": med["nnef"]["total"] / med["onnx"]["total"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "edge-agent"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nnef-load-") as work:
        for name, src in MODELS.items():
            if not os.path.isdir(src):
                sys.exit(f"{src} is missing: run tests/run --prepare-only first")
            rows.append(measure(args.bin, name, src, work, args.rounds))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | ONNX file | NNEF archive | ONNX load | NNEF load | NNEF / ONNX | parse only, ONNX / NNEF |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['onnx_bytes'] / 1024:.0f} KiB | {r['nnef_bytes'] / 1024:.0f} KiB "
            f"| {r['onnx_load_ms']:.1f} ms | {r['nnef_load_ms']:.1f} ms | {r['ratio']:.2f} "
            f"| {r['onnx_parse_ms']:.1f} / {r['nnef_parse_ms']:.1f} ms |"
        )
    print(f"\nMedians of {args.rounds} alternating rounds; load = parse + optimise, as `model inspect` times it.")


if __name__ == "__main__":
    main()
