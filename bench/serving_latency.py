"""Query latency with training beside it: one process versus a pinned trainer plus a serving replica.

Open-loop load (``bench.loadgen.open_loop``: fixed schedule, latency from the scheduled time). The
process answering queries runs on cpu 1; the broker and the feeder run on cpu 0 (with the trainer,
when it is a separate process); the generator may use both:

  (a) today: ``driftline worker --services ctr`` (``taskset -c 1``) answers ``POST /ctr/score``
      (100 candidates) itself, idle and while it trains flat out on MovieLens-100K impressions;
  (b) the split: the trainer (``taskset -c 0``) fed flat out, and ``driftline serve --services ctr``
      (``taskset -c 1``) following its model updates and answering the same query.
  forecast: ``GET /forecast/{series}`` while the forecast worker trains on ETTh2 flat out, (a) on
      the worker itself and (b) on ``driftline serve --services forecast`` (``taskset -c 1``)
      following the ``forecasts`` topic, with the worker on ``taskset -c 0``.

Idle rows run at ``--idle-rate`` (light load: the p50 a lone user sees) and at the target rate.
Targets (issue 10 item 7): /ctr/score p50 idle < 3 ms and p99 at 200 req/s while training < 15 ms;
/forecast p99 at 1,000 req/s while training < 5 ms.

Usage: flock /tmp/driftline-bench.lock python bench/serving_latency.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Worker, load, scrape, start_role, total, wait_ready
from bench.loadgen import HEADER, LoadReport, open_loop
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


@contextlib.contextmanager
def on_cpu0() -> Iterator[None]:
    """Processes started in the block run on cpu 0 with the trainer, leaving cpu 1 to the process
    that answers queries. The generator itself stays unpinned: pinned beside a flat-out trainer it
    sent requests up to 2.8 s late (measured)."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)


class Feeder:
    """Produces records to a topic: a first batch now, then flat out from a child process until stopped.

    Flat out, the producer is pure Python busy with the GIL: in the load generator's process it
    starved the generator's event loop (requests sent seconds late), so it runs in its own process.
    """

    def __init__(self, bootstrap: str, prefix: str, topic: str, records: Iterator[Record]) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, prefix + topic, records
        context = multiprocessing.get_context("fork")  # the child goes on where send() stopped
        self.stopping = context.Event()
        self.process = context.Process(target=self._send, args=(None,), daemon=True)

    def _send(self, count: int | None) -> None:
        from streams.producer import key_of

        producer = make_producer(self.bootstrap)
        try:
            for record in itertools.islice(self.records, count):
                if self.stopping.is_set():
                    break
                key = key_of(record)
                producer.send(self.topic, value=record.to_bytes(), key=key.encode() if key else None)
            producer.flush()
        finally:
            producer.close()

    def send(self, count: int) -> None:
        """Send ``count`` records now (synchronously)."""
        self._send(count)

    def start(self) -> None:
        """Feed flat out until :meth:`stop` (from cpu 0, the trainer's)."""
        with on_cpu0():
            self.process.start()

    def stop(self) -> None:
        self.stopping.set()
        self.process.join()


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)


def applied(role: Worker, service: str) -> float:
    return total(scrape(role.base), "driftline_events_total", service=service)


def measure(label: str, trainer: Worker, service: str, run: Callable[[], LoadReport]) -> tuple[str, str]:
    """Run one load, with the trainer's applied events/s over it and the load average after it."""
    before, started = applied(trainer, service), time.perf_counter()
    report = run()
    rate = (applied(trainer, service) - before) / (time.perf_counter() - started)
    return report.row(label), f"trainer applied {rate:,.0f} ev/s; {load()}"


@dataclass(frozen=True)
class Case:
    """One service measured: what feeds its trainer, what a query is, and the rate targets."""

    service: str
    topic: str
    records: Callable[[], Iterator[Record]]
    first: int  # records trained before measuring (a first version or forecast to serve)
    method: str
    path: str
    body: Any
    rate: float  # the target's rate
    options: tuple[str, ...] = ()


