"""In-process service figures: ``process`` throughput and forecast-query latency under load.

A writer thread plays the worker: it streams synthetic observations for ``--series`` series through
``ForecastService.process`` (micro-batches of ``--batch`` records, holding ``service.lock`` as the
worker does), so every batch runs one test-then-train pass and one forecast pass. Meanwhile the main
thread keeps querying ``GET /forecast/{series}`` (the route handler, no HTTP) for random series and
records each latency. No Kafka here: end-to-end events/s through Kafka needs the worker. One torch thread.

    .venv/bin/python bench/forecast_service.py              # 1,000 series, ~1-2 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from forecasters.data import REPO_ROOT
from forecasters.service import ForecastService
from forecasters.zoo import BUILDERS, ForecasterSpec
from streams.schemas import Observation
from streams.service import ApiError, ApiRequest
from streams.topics import topic_name


def stream(service: ForecastService, ids: list[str], rows: int, batch: int, done: threading.Event) -> float:
    """Feed ``rows`` observations per series, row by row; return events/s over the rows that train."""
    rng = np.random.default_rng(0)
    topic = topic_name("observations")
    spec = service.spec
    started, trained_events = 0.0, 0
    for row in range(rows):
        if row == spec.seq_len + spec.horizon - 1:
            started = time.perf_counter()
        values = rng.standard_normal((len(ids), spec.channels)).astype(np.float32).tolist()
        records = [Observation(series=s, ts=row * 3600.0, values=v) for s, v in zip(ids, values, strict=True)]
        for lo in range(0, len(records), batch):
            with service.lock:
                service.process(topic, records[lo : lo + batch])
        if started:
            trained_events += len(records)
    done.set()
    return trained_events / (time.perf_counter() - started)


async def query(service: ForecastService, ids: list[str], done: threading.Event) -> tuple[list[float], int]:
    """Query random series until the writer finishes; latencies (s) of answered queries and 404 count."""
    rng = np.random.default_rng(1)
    latencies, missing = [], 0
    (route,) = service.routes()  # GET /forecast/{series}
    while not done.is_set():
        request = ApiRequest("GET", {"series": ids[rng.integers(len(ids))]}, {"horizon": "24"})
        started = time.perf_counter()
        try:
            await route.handler(request)
            latencies.append(time.perf_counter() - started)
        except ApiError:
            missing += 1
        await asyncio.sleep(0.001)  # a steady ~1k queries/s stream, not a busy loop
    return latencies, missing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--kind", default="onenet", choices=list(BUILDERS))
    parser.add_argument("--extra-rows", type=int, default=10, help="rows streamed after windows are full")
    parser.add_argument("--batch", type=int, default=500, help="records per process() call")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "var" / "bench" / "forecast_service.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ForecasterSpec(args.kind, seq_len=60, horizon=24, channels=7, marks=4)
    service = ForecastService(spec, batch_size=args.batch)
    ids = [f"series-{i:05d}" for i in range(args.series)]
    done = threading.Event()
    result: dict[str, float] = {}
    rows = spec.seq_len + spec.horizon - 1 + args.extra_rows
    writer = threading.Thread(
        target=lambda: result.update(events_per_s=stream(service, ids, rows, args.batch, done))
    )
    writer.start()
    latencies, missing = asyncio.run(query(service, ids, done))
    writer.join()
    ms = np.array(latencies) * 1e3
    row = {
        "series": args.series, "kind": spec.kind, "batch": args.batch, "events_per_s": result["events_per_s"],
        "queries": len(ms), "not_ready_404": missing, "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
    }  # fmt: skip
    print(f"ForecastService in process, {spec.kind}, {args.series} series x 7 channels, look-back 60, "
          f"horizon 24, "
          f"micro-batches of {args.batch}; one torch thread; no Kafka.\n")  # fmt: skip
    print(
        f"{'series':>8}{'events/s (learn+forecast)':>27}{'queries':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    print(f"{row['series']:>8}{row['events_per_s']:>27.0f}{row['queries']:>9}{row['p50_ms']:>9.3f}"
          f"{row['p99_ms']:>9.3f}{row['max_ms']:>9.2f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
