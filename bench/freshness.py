"""Freshness: how long after it is produced an event is learned, and then served, per service.

For each service (tally as the baseline, forecast, ctr) a fresh ``driftline worker`` first drains a
burst sent flat out (its max rate here: events after the first applied batch over the time from that
batch to the last, so start-up is not counted as throughput), then gets a paced stream at ``--load``
(default 50%) of that rate. Every paced event's send time (the wall clock just before
``producer.send``) is kept, and pollers record when the worker shows it:

  learned  the state that includes the event is applied: ``driftline_events_total{service}``, which
           the runner advances only after the batch's ``process`` returned (model updated) and its
           outputs were acknowledged, covers the event's position in the stream; polled from
           /metrics every ``--probe-ms`` (100 by default: at 20 ms the poller itself took a third of
           the forecast worker's rate, 26 Nov). Exact for tally and forecast (one series, so one
           partition, applied in order); for ctr (impressions keyed by id over 12 partitions) it
           assumes batches apply events in produce order, which holds while a batch takes every
           partition's records up to its fetch, i.e. while batches stay under their cap (ev/b in
           the table);
  served   tally: ``GET /tally/{series}`` counts it; forecast: a forecast of the series with
           ts >= the event's ts arrives on the ``forecasts`` topic; ctr: the version ``GET
           /ctr/versions`` says is serving has ``samples_seen`` >= its position (polled every 50 ms).

A poll's time is when its answer arrived, so each figure is an upper bound within the poll period.
The paced stream leaves in bursts every ``streams.producer.PACE_TICK_S`` (as ``driftline run``'s
replays do), each event stamped when it is handed to the producer.
CTR serves a new version every ``swap_interval_s`` (a publish interval): its served figures only
count events sent at least an interval + 5 s before the stream stops (later ones wait for a swap
that only the next batch triggers). Targets (issue 9): learned < 1 s, served < interval + 1 s.
Each row prints the load average when the paced stream starts and when it ends.

The worker gets ``--threads`` torch threads (``OMP_NUM_THREADS``), 1 by default: what ``driftline run``
gives each of its three workers on 2 cores. ``--threads 0`` leaves torch's default (one per core),
which the rows before 26 Nov 16:00 ran with: on 2 shared cores its second thread spins against
the broker, the producer and other work (in process at load 11, a forecast batch of 50 took 1.6 s of
CPU with 2 threads against 0.12 s with 1).

Usage: flock /tmp/driftline-bench.lock python bench/freshness.py [--services tally,forecast,ctr]
       [--option ctr.batch_window_s=0.2 ...] [--load 0.5] [--seconds 30] [--threads 1] [--probe-ms 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, KafkaProducer

from bench.common import Worker as Role
from bench.common import load as loadavg
from bench.common import scrape, start_role, total, wait_ready
from bench.machine import cpu_seconds
from streams.broker import EmbeddedBroker
from streams.client import get_json
from streams.config import Settings, shared_data_dir
from streams.producer import key_of, make_producer, observations_from_csv, paced
from streams.schemas import Observation, Record


class Poller:
    """Calls ``probe`` every ``period_s`` in a thread, keeping (answer time, value) pairs."""

    def __init__(self, probe: Callable[[], float | None], period_s: float) -> None:
        self.probe, self.period_s = probe, period_s
        self.times: list[float] = []
        self.values: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            try:
                value = self.probe()
            except (OSError, ValueError, KeyError):
                continue
            if value is not None:
                self.times.append(time.time())
                self.values.append(value)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def delays(self, sent: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return first_reached(np.array(self.times), np.array(self.values), sent, targets)


def first_reached(times: np.ndarray, values: np.ndarray, sent: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per event: the first answer at or after its send whose value (so far) reaches its target,
    minus the send, in seconds; NaN where no answer did."""
    reached = np.maximum.accumulate(values) if len(values) else np.zeros(0)
    first = np.maximum(np.searchsorted(reached, targets, "left"), np.searchsorted(times, sent, "left"))
    found = first < len(times)
    out = np.full(len(sent), np.nan)
    out[found] = times[first[found]] - sent[found]
    return out


def drain_rate(times: np.ndarray, counts: np.ndarray) -> float:
    """Events/s from the first answer showing any applied event to the last: the first batch (and
    with it start-up, imports, first allocations) is left out, it is latency, not throughput."""
    first = int(np.argmax(counts > 0))
    if counts[first] <= 0 or times[-1] <= times[first]:
        raise ValueError("need two answers with applied events to tell a rate")
    return float((counts[-1] - counts[first]) / (times[-1] - times[first]))


