"""CowClip on real click logs: progressive and held-out AUC/logloss by batch size, speed, latency.

Data sets (``--dataset``):

- ``movielens``: MovieLens-100K, rating >= 4 is a click (100,000 ratings); the last 10% by time held out.
- ``obd``: the Open Bandit Dataset sample (real ZOZOTOWN fashion clicks, 60,000 impressions, 287
  clicks; :mod:`models.ctr.open_bandit`); the last 30% by time held out, so the test tail holds about
  90 clicks. Its AUC therefore moves by several points between seeds: read it with ``--seeds 5`` and
  the spread printed beside it.

Protocol (time order throughout): the head is streamed ``--epochs`` times in time order; every batch is
scored before the model trains on it (progressive validation). Figures:

- ``prog AUC/logloss``: over the first pass only, from the pre-update scores of every batch
  (a true streaming figure: each rating is scored by a model that has never seen it);
- ``test AUC/logloss``: the 10% held-out tail after all passes (the paper's train-then-test figure);
- ``train/s``: samples per second through ``learn`` (which includes its own progressive scoring), CPU,
  one thread, median over steps (the machine is shared, so the median resists other people's load);
- ``clipped``: share of looked-up embedding rows whose gradient CowClip scaled down, mean over steps;
- scoring latency for a request of 100 candidates, p50/p99: the serving copy alone (encode + forward)
  and the ``POST /ctr/score`` handler (body validation + encode + forward; no HTTP transport).

Optimisers: ``adam`` = Adam at the base learning rates at every batch size (no clipping, no scaling);
``adam+rule`` = CowClip's scaling rule without the clipping; ``cowclip`` = clipping + scaling rule.

    .venv/bin/python bench/ctr_cowclip.py            # DeepFM, 3 batch sizes x 3 optimisers
    .venv/bin/python bench/ctr_cowclip.py --models deepfm,dcn --epochs 5
    .venv/bin/python bench/ctr_cowclip.py --quick    # one pass, smaller grid (smoke run)
    .venv/bin/python bench/ctr_cowclip.py --dataset obd --batches 256,1024,8192 --seeds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.ctr import movielens, open_bandit
from models.ctr.features import CtrBatch, FeatureSpec, encode
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.metrics import log_loss, roc_auc
from models.ctr.registry import learner_class
from models.ctr.service import CtrService
from streams.schemas import Impression
from streams.service import ApiRequest

OPTIMISERS = {
    "adam": {"cowclip": False, "scale_for_batch": False},
    "adam+rule": {"cowclip": False, "scale_for_batch": True},
    "cowclip": {"cowclip": True, "scale_for_batch": True},
}


#: name -> (feature spec, loader, held-out share of the tail, how a click is defined)
DATASETS: dict[str, tuple[FeatureSpec, Callable[[], list[Impression]], float, str]] = {
    "movielens": (movielens.SPEC, movielens.load_impressions, 0.1, "MovieLens-100K, click = rating >= 4"),
    "obd": (open_bandit.SPEC, open_bandit.load_impressions, 0.3, "Open Bandit Dataset sample, real clicks"),
}


@dataclass
class Row:
    model: str
    batch: int
    optimiser: str
    seed: int
    steps: int
    prog_auc: float
    prog_logloss: float
    test_auc: float
    test_logloss: float
    train_per_s: float
    clipped: float


def run(
    kind: str,
    batch: int,
    optimiser: str,
    seed: int,
    data: tuple[FeatureSpec, CtrBatch, CtrBatch],
    args: argparse.Namespace,
) -> Row:
    spec, train, test = data
    config = CtrConfig(
        seed=seed,
        batch_size=batch,
        embed_lr=args.embed_lr,
        dense_lr=args.dense_lr,
        l2=args.l2,
        init_std=args.init_std,
        clip_ratio=args.clip_ratio,
        zeta=args.zeta,
        warmup_samples=len(train),
        **OPTIMISERS[optimiser],
    )
    learner = learner_class(kind)(spec, config)
    first_pass: list[np.ndarray] = []
    rates: list[float] = []
    clipped: list[float] = []
    for epoch in range(args.epochs):
        for start in range(0, len(train), batch):
            part = train.slice(start, start + batch)
            if epoch == 0:
                first_pass.append(learner.predict(part))
            began = time.perf_counter()
            metrics = learner.learn(part)
            rates.append(len(part) / (time.perf_counter() - began))
            clipped.append(metrics.get("clipped", math.nan))
    assert train.labels is not None and test.labels is not None
    prog = np.concatenate(first_pass)
    scores = learner.predict(test)
    return Row(
        kind,
        batch,
        optimiser,
        seed,
        learner.steps,
        _auc(train.labels.numpy(), prog),
        log_loss(train.labels.numpy(), prog),
        _auc(test.labels.numpy(), scores),
        log_loss(test.labels.numpy(), scores),
        float(np.median(rates)),
        float(np.mean(clipped)),
    )


def summarise(rows: list[Row]) -> None:
    """Mean and standard error over seeds of the held-out AUC, per model, batch and optimiser."""
    cells: dict[tuple[str, int, str], list[float]] = {}
    for row in rows:
        cells.setdefault((row.model, row.batch, row.optimiser), []).append(row.test_auc)
    print(f"{'model':7} {'batch':>6} {'optimiser':10} {'seeds':>5} {'test AUC mean':>13} {'s.e.':>6}")
    for (model, batch, optimiser), aucs in cells.items():
        error = float(np.std(aucs, ddof=1) / math.sqrt(len(aucs)))
        print(f"{model:7} {batch:>6} {optimiser:10} {len(aucs):>5} {np.mean(aucs):>13.4f} {error:>6.4f}")


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    auc = roc_auc(labels, scores)
    return math.nan if auc is None else auc


def percentiles(request: Callable[[], object], repeats: int) -> dict[str, float]:
    """p50 and p99 milliseconds of ``request()`` (after 10 warm-up calls)."""
    for _ in range(10):
        request()
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        request()
        timings.append((time.perf_counter() - began) * 1000)
    p50, p99 = np.percentile(timings, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99)}


def latencies(
    learner: CtrLearner, spec: FeatureSpec, candidates: list[Impression], repeats: int
) -> dict[str, dict[str, float]]:
    """Scoring latency of a serving copy (encode + forward) and of the ``POST /ctr/score`` handler
    (JSON body validation + encode + forward, no HTTP transport)."""
    scorer = learner.scorer()
    service = CtrService(learner)
    service.swap()
    handler = next(route.handler for route in service.routes() if route.path == "/ctr/score")
    body = {"candidates": [{"categorical": dict(c.categorical), "dense": dict(c.dense)} for c in candidates]}
    loop = asyncio.new_event_loop()
    try:
        return {
            "model": percentiles(lambda: scorer.predict(encode(spec, candidates)), repeats),
            "handler": percentiles(
                lambda: loop.run_until_complete(handler(ApiRequest("POST", {}, {}, body))), repeats
            ),
        }
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="movielens")
    parser.add_argument("--seeds", type=int, default=1, help="model seeds per cell (the data order is fixed)")
    parser.add_argument("--models", default="deepfm", help="comma-separated: deepfm,dcn")
    parser.add_argument("--batches", default="1024,8192,65536")
    parser.add_argument("--optimisers", default=",".join(OPTIMISERS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--embed-lr", type=float, default=1e-3)
    parser.add_argument("--dense-lr", type=float, default=1e-3)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--clip-ratio", type=float, default=1.0, help="CowClip r")
    parser.add_argument("--zeta", type=float, default=1e-5, help="CowClip lower bound")
    parser.add_argument("--init-std", type=float, default=1e-2, help="embedding init (released code: 1e-4)")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="one pass, adam vs cowclip only")
    parser.add_argument("--json", type=Path, help="default var/bench/ctr_cowclip[-DATASET].json")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.optimisers, args.repeats = 1, "adam,cowclip", 100
    torch.set_num_threads(1)

    spec, load_impressions, heldout, described = DATASETS[args.dataset]
    suffix = "" if args.dataset == "movielens" else f"-{args.dataset}"
    args.json = args.json or Path(f"var/bench/ctr_cowclip{suffix}.json")
    impressions = load_impressions()
    data = encode(spec, impressions, [int(i.clicked or 0) for i in impressions])
    cut = int(len(data) * (1 - heldout))
    train, test = data.slice(0, cut), data.slice(cut, len(data))
    assert test.labels is not None
    print(
        f"{described}: {len(train):,} impressions streamed x{args.epochs} in time order, "
        f"{len(test):,} held out ({int(test.labels.sum())} clicks); "
        f"CTR {float(data.labels.mean()):.4f}; base lr embed {args.embed_lr:g} "
        f"dense {args.dense_lr:g} at batch 1024, L2 {args.l2:g}, init std {args.init_std:g}, "
        f"CowClip r {args.clip_ratio:g} "
        f"zeta {args.zeta:g}; "
        "CPU, torch.set_num_threads(1)",
        flush=True,
    )
    rows: list[Row] = []
    header = (
        f"{'model':7} {'batch':>6} {'optimiser':10} {'seed':>4} {'steps':>5} {'prog AUC':>8} {'prog LL':>8} "
        f"{'test AUC':>8} {'test LL':>8} {'train/s':>8} {'clipped':>7}"
    )
    print(header, flush=True)
    for kind in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for optimiser in args.optimisers.split(","):
                for seed in range(args.seeds):
                    row = run(kind, batch, optimiser, seed, (spec, train, test), args)
                    rows.append(row)
                    print(
                        f"{row.model:7} {row.batch:>6} {row.optimiser:10} {row.seed:>4} {row.steps:>5} "
                        f"{row.prog_auc:>8.4f} "
                        f"{row.prog_logloss:>8.4f} {row.test_auc:>8.4f} {row.test_logloss:>8.4f} "
                        f"{row.train_per_s:>8,.0f} {row.clipped:>7.1%}",
                        flush=True,
                    )
    if args.seeds > 1:
        summarise(rows)
    candidates = impressions[cut : cut + args.candidates]
    timings = {}
    for kind in args.models.split(","):
        learner = learner_class(kind)(spec, CtrConfig())
        learner.learn(train.slice(0, 1024))
        timings[kind] = latencies(learner, spec, candidates, args.repeats)
        for path, figures in timings[kind].items():
            what = "encode + forward" if path == "model" else "POST /ctr/score handler, no HTTP"
            print(
                f"{kind}: score {len(candidates)} candidates ({what}): "
                f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": [asdict(r) for r in rows]}
    args.json.write_text(json.dumps({**report, "latency": timings}, indent=2))


if __name__ == "__main__":
    main()