def ctr_query() -> dict[str, Any]:
    """100 MovieLens candidates, as a caller would send them."""
    from models.ctr.movielens import iter_impressions

    rows = itertools.islice(iter_impressions(), 100)
    return {"candidates": [{"categorical": dict(r.categorical), "dense": dict(r.dense)} for r in rows]}


def run_case(
    case: Case, bootstrap: str, home: Path, seconds: float, idle_rate: float, split: bool
) -> list[tuple[str, str]]:
    """Idle and training rows on the worker itself (one process) or on a replica beside it."""
    prefix = f"lat{case.service[0]}{int(time.time() * 1000) % 10**8}."
    store = {"DRIFTLINE_CHECKPOINT_STORE": str(home / prefix / "store")}
    roles = [start_role("worker", case.service, home / prefix / "trainer", bootstrap, prefix, case.options,
                        "0" if split else "1", store)]  # fmt: skip
    if split:
        roles.append(start_role("serve", case.service, home / prefix / "replica", bootstrap, prefix,
                                case.options, "1", store))  # fmt: skip
    trainer, server = roles[0], roles[-1]
    name = f"{case.service} " + (
        "split: replica (cpu 1), trainer (cpu 0)" if split else "one process: worker"
    )
    url = f"{server.base}{case.path}"
    rows = []
    try:
        wait_ready(trainer)
        feeder = Feeder(bootstrap, trainer.env["DRIFTLINE_TOPIC_PREFIX"], case.topic, case.records())
        feeder.send(case.first)
        wait_ready(server)
        wait(lambda: applied(trainer, case.service) >= case.first, 180, "the first records trained")
        if case.method == "GET":
            wait(lambda: get_json(url)[0] == 200, 180, "a first answer")

        def at(rate: float) -> Callable[[], LoadReport]:
            return lambda: open_loop(case.method, url, case.body, rate, seconds)

        rows.append(measure(f"{name}, idle, {idle_rate:g}/s", trainer, case.service, at(idle_rate)))
        rows.append(measure(f"{name}, idle, {case.rate:g}/s", trainer, case.service, at(case.rate)))
        feeder.start()
        time.sleep(3)  # training under way
        rows.append(measure(f"{name}, training, {case.rate:g}/s", trainer, case.service, at(case.rate)))
        feeder.stop()
        _, health = get_json(f"{server.base}/health")
        version = health["services"][case.service]["model_version"]
        rows.append((f"  ({name}: model v{version} at the end)", ""))
    finally:
        for role in reversed(roles):
            role.stop()
    return rows


#: The figures before the serving work (docs/streams.md, commit 80309be; same bench, same machine).
BEFORE = [
    "ctr one process, idle, 20/s: p50 13.2 ms, p99 20.8 ms",
    "ctr split (replica cpu 1, trainer cpu 0), idle, 20/s: p50 12.3 ms, p99 22.4 ms",
    "ctr split, idle, 200/s: saturated at 131 req/s, p50 2,594 ms",
    "ctr split, training, 200/s: 86 req/s, p99 12,025 ms",
    "forecast worker, training, 1000/s: 214 req/s, p99 30,390 ms (no replica existed)",
]


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
        with on_cpu0():  # the broker inherits it; the generator keeps both cores
            broker.start()
        try:
            cases = [
                Case("ctr", "impressions", impressions, 5000, "POST", "/ctr/score", ctr_query(), 200,
                     (f"ctr.swap_interval_s={args.swap_interval_s}",)),
                Case("forecast", "observations", observations, 2000, "GET", "/forecast/ETTh2-p0", None, 1000),
            ]  # fmt: skip
            for case in cases:
                if case.service not in skip:
                    for split in (False, True):
                        rows += run_case(
                            case, broker.bootstrap, Path(tmp), args.seconds, args.idle_rate, split
                        )
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
    print("before:\n" + "\n".join(f"  {line}" for line in BEFORE))


if __name__ == "__main__":
    main()
