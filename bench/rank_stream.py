"""Active learning-to-rank where the service uses it: MQ2008 replayed through ``RankService`` (stream mode).

Per seed: MQ2008's 784 queries are split into held-out test queries and a stream in a seeded order;
every selector replays the same stream through its own ``RankService`` (production budget rule,
percentile threshold and committee; see :mod:`rankers.stream_sim`), with truthful annotators
answering ``--delay`` queries after each task's query. Held-out DCG@4 / NDCG@10 are compared at equal
label counts: the gain over random with a paired bootstrap 95% CI, and the labels each selector
needs to reach random's DCG@4. ``--pool-seeds N`` adds the pool simulation (``rankers.active``) on
the same splits for the pool-mode table. Writes a JSON summary and a PNG of the learning curves.

    .venv/bin/python bench/rank_stream.py --seeds 3                      # development
    .venv/bin/python bench/rank_stream.py                                # 30 seeds, stream mode
    .venv/bin/python bench/rank_stream.py --seeds 0 --pool-seeds 10      # pool mode on the same splits
    .venv/bin/python bench/rank_stream.py --first-seed 10 --seeds 20 --raw var/bench/b.json   # a seed range
    .venv/bin/python bench/rank_stream.py --report-only --raw var/bench/rank_stream_runs*.json  # merge
    .venv/bin/python bench/rank_stream.py --pace --option rank.budget_defer=20   # any RankService option
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rankers.active import active_curve, split_queries
from rankers.curve_stats import curve_at, labels_to_reach, paired_gain_ci
from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker
from rankers.mq2008 import load_mq2008
from rankers.selectors import make_selector
from rankers.stream_sim import StreamSettings, make_service, stream_run
from streams.cli import parse_options

METRICS = ("dcg@4", "ndcg@10")
#: What a stream run's labels were spent on (means over seeds in the diagnostics table).
STREAM_DIAGNOSTICS = ("queries_seen", "cold_start_tasks", "no_relevant_share", "docs_per_label")


def run_mode(mode: str, data: QueryBatch, args: argparse.Namespace, raw: dict[str, Any], bar: tqdm) -> None:
    """Fill ``raw[mode][selector]`` with one run per seed, seed by seed (so every selector of a seed
    shares its split and order), saving the first ``--raw`` file after each seed: a long run cut short
    keeps its finished seeds, and ``--report-only`` summarizes them."""
    runs = raw.setdefault(mode, {name: [] for name in args.selectors})
    seeds = args.seeds if mode == "stream" else args.pool_seeds
    done = {run["seed"] for run in runs["random"]}
    for seed in (s for s in range(args.first_seed, seeds) if s not in done):
        stream, test = split(data, seed, args.test_fraction)
        for name in args.selectors:
            runs[name].append({"seed": seed, **one_run(mode, name, seed, stream, test, args)})
            bar.update()
        args.raw[0].parent.mkdir(parents=True, exist_ok=True)
        args.raw[0].write_text(json.dumps(raw))


def one_run(
    mode: str, name: str, seed: int, stream: QueryBatch, test: QueryBatch, args: argparse.Namespace
) -> dict[str, Any]:
    """Held-out points per label count and, in stream mode, what the labels were spent on."""
    if mode == "pool":
        curve = active_curve(
            stream, test, make_selector(name, seed=seed), lambda: make_ranker(args),
            seed_queries=args.pool_seed_queries, step=args.pool_step, budget=max(args.budgets),
            rng=np.random.default_rng(1000 + seed),
        )  # fmt: skip
        return {"points": curve.points}
    settings = stream_settings(args)
    run = stream_run(make_service(name, settings, seed), stream, test, settings)
    grades = dict(zip(stream.query_ids, stream.split_scores(stream.grades), strict=True))
    return {
        "points": run.points,
        "queries_seen": run.queries_seen,
        "cold_start_tasks": run.task_selectors.count("cold-start"),
        "no_relevant_share": float(np.mean([grades[q].max() == 0 for q in run.labeled_ids])),
        "docs_per_label": float(np.mean([len(grades[q]) for q in run.labeled_ids])),
    }


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    return StreamSettings(
        budget=args.budget, budget_window=args.budget_window, delay=args.delay, batch=args.batch,
        max_labels=max(args.budgets), checkpoints=tuple(args.budgets), committee_size=args.committee,
        rounds=args.rounds, pace=args.pace, service={"score_window": args.score_window, **args.option},
    )  # fmt: skip


def make_ranker(args: argparse.Namespace) -> LambdaMARTRanker:
    return LambdaMARTRanker(rounds=args.rounds, committee_size=args.committee)


def split(data: QueryBatch, seed: int, test_fraction: float) -> tuple[QueryBatch, QueryBatch]:
    """(stream or pool, held-out test); the stream's order is the seeded permutation itself."""
    order, test_idx = split_queries(data.n_queries, test_fraction, np.random.default_rng(seed))
    return data.select(order), data.select(test_idx)


