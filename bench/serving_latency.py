"""Query latency with training beside it: one process versus a pinned trainer plus a serving replica.

Open-loop load (``bench.loadgen.open_loop``: fixed schedule, latency from the scheduled time):

  (a) today: ``driftline worker --services ctr`` answers ``POST /ctr/score`` (100 candidates)
      itself, idle and while it trains flat out on MovieLens-100K impressions;
  (b) the split: the trainer (``taskset -c 0``) fed flat out, and ``driftline serve --services ctr``
      (``taskset -c 1``) following its model updates and answering the same query.
  forecast: ``GET /forecast/{series}`` on the forecast worker while it trains on ETTh2 flat out
      (forecast has no serving replica, so this is always measured on the worker).

Idle rows run at ``--idle-rate`` (light load: the p50 a lone user sees) and at the target rate.
Targets (issue 10 item 7): /ctr/score p50 idle < 3 ms and p99 at 200 req/s while training < 15 ms;
/forecast p99 at 1,000 req/s while training < 5 ms.

Usage: flock /tmp/driftline-bench.lock python bench/serving_latency.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import HEADER, LoadReport, open_loop
from bench.procs import Role, loadavg, scrape, start_role, total, wait_ready
from streams.broker import EmbeddedBroker
from streams.client import get_json
from streams.config import Settings, shared_data_dir
from streams.producer import make_producer, observations_from_csv
from streams.schemas import Observation, Record


def impressions() -> Iterator[Record]:
    """MovieLens-100K impressions, pass after pass (CTR training takes any order)."""
    from models.ctr.movielens import iter_impressions

    data = list(iter_impressions())
    return itertools.chain.from_iterable(itertools.repeat(data))


def observations() -> Iterator[Record]:
    """ETTh2, each pass as a new series ``ETTh2-p<n>`` (a series' ts must increase)."""
    frame = list(observations_from_csv(shared_data_dir() / "timeseries" / "ETTh2.csv", "ETTh2"))
    for n in itertools.count():
        for o in frame:
            yield Observation(series=f"ETTh2-p{n}", ts=o.ts, values=o.values)


class Feeder:
    """Produces records to a topic: a first batch now, then flat out until stopped."""

    def __init__(self, bootstrap: str, prefix: str, topic: str, records: Iterator[Record]) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, prefix + topic, records
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send, args=(None,), daemon=True)

    def _send(self, count: int | None) -> None:
        from streams.producer import key_of

        producer = make_producer(self.bootstrap)
        try:
            for record in itertools.islice(self.records, count):
                if self.stop.is_set():
                    break
                key = key_of(record)
                producer.send(self.topic, value=record.to_bytes(), key=key.encode() if key else None)
            producer.flush()
        finally:
            producer.close()

    def send(self, count: int) -> None:
        """Send ``count`` records now (synchronously)."""
        self._send(count)


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)


def applied(role: Role, service: str) -> float:
    return total(scrape(role.base), "driftline_events_total", service=service)


def measure(label: str, trainer: Role, service: str, run: Callable[[], LoadReport]) -> tuple[str, str]:
    """Run one load, with the trainer's applied events/s over it and the load average after it."""
    before, started = applied(trainer, service), time.perf_counter()
    report = run()
    rate = (applied(trainer, service) - before) / (time.perf_counter() - started)
    return report.row(label), f"trainer applied {rate:,.0f} ev/s; {loadavg()}"


