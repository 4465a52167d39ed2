"""Forecast probation on ETTh2 with injected changes: time from a bad update to its rollback, and what
forecasts served meanwhile.

Real data, synthetic injections. ETTh2's online rows from row 3600 stream through the forecast
service in its runner (drift alarm included, no Kafka), ``--batch`` observations per micro-batch, a
DLinear (look-back 60, H=24) warmed up on the train split, the default gate and probation options.
A clean run finds where the gate freezes its first candidate after window ``--after``; then three
injections, each on its own copy of the stream:

- ``glitch``: the raw values of the ``--glitch-windows`` windows before that freeze and of the whole
  held-back slice after it (a sensor reporting in other units) are multiplied by ``--factor`` and
  trained at ``--boost`` times the learning rate: the candidate learns the glitch and passes the
  gate on glitched windows, then the world is clean again. Probation should roll it back.
- ``scale``: no glitch; the same multiplication for good from ``--lasting-after`` windows after
  that candidate's decision (it is on probation then). Old versions do worse too: the drift alarm
  should rise, hold that probation, and nothing be rolled back.
- ``level``: a lasting level shift of ``--shift`` train-split standard deviations on every channel
  from the same row on (DLinear forecasts relative to its look-back: expect no alarm at all).

Each runs with probation (the default options) and without (``rollback_margin`` infinite: both
versions are still scored, nothing is rolled back). Printed per run: alarms (the window each came
at), promotions, rollbacks (the window, and windows from the bad version's promotion to its
rollback), the MSE of every published forecast against the H rows that followed as observed
(standardised units), over the whole run and from the change on (after a glitch: once look-backs
are clean again), obs/s in ``process`` and the share of it spent freezing and scoring versions.
One torch thread; wall-clock figures on a shared machine are noisy.

    flock /tmp/driftline-bench.lock .venv/bin/python -m bench.forecast_rollback   # ~1 min at load ~8
    # false rollbacks on clean data at other settings, e.g.:
    .venv/bin/python -m bench.forecast_rollback --rows 6000 --only clean --probation 0.05/48
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.forecast_cadence import SEQ_LEN, TOPIC, etth2_times, load_avg, warm_up
from bench.forecast_gate import clocked
from forecasters.data import ETT_SPLIT, Scaler, Series, ett_windows, load_etth2
from forecasters.learner import Forecaster
from forecasters.promotion import PromotionConfig
from forecasters.service import ForecastService
from forecasters.zoo import ForecasterSpec
from streams.drift import DriftMonitor, DriftSettings
from streams.metrics import WorkerMetrics
from streams.runner import Incoming, ServiceRunner
from streams.schemas import Observation

HORIZON = 24
SPEC = ForecasterSpec(kind="dlinear", seq_len=SEQ_LEN, horizon=HORIZON, channels=7)
#: First online row, and the rows streamed before it (the first pair completes at FIRST).
FIRST, LEAD = ETT_SPLIT[1], SEQ_LEN + HORIZON - 1
#: Probation that never rolls back: the "without" runs.
NO_PROBATION = {"rollback_margin": math.inf}
#: ETTh2 at 8 observations per batch alarms every ~200 windows at the default detector settings
#: (threshold 1, delta 0.05; outlier stretches), twice in 4,000 clean windows at these.
DRIFT = DriftSettings(threshold=3.0, delta=0.2)


def row_of(window: int) -> int:
    """The streamed row whose arrival completes window number ``window`` (the first is 1)."""
    return LEAD + window - 1


class NullSink:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        return None


@dataclass
class Stream:
    """ETTh2 (real), its train-split scaler and times, and a DLinear warmed up on the train split."""

    series: Series
    scaler: Scaler
    times: np.ndarray
    learner: Forecaster

    @classmethod
    def load(cls, epochs: int = 1) -> Stream:
        series = load_etth2()
        windows, scaler = ett_windows(series, SEQ_LEN, HORIZON)
        return cls(series, scaler, etth2_times(), warm_up(SPEC, windows, epochs))

    def values(self, rows: int, change: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Raw values of the ``rows`` streamed rows (from FIRST - LEAD), with ``change`` injected."""
        raw = self.series.values[FIRST - LEAD : FIRST + rows].astype(np.float64)
        return raw if change is None else change(raw.copy())


