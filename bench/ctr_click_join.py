"""The online click joiner: its memory, and what waiting for clicks costs in progressive AUC.

    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_click_join.py
    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_click_join.py --rows 600000 --rate 1000

Both parts use the synthetic Criteo-layout stream (``models.ctr.synth``, 26 categorical and 13 dense
fields, clicks from a hidden teacher); every figure is synthetic and says so.

- memory: :class:`~models.ctr.click_join.ClickJoin` at 1,000 impressions/s with a 60 s window,
  traced with ``tracemalloc`` (numpy included): bytes per pending impression over the first window,
  then the steady state after three windows (pending impressions, resolved ids remembered one more
  window, free slots), per second of window, and scaled to a 300 s window.
- progressive AUC: the stream at ``--rate`` impressions/s of event time. Each micro-batch is scored
  when it arrives, as serving would answer, by a DeepFM trained on the labels known by then. ``0``
  is labels inline (test-then-train, as ``clicked`` in the impression gives); a delay D sends each
  click D seconds after its impression on the click stream and joins with a window of D seconds,
  so positives train D seconds late and negatives when the window closes, D seconds late as well.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import load  # noqa: E402
from models.ctr.click_join import ClickJoin  # noqa: E402
from models.ctr.deepfm import DeepFM  # noqa: E402
from models.ctr.features import CtrBatch, FeatureSpec  # noqa: E402
from models.ctr.learner import CtrConfig  # noqa: E402
from models.ctr.metrics import roc_auc  # noqa: E402
from models.ctr.synth import (  # noqa: E402
    CATEGORICAL_FIELDS,
    CRITEO_CARDINALITIES,
    DENSE_FIELDS,
    CriteoSynth,
    SynthBatch,
    SynthConfig,
)

_GOLDEN = np.uint64(0x9E3779B1)


def buckets_of(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket ids in ``[1, buckets)`` (0 = missing), by Fibonacci hashing the uint32 ids (the service
    hashes the id strings with CRC32 first; numbers avoid formatting 26 strings per row here)."""
    mixed = (ids.astype(np.uint64) * _GOLDEN) & np.uint64(0xFFFFFFFF)
    return ((mixed * np.uint64(buckets - 1)) >> np.uint64(32)).astype(np.int32) + 1


