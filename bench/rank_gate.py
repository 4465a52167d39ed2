"""What the rank promotion gate costs and protects, on MQ2008 (real queries and grades).

A label stream of one query per batch (annotators' labels arrive one by one) trains one
:class:`~rankers.lambdamart.LambdaMARTRanker`, watched by several gates at once (a gate never changes
what the ranker trains on, so they share its checkpoints). Every 5 labels the held-back test queries
(200, never streamed) are ranked by the newest checkpoint and by each gate's serving booster.
``--invert A B``: labels A..B-1 get their grades turned upside down (a synthetic corruption, 2 - g),
to see how long an ungated service would serve what they taught. Deterministic per ``--seed``.

    .venv/bin/python bench/rank_gate.py                         # clean stream, seed 0
    .venv/bin/python bench/rank_gate.py --invert 100 140        # 40 inverted labels
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker
from rankers.metrics import mean_metrics
from rankers.mq2008 import load_mq2008
from rankers.promotion import GateConfig, RankGate

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=240, help="labeled queries streamed")
    parser.add_argument("--invert", type=int, nargs=2, default=(0, 0), metavar=("A", "B"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--queries", type=int, nargs="+", default=[10, 20], help="promotion_queries")
    args = parser.parse_args()
    data = load_mq2008()
    order = np.random.default_rng(args.seed).permutation(data.n_queries)
    test = data.select(order[:TEST_QUERIES])
    stream = order[TEST_QUERIES : TEST_QUERIES + args.labels]
    tallies = {
        (m, q): Tally(RankGate(GateConfig(promotion_margin=m, promotion_queries=q)))
        for m in args.margins
        for q in args.queries
    }
    ranker = LambdaMARTRanker(rounds=100, committee_size=4, seed=args.seed)
    newest: list[float] = []
    for i, q in enumerate(stream):
        batch = data.select([q])
        if args.invert[0] <= i < args.invert[1]:
            assert batch.grades is not None
            flipped = MQ2008_MAX_GRADE - batch.grades
            batch = QueryBatch(batch.features, batch.offsets, batch.query_ids, flipped)
        ranker.learn(batch)
        for tally in tallies.values():
            decided = tally.gate.retrained(ranker, batch, {"labels:0": i}, float(i)).get("gate_promoted")
            tally.promoted += decided == 1.0
            tally.rejected += decided == 0.0
        if i % EVERY == EVERY - 1:
            newest.append(mean_metrics(test, ranker.predict(test))["ndcg@10"])
            for tally in tallies.values():
                assert tally.gate.snapshot is not None
                scores = ranker.score_with(tally.gate.snapshot[0], test)
                tally.ndcg.append(mean_metrics(test, scores)["ndcg@10"])
    report(args, newest, tallies)


def report(args: argparse.Namespace, newest: list[float], tallies: dict[tuple[float, int], Tally]) -> None:
    a, b = args.invert
    hurt = slice(a // EVERY, (b + 40) // EVERY)  # the inverted stretch and 40 labels after it
    print(f"MQ2008, {args.labels} labels one per batch, seed {args.seed}, inverted labels [{a}, {b})")
    print(f"held-out NDCG@10 ({TEST_QUERIES} queries), mean over evaluations every {EVERY} labels")
    print("| serving | promoted | rejected | whole run | labels a..b+40 | final |")
    print("|---|---|---|---|---|---|")
    print(f"| newest checkpoint (no gate) | - | - | {np.mean(newest):.4f} | {np.mean(newest[hurt]):.4f} "
          f"| {newest[-1]:.4f} |")  # fmt: skip
    for (margin, queries), t in tallies.items():
        print(f"| gate margin {margin:g}, {queries} queries | {t.promoted} | {t.rejected} "
              f"| {np.mean(t.ndcg):.4f} | {np.mean(t.ndcg[hurt]):.4f} | {t.ndcg[-1]:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
