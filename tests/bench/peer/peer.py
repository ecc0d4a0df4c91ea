#!/usr/bin/env python3
"""A plain Python counterpart of `edge-agent run` for one model over MQTT.

Sensor messages arrive on a topic filter (QoS 1), are cut into per-stream sliding
windows as the model's `model.toml` says, run through onnxruntime (CPU), post-processed
the way edge-agent does (softmax if asked, argmax, label, score, threshold, top-k), and
published as result JSON on `{prefix}/{device}/results/{model}` at QoS 1.

Written as the fair baseline of a benchmark: the obvious design, with no tricks
in either direction. See README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import signal
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt

log = logging.getLogger("peer")

# Messages waiting for the worker before the network thread stops reading (edge-agent
# stops reading at 256 too): a flood then waits in the broker, not in our memory.
QUEUE_CAPACITY = 256
# Unacknowledged QoS 1 results in flight (edge-agent's `inflight` default).
MAX_INFLIGHT = 64
# Decode/inference errors are logged at most once per this many seconds per stream.
ERROR_LOG_INTERVAL_S = 5.0

DTYPES = {
    "f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32,
    "i16": np.int16, "i8": np.int8, "u8": np.uint8, "bool": np.bool_,
}


# --------------------------------------------------------------------------- model spec


@dataclass
class Spec:
    name: str
    version: str
    file: Path
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: type
    max_payload_bytes: int
    scale: float | None
    window_size: int | None  # None: one message is one model input
    window_hop: int
    window_context: int
    output: str | None
    softmax: bool
    labels: list[str]
    threshold: float | None
    top_k: int | None


def load_spec(model_dir: Path) -> Spec:
    """Reads `model.toml`; refuses what this peer does not implement."""
    with open(model_dir / "model.toml", "rb") as f:
        t = tomllib.load(f)
    inputs = t.get("input", [])
    data_inputs = [i for i in inputs if i.get("from", "data") == "data"]
    if len(inputs) != 1 or len(data_inputs) != 1:
        raise SystemExit("peer: only models with exactly one data input are supported")
    inp = data_inputs[0]
    pre = t.get("pre", {})
    if pre.get("format", "json") != "json":
        raise SystemExit(f"peer: pre.format {pre.get('format')!r} is not supported (json only)")
    post = t.get("post", {})
    for unsupported in ("segments", "raw"):
        if post.get(unsupported):
            raise SystemExit(f"peer: post.{unsupported} is not supported")
    window = pre.get("window")
    return Spec(
        name=t["name"],
        version=str(t["version"]),
        file=model_dir / t.get("file", "model.onnx"),
        input_name=inp["name"],
        input_shape=tuple(inp["shape"]),
        input_dtype=DTYPES[inp["dtype"]],
        max_payload_bytes=t.get("limits", {}).get("max_payload_bytes", 8 * 1024 * 1024),
        scale=pre.get("scale"),
        window_size=window["size"] if window else None,
        window_hop=max(1, window.get("hop", window["size"])) if window else 1,
        window_context=window.get("context", 0) if window else 0,
        output=post.get("output"),
        softmax=bool(post.get("softmax", False)),
        labels=list(post.get("labels", [])),
        threshold=post.get("threshold"),
        top_k=post.get("top_k"),
    )


# --------------------------------------------------------------------------- pipeline


class Windower:
    """Window k of a stream covers samples [k*hop - context, k*hop + size), zeros before
    the stream's first sample (the same cutting as edge-agent's pipeline/window.rs)."""

    def __init__(self, size: int, hop: int, context: int):
        self.need = context + size
        self.hop = hop
        self.buf = np.zeros(context, dtype=np.float32)
        self.next_index = 0
        self.skip = 0  # samples still to drop when hop > context + size

    def push(self, samples: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """Feeds samples; returns (data, index, offset) of each window they complete."""
        if self.skip:
            n = min(self.skip, len(samples))
            samples = samples[n:]
            self.skip -= n
        self.buf = np.concatenate((self.buf, samples))
        out = []
        while len(self.buf) >= self.need:
            out.append((self.buf[: self.need].copy(), self.next_index, self.next_index * self.hop))
            self.next_index += 1
            if self.hop <= self.need:
                self.buf = self.buf[self.hop:]
            else:
                rest = self.buf[self.need:]
                self.skip = self.hop - self.need
                n = min(self.skip, len(rest))
                self.buf, self.skip = rest[n:], self.skip - n
        return out


def decode(payload: bytes, spec: Spec) -> tuple[np.ndarray, object | None]:
    """A JSON array of numbers (flat or nested) or {"data": [...], "id": ...} ->
    (float32 samples, the message's id or None). Raises ValueError when malformed."""
    if len(payload) > spec.max_payload_bytes:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {spec.max_payload_bytes}")
    doc = json.loads(payload)
    input_id = None
    if isinstance(doc, dict):
        input_id = doc.get("id")
        if "data" not in doc:
            raise ValueError("an object needs a `data` field holding the numbers")
        doc = doc["data"]
    if not isinstance(doc, list):
        raise ValueError("expected a JSON array of numbers")
    values = np.asarray(doc, dtype=np.float32).ravel()  # ragged arrays raise ValueError
    if spec.scale is not None:
        values *= spec.scale
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"value at index {bad[0]} is not finite")
    return values, input_id


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def post_process(values: np.ndarray, spec: Spec) -> dict:
    """The `outputs` object, as edge-agent's pipeline/post.rs builds it."""
    probs = softmax(values) if spec.softmax else values
    out: dict = {}
    if probs.size == 0:
        return out
    if probs.size == 1:
        score = float(probs[0])
        out["score"] = score
        if spec.threshold is not None:
            active = score >= spec.threshold
            out["active"] = active
            if len(spec.labels) == 2:
                out["label"] = spec.labels[int(active)]
        return out
    best = int(np.argmax(probs))  # first of equal maxima, like edge-agent
    score = float(probs[best])
    out["class"] = best
    if best < len(spec.labels):
        out["label"] = spec.labels[best]
    out["score"] = score
    if spec.threshold is not None:
        out["confident"] = score >= spec.threshold
    if spec.top_k is not None:
        order = sorted(range(probs.size), key=lambda i: -probs[i])  # stable, like sort_by
        top = []
        for i in order[: spec.top_k]:
            entry: dict = {"class": i}
            if i < len(spec.labels):
                entry["label"] = spec.labels[i]
            entry["score"] = float(probs[i])
            top.append(entry)
        out["top"] = top
    if spec.softmax:
        out["probs"] = [float(p) for p in probs]
    return out


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- the peer


