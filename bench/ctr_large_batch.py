"""CowClip at real size: DeepFM on the synthetic Criteo-layout stream, batch 1K to 128K, 3 seeds.

Per seed, the stream's rows ``[0, --rows)`` are generated once (in parallel worker processes) and
trained on in every cell, one pass unless ``--epochs`` asks for more; rows ``[--rows, --rows +
--heldout)`` are the held-out rows scored after it. Cells: every batch size x {``adam`` (base lr
at every batch, no clip), ``cowclip`` (CowClip + scaling rule)}. The table gives held-out AUC mean
± standard error over seeds, logloss, training samples/s, wall seconds of training and the share
of looked-up embedding rows CowClip clipped. The JSON is rewritten after every finished cell, so a
run cut off still leaves its cells.

Imports torch, numpy, tqdm, matplotlib and rich only (no Kafka client), so it runs on a bare GPU box:

    .venv/bin/python bench/ctr_large_batch.py --device cuda                  # the full default grid
    .venv/bin/python bench/ctr_large_batch.py --rows 2000000 --heldout 200000 --batches 1024,8192,65536
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.machine import load  # noqa: E402
from models.ctr.large_batch import (  # noqa: E402
    EMBED_SCALINGS,
    OPTIMIZERS,
    CellConfig,
    CellResult,
    Rows,
    TableLayout,
    make_split,
    train_cell,
)

#: Rows the start-up estimate times its two probe cells on (at most).
PROBE_ROWS = 32_768


def summarise(results: Sequence[CellResult]) -> list[dict[str, float | int | str]]:
    """One row per (batch, optimizer): means over seeds, and the AUC's standard error."""
    table = []
    for batch in sorted({r.batch for r in results}):
        for optimizer in OPTIMIZERS:
            cell = [r for r in results if r.batch == batch and r.optimizer == optimizer]
            if not cell:
                continue
            aucs = np.array([r.auc for r in cell])
            stderr = float(aucs.std(ddof=1) / math.sqrt(len(aucs))) if len(aucs) > 1 else math.nan
            table.append(
                {
                    "batch": batch,
                    "optimizer": optimizer,
                    "seeds": len(cell),
                    "auc": float(aucs.mean()),
                    "auc_stderr": stderr,
                    "logloss": float(np.mean([r.logloss for r in cell])),
                    "samples_per_s": float(np.mean([r.samples_per_s for r in cell])),
                    "wall_s": float(np.mean([r.wall_s for r in cell])),
                    "clipped": float(np.mean([r.clipped for r in cell])),
                }
            )
    return table


def render(table: Sequence[dict[str, float | int | str]]) -> str:
    lines = [
        f"{'batch':>7} {'optimizer':9} {'seeds':>5} {'AUC':>8} {'± se':>7} {'logloss':>8} "
        f"{'samples/s':>10} {'wall s':>8} {'clipped':>8}"
    ]
    for row in table:
        lines.append(
            f"{row['batch']:>7} {row['optimizer']:9} {row['seeds']:>5} {row['auc']:>8.4f} "
            f"{row['auc_stderr']:>7.4f} {row['logloss']:>8.4f} {row['samples_per_s']:>10,.0f} "
            f"{row['wall_s']:>8.1f} {row['clipped']:>8.2%}"
        )
    return "\n".join(lines)


