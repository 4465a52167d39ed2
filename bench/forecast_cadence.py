"""Adaptive update cadence: ``ForecastService.process`` throughput and online error, per-step vs batched.

Delayed-label ETTh2 protocol in process (no Kafka): the learner is warmed up on rows [0, 2880) with
early stopping on [2880, 3600) (as bench/forecast_online.py), the service standardises with the train
statistics, look-back 60. The online rows then arrive as a worker that is behind sees them: micro-batches
of ``--batch`` records in time order. A pair (look-back, the H rows that just arrived) is trained only
once its H values are in, and every pair is scored by the model before any update has used it; MSE/MAE
are that progressive error over every pair. ``fcst MSE`` is the error of forecasts without hindsight:
before each micro-batch, the model as it stands then forecasts from the look-back ending at every row of
that micro-batch (what a user would be served if forecasts were refreshed at every row). The progressive
score of a pair instead comes from a model that has already trained on the pairs just before it, whose
targets overlap its own by up to H - 1 rows. ``cap`` is the service's ``max_train_batch``: cap 1 is one
update per observation (today's per-step cadence), a larger cap trains up to ``cap`` consecutive pairs
of a series in one update. ``mix``: ``stepwise`` is the service (each chunk is a sequential batch,
``WindowBatch.sequential``, so OneNet's EG weights and short-term bias still advance pair by pair inside
the chunk); ``chunk`` is the service before that change (every pair of a chunk mixed as the pre-update
model predicts it), kept for comparison. Model: today's ``onenet`` (pending the
forecasting issue). One torch thread.

- 1 series: ETTh2 itself, the ``--rows`` online rows from row 3600.
- 1,000 series: derived (synthetic) from ETTh2: series i is ETTh2 from online row 3600 + i * stride,
  so the series are shifted, partly overlapping copies of one real series; ``--many-rows`` rows each.

    .venv/bin/python bench/forecast_cadence.py          # ~3 min on a quiet machine, 6-10 under load
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from forecasters.batch import WindowBatch
from forecasters.data import ETT_SPLIT, REPO_ROOT, Scaler, Windows, data_dir, ett_windows, load_etth2
from forecasters.learner import Forecaster
from forecasters.service import ForecastService
from forecasters.training import fit
from forecasters.zoo import ForecasterSpec, build_forecaster
from streams.schemas import Observation
from streams.topics import topic_name

TOPIC = topic_name("observations")
SEQ_LEN = 60


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    series: int
    horizon: int
    batch: int
    cap: int
    mix: str
    obs_per_s: float
    obs_per_cpu_s: float
    mse: float
    mae: float
    forecast_mse: float
    pairs: int


class ChunkService(ForecastService):
    """The service before stepwise mixing: every pair of a chunk mixed as the pre-update model does."""

    def _batch(
        self, keys: tuple[str, ...], values: np.ndarray, times: np.ndarray, training: bool
    ) -> WindowBatch:
        return replace(super()._batch(keys, values, times, training), sequential=False)


MIXES = {"chunk": ChunkService, "stepwise": ForecastService}
#: Cap 1 has one pair per series and call, where the mixes coincide: the service itself runs it.
PER_STEP = "per-step"


@dataclass(frozen=True)
class Stream:
    """Series i reads ETTh2 from row ``starts[i]`` on; records are in time order, series interleaved."""

    starts: list[int]
    windows: Windows

    @staticmethod
    def key(series: int) -> str:
        return f"etth2-{series:04d}"

    def observations(
        self, values: np.ndarray, times: np.ndarray, offset: int, rows: int
    ) -> list[Observation]:
        """``rows`` raw ETTh2 rows of every series, from its start + ``offset``."""
        return [
            Observation(series=self.key(i), ts=float(times[row]), values=values[row].tolist())
            for r in range(rows)
            for i, start in enumerate(self.starts)
            for row in (start + offset + r,)
        ]

    def forecast_sq_error(self, learner: Forecaster, first: int, stop: int) -> float:
        """Summed MSE of the forecasts from the look-backs ending at online records [first, stop)."""
        records = np.arange(first, stop)
        series = records % len(self.starts)
        origins = np.asarray(self.starts)[series] + records // len(self.starts) + 1
        batch = self.windows.batch(origins)
        keys = tuple(self.key(int(i)) for i in series)
        prediction = learner.predict(WindowBatch(batch.x, None, batch.marks, keys))
        return float((prediction - batch.target).pow(2).mean((1, 2)).sum())


def load_avg() -> str:
    """The machine's load as ``uptime`` prints it (2 cores shared with other engineers)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def etth2_times() -> np.ndarray:
    """ETTh2's timestamps as epoch seconds (UTC), so the service derives the warm-up's calendar marks."""
    dates = pd.read_csv(data_dir() / "timeseries" / "ETTh2.csv", usecols=["date"])["date"]
    return pd.to_datetime(dates).to_numpy("datetime64[s]").astype(np.int64).astype(np.float64)


