"""Active learning-to-rank curves on real data: RE+PV, RE, PV and random query selection.

For each data set and seed: split queries into a pool and held-out test queries, label a few seed
queries, then let each selector pick the next queries to label (their true grades are revealed),
retraining LambdaMART after each round (each retrain is a committee checkpoint). Prints NDCG@10 and
DCG@4 on the held-out queries versus the number of labeled queries, averaged over seeds, the relative
DCG@4 gain over random at equal budget next to the Baidu paper's +1.38%, and selection throughput.

    .venv/bin/python bench/rank_active.py            # both data sets, 5 seeds, a few minutes
    .venv/bin/python bench/rank_active.py --quick    # 2 seeds, smaller budgets
    .venv/bin/python bench/rank_active.py --seeds 20 --ml-users 566 --ml-budget 150   # bigger
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankers.active import Curve, active_curve, split_queries
from rankers.data import QueryBatch, load_letor, mslr_path
from rankers.lambdamart import LambdaMARTRanker
from rankers.selectors import SELECTORS, make_selector

PAPER_DCG4_GAIN = 1.38  # percent, Baidu active LTR (arXiv 2205.10137), RE+PV vs random


@dataclass(frozen=True)
class Plan:
    """One data set and its protocol."""

    name: str
    data: QueryBatch
    seed_queries: int
    step: int
    budget: int


def load_plans(args: argparse.Namespace) -> list[Plan]:
    plans = []
    if "mslr" in args.datasets:
        plans.append(
            Plan(
                "MSLR-WEB slice",
                load_letor(mslr_path(), 136),
                args.mslr_seed_queries,
                args.mslr_step,
                args.mslr_budget,
            )
        )
    if "movielens" in args.datasets:
        try:
            from rankers.movielens import load_ml100k_ranking, ml100k_folder

            data = load_ml100k_ranking(ml100k_folder())
        except (ImportError, OSError, RuntimeError) as exc:
            print(f"MovieLens-100K skipped: cannot load it ({type(exc).__name__}: {exc})")
        else:
            keep = np.sort(np.random.default_rng(0).permutation(data.n_queries)[: args.ml_users])
            plans.append(
                Plan(
                    "MovieLens-100K (users as queries)",
                    data.select(keep.tolist()),
                    args.ml_seed_queries,
                    args.ml_step,
                    args.ml_budget,
                )
            )
    return plans


def run_plan(plan: Plan, args: argparse.Namespace) -> dict[str, list[Curve]]:
    def make_ranker() -> LambdaMARTRanker:
        return LambdaMARTRanker(rounds=args.rounds, committee_size=args.committee)

    curves: dict[str, list[Curve]] = {name: [] for name in SELECTORS}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        pool_idx, test_idx = split_queries(plan.data.n_queries, args.test_fraction, rng)
        pool, test = plan.data.select(pool_idx), plan.data.select(test_idx)
        for name in SELECTORS:
            selector = make_selector(name, alpha=args.alpha, seed=seed, re_top=args.re_top)
            curves[name].append(
                active_curve(
                    pool,
                    test,
                    selector,
                    make_ranker,
                    seed_queries=plan.seed_queries,
                    step=plan.step,
                    budget=plan.budget,
                    rng=np.random.default_rng(1000 + seed),
                )
            )
    return curves


def mean_at(curves: list[Curve], budget: int, metric: str) -> float:
    return float(np.mean([c.points[budget][metric] for c in curves]))


def report(plan: Plan, curves: dict[str, list[Curve]], args: argparse.Namespace, elapsed: float) -> dict:
    budgets = sorted(curves["random"][0].points)
    n_test = max(1, round(plan.data.n_queries * args.test_fraction))
    print(
        f"\n## {plan.name}: {plan.data.n_queries} queries, {len(plan.data.features)} documents, "
        f"{plan.data.features.shape[1]} features; pool {plan.data.n_queries - n_test} / held-out {n_test}"
    )
    print(
        f"seeds {args.seeds}, seed set {plan.seed_queries}, +{plan.step} per round, committee = last "
        f"{args.committee} checkpoints, LambdaMART {args.rounds} trees, alpha {args.alpha}, "
        f"RE over {f'the top {args.re_top}' if args.re_top else 'the whole ranking'}, "
        f"1 thread, {elapsed:.0f} s"
    )
    header = "| labeled | " + " | ".join(f"{n} NDCG@10 | {n} DCG@4" for n in SELECTORS) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(SELECTORS)))
    for b in budgets:
        cells = [
            f"{mean_at(curves[n], b, 'ndcg@10'):.4f} | {mean_at(curves[n], b, 'dcg@4'):.3f}"
            for n in SELECTORS
        ]
        print(f"| {b} | " + " | ".join(cells) + " |")

    rounds = budgets[1:]
    final = budgets[-1]
    summary = {}
    print(
        "\n| selector | DCG@4 gain vs random at budget "
        f"{final} | per-seed gain mean ± sd "
        "| DCG@4 gain averaged over rounds | paper (RE+PV) | queries scored/s |"
    )
    print("|---|---|---|---|---|---|")
    for name in SELECTORS:
        random_final = mean_at(curves["random"], final, "dcg@4")
        gain_final = 100 * (mean_at(curves[name], final, "dcg@4") / random_final - 1)
        per_seed = [
            100 * (c.points[final]["dcg@4"] / r.points[final]["dcg@4"] - 1)
            for c, r in zip(curves[name], curves["random"], strict=True)
        ]
        gain_area = 100 * (
            np.mean([mean_at(curves[name], b, "dcg@4") for b in rounds])
            / np.mean([mean_at(curves["random"], b, "dcg@4") for b in rounds])
            - 1
        )
        speed = sum(c.queries_scored for c in curves[name]) / sum(c.scoring_s for c in curves[name])
        paper = f"+{PAPER_DCG4_GAIN:.2f}%" if name == "re+pv" else ""
        print(
            f"| {name} | {gain_final:+.2f}% | {np.mean(per_seed):+.2f}% ± {np.std(per_seed):.2f} "
            f"| {gain_area:+.2f}% | {paper} | {speed:,.0f} |"
        )
        summary[name] = {
            "dcg4_gain_final_pct": gain_final,
            "dcg4_gain_rounds_pct": float(gain_area),
            "per_seed_gain_pct": per_seed,
            "queries_per_s": speed,
            "curve": {
                b: {
                    "ndcg@10": mean_at(curves[name], b, "ndcg@10"),
                    "dcg@4": mean_at(curves[name], b, "dcg@4"),
                }
                for b in budgets
            },
        }
    return {"dataset": plan.name, "seeds": args.seeds, "selectors": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="mslr,movielens")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 seeds and smaller budgets")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--committee", type=int, default=4)
    parser.add_argument("--re-top", type=int, default=None, help="RE over the top k positions only")
    parser.add_argument("--rounds", type=int, default=100, help="trees per retrain")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--mslr-seed-queries", type=int, default=4)
    parser.add_argument("--mslr-step", type=int, default=2)
    parser.add_argument("--mslr-budget", type=int, default=20)
    parser.add_argument("--ml-users", type=int, default=200, help="query users drawn from MovieLens")
    parser.add_argument("--ml-seed-queries", type=int, default=10)
    parser.add_argument("--ml-step", type=int, default=5)
    parser.add_argument("--ml-budget", type=int, default=60)
    parser.add_argument("--json", type=Path, default=Path("var/bench/rank_active.json"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.mslr_budget, args.ml_budget, args.ml_users = 2, 12, 30, 120
    torch.set_num_threads(1)
    print("Active learning-to-rank (figures taken with one thread: LightGBM num_threads=1)")
    results = []
    for plan in load_plans(args):
        started = time.perf_counter()
        curves = run_plan(plan, args)
        results.append(report(plan, curves, args, time.perf_counter() - started))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
