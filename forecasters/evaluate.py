"""Prequential (test-then-train) evaluation of forecasters on any CSV: ``driftline forecasters evaluate``.

Each (model, horizon, seed) is warmed up on the train split with early stopping on the validation
split, then streamed over the online split one window at a time. Two protocols:

- ``paper`` (FSNet/OneNet): the model learns a window's whole horizon right after forecasting it, so
  each next forecast has already seen H - 1 of its own targets.
- ``delayed`` (what a live stream allows): after forecasting origin ``t`` the row ``t`` arrives, and
  the window whose last target is row ``t`` (origin ``t - H + 1``) is learned. Identical to ``paper``
  at H = 1.

Pure of Kafka: importable with torch, numpy, pandas, tqdm and rich only, so a bare GPU machine runs
``python -m forecasters.evaluate`` with the same flags as the CLI.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from forecasters.data import ETT_SPLIT, NoDateColumn, Scaler, Windows, load_csv, load_dateless
from forecasters.learner import Forecaster, forecast_errors
from forecasters.training import fit
from forecasters.zoo import BUILDERS, ForecasterSpec, build_forecaster

PROTOCOLS = ("delayed", "paper")
#: FSNet/OneNet's share of rows for warm-up and validation in non-ETT files (the rest is online).
TRAIN_SHARE, VAL_SHARE = 0.20, 0.05
Row = dict[str, Any]


@dataclass(frozen=True)
class Split:
    """Rows [0, train_end) warm up, [train_end, val_end) early-stop, [val_end, online_end) stream."""

    train_end: int
    val_end: int
    online_end: int


def split_rows(name: str, rows: int) -> Split:
    """FSNet/OneNet's split: ETT hourly files rows [0, 2880) / [2880, 3600) / [3600, 14400) (ETTm, at 15
    minutes, the same months: 4x the rows), clipped to the file; other files 20% / 5% / 75%."""
    if name.startswith("ETT"):
        scale = 4 if name.startswith("ETTm") else 1
        train, val, online = (scale * r for r in ETT_SPLIT)
        return Split(train, val, min(online, rows))
    online = int(rows * (1 - TRAIN_SHARE - VAL_SHARE))
    return Split(int(rows * TRAIN_SHARE), rows - online, rows)


@dataclass(frozen=True)
class Dataset:
    """A series standardised with train-split statistics, and its split."""

    name: str
    values: np.ndarray
    marks: np.ndarray | None
    split: Split

    @classmethod
    def load(cls, csv: Path, dated: bool = True) -> Dataset:
        """Read ``csv`` (``dated``: it has a ``date`` column) and scale it with the train rows' statistics."""
        if not csv.is_file():
            raise ValueError(f"{csv}: no such file")
        try:
            series = load_csv(csv) if dated else load_dateless(csv)
        except NoDateColumn as exc:
            raise ValueError(f"{exc}; a file without dates runs with --no-date") from exc
        split = split_rows(csv.name, len(series.values))
        if split.train_end < 2:
            raise ValueError(f"{csv}: {len(series.values)} rows leave no train split")
        values = series.values[: split.online_end]
        if np.isnan(values).any():
            raise ValueError(f"{csv}: {int(np.isnan(values).sum())} missing values; fill or drop them first")
        scaler = Scaler.fit(values[: split.train_end])
        marks = None if series.marks is None else series.marks[: split.online_end]
        return cls(csv.name, scaler.transform(values), marks, split)

    def windows(
        self, seq_len: int, horizon: int, device: torch.device
    ) -> tuple[Windows, np.ndarray, np.ndarray, np.ndarray]:
        """Windows on ``device`` and the train / validation / online origins, or a clear error when any
        is empty."""
        windows = Windows(self.values, self.marks, seq_len, horizon).to(device)
        s = self.split
        parts = (
            windows.origins(0, s.train_end),
            windows.origins(s.train_end, s.val_end),
            windows.origins(s.val_end, s.online_end),
        )
        if any(len(p) == 0 for p in parts):
            raise ValueError(
                f"{self.name}: train [0,{s.train_end}) / validation [{s.train_end},{s.val_end}) / online "
                f"[{s.val_end},{s.online_end}) rows are too short for seq-len {seq_len} + horizon {horizon}"
            )
        return (windows, *parts)


