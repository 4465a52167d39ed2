"""A serving replica's DNN in float32 against bfloat16 (``ctr.serving_precision``): speed and scores.

A default DeepFM (the service's options) learns the first ``--train`` MovieLens-100K impressions in
time order, in the service's 4,096-impression batches; its replica scorers in both precisions then
score the remaining impressions. Printed:

  scores   mean and largest absolute difference of bfloat16 from float32, AUC and logloss of each
           (the clicked label: rating >= 4), and the mean and lowest share of each 100-candidate
           group's top 10 that bfloat16 keeps
  speed    one 100-candidate predict (the bench/serving_latency.py body), one torch thread, median
           and p90 of ``--queries``: back to back, and after a ``--gap-ms`` sleep (a lone user's
           pace: the caches cool between queries)

Usage: python bench/ctr_serving_precision.py [--train 80000] [--queries 200] [--gap-ms 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load, table
from bench.serving_latency import ctr_query
from models.ctr.fast_encoder import FastCandidateEncoder
from models.ctr.features import CtrBatch, encode
from models.ctr.learner import CtrScorer
from models.ctr.metrics import log_loss, roc_auc
from models.ctr.movielens import load_impressions
from models.ctr.service import learner_from_options
from models.ctr.serving import replica_scorer
from models.ctr.serving_precision import bf16_speedup

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def top10_kept(reference: np.ndarray, other: np.ndarray, group: int = 100) -> list[float]:
    """For each ``group`` of consecutive candidates, the share of ``reference``'s top 10 in ``other``'s."""
    kept = []
    for start in range(0, len(reference) - group + 1, group):
        best = set(np.argsort(-reference[start : start + group])[:10])
        kept.append(len(best & set(np.argsort(-other[start : start + group])[:10])) / 10)
    return kept


def latencies_ms(scorer: CtrScorer, batch: CtrBatch, gap_s: float, queries: int) -> tuple[float, float]:
    """Median and p90 ms of one predict of ``batch``, ``gap_s`` after the one before."""
    for _ in range(20):
        scorer.predict(batch)
    times = []
    for _ in range(queries):
        time.sleep(gap_s)
        started = time.perf_counter()
        scorer.predict(batch)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), float(np.quantile(times, 0.9))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=80_000, help="impressions learned before scoring")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    args = parser.parse_args()
    learner, _ = learner_from_options()
    impressions = load_impressions()
    train, held_out = impressions[: args.train], impressions[args.train :]
    size = learner.config.batch_size
    for start in range(0, len(train), size):
        rows = train[start : start + size]
        learner.learn(encode(learner.spec, rows, [int(r.clicked or 0) for r in rows]))
    torch.set_num_threads(1)
    state = learner.scorer().state_dict()
    scorers = {name: replica_scorer(learner, state, dtype) for name, dtype in PRECISIONS.items()}
    query = FastCandidateEncoder(learner.spec).encode(ctr_query()["candidates"])
    batch = encode(learner.spec, held_out)
    labels = np.array([int(r.clicked or 0) for r in held_out])
    scores = {name: scorer.predict(batch) for name, scorer in scorers.items()}
    gap = np.abs(scores["bfloat16"] - scores["float32"])
    kept = top10_kept(scores["float32"], scores["bfloat16"])
    print(f"bfloat16 product speed-up on this CPU: {bf16_speedup():.2f}x ({load()})")
    rows: list[list[object]] = []
    for name, scorer in scorers.items():
        rows.append([
            name,
            f"{roc_auc(labels, scores[name]):.5f}",
            f"{log_loss(labels, scores[name]):.5f}",
            *(f"{ms:.3f}" for ms in latencies_ms(scorer, query, 0.0, args.queries)),
            *(f"{ms:.3f}" for ms in latencies_ms(scorer, query, args.gap_ms / 1e3, args.queries)),
            load(),
        ])  # fmt: skip
    table(
        f"DeepFM replica scorer after {len(train):,} MovieLens-100K impressions, scored on the other "
        f"{len(held_out):,}; predict of 100 candidates, one thread",
        ["precision", "AUC", "logloss", "b2b p50 ms", "b2b p90 ms",
         f"{args.gap_ms:g} ms gap p50", f"{args.gap_ms:g} ms gap p90", "load"],
        rows,
    )  # fmt: skip
    print(
        f"bfloat16 against float32: mean |diff| {gap.mean():.5f}, max {gap.max():.5f}; "
        f"top 10 of 100 kept: mean {np.mean(kept):.1%}, lowest {min(kept):.0%}"
    )


if __name__ == "__main__":
    main()
