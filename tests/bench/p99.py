#!/usr/bin/env python3
"""p99 of sensor message -> result on the broker, edge-agent against the Python peer, at a
few offered rates, the two sides alternating round by round on one broker (the pieces of
tests/bench/report.py's MQTT section, without the sweep to saturation and the flood).
Prints each step, then per rate the p99s and the agent / peer ratio of each round.

    target/test-cache/venv/bin/python tests/bench/p99.py \\
        --peer-python target/test-cache/peer-venv/bin/python --rounds 3

`--nstat` adds the kernel's delayed-ACK counters over each step (`nstat`), `--broker`
adds a line to Mosquitto's configuration and `--agent-mqtt` one to the agent's `[mqtt]`
table, and `--sensor-qos` sets its sensor subscription's QoS: the knobs used to find the
cause of the agent's stalls (tests/bench/notes.md). `--dump DIR` writes each step's
per-message send times and latencies (`mqtt_load --latencies`) and prints the slow ones
grouped into bursts; `--subject edge-agent` measures one side only.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (its broker, process and driver helpers)

SUBJECTS = ["edge-agent", "peer, 1 thread"]


def nstat():
    out = subprocess.run(["nstat", "-az", "-j"], capture_output=True, text=True).stdout
    return json.loads(out).get("kernel", {})


def start(args, subject, port, tmp):
    if subject == "edge-agent":
        cfg = report.agent_config(tmp, port, args.agent_mqtt, [f"qos = {args.sensor_qos}"])
        return report.Process([str(args.bin), "run", "--config", str(cfg), "--quiet"], tmp / "agent.log")
    return report.start_subject(args, subject, port, tmp)


def bursts(path, p99_ms):
    """The messages over p99, grouped into bursts (sent within 100 ms of the previous
    slow one): when each burst started, how long it lasted and its worst latency."""
    slow = []
    for line in open(path):
        i, sent, lat = line.split()
        if float(lat) >= p99_ms:
            slow.append((float(sent), float(lat)))
    out, cur = [], None
    for sent, lat in slow:
        if cur and sent - cur[1] < 100:
            cur[1], cur[2], cur[3] = sent, max(cur[2], lat), cur[3] + 1
        else:
            cur = [sent, sent, lat, 1]
            out.append(cur)
    return ", ".join(f"{b[0]:.0f}ms+{b[1] - b[0]:.0f}:{b[3]}x<={b[2]:.0f}" for b in out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=report.ROOT / "target" / "release" / "edge-agent")
    ap.add_argument("--driver", type=Path, default=report.ROOT / "target" / "release" / "examples" / "mqtt_load")
    ap.add_argument("--peer-python", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rates", default="1000,2000,4000")
    ap.add_argument("--step-s", type=float, default=3.0)
    ap.add_argument("--broker", action="append", default=[], help="extra mosquitto.conf line")
    ap.add_argument("--agent-mqtt", action="append", default=[], help="extra line in the agent's [mqtt]")
    ap.add_argument("--sensor-qos", type=int, default=1, help="the agent's sensor subscription QoS")
    ap.add_argument("--subject", action="append", choices=SUBJECTS,
                    help="a side to measure (repeat for more; default: both)")
    ap.add_argument("--nstat", action="store_true")
    ap.add_argument("--dump", type=Path, help="directory for each step's per-message latencies")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    subjects = args.subject or SUBJECTS

    tmp = Path(tempfile.mkdtemp(prefix="p99-"))
    port, broker, payload = report.broker_and_payload(tmp, args.broker)
    p99 = {s: {r: [] for r in rates} for s in subjects}
    try:
        for rnd in range(args.rounds):
            order = subjects[rnd % len(subjects):] + subjects[:rnd % len(subjects)]
            for subject in order:
                proc = start(args, subject, port, tmp)
                try:
                    report.drive(args.driver, port, payload, since=time.time_ns())
                    time.sleep(1.0)
                    for rate in rates:
                        before = nstat() if args.nstat else {}
                        dump = None
                        if args.dump:
                            args.dump.mkdir(parents=True, exist_ok=True)
                            dump = args.dump / f"{subject.split(',')[0]}-{rate}-r{rnd + 1}.txt"
                        count = max(1000, int(rate * args.step_s))
                        r = report.drive(args.driver, port, payload, rate, count, latencies=dump)
                        extra = ""
                        if args.nstat:
                            after = nstat()
                            keys = ["TcpExtDelayedACKs", "TcpExtDelayedACKLocked", "TcpExtTCPDelivered"]
                            extra = " " + " ".join(f"{k[6:]}={after.get(k, 0) - before.get(k, 0)}" for k in keys)
                        print(f"round {rnd + 1} {subject:16} {rate:5}/s: {r['results_rate']:6.0f}/s "
                              f"p50 {r['p50_ms']:7.2f} p90 {r['p90_ms']:7.2f} p99 {r['p99_ms']:7.2f} "
                              f"max {r['max_ms']:7.2f} lost {r['lost']}{extra}", flush=True)
                        p99[subject][rate].append(r["p99_ms"])
                        if dump:
                            print(f"    slow bursts (sent at ms + span: count <= worst ms): "
                                  f"{bursts(dump, r['p99_ms'])}", flush=True)
                finally:
                    proc.stop()
    finally:
        broker.terminate()
        broker.wait()
    if "edge-agent" in p99 and "peer, 1 thread" in p99:
        print("\np99 agent / peer, per round (median):")
        for rate in rates:
            rs = report.ratios(p99["edge-agent"][rate], p99["peer, 1 thread"][rate])
            print(f"  {rate:5}/s: agent {' '.join(f'{x:.2f}' for x in p99['edge-agent'][rate])} ms, "
                  f"peer {' '.join(f'{x:.2f}' for x in p99['peer, 1 thread'][rate])} ms, "
                  f"ratio {' '.join(f'{x:.2f}' for x in rs)} (median {statistics.median(rs):.2f})")


if __name__ == "__main__":
    main()