@dataclass(frozen=True)
class StreamResult:
    """Mean online MSE/MAE and speed: wall-clock steps/s, and steps per second of this process's CPU
    time (steadier than wall-clock on a shared machine)."""

    mse: float
    mae: float
    steps_per_s: float
    steps_per_cpu_s: float


def stream(
    learner: Forecaster, windows: Windows, origins: np.ndarray, protocol: str, bar: tqdm | None = None
) -> StreamResult:
    """Forecast every origin in order, score it, and learn under ``protocol``."""
    lag = windows.horizon - 1 if protocol == "delayed" else 0
    sq = ab = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(len(origins)):
        batch = windows.batch(origins[i : i + 1])
        if lag == 0:
            metrics = learner.learn(batch)  # scores the pre-update forecast, then learns its horizon
        else:
            metrics = forecast_errors(learner.predict(batch), batch.target)
            if i >= lag:  # row origins[i] has arrived: the window that ends on it is complete
                learner.learn(windows.batch(origins[i - lag : i - lag + 1]))
        sq += metrics["mse"]
        ab += metrics["mae"]
        if bar is not None:
            bar.update()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(origins)
    return StreamResult(sq / n, ab / n, n / max(wall, 1e-9), n / max(cpu, 1e-9))


def warm_up(
    spec: ForecasterSpec,
    windows: Windows,
    train: np.ndarray,
    val: np.ndarray,
    epochs: int,
    seed: int,
    device: torch.device,
) -> tuple[Forecaster, Row]:
    """A fresh ``spec`` model fitted on the train origins (early stopping on ``val``), and what it took
    and chose: ``gain_prior`` is the gain's prior (None without one; "inf", no gain, as JSON has no
    infinity)."""
    torch.manual_seed(seed)
    learner = build_forecaster(spec, device)
    started = time.perf_counter()
    report = fit(learner, windows, train, val, epochs=epochs, seed=seed)
    prior = report.gain_prior
    return learner, {
        "warmup_epochs": report.epochs,
        "warmup_s": time.perf_counter() - started,
        "gain_prior": "inf" if prior is not None and math.isinf(prior) else prior,
    }


