"""The synthetic Criteo-layout stream through a real CTR worker: events/s, progressive AUC, bounded memory.

    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_stream_scale.py
    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_stream_scale.py --events 1000000

Every figure is SYNTHETIC (``models.ctr.synth``: 26 categorical and 13 dense fields, Criteo's
cardinalities, Zipf-like ids, clicks from a hidden factorisation machine) and says so.

- Kafka: ``driftline ctr synth --topic impressions`` produces ``--events`` rows onto an embedded
  broker; then one ``driftline worker --services ctr`` configured for the 26+13 fields drains the
  backlog. Events/s from its first applied batch to its last (``drain_rate``, as in
  bench/runner_throughput.py); every second its RSS (``/proc/<pid>/status`` VmRSS), applied events
  and last-batch progressive AUC (``driftline_online_metric``) are sampled.
- In process: the same rows through ``CtrService.process`` in batches of the worker's size, once per
  ``--buckets`` count: samples/s (``process`` alone, not generation or parsing), this process's RSS,
  and each batch's test-then-train AUC, which is the collision cost: fewer buckets, more ids that
  share an embedding row.

Memory is bounded by **hashing**, not eviction: ``models/ctr/features.py`` maps every categorical
value to one of ``buckets`` rows per field (CRC32), so the tables are sized when the model is built
and a new id reuses a row; nothing is evicted and nothing grows. The table of distinct ids seen shows
that new ids keep arriving meanwhile (``--id-lifetime``: a popularity slot gets a new id about every
that many rows).

Progressive AUC "at the end" is the mean of the per-batch test-then-train AUCs over the last 20% of
the events (a 4,096-row batch's AUC alone has a standard error near 0.008).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Worker, broker, load, running, say, table
from bench.runner_throughput import drain_rate
from models.ctr import synth_jsonl
from models.ctr.metrics import roc_auc
from models.ctr.synth import CATEGORICAL_FIELDS, DENSE_FIELDS, CriteoSynth, SynthConfig
from streams.schemas import Impression

#: The ctr options of every run: the synthetic layout's fields, and the reduced CPU model of
#: docs/ctr.md's large-batch section (at the defaults, 1e-3 and a 400x3 DNN, a few hundred thousand
#: rows leave DeepFM near chance, and there would be no collision cost to measure).
OPTIONS: dict[str, object] = {
    "categorical_fields": ",".join(CATEGORICAL_FIELDS),
    "dense_fields": ",".join(DENSE_FIELDS),
    "embed_lr": 1e-2,
    "hidden": [64, 64],
}
PLOT = ROOT / "docs" / "img" / "ctr_stream_scale.png"
MB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from ``/proc/<pid>/status`` (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Trace:
    """One run's samples: (events so far, value) for RSS and progressive AUC."""

    label: str
    buckets: int
    rss: list[tuple[int, int]] = field(default_factory=list)
    auc: list[tuple[int, float]] = field(default_factory=list)
    rate: float = float("nan")

    def row(self, events: int) -> list[object]:
        """The table row: rate, RSS after the first batch / at the end / max (MB), final AUC."""
        rss = [value / MB for _, value in self.rss]
        tail = [value for at, value in self.auc if at > 0.8 * events]
        final = float(np.mean(tail)) if tail else float("nan")
        return [self.label, self.buckets, self.rate, rss[0], rss[-1], max(rss), f"{final:.4f}", load()]


