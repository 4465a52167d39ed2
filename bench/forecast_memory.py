"""Memory per series held by the forecast service's streaming state, at 1k and 10k series.

Streams ``seq_len + horizon`` synthetic observations per series through ``ForecastService.process``
(micro-batches of ``--batch`` records, as the worker would), so every series ends with a full rolling
window, one training pair learned, a forecast in the table and its OneNet short-term bias. Measured
with tracemalloc (Python and numpy allocations that stay alive) and as an RSS delta; model weights
are shared by all series and not counted. One torch thread.

    .venv/bin/python bench/forecast_memory.py            # 1k and 10k series, ~2-4 min
    .venv/bin/python bench/forecast_memory.py --series 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
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


def rss_mib() -> float:
    """Current resident set size from /proc (peak from getrusage is useless for deltas)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(spec: ForecasterSpec, series: int, batch: int) -> dict[str, float]:
    service = ForecastService(spec, batch_size=batch)
    rng = np.random.default_rng(0)
    ids = [f"series-{i:06d}" for i in range(series)]
    gc.collect()
    rss_before = rss_mib()
    tracemalloc.start()
    started = time.perf_counter()
    topic = topic_name("observations")
    for row in range(spec.seq_len + spec.horizon):
        values = rng.standard_normal((series, spec.channels)).astype(np.float32).tolist()
        records = [Observation(series=s, ts=row * 3600.0, values=v) for s, v in zip(ids, values, strict=True)]
        for lo in range(0, series, batch):
            result = service.process(topic, records[lo : lo + batch])
            assert not result.rejected
        del records, result
    elapsed = time.perf_counter() - started
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    windows = sum(w.values.nbytes + w.times.nbytes for w in map(service.windows.get, ids) if w is not None)
    table = sum(e.values.nbytes for e in service.table.values())
    bias = sum(b.nbytes for b in getattr(service.learner, "last_bias", {}).values())
    return {
        "series": series,
        "traced_bytes_per_series": traced / series,
        "rss_kib_per_series": (rss_mib() - rss_before) * 1024 / series,
        "window_array_bytes": windows / series,
        "forecast_array_bytes": table / series,
        "bias_array_bytes": bias / series,
        "events_per_s": series * (spec.seq_len + spec.horizon) / elapsed,
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
        f"Streaming state per series: {spec.kind}, {spec.channels} channels, window {spec.seq_len}+{spec.horizon} "
        f"rows, float32; one torch thread.\n"
    )
    print(
        f"{'series':>8}{'traced B/series':>17}{'RSS KiB/series':>16}{'window B':>10}{'forecast B':>12}"
        f"{'bias B':>8}{'events/s':>10}"
    )
    for r in rows:
        print(
            f"{r['series']:>8}{r['traced_bytes_per_series']:>17.0f}{r['rss_kib_per_series']:>16.2f}"
            f"{r['window_array_bytes']:>10.0f}{r['forecast_array_bytes']:>12.0f}{r['bias_array_bytes']:>8.0f}"
            f"{r['events_per_s']:>10.0f}"
        )
    print(
        "\ntraced = every byte still allocated (arrays, dicts, objects); window/forecast/bias = raw array payloads."
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
