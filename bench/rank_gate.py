"""What the rank promotion gate costs and protects, on MQ2008 (real queries and grades).

A label stream of one query per batch (annotators' labels arrive one by one) trains one
:class:`~rankers.lambdamart.LambdaMARTRanker`, watched by several gates at once, without probation
(``probation_queries=0``: a gate alone never changes what the ranker trains on, so they share its
checkpoints). Every 5 labels the held-back test queries
(200, never streamed) are ranked by the newest checkpoint and by each gate's serving booster.
``--invert A B``: labels A..B-1 get their grades turned upside down (a synthetic corruption, 2 - g;
with ``--mirror`` each query's grades handed out in reverse order instead,
:func:`rankers.inversion.mirror_grades`), to see how long an ungated service would serve what they
taught. Deterministic per ``--seed``.

Probation: two more rankers learn the same stream behind the default gate (``--margins`` and
``--queries`` do not apply to them), one with the default probation and automatic rollback
(:meth:`~rankers.promotion.RankGate.watch` before every retrain, and a drift alarm on its
progressive NDCG@10 as the runner feeds it, which holds the probation) and one without
(``probation_queries=0``); a rollback quarantines labels, so each needs its own ranker. For each
rollback the table says which version was rolled back and how many labeled queries it served from
its promotion to the rollback.

    .venv/bin/python bench/rank_gate.py                         # clean stream, seed 0
    .venv/bin/python bench/rank_gate.py --invert 100 140        # 40 inverted labels
    .venv/bin/python bench/rank_gate.py --invert 100 125 --batch 5 --mirror   # five labels per retrain
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rankers.data import QueryBatch
from rankers.inversion import mirror_grades
from rankers.lambdamart import LambdaMARTRanker
from rankers.metrics import mean_metrics
from rankers.mq2008 import load_mq2008
from rankers.promotion import METRIC, GateConfig, RankGate
from streams.drift import DriftMonitor, DriftSettings

TEST_QUERIES = 200
EVERY = 5
MQ2008_MAX_GRADE = 2


@dataclass
class Tally:
    """One gate's decisions and its serving booster's held-out NDCG@10 at every evaluation."""

    gate: RankGate
    promoted: int = 0
    rejected: int = 0
    ndcg: list[float] = field(default_factory=list)


@dataclass
class Probed:
    """A ranker of its own behind the default gate, with or without probation, and its rollbacks."""

    ranker: LambdaMARTRanker
    gate: RankGate
    drift: DriftMonitor = field(default_factory=lambda: DriftMonitor("rank", METRIC, True, DriftSettings()))
    #: Label index of each drift alarm.
    alarms: list[int] = field(default_factory=list)
    ndcg: list[float] = field(default_factory=list)
    #: Label index at which each serving version was promoted.
    promoted_at: dict[int, int] = field(default_factory=dict)
    #: (rolled-back version, last label learned when it was promoted, last when it was rolled back).
    rollbacks: list[tuple[int, int, int]] = field(default_factory=list)

    def learn(self, batch: QueryBatch, i: int) -> None:
        was = self.gate.serving_version
        if self.gate.watch(self.ranker, batch).get("gate_rolled_back"):
            self.rollbacks.append((was, self.promoted_at[was], i - batch.n_queries))
        metrics = self.ranker.learn(batch)
        if self.gate.retrained(self.ranker, batch, {"labels:0": i}, float(i)).get("gate_promoted") == 1.0:
            self.promoted_at[self.gate.serving_version] = i
        if self.drift.observe(metrics):  # what the runner does after each batch
            self.alarms.append(i)
            self.gate.on_drift(self.drift.settings.action)


def complement_grades(batch: QueryBatch) -> QueryBatch:
    """Grades turned upside down as 2 - g (synthetic)."""
    assert batch.grades is not None
    return QueryBatch(batch.features, batch.offsets, batch.query_ids, MQ2008_MAX_GRADE - batch.grades)


def labeled(data: QueryBatch, q: list[int], invert: Callable[[QueryBatch], QueryBatch] | None) -> QueryBatch:
    """Queries ``q`` of ``data``, their grades corrupted by ``invert`` when given."""
    batch = data.select(q)
    return batch if invert is None else invert(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=240, help="labeled queries streamed")
    parser.add_argument("--invert", type=int, nargs=2, default=(0, 0), metavar=("A", "B"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--queries", type=int, nargs="+", default=[10, 20], help="promotion_queries")
    parser.add_argument("--batch", type=int, default=1, help="labeled queries per retrain")
    parser.add_argument("--mirror", action="store_true", help="invert by mirror_grades instead of 2 - g")
    args = parser.parse_args()
    data = load_mq2008()
    order = np.random.default_rng(args.seed).permutation(data.n_queries)
    test = data.select(order[:TEST_QUERIES])
    stream = order[TEST_QUERIES : TEST_QUERIES + args.labels]
    tallies = {
        (m, q): Tally(RankGate(GateConfig(promotion_margin=m, promotion_queries=q, probation_queries=0)))
        for m in args.margins
        for q in args.queries
    }
    ranker = LambdaMARTRanker(rounds=100, committee_size=4, seed=args.seed)
    probed = [
        Probed(LambdaMARTRanker(rounds=100, committee_size=4, seed=args.seed), RankGate(config))
        for config in (GateConfig(), GateConfig(probation_queries=0))
    ]
    invert = mirror_grades if args.mirror else complement_grades
    newest: list[float] = []
    for start in range(0, len(stream), args.batch):
        i = min(start + args.batch, len(stream)) - 1  # the batch's last label
        inverted = args.invert[0] <= start < args.invert[1]
        batch = labeled(data, list(stream[start : i + 1]), invert if inverted else None)
        ranker.learn(batch)
        for tally in tallies.values():
            decided = tally.gate.retrained(ranker, batch, {"labels:0": i}, float(i)).get("gate_promoted")
            tally.promoted += decided == 1.0
            tally.rejected += decided == 0.0
        for run in probed:
            run.learn(batch, i)
        if (i + 1) // EVERY > start // EVERY:  # the batch crossed a multiple of EVERY labels
            newest.append(mean_metrics(test, ranker.predict(test))["ndcg@10"])
            for tally in tallies.values():
                assert tally.gate.snapshot is not None
                scores = ranker.score_with(tally.gate.snapshot[0], test)
                tally.ndcg.append(mean_metrics(test, scores)["ndcg@10"])
            for run in probed:
                assert run.gate.snapshot is not None
                run.ndcg.append(
                    mean_metrics(test, run.ranker.score_with(run.gate.snapshot[0], test))["ndcg@10"]
                )
    report(args, newest, tallies)
    report_probation(args, probed)


def report(args: argparse.Namespace, newest: list[float], tallies: dict[tuple[float, int], Tally]) -> None:
    a, b = args.invert
    hurt = slice(a // EVERY, (b + 40) // EVERY)  # the inverted stretch and 40 labels after it
    how = "mirrored" if args.mirror else "2 - g"
    print(
        f"MQ2008, {args.labels} labels {args.batch} per batch, seed {args.seed}, "
        f"labels [{a}, {b}) inverted ({how})"
    )
    print(f"held-out NDCG@10 ({TEST_QUERIES} queries), mean over evaluations every {EVERY} labels")
    print("| serving | promoted | rejected | whole run | labels a..b+40 | final |")
    print("|---|---|---|---|---|---|")
    print(f"| newest checkpoint (no gate) | - | - | {np.mean(newest):.4f} | {np.mean(newest[hurt]):.4f} "
          f"| {newest[-1]:.4f} |")  # fmt: skip
    for (margin, queries), t in tallies.items():
        print(f"| gate margin {margin:g}, {queries} queries | {t.promoted} | {t.rejected} "
              f"| {np.mean(t.ndcg):.4f} | {np.mean(t.ndcg[hurt]):.4f} | {t.ndcg[-1]:.4f} |")  # fmt: skip


def report_probation(args: argparse.Namespace, probed: list[Probed]) -> None:
    a, b = args.invert
    hurt = slice(a // EVERY, (b + 40) // EVERY)
    config = GateConfig()
    print(
        f"\ndefault gate and probation (rollback_margin {config.rollback_margin:g}, rollback_queries "
        f"{config.rollback_queries}, probation_queries {config.probation_queries}); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| serving | rollbacks (version: labels from its promotion to the rollback) "
        "| drift alarms at label | whole run | labels a..b+40 | final |"
    )
    print("|---|---|---|---|---|---|")
    for run in probed:
        probation = run.gate.config.probation_queries > 0
        alarms = ", ".join(map(str, run.alarms)) if probation else "-"
        rolled = ", ".join(
            f"v{v}: {end - start} (labels {start + 1}-{end})" for v, start, end in run.rollbacks
        )
        name = "gate + probation" if probation else "gate only"
        print(f"| {name} | {rolled or '-'} | {alarms or '-'} | {np.mean(run.ndcg):.4f} "
              f"| {np.mean(run.ndcg[hurt]):.4f} | {run.ndcg[-1]:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
