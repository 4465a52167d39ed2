"""The forecast promotion gate on ETTh2, in process: what it costs and how good the forecasts it serves are.

One series: ETTh2's online rows from row 3600, OneNet (look-back 60) warmed up on the train split as
in bench/forecast_cadence.py, the service standardising with the train statistics, ``--batch``
observations per micro-batch (1: caught up). Each gate ``EVERY/WINDOWS`` (``candidate_every`` /
``gate_windows``; ``none``: a cadence never reached, so the learner serves throughout) runs the same
rows from the same primed state. Printed per gate: obs/s (time in ``process``), the gate's share of
that time (freezing and scoring), the learner's progressive MSE, the MSE of every published forecast
against the H rows that followed it (standardised units), and the candidates promoted and rejected.
One torch thread. The machine is shared: read the gate's share rather than obs/s.

    flock /tmp/driftline-bench.lock .venv/bin/python -m bench.forecast_gate   # ~8 min at load ~10
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.forecast_cadence import SEQ_LEN, TOPIC, etth2_times, load_avg, warm_up
from forecasters.data import ETT_SPLIT, Scaler, ett_windows, load_etth2
from forecasters.learner import Forecaster
from forecasters.promotion import ForecastGate, PromotionConfig
from forecasters.service import ForecastService
from forecasters.zoo import ForecasterSpec
from streams.schemas import Observation

NEVER = 10**9


def clocked(gate: ForecastGate, names: tuple[str, ...], clock: list[float]) -> None:
    """Add the time spent in each of ``gate``'s methods ``names`` to ``clock[0]``."""
    for name in names:
        method: Callable[..., Any] = getattr(gate, name)

        def timed(*args: Any, _method: Callable[..., Any] = method) -> Any:
            began = time.perf_counter()
            try:
                return _method(*args)
            finally:
                clock[0] += time.perf_counter() - began

        setattr(gate, name, timed)


def run_gate(
    spec: ForecasterSpec,
    learner: Forecaster,
    scaler: Scaler,
    rows: tuple[list[Observation], list[Observation]],
    truth: np.ndarray,
    config: PromotionConfig,
    batch: int,
) -> str:
    """One pass of the online rows through a service gated by ``config``; the line to print."""
    prime, online = rows
    service = ForecastService(spec, copy.deepcopy(learner), scaler, promotion=config)
    service.process(TOPIC, prime)
    gate_time, elapsed, progressive, trained, served, forecasts = [0.0], 0.0, 0.0, 0, 0.0, 0
    clocked(service.gate, ("before_batch", "score"), gate_time)
    for start in range(0, len(online), batch):
        began = time.perf_counter()
        result = service.process(TOPIC, online[start : start + batch])
        elapsed += time.perf_counter() - began
        windows = int(result.metrics["trained_windows"])
        progressive, trained = progressive + result.metrics.get("mse", 0.0) * windows, trained + windows
        ahead = truth[min(start + batch, len(online)) :][: spec.horizon]
        for output in result.outputs:
            if len(ahead) == spec.horizon:
                values = scaler.transform(np.asarray(output.record.values, np.float32))
                served, forecasts = served + float(((values - ahead) ** 2).mean()), forecasts + 1
    actions = [e["action"] for v in service.lineage_body()["versions"] for e in v["history"]]
    name = "none" if config.candidate_every == NEVER else f"{config.candidate_every}/{config.gate_windows}"
    return (
        f"gate {name:>8}  {len(online) / elapsed:7.1f} obs/s  gate {gate_time[0] / elapsed:5.1%} of process  "
        f"progressive MSE {progressive / trained:.4f}  served MSE {served / forecasts:.4f}  "
        f"promoted {actions.count('promoted')} rejected {actions.count('rejected')}  | {load_avg()}"
    )


def gate_config(text: str) -> PromotionConfig:
    """``EVERY/WINDOWS`` or ``none``."""
    if text == "none":
        return PromotionConfig(candidate_every=NEVER)
    every, _, windows = text.partition("/")
    return PromotionConfig(candidate_every=int(every), gate_windows=int(windows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gates",
        type=gate_config,
        nargs="+",
        default=[gate_config(g) for g in ("none", "512/64", "256/32", "128/32")],
    )
    parser.add_argument("--rows", type=int, default=1536, help="online rows")
    parser.add_argument("--batch", type=int, default=1, help="observations per micro-batch")
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=1, help="warm-up epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ForecasterSpec(kind="onenet", seq_len=SEQ_LEN, horizon=args.horizon, channels=7, marks=4)
    series = load_etth2()
    windows, scaler = ett_windows(series, SEQ_LEN, args.horizon)
    learner = warm_up(spec, windows, args.epochs)
    times, first, lead = etth2_times(), ETT_SPLIT[1], SEQ_LEN + args.horizon - 1

    def observations(rows: range) -> list[Observation]:
        return [
            Observation(series="etth2", ts=float(times[r]), values=series.values[r].tolist()) for r in rows
        ]

    rows = (observations(range(first - lead, first)), observations(range(first, first + args.rows)))
    truth = scaler.transform(series.values[first:])
    print(f"{args.rows} rows from {first}, batch {args.batch}, H={args.horizon} | {load_avg()}", flush=True)
    for config in args.gates:
        torch.manual_seed(0)
        print(run_gate(spec, learner, scaler, rows, truth, config, args.batch), flush=True)


if __name__ == "__main__":
    main()