def warm_up(spec: ForecasterSpec, windows: Windows, epochs: int) -> Forecaster:
    """``spec``'s learner fitted on the train split of ``windows``."""
    torch.manual_seed(0)
    train_end, val_end, _ = ETT_SPLIT
    learner = build_forecaster(spec)
    fit(learner, windows, windows.origins(0, train_end), windows.origins(train_end, val_end), epochs=epochs)
    return learner


def primed_state(
    spec: ForecasterSpec, learner: Forecaster, scaler: Scaler, prime: list[Observation]
) -> dict[str, Any]:
    """Service state once every series' window holds the rows before its first online pair."""
    service = ForecastService(spec, copy.deepcopy(learner), scaler)
    for start in range(0, len(prime), 20_000):
        service.process(TOPIC, prime[start : start + 20_000])
    return copy.deepcopy(service.state_dict())


def run_cap(
    spec: ForecasterSpec,
    state: dict[str, Any],
    stream: Stream,
    online: list[Observation],
    batch: int,
    cap: int,
    mix: str,
) -> tuple[float, float, float, float, float, int]:
    """``online`` in micro-batches through a ``mix`` service restored from ``state``.

    Returns obs/s (wall time in ``process`` only) and obs per CPU-second of ``process`` (less
    inflated by other processes on a shared machine), progressive MSE and MAE, forecast MSE and
    pairs trained.
    """
    service = MIXES.get(mix, ForecastService)(spec, max_train_batch=cap)
    service.load_state_dict(copy.deepcopy(state))
    sq, ab, forecast_sq, pairs, elapsed, cpu = 0.0, 0.0, 0.0, 0, 0.0, 0.0
    label = f"{len(stream.starts)} series H={spec.horizon} cap {cap} {mix}"
    with tqdm(total=len(online), desc=label, unit="obs", leave=False) as bar:
        for start in range(0, len(online), batch):
            records = online[start : start + batch]
            forecast_sq += stream.forecast_sq_error(service.learner, start, start + len(records))
            began, began_cpu = time.perf_counter(), time.process_time()
            metrics = service.process(TOPIC, records).metrics
            elapsed, cpu = elapsed + time.perf_counter() - began, cpu + time.process_time() - began_cpu
            n = int(metrics["trained_windows"])
            sq, ab, pairs = sq + metrics.get("mse", 0.0) * n, ab + metrics.get("mae", 0.0) * n, pairs + n
            bar.update(len(records))
    return len(online) / elapsed, len(online) / cpu, sq / pairs, ab / pairs, forecast_sq / len(online), pairs


def bench_stream(
    spec: ForecasterSpec,
    learner: Forecaster,
    scaler: Scaler,
    stream: Stream,
    rows: int,
    batch: int,
    caps: list[int],
    mixes: list[str],
) -> list[Row]:
    """Prime once, then run every cap and mix from the same primed state over the same online rows.

    Cap 1 has one pair per series and call, where the mixes coincide: it runs once, as ``per-step``.
    """
    values, times = load_etth2().values, etth2_times()
    lead = spec.seq_len + spec.horizon - 1  # rows before a series' first complete pair
    state = primed_state(spec, learner, scaler, stream.observations(values, times, -lead, lead))
    online = stream.observations(values, times, 0, rows)
    table = []
    runs = [(cap, mix) for cap in caps for mix in ([PER_STEP] if cap == 1 else mixes)]
    for cap, mix in runs:
        result = run_cap(spec, state, stream, online, batch, cap, mix)
        table.append(Row(len(stream.starts), spec.horizon, batch, cap, mix, *result))
    return table


def cost(value: float, base: float | None) -> str:
    """``value`` relative to ``base`` in percent, or "-" without a base."""
    return f"{(value / base - 1) * 100:+.1f}%" if base else "-"