@dataclass
class Stats:
    messages: int = 0
    results: int = 0
    errors: int = 0


@dataclass
class StreamState:
    windower: Windower | None
    next_index: int = 0  # unwindowed models: message index
    last_error_log: float = -math.inf
    suppressed: int = 0
    last_label: str | None = None


@dataclass
class Peer:
    args: argparse.Namespace
    spec: Spec
    session: ort.InferenceSession
    client: mqtt.Client
    results_topic: str
    output_name: str
    # Design: one worker thread fed by a bounded queue, not inference in on_message.
    # paho's network thread does all socket reads *and* writes; running the model in
    # its callback would hold up PUBACKs, pings and our own result publishes for the
    # length of every inference. onnxruntime releases the GIL inside run(), so with a
    # worker the network thread keeps moving data while the model computes. A single
    # worker keeps every stream's windows (and seq) in arrival order for free; the
    # parallelism knob is onnxruntime's intra-op threads (--threads). The bounded
    # queue is the backpressure: when it is full, on_message blocks, paho stops
    # reading, and the backlog stays in the broker.
    inbox: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=QUEUE_CAPACITY))
    streams: dict[str, StreamState] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    seq: int = 0
    last_publish: mqtt.MQTTMessageInfo | None = None
    unsubscribed: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    dropped_at_stop: int = 0

    # ---- paho callbacks (network thread)

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("connection refused: %s", reason_code)
            return
        log.info("connected to %s:%d; subscribing to %s", self.args.host, self.args.port, self.args.topic)
        client.subscribe(self.args.topic, qos=1)

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if reason_code != 0:
            log.warning("disconnected (%s); paho reconnects", reason_code)

    def on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self.unsubscribed.set()

    def on_message(self, client, userdata, msg: mqtt.MQTTMessage):
        # Decoding happens in the worker: the network thread only hands over. A full
        # queue blocks here (backpressure), but never past the start of a stop.
        while not self.stopping.is_set():
            try:
                self.inbox.put((msg.topic, msg.payload), timeout=0.5)
                return
            except queue.Full:
                pass
        self.dropped_at_stop += 1

    # ---- worker thread

    def stream_id(self, topic: str) -> str:
        if self.args.stream_level is None:
            return topic
        levels = topic.split("/")
        return levels[self.args.stream_level] if self.args.stream_level < len(levels) else topic

    def report_error(self, st: StreamState, stream: str, what: str, err: Exception):
        self.stats.errors += 1
        now = time.monotonic()
        if now - st.last_error_log >= ERROR_LOG_INTERVAL_S:
            extra = f" ({st.suppressed} more not logged)" if st.suppressed else ""
            log.warning("stream %s: %s: %s%s", stream, what, err, extra)
            st.last_error_log, st.suppressed = now, 0
        else:
            st.suppressed += 1

    def handle(self, topic: str, payload: bytes):
        spec = self.spec
        stream = self.stream_id(topic)
        st = self.streams.get(stream)
        if st is None:
            w = spec.window_size
            st = StreamState(Windower(w, spec.window_hop, spec.window_context) if w else None)
            self.streams[stream] = st
        self.stats.messages += 1
        try:
            samples, input_id = decode(payload, spec)
        except ValueError as e:  # includes json.JSONDecodeError
            self.report_error(st, stream, "cannot decode the message", e)
            return
        if st.windower is not None:
            inputs = st.windower.push(samples)
        else:
            inputs = [(samples, st.next_index, None)]
            st.next_index += 1
        for data, index, offset in inputs:
            started = time.perf_counter()
            try:
                x = data.reshape(spec.input_shape).astype(spec.input_dtype, copy=False)
                values = self.session.run([self.output_name], {spec.input_name: x})[0]
            except Exception as e:  # wrong size, runtime failure: no result, as edge-agent
                self.report_error(st, stream, f"window {index} failed", e)
                continue
            outputs = post_process(np.asarray(values, dtype=np.float32).ravel(), spec)
            latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
            self.publish(stream, topic, index, offset, latency_ms, outputs, input_id, st)

    def publish(self, stream, topic, index, offset, latency_ms, outputs, input_id, st):
        # Field order follows edge-agent's service/result.rs.
        result = {
            "seq": self.seq,
            "ts": rfc3339_now(),
            "device": self.args.device,
            "model": self.spec.name,
            "version": self.spec.version,
            "stream": stream,
            "source": topic,
            "place": "local",
            "reason": None,
            "latency_ms": latency_ms,
            "window": index,
        }
        if offset is not None:
            result["offset"] = offset
        result["outputs"] = outputs
        if input_id is not None:
            result["input_id"] = input_id
        self.seq += 1
        self.stats.results += 1
        label = outputs.get("label")
        if label is not None and label != st.last_label:
            log.info("stream %s: label %s (score %.3f, window %d)", stream, label, outputs["score"], index)
            st.last_label = label
        payload = json.dumps(result, separators=(",", ":"))
        self.last_publish = self.client.publish(self.results_topic, payload, qos=1)

    def work(self):
        while True:
            item = self.inbox.get()
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception:
                log.exception("unexpected failure on a message from %s", item[0])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Python peer of `edge-agent run` (one model, MQTT in and out).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--device", required=True, help="device id, used in the results topic")
    p.add_argument("--model", required=True, type=Path, help="model directory (model.toml + ONNX file)")
    p.add_argument("--topic", required=True, help="sensor topic filter, e.g. sensors/+/accel")
    p.add_argument("--stream-level", type=int, default=None,
                   help="0-based topic level that names the stream (default: the whole topic)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--prefix", default="edge", help="first level of the results topic")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.model)

    opts = ort.SessionOptions()
    if args.threads > 0:
        opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(spec.file), sess_options=opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    output_name = spec.output or outputs[0]
    if output_name not in outputs:
        raise SystemExit(f"peer: the model has no output {output_name!r} (it has {outputs})")
    log.info("model %s %s loaded (input %s %s, output %s, threads %s)", spec.name, spec.version,
             spec.input_name, list(spec.input_shape), output_name, args.threads or "default")

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peer-{args.device}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.reconnect_delay_set(min_delay=1, max_delay=30)

    peer = Peer(args, spec, session, client, f"{args.prefix}/{args.device}/results/{spec.name}", output_name)
    client.on_connect = peer.on_connect
    client.on_disconnect = peer.on_disconnect
    client.on_unsubscribe = peer.on_unsubscribe
    client.on_message = peer.on_message

    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    worker = threading.Thread(target=peer.work, name="inference", daemon=True)
    worker.start()
    client.connect_async(args.host, args.port, keepalive=30)
    client.loop_start()
    while not stop.wait(1.0):
        pass

    # Clean stop: take no new work, finish what the worker already holds (at most
    # QUEUE_CAPACITY messages), wait until the broker has acknowledged our results,
    # disconnect. Messages the broker still sends after the signal are not processed:
    # a backlog in the broker can be arbitrarily long and a stop must be prompt. With
    # a clean session the broker would discard them at the disconnect anyway.
    peer.stopping.set()
    if client.is_connected():
        client.unsubscribe(args.topic)
        if not peer.unsubscribed.wait(2.0):
            log.warning("no UNSUBACK within 2 s")
    peer.inbox.put(None)
    worker.join()
    while True:  # anything queued behind the end marker in a race with the stop
        try:
            if peer.inbox.get_nowait() is not None:
                peer.dropped_at_stop += 1
        except queue.Empty:
            break
    if peer.last_publish is not None and client.is_connected():
        try:
            peer.last_publish.wait_for_publish(timeout=10.0)
        except (RuntimeError, ValueError) as e:
            log.warning("last result not acknowledged: %s", e)
    client.disconnect()
    client.loop_stop()
    s = peer.stats
    log.info("model summary: %d messages, %d results, %d errors, %d not taken at stop",
             s.messages, s.results, s.errors, peer.dropped_at_stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