def plot(table: Sequence[dict[str, float | int | str]], path: Path, title: str) -> None:
    """AUC against batch size (log axis), one line per optimizer, standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 4.2))
    for optimizer in OPTIMIZERS:
        rows = [r for r in table if r["optimizer"] == optimizer]
        if rows:
            axes.errorbar(
                [r["batch"] for r in rows],
                [r["auc"] for r in rows],
                yerr=[0.0 if math.isnan(r["auc_stderr"]) else r["auc_stderr"] for r in rows],
                marker="o",
                capsize=4,
                label="CowClip + scaling rule" if optimizer == "cowclip" else "Adam (base lr)",
            )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("held-out AUC (mean ± s.e. over seeds)")
    axes.set_title(textwrap.fill(title, 80), fontsize=9)  # a long label would run off the figure
    axes.grid(alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def measure_step(config: CellConfig, layout: TableLayout, train: Rows, heldout: Rows) -> tuple[float, float]:
    """(seconds per step, seconds per sample) on this run's device and data: two probe cells on the
    first rows (after a warm-up cell that pays for CUDA's start-up), fitted as
    ``time = steps * a + samples * b``. Small batches measure the per-step overhead, large ones the
    per-sample work. The probes take one pass whatever ``config.epochs`` says: :func:`estimate_s`
    multiplies by the passes."""
    config = replace(config, epochs=1)
    probe, scored = train.slice(0, PROBE_ROWS), heldout.slice(0, 1_000)
    train_cell(replace(config, batch=256), layout, probe.slice(0, 2_048), scored)  # warm-up
    small, large = 512, max(len(probe) // 2, 1)
    seconds = [train_cell(replace(config, batch=b), layout, probe, scored).wall_s for b in (small, large)]
    steps = [-(-len(probe) // b) for b in (small, large)]
    per_step = max((seconds[0] - seconds[1]) / max(steps[0] - steps[1], 1), 0.0)
    return per_step, max(seconds[1] - steps[1] * per_step, 0.0) / len(probe)


def estimate_s(args: argparse.Namespace, per_step: float, per_sample: float, generate_s: float) -> float:
    """Seconds the whole grid should take: every seed's data, then steps and samples at the measured
    costs (the cowclip arm's clip adds a little; evaluation is left out)."""
    passes = len(args.optimizer_list) * args.seeds * args.epochs  # over each batch size's rows
    steps = sum(-(-args.rows // b) for b in args.batch_list) * passes
    samples = args.rows * len(args.batch_list) * passes
    return args.seeds * generate_s + steps * per_step + samples * per_sample


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000_000, help="training rows (an epoch)")
    parser.add_argument("--heldout", type=int, default=1_000_000, help="later rows scored after training")
    parser.add_argument("--batches", default="1024,8192,65536,131072")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1: each its own stream and init")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=Path("var/bench/ctr_large_batch.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of AUC against batch size")
    parser.add_argument(
        "--max-table-rows", type=int, default=2_000_000, help="rows per field's table at most"
    )
    parser.add_argument(
        "--base-batch", type=int, default=CellConfig.base_batch, help="batch the base lrs are set for"
    )
    parser.add_argument("--embed-lr", type=float, default=CellConfig.embed_lr)
    parser.add_argument("--dense-lr", type=float, default=CellConfig.dense_lr)
    parser.add_argument("--l2", type=float, default=CellConfig.l2)
    parser.add_argument("--clip-ratio", type=float, default=CellConfig.clip_ratio, help="CowClip r")
    parser.add_argument("--zeta", type=float, default=CellConfig.zeta, help="CowClip lower bound")
    parser.add_argument(
        "--embed-scaling",
        choices=tuple(EMBED_SCALINGS),
        default=CellConfig.embed_scaling,
        help="cowclip arm's embedding lr vs batch (paper: none)",
    )
    parser.add_argument("--warmup", type=float, default=CellConfig.warmup, help="share of the training steps")
    parser.add_argument("--epochs", type=int, default=CellConfig.epochs, help="passes over the training rows")
    parser.add_argument("--hidden", default="400,400,400", help="DNN widths")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1) - 1)))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default; 1 resists a shared box's load)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the cells already in --json (same settings), run the rest"
    )
    parser.add_argument(
        "--no-estimate", action="store_true", help="skip the start-up estimate (two short timed cells)"
    )
    args = parser.parse_args(argv)
    args.hidden = tuple(int(w) for w in args.hidden.split(","))
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, not {args.batches!r}")
    args.optimizer_list = args.optimizers.split(",")
    unknown = set(args.optimizer_list) - set(OPTIMIZERS)
    if unknown:
        parser.error(f"unknown optimizers {sorted(unknown)}; choose from {', '.join(OPTIMIZERS)}")
    if min(args.rows, args.heldout, args.seeds, args.base_batch, args.epochs, *args.batch_list) < 1:
        parser.error("--rows, --heldout, --seeds, --base-batch, --epochs and every batch size must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    layout = TableLayout.criteo(args.max_table_rows)
    base = CellConfig(
        batch=args.batch_list[0],
        hidden=args.hidden,
        base_batch=args.base_batch,
        embed_lr=args.embed_lr,
        dense_lr=args.dense_lr,
        l2=args.l2,
        clip_ratio=args.clip_ratio,
        zeta=args.zeta,
        warmup=args.warmup,
        embed_scaling=args.embed_scaling,
        epochs=args.epochs,
    )
    passes = f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}"
    data = (
        f"synthetic Criteo layout, {args.rows:,} training rows ({passes}), {args.heldout:,} held out, "
        f"{args.device}"
    )
    settings = (
        f"{data}; tables {layout.total:,} rows (per field min(cardinality, {args.max_table_rows:,})), "
        f"dim {base.embed_dim}, DNN {'x'.join(map(str, base.hidden))}; base lr embed {base.embed_lr:g} "
        f"dense {base.dense_lr:g}, L2 {base.l2:g} at batch {base.base_batch}; CowClip r {base.clip_ratio:g} "
        f"zeta {base.zeta:g}, warm-up {base.warmup:g} of the steps, embedding lr scaling {base.embed_scaling}"
    )
    label = f"{data}, {args.seeds} seeds, DNN {'x'.join(map(str, base.hidden))}"
    print(f"{settings}; {load()}", flush=True)
    results = finished_cells(args, settings)
    done = {(r.seed, r.batch, r.optimizer) for r in results}
    cells = len(args.batch_list) * len(args.optimizer_list)
    estimated = args.no_estimate
    context = multiprocessing.get_context("fork")
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=context) if args.workers > 1 else _no_pool() as pool:
        for seed in range(args.seeds):
            grid = [(b, o) for b in args.batch_list for o in args.optimizer_list]
            if all((seed, b, o) in done for b, o in grid):
                print(f"seed {seed}: all {cells} cells already in {args.json}", flush=True)
                continue
            generated = time.perf_counter()
            train, heldout = make_split(seed, args.rows, args.heldout, layout, device, pool)
            generate_s = time.perf_counter() - generated
            print(f"seed {seed}: data in {generate_s:.1f} s ({load()})", flush=True)
            if not estimated:
                estimated = True
                per_step, per_sample = measure_step(base, layout, train, heldout)
                total = estimate_s(args, per_step, per_sample, generate_s)
                print(
                    f"measured {per_step * 1e3:.2f} ms per step + {per_sample * 1e6:.2f} us per sample: "
                    f"estimated run time of the whole grid {total / 60:.1f} min ({load()})",
                    flush=True,
                )
            for index, (batch, optimizer) in enumerate(grid):
                if (seed, batch, optimizer) in done:
                    continue
                config = replace(base, batch=batch, optimizer=optimizer, seed=seed)
                desc = f"seed {seed} cell {index + 1}/{cells} batch {batch} {optimizer}"
                rows = len(train) * args.epochs
                with tqdm(total=rows, desc=desc, unit="row", unit_scale=True, leave=False) as bar:
                    result = train_cell(config, layout, train, heldout, bar.update)
                results.append(result)
                tqdm.write(
                    f"{desc}: AUC {result.auc:.4f} logloss {result.logloss:.4f} "
                    f"{result.samples_per_s:,.0f} rows/s {result.wall_s:.1f} s clipped {result.clipped:.2%} "
                    f"({load()})"
                )
                write_json(args, label, settings, results)
            del train, heldout
    table = summarise(results)
    print(f"\n{label}; total {time.perf_counter() - began:.0f} s; {load()}\n{render(table)}", flush=True)
    if args.plot is not None:
        plot(table, args.plot, label)
        print(f"plot: {args.plot}")
    print(f"json: {args.json}")


class _no_pool:
    """``with``-able stand-in for a process pool: generation runs in this process."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def finished_cells(args: argparse.Namespace, settings: str) -> list[CellResult]:
    """With ``--resume``, the cells an earlier run with the same settings left in ``--json``: a run
    cut off by a time limit, started again with the same command, does only what is missing."""
    if not args.resume or not args.json.exists():
        return []
    report = json.loads(args.json.read_text())
    if report.get("settings") != settings:
        raise SystemExit(
            f"{args.json} holds a run with other settings ({report.get('settings')!r}); "
            "drop --resume or write to another --json"
        )
    return [CellResult(**cell) for cell in report["cells"]]


def write_json(args: argparse.Namespace, label: str, settings: str, results: Sequence[CellResult]) -> None:
    """Every finished cell and the summary table so far (rewritten after each cell)."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "label": label,
        "settings": settings,
        "args": {k: v if isinstance(v, int | float | str) else str(v) for k, v in vars(args).items()},
        "load": load(),
        "cells": [asdict(r) for r in results],
        "table": summarise(results),
    }
    temporary = args.json.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(args.json)


if __name__ == "__main__":
    main()