def format_table(rows: list[Row]) -> str:
    """One line per (series, H, cap); costs are relative to cap 1 (per-step) of the same series and H."""
    per_step = {(r.series, r.horizon): r for r in rows if r.cap == 1}
    head = (
        f"{'series':>7}{'H':>4}{'batch':>7}{'pairs':>8}{'cap':>5}{'mix':>10}{'obs/s':>9}{'obs/CPU-s':>11}{'MSE':>8}{'MAE':>8}"
        f"{'MSE cost vs per-step':>22}{'fcst MSE':>10}{'fcst cost':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        base = per_step.get((r.series, r.horizon))
        lines.append(
            f"{r.series:>7}{r.horizon:>4}{r.batch:>7}{r.pairs:>8}{r.cap:>5}{r.mix:>10}{r.obs_per_s:>9.0f}"
            f"{r.obs_per_cpu_s:>11.0f}{r.mse:>8.3f}{r.mae:>8.3f}{cost(r.mse, base and base.mse):>22}"
            f"{r.forecast_mse:>10.3f}{cost(r.forecast_mse, base and base.forecast_mse):>11}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--horizons", type=int, nargs="+", default=[24, 48])
    parser.add_argument("--caps", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--mixes", nargs="+", choices=sorted(MIXES), default=sorted(MIXES))
    parser.add_argument("--rows", type=int, default=1536, help="online rows of the one series")
    parser.add_argument("--batch", type=int, default=512, help="records per micro-batch, one series")
    parser.add_argument("--many", type=int, default=1000, help="derived series (0 skips that part)")
    parser.add_argument("--many-caps", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--many-rows", type=int, default=12, help="online rows per derived series")
    parser.add_argument("--many-batch", type=int, default=2000, help="records per micro-batch, many series")
    parser.add_argument("--stride", type=int, default=9, help="rows between derived series' starts")
    parser.add_argument("--epochs", type=int, default=2, help="warm-up epochs (as bench/forecast_online.py)")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "var" / "bench" / "forecast_cadence.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    online_start, online_end = ETT_SPLIT[1], ETT_SPLIT[2]
    last_row = (
        online_start + max(args.rows, (args.many - 1) * args.stride + args.many_rows) + max(args.horizons)
    )
    if last_row > online_end:
        parser.error(f"the online rows must end by ETTh2 row {online_end}: lower --rows, --many or --stride")
    load_before = load_avg()
    started = time.perf_counter()
    rows: list[Row] = []
    for horizon in args.horizons:
        spec = ForecasterSpec("onenet", seq_len=SEQ_LEN, horizon=horizon, channels=7, marks=4)
        windows, scaler = ett_windows(load_etth2(), spec.seq_len, spec.horizon)
        learner = warm_up(spec, windows, args.epochs)
        one = Stream([online_start], windows)
        rows += bench_stream(spec, learner, scaler, one, args.rows, args.batch, args.caps, args.mixes)
        if args.many:
            many = Stream([online_start + i * args.stride for i in range(args.many)], windows)
            rows += bench_stream(
                spec, learner, scaler, many, args.many_rows, args.many_batch, args.many_caps, args.mixes
            )
    print(
        f"ForecastService.process in process, today's onenet (pending the forecasting issue), ETTh2, "
        f"look-back {SEQ_LEN}, warm-up {args.epochs} epochs on rows [0,2880) (early stopping on "
        f"[2880,3600)), delayed labels, online from row 3600; {args.many} series = derived (synthetic) "
        f"shifted copies of ETTh2, {args.stride} rows apart; one torch thread; no Kafka.\n"
        f"batch = records per micro-batch (a worker that is behind); pairs = pairs scored and trained; "
        f"obs/s = records / time in process(), obs/CPU-s = records / this process' CPU time in process(); "
        f"cap = max_train_batch; mix = per-step (cap 1), chunk "
        f"(the service before stepwise mixing) or stepwise (the service); MSE/MAE = progressive "
        f"(delayed-label) score; fcst MSE = forecasts without hindsight (see the module docstring).\n"
    )
    print(format_table(rows))
    print(f"\nload before: {load_before}\nload after:  {load_avg()}")
    print(f"total {time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args) | {"json": str(args.json)}, "rows": [vars(r) for r in rows]}
    args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
