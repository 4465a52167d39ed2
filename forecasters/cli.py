"""``driftline forecasters ...``: offline work beside streaming (warm-start pretraining, evaluation)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from forecasters.data import Scaler, Windows, data_dir, load_csv
from forecasters.evaluate import add_arguments, cmd_evaluate
from forecasters.pretrained import save_pretrained
from forecasters.service import CALENDAR_FEATURES
from forecasters.training import fit
from forecasters.zoo import BUILDERS, ForecasterSpec, build_forecaster
from streams.config import Settings

SERVICE_NAME = "forecast"


def register(subparsers: Any) -> None:
    """Add the ``forecasters`` command group to the caller's ``argparse`` subparsers."""
    group = subparsers.add_parser(
        "forecasters", help="online forecasters: pretraining for a warm start, evaluation"
    )
    commands = group.add_subparsers(dest="forecasters_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "pretrain",
        help="fit a forecaster on the first part of a history CSV and save it for the service to warm-start",
    )
    p.add_argument("--csv", type=Path, help="CSV with a 'date' column then channels (default: ETTh2)")
    p.add_argument("--fraction", type=float, default=0.25, help="leading share of rows to learn from")
    p.add_argument("--val-share", type=float, default=0.2, help="last share of those rows for early stopping")
    p.add_argument("--kind", default="onenet", choices=list(BUILDERS))
    p.add_argument("--seq-len", type=int, default=60)
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (these small models run best on 1)")
    p.add_argument("--data-dir", type=Path, help="the forecast service's data dir (default: <home>/forecast)")
    p.set_defaults(func=cmd_pretrain)
    e = commands.add_parser(
        "evaluate",
        help="prequential evaluation on a CSV (delayed labels or the paper's protocol): table + JSON rows",
        description="Without Kafka's clients installed: python -m forecasters.evaluate (same flags).",
    )
    add_arguments(e)
    e.set_defaults(func=cmd_evaluate)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Fit on the first ``fraction`` of the CSV (train statistics scale it) and save a pretrained version."""
    if not 0 < args.fraction <= 1 or not 0 < args.val_share < 1:
        raise ValueError("--fraction must be in (0, 1] and --val-share in (0, 1)")
    torch.set_num_threads(max(1, args.threads))
    csv = args.csv or data_dir() / "timeseries" / "ETTh2.csv"
    target = args.data_dir or Path(Settings.from_env(home=getattr(args, "home", None)).home) / SERVICE_NAME
    series = load_csv(csv)
    rows = int(len(series.values) * args.fraction)
    train_end = int(rows * (1 - args.val_share))
    if train_end < args.seq_len + args.horizon or rows - train_end < args.horizon:
        raise ValueError(f"{rows} rows are too few for seq_len {args.seq_len} and horizon {args.horizon}")
    scaler = Scaler.fit(series.values[:train_end])
    marks = None if series.marks is None else series.marks[:rows]
    windows = Windows(scaler.transform(series.values[:rows]), marks, args.seq_len, args.horizon)
    spec = ForecasterSpec(
        kind=args.kind,
        seq_len=args.seq_len,
        horizon=args.horizon,
        channels=series.values.shape[1],
        marks=0 if marks is None else CALENDAR_FEATURES,
        lr=args.lr,
    )
    learner = build_forecaster(spec)
    print(
        f"pretraining {spec.kind} on {csv.name}: rows [0,{train_end}) train, "
        f"[{train_end},{rows}) validation, "
        f"{spec.channels} channels, look-back {spec.seq_len}, horizon {spec.horizon}",
        flush=True,
    )
    started = time.perf_counter()

    def progress(epoch: int, loss: float, val_mse: float) -> None:
        print(
            f"  epoch {epoch}/{args.epochs}  train loss {loss:.4f}  val mse {val_mse:.4f}  "
            f"({time.perf_counter() - started:.0f}s)",
            flush=True,
        )

    report = fit(
        learner,
        windows,
        windows.origins(0, train_end),
        windows.origins(train_end, rows),
        epochs=args.epochs,
        batch_size=args.batch_size,
        progress=progress,
    )
    meta = {
        "csv": str(csv),
        "rows": rows,
        "train_rows": train_end,
        "best_val_mse": report.best_val_mse,
        "best_epoch": report.best_epoch,
    }
    version = save_pretrained(target, spec, learner, scaler, meta)
    print(
        f"saved {spec.kind} v{version} (best val mse {report.best_val_mse:.4f} at epoch {report.best_epoch}) "
        f"under {target}; the forecast service warm-starts from it",
        flush=True,
    )
    return 0