def summarize(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, grid: np.ndarray
) -> dict[str, Any]:
    """Per selector and budget: mean metrics, gain over random with CI, labels to reach random;
    and the mean of each stream diagnostic (what the labels were spent on)."""
    rng = np.random.default_rng(0)
    curves = {name: [run["points"] for run in selector_runs] for name, selector_runs in runs.items()}
    on_grid = {
        n: {m: np.array([curve_at(p, grid, m) for p in runs]) for m in METRICS} for n, runs in curves.items()
    }
    base = on_grid["random"]
    out: dict[str, Any] = {}
    for name, metrics in on_grid.items():
        rows = {}
        for budget in args.budgets:
            at = int(np.searchsorted(grid, budget))
            row: dict[str, Any] = {}
            for m in METRICS:
                ours, theirs = metrics[m][:, at], base[m][:, at]
                both = ~np.isnan(ours) & ~np.isnan(theirs)
                row[m] = float(np.mean(ours[both])) if both.any() else float("nan")
                row["runs"] = int(both.sum())
                if name != "random" and both.sum() >= 2:
                    row[f"{m}_gain"] = paired_gain_ci(ours[both], theirs[both], rng)
            target = float(np.nanmean(base["dcg@4"][:, at]))
            row["labels_to_random_dcg@4"] = labels_to_reach(grid, np.mean(metrics["dcg@4"], axis=0), target)
            rows[budget] = row
        diagnostics = {
            k: float(np.mean([run[k] for run in runs[name]]))
            for k in STREAM_DIAGNOSTICS
            if k in runs[name][0]
        }
        if diagnostics:
            diagnostics["labels_reached"] = float(np.mean([max(run["points"]) for run in runs[name]]))
        out[name] = {
            "budgets": rows,
            "curve": {m: np.mean(metrics[m], axis=0).tolist() for m in METRICS},
            "diagnostics": diagnostics,
        }
    return out


def print_table(title: str, summary: dict[str, Any], budgets: list[int]) -> None:
    print(f"\n### {title}")
    print("| selector | labels | runs | DCG@4 | gain vs random [95% CI] | NDCG@10 | gain vs random [95% CI] "
          "| labels to reach random's DCG@4 | fewer labels |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, result in summary.items():
        for budget in budgets:
            row = result["budgets"][budget]
            gains = [_gain(row.get(f"{m}_gain")) for m in METRICS]
            need = row["labels_to_random_dcg@4"]
            need_s = f">{max(budgets)}" if need is None else f"{need:.0f}"
            fewer = "" if need is None else f"{100 * (1 - need / budget):+.0f}%"
            print(
                f"| {name} | {budget} | {row['runs']} | {row['dcg@4']:.3f} | {gains[0]} "
                f"| {row['ndcg@10']:.4f} | {gains[1]} | {need_s} | {fewer} |"
            )
    diagnostics = next(iter(summary.values()))["diagnostics"]
    if diagnostics:
        print("\n| selector | " + " | ".join(diagnostics) + " |")
        print("|---|" + "---|" * len(diagnostics))
        for name, result in summary.items():
            print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in result["diagnostics"].values()) + " |")


def _gain(gain: tuple[float, float, float] | None) -> str:
    if gain is None:
        return ""
    mean, low, high = (100 * g for g in gain)
    return f"{mean:+.2f}% [{low:+.2f}, {high:+.2f}]"


