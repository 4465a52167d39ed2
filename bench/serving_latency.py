"""Query latency with training beside it: one process versus a pinned trainer plus a serving replica.

Open-loop load (``bench.loadgen.open_loop``: fixed schedule, latency from the scheduled time). The
process answering queries runs on cpu 1; the broker runs on cpu 0 (with the trainer, when it is a
separate process); the generator and the feeder, in this process, may use both. Before a training
row the feeder sends a backlog (:attr:`Case.backlog`) that the trainer drains flat out during it:

  (a) today: ``driftline worker --services ctr`` (``taskset -c 1``) answers ``POST /ctr/score``
      (100 candidates) itself, idle and while it trains flat out on MovieLens-100K impressions;
  (b) the split: the trainer (``taskset -c 0``) training flat out, and ``driftline serve --services ctr``
      (``taskset -c 1``) following its model updates and answering the same query.
  forecast: ``GET /forecast/{series}`` while the forecast worker trains on ETTh2 flat out, (a) on
      the worker itself and (b) on ``driftline serve --services forecast`` (``taskset -c 1``)
      following the ``forecasts`` topic, with the worker on ``taskset -c 0``.

Idle rows run at ``--idle-rate`` (light load: the p50 a lone user sees) and at the target rate.
Targets (issue 10 item 7): /ctr/score p50 idle < 3 ms and p99 at 200 req/s while training < 15 ms;
/forecast p99 at 1,000 req/s while training < 5 ms.

``--before REV`` measures the split twice in the same run, beside the same trainer: first a replica
whose request path (:data:`REQUEST_PATH`) is REV's (the rest of the code is HEAD's, from ``git
archive``), then one from the working tree, so that before and after share the machine's load.

Usage: flock /tmp/driftline-bench.lock python bench/serving_latency.py [--seconds 15] [--before REV]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Worker, exported, load, scrape, start_role, total, wait_ready
from bench.loadgen import HEADER, LoadReport, open_loop
from streams.broker import EmbeddedBroker
from streams.client import get_json
from streams.config import Settings, shared_data_dir
from streams.producer import key_of, make_producer, observations_from_csv
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
    """Produces a service's records to its topic from this process, each call going on where the
    last one stopped (a forecast series' timestamps must increase).

    A training row gets its backlog sent before it starts (:attr:`Case.backlog`), and the trainer
    drains it flat out during the row. A feeder producing flat out during the row instead, pinned
    to cpu 0 with the trainer and the broker, left the trainer 0-72 events/s (measured: the
    producer and the broker's threads took that core), so those rows measured no training. The
    trainer is stopped while its backlog is sent (:func:`backlog_waiting`): a running ctr trainer
    drained 100,000 impressions at 5-7k/s, faster than this process sends them, and had nothing
    left for its row (105 events/s in it, measured).
    """

    def __init__(self, bootstrap: str, prefix: str, topic: str, records: Iterator[Record]) -> None:
        self.producer = make_producer(bootstrap)
        self.topic, self.records = prefix + topic, records

    def send(self, count: int) -> None:
        """Send the next ``count`` records and wait until the broker has them."""
        for record in itertools.islice(self.records, count):
            key = key_of(record)
            self.producer.send(self.topic, value=record.to_bytes(), key=key.encode() if key else None)
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)


def applied(role: Worker, service: str) -> float:
    """Events the role has applied; NaN while its ``/metrics`` does not answer (a trainer fed flat
    out beside 1,000 queries/s once took over 30 s), so that one slow scrape cannot lose the run."""
    try:
        return total(scrape(role.base), "driftline_events_total", service=service)
    except OSError:
        return math.nan


def settled(trainer: Worker, service: str, timeout_s: float = 60.0) -> None:
    """Wait until the trainer has worked off what the feeder sent (1 s without a new event), so an
    idle row after a training row is idle."""
    deadline, last = time.monotonic() + timeout_s, -1.0
    while (now := applied(trainer, service)) != last and time.monotonic() < deadline:
        last = now
        time.sleep(1.0)


def measure(label: str, trainer: Worker, service: str, run: Callable[[], LoadReport]) -> tuple[str, str]:
    """Run one load, with the trainer's applied events/s over it and the load average after it."""
    before, started = applied(trainer, service), time.perf_counter()
    report = run()
    rate = (applied(trainer, service) - before) / (time.perf_counter() - started)
    row = report.row(label), f"trainer applied {rate:,.0f} ev/s; {load()}"
    print("measured:", *row, flush=True)  # a run that fails later keeps what it measured
    return row


@dataclass(frozen=True)
class Case:
    """One service measured: what feeds its trainer, what a query is, and the rate targets."""

    service: str
    topic: str
    records: Callable[[], Iterator[Record]]
    first: int  # records trained before measuring (a first version or forecast to serve)
    backlog: int  # records sent before a training row: more than the trainer drains in the row
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


#: The replica's request path (the files ``--before`` takes from an older commit). The role that
#: hosts it (``roles/serving.py``: following topics, GIL switch interval) is HEAD's in both: its
#: follower was rewritten after f27bdb8, whose version no longer starts beside HEAD's other modules.
REQUEST_PATH = (
    "streams/http.py", "streams/limits.py", "models/ctr/routes.py", "models/ctr/serving.py",
    "models/ctr/layers.py", "forecasters/routes.py", "forecasters/serving.py",
    "roles/worker.py",  # the event loop (uvloop since d6b76fa)
)  # fmt: skip


def tree_with_request_path_of(rev: str, into: Path) -> Path:
    """HEAD's code with :data:`REQUEST_PATH` as of ``rev``, written to ``into``."""
    exported("HEAD", into)
    for path in REQUEST_PATH:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True)
        (into / path).write_bytes(shown.stdout)
    return into


@dataclass(frozen=True)
class Variant:
    """A replica's code: the working tree's, or a tree that ``python -m`` imports instead."""

    label: str
    tree: Path | None = None

    def env(self) -> dict[str, str]:
        # -P: the working directory (the repository) is not put before PYTHONPATH on sys.path
        return {} if self.tree is None else {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(self.tree)}


def run_case(
    case: Case, bootstrap: str, home: Path, seconds: float, idle_rate: float, replicas: list[Variant]
) -> list[tuple[str, str]]:
    """Idle and training rows on the worker itself (no ``replicas``) or on each replica in turn,
    each started beside the same trainer and stopped before the next starts."""
    prefix = f"lat{case.service[0]}{int(time.time() * 1000) % 10**8}."
    store = {"DRIFTLINE_CHECKPOINT_STORE": str(home / prefix / "store")}
    trainer = start_role("worker", case.service, home / prefix / "trainer", bootstrap, prefix, case.options,
                         "0" if replicas else "1", store)  # fmt: skip
    rows = []
    feeder = None
    try:
        wait_ready(trainer)
        feeder = Feeder(bootstrap, trainer.env["DRIFTLINE_TOPIC_PREFIX"], case.topic, case.records())
        feeder.send(case.first)
        wait(lambda: applied(trainer, case.service) >= case.first, 180, "the first records trained")
        if not replicas:
            rows += measure_rows(
                case, f"{case.service} one process", trainer, trainer, feeder, seconds, idle_rate
            )
        for variant in replicas:
            settled(trainer, case.service)
            server = start_role("serve", case.service, home / prefix / f"replica{variant.label}", bootstrap,
                                prefix, case.options, "1", {**store, **variant.env()})  # fmt: skip
            name = f"{case.service} replica{variant.label}"
            try:
                wait_ready(server)
                rows += measure_rows(case, name, trainer, server, feeder, seconds, idle_rate)
            finally:
                server.stop()
    finally:
        if feeder is not None:
            feeder.close()
        trainer.stop()
    return rows


def backlog_waiting(trainer: Worker, service: str, feeder: Feeder, count: int) -> None:
    """Send ``count`` records while the trainer is stopped, then start it again (the same static
    member, from its checkpoint) and return once it applies them, so the backlog waits for the
    training row. Not at ``/ready``: a restarted worker is ready only once it has caught up with
    what its topics held at start, which is this whole backlog."""
    trainer.stop()
    feeder.send(count)
    trainer.start(wait=False)
    wait(lambda: applied(trainer, service) > 0, 180, "the restarted trainer to apply its backlog")


def measure_rows(
    case: Case, name: str, trainer: Worker, server: Worker, feeder: Feeder, seconds: float, idle_rate: float
) -> list[tuple[str, str]]:
    """Idle at ``idle_rate`` and at the case's rate, then at its rate while the trainer trains flat out."""
    url = f"{server.base}{case.path}"
    if case.method == "GET":
        wait(lambda: get_json(url)[0] == 200, 180, "a first answer")

    def at(rate: float) -> Callable[[], LoadReport]:
        return lambda: open_loop(case.method, url, case.body, rate, seconds)

    rows = [
        measure(f"{name}, idle, {idle_rate:g}/s", trainer, case.service, at(idle_rate)),
        measure(f"{name}, idle, {case.rate:g}/s", trainer, case.service, at(case.rate)),
    ]
    backlog_waiting(trainer, case.service, feeder, case.backlog)
    rows.append(measure(f"{name}, training, {case.rate:g}/s", trainer, case.service, at(case.rate)))
    _, health = get_json(f"{server.base}/health")
    version = health["services"][case.service]["model_version"]
    rows.append((f"  ({name}: model v{version} at the end)", ""))
    return rows


#: The figures before the serving work (docs/streams.md, commit 80309be; same bench, same machine).
EARLIER = [
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
    parser.add_argument("--skip", default="", help="comma-separated: ctr, forecast, one-process")
    parser.add_argument(
        "--before", metavar="REV", help="also measure a replica with REV's request path (REQUEST_PATH)"
    )
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        replicas = [Variant(" after" if args.before else "")]
        if args.before:
            old = tree_with_request_path_of(args.before, Path(tmp) / "before")
            replicas.insert(0, Variant(" before", old))
        layouts = ([] if "one-process" in skip else [[]]) + [replicas]
        broker = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        with on_cpu0():  # the broker inherits it; the generator keeps both cores
            broker.start()
        try:
            cases = [
                Case("ctr", "impressions", impressions, 5000, 200_000, "POST", "/ctr/score", ctr_query(), 200,
                     (f"ctr.swap_interval_s={args.swap_interval_s}",)),
                Case("forecast", "observations", observations, 2000, 20_000, "GET", "/forecast/ETTh2-p0",
                     None, 1000),
            ]  # fmt: skip
            for case in cases:
                if case.service not in skip:
                    for layout in layouts:
                        rows += run_case(
                            case, broker.bootstrap, Path(tmp), args.seconds, args.idle_rate, layout
                        )
        finally:
            broker.stop()
    print(
        f"Serving latency, open loop ({args.seconds:.0f} s per row, latency from the scheduled send), "
        f"CPU only, ctr.swap_interval_s={args.swap_interval_s}; training rows: the trainer drains a "
        "backlog sent before the row"
    )
    print("one process: the worker (cpu 1) trains and answers; replica: a serving replica (cpu 1) beside the")
    print(
        "trainer (cpu 0)"
        + (f"; before: the request path of {args.before}, after: the working tree's" if args.before else "")
    )
    print(HEADER + "  context")
    for row, context in rows:
        print(f"{row}  {context}")
    print("targets: ctr p50 idle < 3 ms; ctr p99 training 200/s < 15 ms; forecast p99 training 1000/s < 5 ms")
    print(
        "earlier, before the first serving work (commit 80309be):\n"
        + "\n".join(f"  {line}" for line in EARLIER)
    )


if __name__ == "__main__":
    main()
