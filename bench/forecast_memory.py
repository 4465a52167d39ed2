"""Memory per series held by the forecast service's streaming state, at 1k and 10k series.

Fills every series' rolling window with ``seq_len + horizon - 1`` synthetic rows (the append the
service itself uses), then streams one more observation per series through ``ForecastService.process``
in micro-batches of ``--batch`` records, as the worker would: each series then has a full window,
has learned one training pair, holds a forecast in the table and its OneNet short-term bias.
Measured with tracemalloc (Python and numpy allocations still alive after gc); model weights are
shared by all series and not counted. The last round also gives the in-process throughput of
``process`` when every event both trains and forecasts. One torch thread.

    .venv/bin/python bench/forecast_memory.py            # 1k and 10k series, ~2-4 min
    .venv/bin/python bench/forecast_memory.py --series 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from forecasters.data import REPO_ROOT
from forecasters.service import ForecastService
from forecasters.zoo import BUILDERS, ForecasterSpec
from streams.schemas import Observation
from streams.topics import topic_name


def measure(spec: ForecasterSpec, series: int, batch: int) -> dict[str, float]:
    service = ForecastService(spec, batch_size=batch)
    rng = np.random.default_rng(0)
    ids = [f"series-{i:06d}" for i in range(series)]
    rows = spec.seq_len + spec.horizon
    gc.collect()
    tracemalloc.start()
    for row in range(rows - 1):
        values = rng.standard_normal((series, spec.channels)).astype(np.float32)
        for s, v in zip(ids, values, strict=True):
            service.windows.append(s, row * 3600.0, v)
    values = rng.standard_normal((series, spec.channels)).astype(np.float32).tolist()
    records = [Observation(series=s, ts=rows * 3600.0, values=v) for s, v in zip(ids, values, strict=True)]
    started = time.perf_counter()
    for lo in range(0, series, batch):
        result = service.process(topic_name("observations"), records[lo : lo + batch])
        assert not result.rejected and result.metrics["trained_windows"] == len(result.outputs)
    elapsed = time.perf_counter() - started
    del records, result
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    windows = sum(w.values.nbytes + w.times.nbytes for w in map(service.windows.get, ids) if w is not None)
    table = sum(e.values.nbytes for e in service.table.values())
    bias = sum(b.nbytes for b in getattr(service.learner, "last_bias", {}).values())
    return {
        "series": series,
        "traced_bytes_per_series": traced / series,
        "window_array_bytes": windows / series,
        "forecast_array_bytes": table / series,
        "bias_array_bytes": bias / series,
        "events_per_s": series / elapsed,
        "tables": len(service.table),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--kind", default="onenet", choices=list(BUILDERS))
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--channels", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1000, help="records per process() call")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "var" / "bench" / "forecast_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ForecasterSpec(args.kind, args.seq_len, args.horizon, args.channels, marks=4)
    rows = [measure(spec, n, args.batch) for n in args.series]
    print(
        f"Streaming state per series: {spec.kind}, {spec.channels} channels, "
        f"window {spec.seq_len}+{spec.horizon} rows, float32; one torch thread.\n"
    )
    print(
        f"{'series':>8}{'traced B/series':>17}{'window B':>10}{'forecast B':>12}{'bias B':>8}{'events/s':>10}"
    )
    for r in rows:
        print(
            f"{r['series']:>8}{r['traced_bytes_per_series']:>17.0f}"
            f"{r['window_array_bytes']:>10.0f}{r['forecast_array_bytes']:>12.0f}{r['bias_array_bytes']:>8.0f}"
            f"{r['events_per_s']:>10.0f}"
        )
    print(
        "\ntraced = every byte still allocated (arrays, dicts, objects); window/forecast/bias = raw array "
        "payloads; events/s = process() with learn + forecast per event, batches of --batch records."
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