def evaluate(
    dataset: Dataset,
    models: Sequence[str],
    horizons: Sequence[int],
    protocols: Sequence[str] = ("delayed",),
    steps: int = 0,
    epochs: int = 2,
    seq_len: int = 60,
    seeds: Sequence[int] = (0,),
    device: torch.device | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> list[Row]:
    """One row per (horizon, model, seed, protocol); a model is warmed up once per (horizon, seed) and
    each protocol streams its own copy. ``steps`` = 0 streams the whole online part. ``options`` are
    :class:`ForecasterSpec` fields for every model (e.g. ``{"gain_prior": 8.0}``)."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or steps < 0 or epochs < 0 or seq_len < 1 or min(horizons, default=0) < 1:
        raise ValueError(
            f"need protocols in {PROTOCOLS} (got {list(protocols)}), steps >= 0, epochs >= 0, "
            f"seq-len >= 1 and horizons >= 1"
        )
    ForecasterSpec.from_dict(options or {})  # unknown or mistyped options fail before any work
    device = device or torch.device("cpu")
    channels, marks = dataset.values.shape[1], 0 if dataset.marks is None else dataset.marks.shape[1]
    rows: list[Row] = []
    for horizon in horizons:
        windows, train, val, online = dataset.windows(seq_len, horizon, device)
        online = online[:steps] if steps else online
        for kind, seed in itertools.product(models, seeds):
            shape = {
                "kind": kind,
                "seq_len": seq_len,
                "horizon": horizon,
                "channels": channels,
                "marks": marks,
            }
            spec = ForecasterSpec.from_dict({**(options or {}), **shape})
            warm, warmup = warm_up(spec, windows, train, val, epochs, seed, device)
            for protocol in protocols:
                label = f"{kind} H={horizon} {protocol} seed {seed}"
                with tqdm(
                    total=len(online),
                    desc=label,
                    file=sys.stderr,
                    disable=not progress,
                    mininterval=1.0,
                    leave=False,
                ) as bar:
                    result = stream(copy.deepcopy(warm), windows, online, protocol, bar)
                rows.append(
                    {
                        "model": kind,
                        "horizon": horizon,
                        "protocol": protocol,
                        "steps": len(online),
                        **asdict(result),
                        "seed": seed,
                        "data": dataset.name,
                        "seq_len": seq_len,
                        "device": str(device),
                        **warmup,
                    }
                )
    return rows


def seed_list(values: Sequence[int]) -> list[int]:
    """``--seeds N`` means seeds 0..N-1; two or more values are the seeds themselves."""
    if len(values) == 1:
        if values[0] < 1:
            raise ValueError("--seeds N needs N >= 1 (or list two or more seeds)")
        return list(range(values[0]))
    return list(values)


def spec_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value), the value read as JSON where it can be (``8``: a number)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    return torch.device(name)


def print_table(rows: list[Row], title: str) -> None:
    """Rows merged over seeds: mean (and sd when there are several seeds) of MSE and MAE, steps/s."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["protocol"], row["horizon"]), []).append(row)
    table = Table(title=title)
    columns = (
        "model",
        "protocol",
        "H",
        "steps",
        "seeds",
        "MSE",
        "MAE",
        "steps/s",
        "steps/CPU-s",
        "gain prior",
    )
    for name in columns:
        table.add_column(name, justify="left" if name in ("model", "protocol") else "right")

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")

    for (model, protocol, horizon), group in groups.items():
        table.add_row(
            model,
            protocol,
            str(horizon),
            str(group[0]["steps"]),
            str(len(group)),
            cell([r["mse"] for r in group]),
            cell([r["mae"] for r in group]),
            *(f"{np.mean([r[key] for r in group]):.1f}" for key in ("steps_per_s", "steps_per_cpu_s")),
            prior_cell(group),
        )
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console.width = 140
    console.print(table)


def prior_cell(group: list[Row]) -> str:
    """The gain priors a group's seeds chose (e.g. ``0`` or ``inf``); - for a model without one."""
    chosen = {row.get("gain_prior") for row in group} - {None}
    return " ".join(sorted(p if isinstance(p, str) else f"{p:g}" for p in chosen)) or "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``driftline forecasters evaluate`` and ``python -m forecasters.evaluate``."""
    parser.add_argument("--csv", type=Path, required=True, help="CSV with a 'date' column then channels")
    parser.add_argument(
        "--no-date",
        action="store_true",
        help="the file has no date column (e.g. exchange_rate.txt.gz): no calendar features",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["onenet", "last-value"],
        choices=list(BUILDERS),
        metavar="MODEL",
        help=f"one or more of: {', '.join(BUILDERS)}",
    )
    parser.add_argument("--horizon", type=int, nargs="+", default=[24], help="one horizon or several")
    parser.add_argument(
        "--protocol",
        nargs="+",
        default=["delayed"],
        choices=PROTOCOLS,
        help="delayed: learn a window once its last target arrived; paper: right after "
        "forecasting it (FSNet/OneNet); both: each streams its own copy of the warm model",
    )
    parser.add_argument("--steps", type=int, default=0, help="online steps (0 = the whole online part)")
    parser.add_argument("--epochs", type=int, default=2, help="warm-up epochs (early stopping, patience 3)")
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument(
        "--option",
        type=spec_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a ForecasterSpec field for every model, e.g. gain_prior=8 or loss=mse (repeatable)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1], help="N = seeds 0..N-1, or two or more explicit seeds"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (these small models run best on 1)"
    )
    parser.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation the flags describe, print the table, write the JSON rows."""
    torch.set_num_threads(max(1, args.threads))
    device = pick_device(args.device)
    dataset = Dataset.load(args.csv, dated=not args.no_date)
    rows = evaluate(
        dataset,
        args.models,
        args.horizon,
        args.protocol,
        args.steps,
        args.epochs,
        args.seq_len,
        seed_list(args.seeds),
        device,
        progress=not args.quiet,
        options=dict(args.option),
    )
    s = dataset.split
    print_table(
        rows,
        f"{dataset.name}: warm-up [0,{s.train_end}), validation [{s.train_end},{s.val_end}), "
        f"online [{s.val_end},{s.online_end}); look-back {args.seq_len}, {args.epochs} warm-up epochs, "
        f"{device}, {args.threads} thread(s)",
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m forecasters.evaluate") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_evaluate(args)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