def ctr_case(
    bootstrap: str, home: Path, seconds: float, idle_rate: float, swap_s: float, split: bool
) -> list[tuple[str, str]]:
    """/ctr/score idle and while the trainer trains flat out, on the worker itself or on a replica."""
    from models.ctr.movielens import iter_impressions

    body = {
        "candidates": [
            {"categorical": dict(r.categorical), "dense": dict(r.dense)}
            for r in itertools.islice(iter_impressions(), 100)
        ]
    }
    options = [f"ctr.swap_interval_s={swap_s}"]
    prefix = f"lat{int(time.time() * 1000) % 10**8}."
    store = {"DRIFTLINE_CHECKPOINT_STORE": str(home / prefix / "store")}
    trainer = start_role(
        "worker", "ctr", home / prefix / "trainer", bootstrap, prefix, options, "0" if split else None, store
    )
    replica = (
        start_role("serve", "ctr", home / prefix / "replica", bootstrap, prefix, options, "1", store)
        if split
        else None
    )
    server = replica or trainer
    name = "split: replica (cpu 1), trainer (cpu 0)" if split else "one process: worker"
    url = f"{server.base}/ctr/score"
    rows = []
    try:
        wait_ready(trainer)
        feeder = Feeder(bootstrap, prefix, "impressions", impressions())
        feeder.send(5000)  # a first version to serve
        wait_ready(server)
        wait(lambda: applied(trainer, "ctr") >= 5000, 120, "the first impressions trained")

        def at(rate: float) -> Callable[[], LoadReport]:
            return lambda: open_loop("POST", url, body, rate, seconds)

        rows.append(measure(f"ctr {name}, idle, {idle_rate:g}/s", trainer, "ctr", at(idle_rate)))
        rows.append(measure(f"ctr {name}, idle, 200/s", trainer, "ctr", at(200)))
        feeder.thread.start()
        time.sleep(3)  # training under way
        rows.append(measure(f"ctr {name}, training, 200/s", trainer, "ctr", at(200)))
        feeder.stop.set()
        feeder.thread.join()
        _, versions = get_json(f"{server.base}/ctr/versions")
        rows.append((f"  ({name}: serving v{versions['serving']} at the end)", ""))
    finally:
        for role in (replica, trainer):
            if role is not None:
                role.stop()
    return rows


def forecast_cases(bootstrap: str, home: Path, seconds: float, idle_rate: float) -> list[tuple[str, str]]:
    prefix = f"latf{int(time.time() * 1000) % 10**8}."
    worker = start_role("worker", "forecast", home / prefix, bootstrap, prefix)
    rows = []
    try:
        wait_ready(worker)
        feeder = Feeder(bootstrap, prefix, "observations", observations())
        feeder.send(2000)
        url = f"{worker.base}/forecast/ETTh2-p0"
        wait(lambda: get_json(url)[0] == 200, 180, "a first forecast")

        def at(rate: float) -> Callable[[], LoadReport]:
            return lambda: open_loop("GET", url, None, rate, seconds)

        name = "forecast worker (no replica)"
        rows.append(measure(f"{name}, idle, {idle_rate:g}/s", worker, "forecast", at(idle_rate)))
        rows.append(measure(f"{name}, idle, 1000/s", worker, "forecast", at(1000)))
        feeder.thread.start()
        time.sleep(3)
        rows.append(measure(f"{name}, training, 1000/s", worker, "forecast", at(1000)))
        feeder.stop.set()
        feeder.thread.join()
    finally:
        worker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each open-loop run")
    parser.add_argument("--idle-rate", type=float, default=20.0, help="req/s of the light idle row (p50)")
    parser.add_argument(
        "--swap-interval-s", type=float, default=5.0, help="the trainer's ctr.swap_interval_s"
    )
    parser.add_argument("--skip", default="", help="comma-separated: ctr, forecast")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        broker.start()
        try:
            if "ctr" not in skip:
                for split in (False, True):
                    rows += ctr_case(
                        broker.bootstrap, Path(tmp), args.seconds, args.idle_rate, args.swap_interval_s, split
                    )
            if "forecast" not in skip:
                rows += forecast_cases(broker.bootstrap, Path(tmp), args.seconds, args.idle_rate)
        finally:
            broker.stop()
    print(
        f"Serving latency, open loop ({args.seconds:.0f} s per row, latency from the scheduled send), "
        f"CPU only, ctr.swap_interval_s={args.swap_interval_s}; training rows: topic fed flat out"
    )
    print(HEADER + "  context")
    for row, context in rows:
        print(f"{row}  {context}")
    print("targets: ctr p50 idle < 3 ms; ctr p99 training 200/s < 15 ms; forecast p99 training 1000/s < 5 ms")


if __name__ == "__main__":
    main()