def plot(results: dict[str, dict[str, Any]], grid: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, METRICS, strict=True):
        for mode, style in (("stream", "-"), ("pool", ":")):
            for i, (name, result) in enumerate(results.get(mode, {}).items()):
                curve = np.array(result["curve"][metric])
                ax.plot(grid, curve, style, color=f"C{i}", label=f"{mode} {name}")
        ax.set_xlabel("labeled queries")
        ax.set_ylabel(f"held-out {metric.upper()}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("MQ2008 active learning-to-rank, mean over seeds (stream: through RankService)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def load_raw(paths: list[Path]) -> dict[str, Any]:
    """Runs saved by earlier calls, merged (e.g. seed ranges run side by side, or selectors added to
    a finished range) and ordered by seed; a selector's seed saved twice counts once, from the first
    file that has it. Only the seeds every selector of a mode has are kept, so comparisons stay paired.

    JSON made the label counts strings: back to ints. Runs saved without a seed are numbered in order.
    """
    merged: dict[str, dict[str, dict[int, Any]]] = {}
    for path in (p for p in paths if p.is_file()):
        for mode, runs in json.loads(path.read_text()).items():
            for name, selector_runs in runs.items():
                by_seed = merged.setdefault(mode, {}).setdefault(name, {})
                for i, run in enumerate(selector_runs):
                    run.setdefault("seed", i)
                    run["points"] = {int(k): v for k, v in run["points"].items()}
                    by_seed.setdefault(run["seed"], run)
    out = {}
    for mode, runs in merged.items():
        common = sorted(set.intersection(*(set(by_seed) for by_seed in runs.values())))
        out[mode] = {name: [by_seed[s] for s in common] for name, by_seed in runs.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=30, help="stream orderings (and splits)")
    parser.add_argument(
        "--pool-seeds", type=int, default=0, help="pool-mode runs on the same splits (0: none)"
    )
    parser.add_argument("--selectors", default="random,re,pv,re+pv,dv+pv")
    parser.add_argument("--budgets", default="50,100,200", help="label counts compared (the last is the cap)")
    parser.add_argument("--budget", type=int, default=50, help="service budget: tasks per window")
    parser.add_argument("--budget-window", type=int, default=100, help="service budget window, queries")
    parser.add_argument("--score-window", type=int, default=1024, help="service percentile window")
    parser.add_argument("--pace", action="store_true", help="pace the budget over each window")
    parser.add_argument(
        "--option", action="append", default=[], metavar="rank.KEY=VALUE",
        help="a RankService option, as `driftline worker --option` takes it (e.g. rank.budget_defer=20)",
    )  # fmt: skip
    parser.add_argument("--delay", type=int, default=20, help="queries between a task's query and its label")
    parser.add_argument("--batch", type=int, default=40, help="queries per micro-batch (a retrain per one)")
    parser.add_argument("--committee", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=100, help="trees per retrain")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--pool-seed-queries", type=int, default=10)
    parser.add_argument("--pool-step", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. seeds-1")
    parser.add_argument(
        "--raw", type=Path, nargs="+", default=[Path("var/bench/rank_stream_runs.json")],
        help="per-run results: saved to the first file; --resume/--report-only merge them all",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="keep the seeds --raw holds, run the rest")
    parser.add_argument("--report-only", action="store_true", help="summarize --raw, run nothing")
    parser.add_argument("--json", type=Path, default=Path("var/bench/rank_stream.json"))
    parser.add_argument("--png", type=Path, default=Path("docs/img/rank_stream.png"))
    args = parser.parse_args()
    args.selectors = args.selectors.split(",")
    args.budgets = sorted(int(b) for b in args.budgets.split(","))
    options = parse_options(args.option)
    if set(options) - {"rank"}:
        parser.error(f"--option names RankService options only (rank.KEY=VALUE), got {args.option}")
    args.option = options.get("rank", {})
    if "random" not in args.selectors:
        parser.error("--selectors must include random (the baseline)")
    raw = load_raw(args.raw) if args.resume or args.report_only else {}
    if not args.report_only:
        data = load_mq2008()
        print(f"MQ2008: {data.n_queries} queries; {vars(args)}")
        done = sum(len(r) for runs in raw.values() for r in runs.values())
        total = len(args.selectors) * sum(max(0, n - args.first_seed) for n in (args.seeds, args.pool_seeds))
        with tqdm(total=total, initial=done, desc="runs", unit="run") as bar:
            for mode, seeds in (("stream", args.seeds), ("pool", args.pool_seeds)):
                if seeds > args.first_seed:
                    run_mode(mode, data, args, raw, bar)
    grid = np.arange(5, max(args.budgets) + 1, 5)
    results = {mode: summarize(runs, args, grid) for mode, runs in raw.items() if runs["random"]}
    for mode, result in results.items():
        print_table(f"{mode} mode, {len(raw[mode]['random'])} seeds", result, args.budgets)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "grid": grid.tolist(), **results}
    args.json.write_text(json.dumps(summary, indent=1))
    plot(results, grid, args.png)
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