def config(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(seed=args.seed, id_lifetime=args.id_lifetime)


def id_growth(args: argparse.Namespace) -> list[list[object]]:
    """Distinct (field, id) pairs seen by each fifth of the stream, and how many were new there."""
    synth = CriteoSynth(config(args))
    seen: list[set[int]] = [set() for _ in CATEGORICAL_FIELDS]
    rows: list[list[object]] = []
    fifth = args.events // 5
    for part in range(5):
        batch = synth.batch(part * fifth, (part + 1) * fifth)
        new = 0
        for column, ids in enumerate(batch.ids.T):
            fresh = set(np.unique(ids).tolist()) - seen[column]
            new += len(fresh)
            seen[column] |= fresh
        rows.append([f"{part * fifth:,}-{(part + 1) * fifth:,}", new, sum(map(len, seen))])
    return rows


def teacher_auc(args: argparse.Namespace) -> float:
    """The hidden teacher's AUC on the last 20% of the rows: the best any model can score."""
    batch = CriteoSynth(config(args)).batch(int(0.8 * args.events), args.events)
    return float(roc_auc(batch.clicked, batch.probability) or float("nan"))


def batches(args: argparse.Namespace, size: int) -> Iterator[list[Impression]]:
    """The stream's rows as parsed impressions, ``size`` at a time (never all held at once)."""
    records = synth_jsonl.impressions(CriteoSynth(config(args)), 0, args.events)
    while chunk := list(islice(records, size)):
        yield chunk


def in_process(args: argparse.Namespace, tmp: Path, buckets: int) -> Trace:
    """``CtrService.process`` on the stream, in a thread of its own as the worker trains."""
    from models.ctr.service import build_service
    from streams.topics import topic_name

    os.environ["DRIFTLINE_CHECKPOINT_STORE"] = str(tmp / f"store-{buckets}")
    service = build_service(tmp / f"inprocess-{buckets}" / "ctr", buckets=buckets, **OPTIONS)
    topic, trace, pid = topic_name("impressions"), Trace("in process", buckets), os.getpid()
    gc.collect()
    say(f"in process: {args.events:,} events, {buckets:,} buckets a field")

    def train() -> None:
        events, seconds, first = 0, 0.0, 0
        for chunk in batches(args, service.batch_size):
            started = time.perf_counter()
            with service.lock:
                result = service.process(topic, chunk)
            events += len(chunk)
            if first:  # the first batch (lazy initialisation, first version) is not timed
                seconds += time.perf_counter() - started
            first = first or len(chunk)
            trace.rss.append((events, rss_bytes(pid)))
            if "auc" in result.metrics:
                trace.auc.append((events, result.metrics["auc"]))
        trace.rate = (events - first) / seconds

    with ThreadPoolExecutor(1) as thread:
        thread.submit(train).result()
    return trace


def produce(args: argparse.Namespace, bootstrap: str) -> float:
    """``driftline ctr synth --topic impressions`` (the CLI itself), rows/s."""
    command = [sys.executable, "-m", "streams.cli", "ctr", "synth", "--rows", str(args.events),
               "--seed", str(args.seed), "--id-lifetime", str(args.id_lifetime), "--topic", "impressions",
               "--quiet"]  # fmt: skip
    env = {**os.environ, "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap}
    say(f"producing {args.events:,} synthetic impressions with driftline ctr synth --topic impressions")
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return args.events / (time.monotonic() - started)


def through_kafka(args: argparse.Namespace, bootstrap: str, tmp: Path) -> Trace:
    """One ctr worker (default buckets) draining the backlog, sampled every second."""
    env = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp / "store-kafka")}
    options = [
        f"ctr.{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in OPTIONS.items()
    ]
    worker = Worker(bootstrap, tmp / "worker", "ctr", options, env, app_id="stream-scale")
    trace, done = Trace("Kafka worker", 8192), threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            try:
                events = worker.applied("ctr")
                auc = worker.metric("driftline_online_metric", service="ctr", metric="auc")
                rss = rss_bytes(worker.process.pid)  # type: ignore[union-attr]
            except OSError:
                continue  # not listening yet, or gone
            if events:
                trace.rss.append((events, rss))
                if not trace.auc or trace.auc[-1][0] != events:
                    trace.auc.append((events, auc))

    say(f"Kafka: a ctr worker drains {args.events:,} impressions")
    with running([worker], wait=False):
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            trace.rate = drain_rate(worker, "ctr", args.events)
        finally:
            done.set()
            sampler.join()
        trace.rss.append((args.events, rss_bytes(worker.process.pid)))  # type: ignore[union-attr]
    return trace