class TopicArrivals:
    """Records when each forecast of ``series`` arrives on the forecasts topic, as (arrival, ts)."""

    def __init__(self, bootstrap: str, topic: str, series: str) -> None:
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        self.series = series
        self.poller = Poller(self._poll, 0.0)

    def _poll(self) -> float | None:
        newest = None
        for records in self.consumer.poll(timeout_ms=50).values():
            for record in records:
                body = json.loads(record.value)
                if body["series"] == self.series:
                    newest = max(newest or body["ts"], body["ts"])
        return newest

    def close(self) -> None:
        self.poller.close()
        self.consumer.close()


@dataclass
class Case:
    """A service, its records in stream order, what it is served by, and the max-rate burst size."""

    service: str
    topic: str
    records: Iterator[Record]
    burst: int
    #: Served probe for a worker: (worker, bootstrap, prefix) -> (poller-like, target of each record).
    served: Callable[[Role, str, str], tuple[Poller | TopicArrivals, Callable[[int, Record], float]]]
    #: Seconds before the end of the stream after which served figures are not counted.
    serve_wait_s: float = 0.0


def tally_case() -> Case:
    records = (Observation(series="fresh", ts=float(i), values=[1.0]) for i in itertools.count())

    def served(worker: Role, bootstrap: str, prefix: str) -> tuple[Poller, Callable[[int, Record], float]]:
        probe = Poller(lambda: float(get_json(f"{worker.base}/tally/fresh")[1]["count"]), 0.05)
        return probe, lambda position, record: position + 1

    return Case("tally", "observations", records, 20_000, served)


def forecast_case() -> Case:
    records = observations_from_csv(shared_data_dir() / "timeseries" / "ETTh2.csv", "ETTh2")

    def served(
        worker: Role, bootstrap: str, prefix: str
    ) -> tuple[TopicArrivals, Callable[[int, Record], float]]:
        arrivals = TopicArrivals(bootstrap, f"{prefix}forecasts", "ETTh2")
        return arrivals, lambda position, record: record.ts  # type: ignore[attr-defined]

    return Case("forecast", "observations", records, 3_000, served)


def ctr_case(swap_interval_s: float) -> Case:
    from models.ctr.movielens import iter_impressions

    def serving_samples(base: str) -> float | None:
        _, body = get_json(f"{base}/ctr/versions")
        versions = [v for v in body["versions"] if v["version"] == body["serving"]]
        return float(versions[0]["samples_seen"]) if versions else None

    def served(worker: Role, bootstrap: str, prefix: str) -> tuple[Poller, Callable[[int, Record], float]]:
        return Poller(lambda: serving_samples(worker.base), 0.05), lambda position, record: position + 1

    # MovieLens-100K over and over: at half a quiet worker's max rate one pass lasts under 30 s, less
    # than the paced stream (interval + 5 s longer than the others, so served figures can count)
    records = itertools.chain.from_iterable(iter_impressions() for _ in itertools.count())
    return Case("ctr", "impressions", records, 20_000, served, swap_interval_s + 5)


def applied(worker: Role, service: str) -> float:
    return total(scrape(worker.base), "driftline_events_total", service=service)


def send(producer: KafkaProducer, topic: str, records: list[Record], rate: float = 0.0) -> np.ndarray:
    """Send in order, paced to ``rate``/s (0: flat out) as ``driftline run``'s replays are
    (:func:`~streams.producer.paced`); each record's send time (epoch seconds)."""
    sent = np.zeros(len(records))
    for i, record in enumerate(paced(records, rate)):
        key = key_of(record)
        sent[i] = time.time()
        producer.send(topic, value=record.to_bytes(), key=key.encode() if key else None)
    producer.flush()
    return sent


def batch_totals(worker: Role, service: str) -> tuple[float, float]:
    """Seconds spent applying batches and how many, so far (``driftline_batch_seconds``)."""
    samples = scrape(worker.base)
    return (
        total(samples, "driftline_batch_seconds_sum", service=service),
        total(samples, "driftline_batch_seconds_count", service=service),
    )


def wait_applied(worker: Role, service: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while applied(worker, service) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service} did not apply {count} events within {timeout_s:.0f}s")
        time.sleep(0.05)


def worker_env(threads: int) -> dict[str, str]:
    """The worker's environment beyond the bench's: its torch threads, unless 0 (torch's default)."""
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}