def features(batch: SynthBatch, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids and log counts (NaN where missing) of a synthetic batch."""
    return buckets_of(batch.ids, buckets), np.log1p(batch.dense).astype(np.float32)


def ctr_batch(categorical: np.ndarray, dense: np.ndarray, labels: np.ndarray | None = None) -> CtrBatch:
    return CtrBatch(
        torch.from_numpy(categorical.astype(np.int64)),
        torch.from_numpy(dense),
        None if labels is None else torch.from_numpy(labels.astype(np.float32)),
    )


# -- memory ------------------------------------------------------------------------------------------
def memory(window_s: float, rate: float) -> dict[str, float]:
    """The join's traced memory (numpy included) holding one window of pending impressions, then in
    steady state after three windows of a stream in which every 4th impression is clicked
    ``window_s / 2`` later (pending, remembered resolved ids and free slots all present)."""
    rng = np.random.default_rng(0)
    rows, chunk, pending = int(3 * window_s * rate), 1024, {}
    lag = int(rate * window_s / 2)  # clicks come half a window after their impression
    tracemalloc.start()
    join = ClickJoin(window_s, len(CATEGORICAL_FIELDS), len(DENSE_FIELDS), max_pending=rows)
    before = tracemalloc.get_traced_memory()[0]
    busy = 0.0
    for start in range(0, rows, chunk):
        ids = [
            f"s0-{row}" for row in range(start, start + chunk)
        ]  # held by the join alone, as in the service
        categorical = rng.integers(1, 2**15, (chunk, len(CATEGORICAL_FIELDS)), dtype=np.int32)
        dense = rng.random((chunk, len(DENSE_FIELDS)), dtype=np.float32)
        now = (start + chunk - 1) / rate
        clicked = [f"s0-{row}" for row in range(max(start - lag, 0), start + chunk - lag) if row % 4 == 0]
        started = time.perf_counter()
        join.add_impressions(ids, (np.arange(start, start + chunk) / rate).tolist(), categorical, dense)
        join.add_clicks(clicked, [now] * len(clicked))
        join.take(4096)
        busy += time.perf_counter() - started
        if start + chunk >= window_s * rate and not pending:
            pending = {"bytes": tracemalloc.get_traced_memory()[0] - before, "count": join.pending}
    steady = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "first_window_bytes": pending["bytes"] / pending["count"],
        "steady_bytes_per_window_second": steady / window_s,
        "pending": join.pending,
        "remembered": int(join.gauges()["join_remembered"]),
        "us_per_impression": busy / rows * 1e6,
    }


# -- progressive AUC ---------------------------------------------------------------------------------
def learner(buckets: int, batch: int, seed: int) -> DeepFM:
    spec = FeatureSpec(CATEGORICAL_FIELDS, DENSE_FIELDS, buckets)
    # Small and without CowClip or L2 (both take a torch.unique per step): the delay is what is
    # measured, on the shared 2-core machine.
    config = CtrConfig(embed_dim=8, hidden=(64, 64), batch_size=batch, embed_lr=1e-2, dense_lr=1e-3,
                       warmup_samples=0, cowclip=False, l2=0.0, seed=seed)  # fmt: skip
    return DeepFM(spec, config, torch.device("cpu"))


def progressive(
    synth: CriteoSynth, rows: int, delay_s: float, batch: int, buckets: int, seed: int
) -> dict[str, float]:
    """Score each micro-batch on arrival, train on what is labelled by then; AUC over all rows."""
    model = learner(buckets, batch, seed)
    join = ClickJoin(delay_s, len(CATEGORICAL_FIELDS), len(DENSE_FIELDS)) if delay_s > 0 else None
    clicks: list[tuple[float, str]] = []  # (click ts, impression id), in ts order: delays are equal
    sent = 0
    scores, labels = [], []
    started = time.perf_counter()
    for part in synth.batches(0, rows):
        for first in range(0, len(part), batch):
            piece = part.slice(first, first + batch)
            categorical, dense = features(piece, buckets)
            ts = synth.timestamps(piece.rows)
            scores.append(model.predict(ctr_batch(categorical, dense)))
            labels.append(piece.clicked)
            if join is None:
                model.learn(ctr_batch(categorical, dense, piece.clicked))
                continue
            ids = [f"r{row}" for row in piece.rows.tolist()]
            join.add_impressions(ids, ts.tolist(), categorical, dense)
            clicked = zip(ts.tolist(), ids, piece.clicked.tolist(), strict=True)
            clicks += [(t + delay_s, key) for t, key, c in clicked if c]
            due = sent
            while due < len(clicks) and clicks[due][0] <= ts[-1]:
                due += 1
            join.add_clicks([key for _, key in clicks[sent:due]], [t for t, _ in clicks[sent:due]])
            sent = due
            for rows_ready in join.take(batch):
                model.learn(ctr_batch(rows_ready.categorical, rows_ready.dense, rows_ready.labels))
    y, p = np.concatenate(labels), np.concatenate(scores)
    half = len(y) // 2
    return {
        "auc": roc_auc(y, p) or float("nan"),
        "auc_second_half": roc_auc(y[half:], p[half:]) or float("nan"),
        "trained": model.samples_seen,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=120_000, help="impressions in the AUC runs")
    parser.add_argument("--rate", type=float, default=100.0, help="impressions per second of event time")
    parser.add_argument("--delays", default="0,5,60,300", help="click delays in seconds (0: labels inline)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--buckets", type=int, default=2**12, help="hash buckets per categorical field")
    parser.add_argument("--max-cardinality", type=int, default=1000,
                        help="ids per field at most: learnable in 10^5 rows, not 10^7")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    figures = memory(window_s=60.0, rate=1000.0)
    second = figures["steady_bytes_per_window_second"]
    print(f"## Click join memory (synthetic, 26 + 13 fields, 1,000 impressions/s; {load()})\n")
    print(
        "| bytes per pending impression (first window) | steady state per second of window | "
        "window 60 s (pending / remembered ids) | window 300 s | µs per impression (tracemalloc on) |"
    )
    print("|---|---|---|---|---|")
    print(f"| {figures['first_window_bytes']:,.0f} | {second / 1e6:,.2f} MB | {second * 60 / 1e6:,.0f} MB "
          f"({figures['pending']:,} / {figures['remembered']:,}) | {second * 300 / 1e6:,.0f} MB | "
          f"{figures['us_per_impression']:.1f} |\n")  # fmt: skip

    cardinalities = tuple(min(c, args.max_cardinality) for c in CRITEO_CARDINALITIES)
    synth = CriteoSynth(SynthConfig(seed=args.seed, ts_step=1.0 / args.rate, cardinalities=cardinalities))
    print(f"## Progressive AUC by click delay (synthetic Criteo-layout stream, ids per field capped at "
          f"{args.max_cardinality:,}, {args.rows:,} rows at {args.rate:,.0f}/s; DeepFM 8-dim 64x64, "
          f"{args.buckets:,} buckets/field, batch {args.batch})\n")  # fmt: skip
    print("| click delay (= window) | progressive AUC | second half | rows trained | seconds | load |")
    print("|---|---|---|---|---|---|")
    for delay in (float(d) for d in args.delays.split(",")):
        result = progressive(synth, args.rows, delay, args.batch, args.buckets, args.seed)
        name = "labels inline" if delay == 0 else f"{delay:g} s"
        print(f"| {name} | {result['auc']:.4f} | {result['auc_second_half']:.4f} | {result['trained']:,} | "
              f"{result['seconds']:.0f} | {load()} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