def plot(traces: list[Trace], best: float, growth: list[list[object]], events: int, path: Path) -> None:
    """Progressive AUC over events by bucket count (left) and RSS beside distinct ids seen (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = [
        {"linestyle": ":", "color": "black"} if trace.label.startswith("Kafka") else {"color": f"C{i}"}
        for i, trace in enumerate(traces)
    ]
    for trace, style in zip(traces, styles, strict=True):
        at, auc = (np.array(values) for values in zip(*trace.auc, strict=True))
        smooth = np.convolve(auc, np.ones(8) / 8, mode="valid") if len(auc) >= 8 else auc
        label = f"{trace.label}, {trace.buckets:,} buckets"
        left.plot(at[len(at) - len(smooth) :], smooth, label=label, **style)
    left.axhline(best, color="grey", linewidth=0.8, label=f"hidden teacher {best:.3f}")
    left.set(xlabel="events", ylabel="progressive AUC (rolling mean of 8 batches)",
             title="SYNTHETIC Criteo-layout stream: progressive AUC")  # fmt: skip
    left.legend(fontsize=8)
    for trace, style in zip(traces, styles, strict=True):
        at, rss = (np.array(values) for values in zip(*trace.rss, strict=True))
        right.plot(at, rss / MB, label=f"RSS, {trace.label}, {trace.buckets:,} buckets", **style)
    right.set(xlabel="events", ylabel="RSS (MB)", title="memory while new ids keep arriving (SYNTHETIC)")
    right.set_ylim(bottom=0)
    ids = right.twinx()
    fifth = events // 5
    seen = [row[2] for row in growth]
    ids.plot([fifth * (i + 1) for i in range(len(growth))], seen, "--", color="grey", marker="o",
             label="distinct ids seen")  # fmt: skip
    ids.set_ylabel("distinct (field, id) pairs seen")
    ids.set_ylim(bottom=0)
    lines = right.get_legend_handles_labels()[0] + ids.get_legend_handles_labels()[0]
    right.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="rows of the synthetic stream")
    parser.add_argument("--buckets", default="2048,8192,65536", help="in-process bucket counts (empty: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--id-lifetime", type=int, default=50_000,
                        help="mean rows a popularity slot keeps its id (synth's --id-lifetime)")  # fmt: skip
    parser.add_argument("--no-kafka", action="store_true", help="the in-process runs only")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    if args.events < 5 * 4096:
        parser.error("--events must be at least 20,480 (five worker batches)")
    args.buckets = [int(b) for b in args.buckets.split(",") if b]
    return args


def main() -> None:
    import tempfile

    args = parse_args()
    growth = id_growth(args)
    table(f"SYNTHETIC stream, {args.events:,} rows, seed {args.seed}, id lifetime {args.id_lifetime:,}: "
          "ids keep arriving", ["rows", "new (field, id) pairs", "distinct seen so far"], growth)  # fmt: skip
    best = teacher_auc(args)
    traces: list[Trace] = []
    produced = float("nan")
    with tempfile.TemporaryDirectory(prefix="driftline-stream-scale-") as scratch:
        if not args.no_kafka:
            with broker() as (node, tmp):
                produced = produce(args, node.bootstrap)
                traces.append(through_kafka(args, node.bootstrap, tmp))
        traces += [in_process(args, Path(scratch), buckets) for buckets in args.buckets]
    table(
        f"SYNTHETIC Criteo-layout stream, {args.events:,} events, DeepFM (batch 4096, CowClip, "
        f"embed lr 1e-2, DNN 64x64), CPU, {os.cpu_count()} cores; produced at {produced:,.0f} ev/s "
        f"by driftline ctr synth; hidden teacher's AUC {best:.4f}",
        ["run", "buckets/field", "events/s", "RSS first batch MB", "RSS end MB", "RSS max MB",
         "progressive AUC, last 20%", "load after"],
        [trace.row(args.events) for trace in traces],
    )  # fmt: skip
    plot(traces, best, growth, args.events, args.plot)
    say(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