def run_case(
    case: Case,
    bootstrap: str,
    home: Path,
    options: list[str],
    load: float,
    seconds: float,
    threads: int,
    probe_s: float,
) -> str:
    prefix = f"fresh{int(time.time() * 1000) % 10**8}."
    own = [o for o in options if o.startswith(case.service + ".")]
    env = worker_env(threads)
    worker = start_role("worker", case.service, home / prefix, bootstrap, prefix, own, env=env)
    producer = make_producer(bootstrap)
    topic = prefix + case.topic
    try:
        wait_ready(worker)
        burst = list(itertools.islice(case.records, case.burst))
        progress = Poller(lambda: applied(worker, case.service), probe_s)  # while the burst is sent too
        send(producer, topic, burst)
        wait_applied(worker, case.service, case.burst, 600)
        progress.close()
        max_rate = drain_rate(np.array(progress.times), np.array(progress.values))
        rate = max_rate * load
        paced = list(itertools.islice(case.records, int(rate * seconds)))
        batches_before = batch_totals(worker, case.service)
        learned = Poller(lambda: applied(worker, case.service), probe_s)
        served, target = case.served(worker, bootstrap, prefix)
        load_at_start = loadavg()
        assert worker.process is not None
        cpu_before, started = cpu_seconds(worker.process.pid), time.time()
        sent = send(producer, topic, paced, rate)
        wait_applied(worker, case.service, case.burst + len(paced), 120)
        busy = (cpu_seconds(worker.process.pid) - cpu_before) / (time.time() - started)
        time.sleep(3.0)  # the last forecasts and tallies reach their readers
        for poller in (learned, served):
            poller.close()
        batch_s, batches = np.subtract(batch_totals(worker, case.service), batches_before)
        positions = np.arange(case.burst, case.burst + len(paced))
        learn = learned.delays(sent, positions + 1.0)
        counted = sent <= sent[-1] - case.serve_wait_s
        targets = np.array([target(p, r) for p, r in zip(positions, paced, strict=True)])
        serve_poller = served.poller if isinstance(served, TopicArrivals) else served
        serve = serve_poller.delays(sent[counted], targets[counted])
        return (
            f"{case.service:<9}{max_rate:>9,.0f}{rate:>9,.0f}{len(paced):>8}"
            f"{_ms(learn, 50):>9}{_ms(learn, 99):>9}{int(counted.sum()):>8}"
            f"{_ms(serve, 50):>9}{_ms(serve, 99):>9}"
            f"{int(np.isnan(serve).sum()):>7}{batches:>8.0f}{len(paced) / max(batches, 1):>7.0f}"
            f"{batch_s / max(batches, 1) * 1000:>9,.0f}{busy:>6.0%}"
            f"  {load_at_start} -> {loadavg()}"
        )
    finally:
        producer.close()
        worker.stop()


def _ms(delays: np.ndarray, q: float) -> str:
    known = delays[~np.isnan(delays)]
    return f"{np.percentile(known, q) * 1000:,.0f}" if len(known) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="tally,forecast,ctr")
    parser.add_argument("--load", type=float, default=0.5, help="paced rate as a fraction of the max rate")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="paced stream length (ctr: + interval + 5)"
    )
    parser.add_argument("--option", action="append", default=[], metavar="SERVICE.KEY=VALUE")
    parser.add_argument(
        "--threads", type=int, default=1, help="the worker's torch threads (0: torch's default, one per core)"
    )
    parser.add_argument(
        "--probe-ms", type=float, default=100.0, help="how often /metrics is read for learned (ms)"
    )
    args = parser.parse_args()
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.probe_ms <= 0:
        parser.error(f"--probe-ms must be > 0, got {args.probe_ms:g}")
    swap = next(
        (float(o.split("=", 1)[1]) for o in args.option if o.startswith("ctr.swap_interval_s=")), 30.0
    )
    builders: dict[str, Callable[[], Case]] = {
        "tally": tally_case, "forecast": forecast_case, "ctr": lambda: ctr_case(swap),
    }  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker.on_free_ports(Path(tmp) / "kafka", Settings.from_env().cache)
        broker.start()
        try:
            for name in args.services.split(","):
                case = builders[name]()
                rows.append(
                    run_case(
                        case,
                        broker.bootstrap,
                        Path(tmp),
                        args.option,
                        args.load,
                        seconds=args.seconds + case.serve_wait_s,
                        threads=args.threads,
                        probe_s=args.probe_ms / 1000,
                    )
                )
        finally:
            broker.stop()
    print(
        f"Freshness at {args.load:.0%} of each service's max rate, CPU only; "
        f"options: {args.option or 'defaults'}; ctr publish interval {swap:g} s; "
        f"worker torch threads: {args.threads or 'torch default'}; learned read every {args.probe_ms:g} ms"
    )
    print(f"{'service':<9}{'max ev/s':>9}{'rate':>9}{'events':>8}{'learn50':>9}{'learn99':>9}{'counted':>8}"
          f"{'serve50':>9}{'serve99':>9}{'never':>7}{'batches':>8}{'ev/b':>7}{'batch ms':>9}{'cpu':>6}"
          "  (ms; ev/b: paced events per batch; cpu: the worker's, of one core)")  # fmt: skip
    for row in rows:
        print(row)
    print(f"targets: learned < 1,000 ms; served < interval + 1,000 ms (ctr: {swap * 1000 + 1000:,.0f} ms)")


if __name__ == "__main__":
    main()
