#!/usr/bin/env python3
"""Where the agent's memory goes: idle RSS of the demo broken down by mapping, and the
peak under the benchmark's 30,000-message flood.

    tests/bench/memory.py [--bin target/release/edge-agent] [--flood 30000] [--rounds 1]
                          [--env NAME=VALUE ...]

The same setting as the report's MQTT footprint (tests/bench/report.py: the demo model,
one engine thread, a loopback Mosquitto, the native load driver): the agent is started,
its first result awaited, and after one second its RSS is read from /proc (the
report's idle figure), with
/proc/PID/smaps summed into: the binary's text, its read-only data, its relocated and
writable data, shared libraries, the heap and allocator arenas, thread stacks and other
anonymous memory; again after --settle seconds more of idling. Then the flood, with RSS
sampled every 50 ms. Needs a release build of
the load driver (cargo build --release --example mqtt_load) and mosquitto.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (its subject, broker and driver helpers)


def smaps_breakdown(pid):
    """KiB resident per kind of mapping, from /proc/PID/smaps."""
    exe = os.readlink(f"/proc/{pid}/exe")
    parts = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                perms = fields[1]
                path = line.split(None, 5)[5].strip() if len(fields) >= 6 else ""
                if path == exe:
                    kind = ("binary text" if "x" in perms else
                            "binary read-only data" if "w" not in perms else "binary writable data")
                elif path.startswith("/"):
                    kind = "shared libraries"
                elif path == "[heap]":
                    kind = "heap (main arena)"
                elif path.startswith("[stack"):
                    kind = "main thread stack"
                elif path.startswith("["):
                    kind = "kernel ([vdso], [vvar])"
                else:
                    kind = "anonymous (arenas, thread stacks, tract plans)"
                parts.setdefault(kind, {"rss": 0, "anon": 0})
            elif kind and fields and fields[0] == "Rss:":
                parts[kind]["rss"] += int(fields[1])
            elif kind and fields and fields[0] == "Anonymous:":
                parts[kind]["anon"] += int(fields[1])
    return parts


def one_round(args, tmp, port, payload):
    t0 = time.time_ns()
    proc = report.start_subject(argparse.Namespace(bin=args.bin), "edge-agent", port, tmp)
    try:
        startup = report.drive(args.driver, port, payload, since=t0)["first_result_ms"]
        time.sleep(1.0)
        idle = proc.status("VmRSS")
        parts = smaps_breakdown(proc.p.pid)
        time.sleep(args.settle)
        settled = proc.status("VmRSS")
        sampler = report.RssSampler(proc)
        sampler.start()
        flood = report.drive(args.driver, port, payload, rate=0, count=args.flood)
        peak = sampler.stop()
        after = proc.status("VmRSS")
        return {"startup_ms": startup, "idle_mib": idle, "settled_mib": settled, "peak_mib": peak, "after_flood_mib": after,
                "results_rate": flood["results_rate"], "lost": flood["lost"], "smaps_kib": parts}
    finally:
        proc.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=report.ROOT / "target" / "release" / "edge-agent")
    ap.add_argument("--driver", type=Path, default=report.ROOT / "target" / "release" / "examples" / "mqtt_load")
    ap.add_argument("--flood", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settle", type=float, default=35.0,
                    help="seconds idle before the second RSS reading (the agent releases pages every 30 s)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the agent's environment")
    args = ap.parse_args()
    for kv in args.env:  # inherited by the agent
        name, value = kv.split("=", 1)
        os.environ[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = report.free_port()
        conf = report.write_broker(tmp, port)
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "broker.log", "w"))
        payload = tmp / "payload.json"
        payload.write_text(json.dumps([round(0.1 * math.sin(i * 0.3), 4) for i in range(128)]))
        time.sleep(0.3)
        try:
            for r in range(args.rounds):
                res = one_round(args, tmp, port, payload)
                print(json.dumps(res))
                print(f"round {r + 1}: idle {res['idle_mib']:.1f} MiB, peak under the flood "
                      f"{res['peak_mib']:.1f} MiB (idle after {args.settle:.0f} s more: {res['settled_mib']:.1f} MiB), after it {res['after_flood_mib']:.1f} MiB, "
                      f"{res['results_rate']:.0f} results/s, lost {res['lost']}", file=sys.stderr)
                for kind, v in sorted(res["smaps_kib"].items(), key=lambda kv: -kv[1]["rss"]):
                    print(f"  {kind:48s} {v['rss'] / 1024:6.1f} MiB (private copies {v['anon'] / 1024:.1f})",
                          file=sys.stderr)
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    main()