def glitch(start: int, rows: int, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Synthetic corruption: streamed rows ``start .. start + rows`` multiplied by ``factor``."""

    def inject(raw: np.ndarray) -> np.ndarray:
        raw[start : start + rows] *= factor
        return raw

    return inject


def level_shift(start: int, shift: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Synthetic lasting change: every streamed row from ``start`` on plus ``shift`` (per channel)."""

    def inject(raw: np.ndarray) -> np.ndarray:
        raw[start:] += shift
        return raw

    return inject


@dataclass
class Run:
    """A forecast service in its runner (drift alarm, no Kafka), fed ETTh2 rows batch by batch."""

    service: ForecastService
    runner: ServiceRunner
    #: Per applied batch: (windows learned so far, progressive MSE, serving version, alarms so far).
    log: list[tuple[int, float, int, int]] = field(default_factory=list)
    #: Per published forecast: (its last streamed row, standardised values [H, C]).
    forecasts: list[tuple[int, np.ndarray]] = field(default_factory=list)
    elapsed: float = 0.0
    #: Seconds in the gate's freezing and scoring (the gate's slice and probation's pairs).
    gate_time: list[float] = field(default_factory=lambda: [0.0])

    @classmethod
    def start(cls, stream: Stream, drift: DriftSettings, **options: Any) -> Run:
        home = Path(tempfile.mkdtemp(prefix="driftline-forecast-rollback-"))
        config = PromotionConfig.pop_from(dict(options))
        service = ForecastService(
            SPEC, copy.deepcopy(stream.learner), stream.scaler, promotion=config, checkpoint_root=home
        )
        runner = ServiceRunner(service, home / "checkpoints", NullSink(), WorkerMetrics())
        runner.drift = DriftMonitor("forecast", "mse", settings=drift)
        run = cls(service, runner)
        clocked(service.gate, ("before_batch", "score"), run.gate_time)
        return run

    @property
    def drift(self) -> DriftMonitor:
        assert self.runner.drift is not None
        return self.runner.drift

    def feed(
        self, stream: Stream, raw: np.ndarray, batch: int, boosted: range = range(0), boost: float = 1.0
    ) -> None:
        """Stream ``raw`` in batches of ``batch`` rows; batches that end in ``boosted`` train with the
        learning rate times ``boost`` (an exploding learning rate, synthetic)."""
        asyncio.run(self._feed(stream, raw, batch, boosted, boost))

    async def _feed(self, stream: Stream, raw: np.ndarray, batch: int, boosted: range, boost: float) -> None:
        subscription = self.service.subscriptions()[0]
        windows = 0
        for start in range(0, len(raw), batch):
            rows = range(start, min(start + batch, len(raw)))
            events = [
                Incoming(TOPIC, 0, r, b"etth2", self._observation(stream, raw, r).to_bytes()) for r in rows
            ]
            factor = boost if rows[-1] in boosted else 1.0
            self.service.learner.scale_lr(factor)
            began = time.perf_counter()
            result = await self.runner.apply(subscription, events)
            self.elapsed += time.perf_counter() - began
            self.service.learner.scale_lr(1 / factor)
            assert result is not None
            windows += int(result.metrics.get("trained_windows", 0))
            self.log.append(
                (
                    windows,
                    result.metrics.get("mse", math.nan),
                    self.service.model_version(),
                    self.drift.alarms,
                )
            )
            for output in result.outputs:
                values = stream.scaler.transform(np.asarray(output.record.values, np.float32))
                self.forecasts.append((rows[-1], values))

    @staticmethod
    def _observation(stream: Stream, raw: np.ndarray, row: int) -> Observation:
        ts = float(stream.times[FIRST - LEAD + row])
        return Observation(series="etth2", ts=ts, values=raw[row].tolist())

    def events(self, action: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, history entry) of every ``action`` in the lineage, in time order."""
        body = self.service.lineage_body()
        found = [(v["version"], e) for v in body["versions"] for e in v["history"] if e["action"] == action]
        return sorted(found, key=lambda ve: ve[1]["at"])

    def windows_at(self, event: dict[str, Any], end: str = "to") -> int:
        """Windows learned when a lineage event was recorded (its window's ``to`` offset), or
        (``end="after"``) when the gate froze the candidate it decides."""
        return event["evidence"]["window"][end][f"{TOPIC}:0"] - LEAD + 1

    def alarms(self) -> list[int]:
        """Windows learned when each drift alarm rose."""
        counts = [0] + [alarms for *_, alarms in self.log]
        return [w for (w, *_), before, now in zip(self.log, counts, counts[1:], strict=False) if now > before]

    def served_mse(self, observed: np.ndarray, after: int = 0) -> float:
        """MSE of the forecasts published from streamed row ``after`` on against the rows that followed
        (standardised; forecasts without H rows after them are left out)."""
        errors = [
            float(((values - observed[row + 1 : row + 1 + HORIZON]) ** 2).mean())
            for row, values in self.forecasts
            if row >= after and row + HORIZON < len(observed)
        ]
        return float(np.mean(errors))


@dataclass(frozen=True)
class Injection:
    """One synthetic change: its name, what it does to the raw rows, the rows trained at a boosted
    learning rate, and the first streamed row after it (where "after" is measured from)."""

    name: str
    change: Callable[[np.ndarray], np.ndarray] | None
    boosted: range = range(0)
    after: int = 0


def injections(stream: Stream, freeze: int, args: argparse.Namespace) -> list[Injection]:
    """The clean run, the glitch around the candidate frozen at window ``freeze`` and the lasting
    changes from ``args.lasting_after`` windows after that candidate's decision."""
    start, stop = (
        row_of(freeze - args.glitch_windows) + 1,
        row_of(freeze + PromotionConfig().gate_windows) + 1,
    )
    lasting = row_of(freeze + PromotionConfig().gate_windows + args.lasting_after)
    return [
        Injection("clean", None),
        Injection("glitch", glitch(start, stop - start, args.factor), range(start, stop), stop + SEQ_LEN),
        Injection("scale", glitch(lasting, args.rows, args.factor), after=lasting),
        Injection("level", level_shift(lasting, args.shift * stream.scaler.std), after=lasting),
    ]


def report(run: Run, raw: np.ndarray, stream: Stream, injection: Injection, probation: bool) -> str:
    """One line per run: alarms, gate and probation decisions, served MSE."""
    observed = stream.scaler.transform(raw)
    promoted = {v: run.windows_at(e) for v, e in run.events("promoted")}
    rollbacks = [
        (run.windows_at(e), e["evidence"]["rolled_back_from"], v) for v, e in run.events("rolled_back")
    ]
    rolled = ", ".join(
        f"v{bad}->v{good} at {at} ({at - promoted[bad]} windows after v{bad} began serving)"
        for at, bad, good in rollbacks
    )
    return (
        f"{injection.name:>6} {'with' if probation else 'without':>7} probation | alarms at {run.alarms()} | "
        f"promoted {sorted(promoted.items())} rejected {[v for v, _ in run.events('rejected')]} | "
        f"rolled back: {rolled or 'none'} | served MSE {run.served_mse(observed):.4f}, "
        f"after the change {run.served_mse(observed, injection.after):.4f} | "
        f"{len(raw) / run.elapsed:.0f} obs/s, gate and probation {run.gate_time[0] / run.elapsed:.1%} "
        f"of it | {load_avg()}"
    )


def probation_options(text: str) -> dict[str, float]:
    """``MARGIN/WINDOWS`` as probation options."""
    margin, _, windows = text.partition("/")
    return {"rollback_margin": float(margin), "rollback_windows": int(windows)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2200, help="windows to stream")
    parser.add_argument("--batch", type=int, default=8, help="observations per micro-batch")
    parser.add_argument(
        "--after", type=int, default=1200, help="glitch the first candidate frozen after this window"
    )
    parser.add_argument("--glitch-windows", type=int, default=32, help="glitched windows before the freeze")
    parser.add_argument("--factor", type=float, default=2.5, help="raw values times this in a glitch")
    parser.add_argument("--boost", type=float, default=30.0, help="learning rate times this on glitched rows")
    parser.add_argument("--lasting-after", type=int, default=23, help="windows after the glitch's decision")
    parser.add_argument("--shift", type=float, default=2.0, help="level shift in train-split std")
    parser.add_argument("--epochs", type=int, default=1, help="warm-up epochs")
    parser.add_argument(
        "--probation",
        type=probation_options,
        default={},
        help="MARGIN/WINDOWS: rollback_margin and rollback_windows of the runs with probation",
    )
    parser.add_argument("--only", nargs="+", help="only these runs (clean, glitch, scale, level)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = Stream.load(args.epochs)
    print(
        f"ETTh2 (real), {args.rows} windows from row {FIRST}, batch {args.batch} | {load_avg()}", flush=True
    )
    clean = Run.start(stream, DRIFT)
    clean.feed(stream, stream.values(row_of(args.rows) + 1), args.batch)
    frozen = sorted(
        clean.windows_at(e, "after") for _, e in clean.events("promoted") + clean.events("rejected")
    )
    freeze = next(w for w in frozen if w > args.after)
    print(f"glitch around the candidate frozen at window {freeze}", flush=True)
    for injection in injections(stream, freeze, args):
        if args.only and injection.name not in args.only:
            continue
        raw = stream.values(row_of(args.rows) + 1, injection.change)
        for probation in (True, False):
            run = Run.start(stream, DRIFT, **(args.probation if probation else NO_PROBATION))
            run.feed(stream, raw, args.batch, injection.boosted, args.boost)
            print(report(run, raw, stream, injection, probation), flush=True)


if __name__ == "__main__":
    main()
