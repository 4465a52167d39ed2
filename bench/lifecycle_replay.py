"""The lifecycle demo replayed in process on a simulated clock: the same stream, decided alike.

``bench/lifecycle_demo.py`` against a live worker behaves differently from run to run: batch sizes,
swap times and when the demo sees a promotion depend on the machine. This replays the same stream
(MovieLens-100K; the synthetic labels of :class:`bench.lifecycle_demo.Injection`) through a CTR
service and its runner, with those timings drawn from a seed, so a run that went wrong can be
replayed and a fix checked across seeds::

    python -m bench.lifecycle_replay 1 2 3 4
    python -m bench.lifecycle_replay --option rollback_samples=3000 1 2 3 4   # swaps before two windows
    python -m bench.lifecycle_replay --scenario dashboard 1 2 3 4   # tests/streams/test_dashboard_drift.py
    python -m bench.lifecycle_replay --scenario dashboard --busy 2 2 3   # a worker behind the stream
    python -m bench.lifecycle_replay --scenario dashboard --stretch-label flip 1 2   # flips instead

Each seed prints the actions and :func:`bench.lifecycle_demo.verdicts`, times in simulated seconds.

**The dashboard scenario's stretch** must make a version unmistakably worse on a loaded machine too.
How much worse the version that learned it does on clean events grows with the training steps it
took on the stretch, and a loaded worker takes fewer (fuller batches, each slower) in one swap
interval. Flipped labels over a 5 s interval (the test's stretch until 2026-11-26) left that version
only a few percent worse under load: replayed here held back as the test is (``max_ahead``) with
``--busy 2``, seeds 1-4, 1 of 4 rolled back (the 8% margin); live, 7 of 12 test runs passed at load
1.7-17, the failures' stretch versions 0.7-2.7% worse. Every label 0 instead (a click-log outage:
each step pushes the bias and every weight the same way) rolled back 4 of 4, 8.1-11.5% worse; over
an 8 s interval, 6 of 6 at each of ``--busy`` 1, 2 and 3 (33-93%, 18-42%, 10-17% worse). Flips over
8 s at ``--busy 2``: 4 of 4, 8.5-11.5% worse. Not every label 1: 55% of MovieLens impressions are
clicked, so older versions do better on an all-clicked stretch than on clean events, the stretch's
alarm holds nothing and a clean version was rolled back in it (0 of 3 as designed, ``--busy 2``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import itertools
import math
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.lifecycle_demo import Backpressure, Injection, Timeline, held_chunk, verdicts  # noqa: E402
from streams.schemas import Impression  # noqa: E402

BATCH = 500
#: The lifecycle demo's worker options (README, "Watch it on the page"; the model's sizes as served).
DEMO_OPTIONS: dict[str, Any] = {
    "batch_size": BATCH,
    "swap_interval_s": 5,
    "rollback_samples": 1500,
    "rollback_margin": 0.08,
    "warmup_samples": 0,
    "embed_lr": 1e-2,
    "dense_lr": 1e-2,
}
MAIN, DEMO = 0, 1  # the main job's clean replay (200/s) and the demo's (1,000/s)


@dataclass(frozen=True)
class Scenario:
    """A worker and the stream it sees: the demo beside ``driftline run``, or the dashboard test."""

    options: dict[str, Any]
    #: Events/s of the main job's clean replay (0: a bare ``driftline worker``, no main job).
    main_rate: float
    #: The demo's replay starts this many seconds in (drawn from the seed in this range).
    demo_at: tuple[float, float]
    demo_events: int
    corrupt_from: int
    shift_at: int | None
    #: Every label of the corrupted stretch (:attr:`bench.lifecycle_demo.Injection.label`; None: flipped).
    stretch_label: int | None = None
    #: The demo's replay never this many events ahead of the worker (None: never held back).
    max_ahead: int | None = None


SCENARIOS = {
    # README, "Watch it on the page": python -m bench.lifecycle_demo beside driftline run.
    "demo": Scenario(DEMO_OPTIONS, 200.0, (30.0, 36.0), 50_000, 15_000, 35_000),
    # tests/streams/test_dashboard_drift.py: a bare worker with a small model, the replay alone
    # from its start, held back by the worker, the stretch after event 12,000, no lasting flip,
    # up to 40,000 events (the test stops once the worker has acted). An unmistakable bad update
    # under load too: a click-log outage (every label 0) over an 8 s swap interval (module docstring).
    "dashboard": Scenario(
        {**DEMO_OPTIONS, "batch_window_s": 0.5, "embed_dim": 8, "hidden": [32, 32], "swap_interval_s": 8},
        0.0,
        (0.0, 0.0),
        40_000,
        12_000,
        None,
        stretch_label=0,
        max_ahead=1_000,
    ),
}


Arrival = tuple[float, int, int]  # (arrival time, source, MovieLens row)


class DemoSender:
    """The demo's replay on the simulated clock: ``events`` rows at 1,000/s from ``at``, sent
    before ``until``. With ``max_ahead``, held back as :class:`bench.lifecycle_demo.Backpressure`
    holds the live one: chunks of a quarter of it, each sent once the worker has applied all but
    ``max_ahead`` of the demo's events (seen one poll after the batch that did it)."""

    def __init__(self, at: float, events: int, until: float, max_ahead: int | None) -> None:
        self.at, self.max_ahead = at, max_ahead
        self.total = min(events, max(0, int((until - at) * 1000)))
        self.chunk = self.total if max_ahead is None else held_chunk(max_ahead)
        self.sent: list[Arrival] = []
        #: (when a batch was done, the demo's events applied by then), oldest first.
        self._applied: list[tuple[float, int]] = []

    def next_at(self) -> float | None:
        """When the next chunk goes out: None when all went, or when it waits for a batch not yet done."""
        sent = len(self.sent)
        if sent >= self.total:
            return None
        needed = 0 if self.max_ahead is None else sent + self.chunk - self.max_ahead
        if needed <= 0:
            return self.at
        done = next((t for t, applied in self._applied if applied >= needed), None)
        return None if done is None else max(self.at, done + Backpressure.POLL_S)

    def send(self, until: float) -> None:
        """Send every chunk that goes out by ``until``."""
        while (at := self.next_at()) is not None and at <= until:
            first, count = len(self.sent), min(self.chunk, self.total - len(self.sent))
            self.sent += [(at + j / 1000, DEMO, first + j) for j in range(count)]
            self.at = at + count / 1000

    def applied(self, at: float, events: int) -> None:
        """The worker was done with a batch at ``at``, the demo's first ``events`` events applied."""
        self._applied.append((at, events))


@dataclass(frozen=True)
class LiveStream:
    """The demo's stream as its worker sees it, on a simulated clock.

    ``driftline run`` replays MovieLens at 200 events/s from time 0 and the demo adds its own replay
    at 1,000/s from ``demo_at`` (both from the first rating), held back by ``max_ahead`` if given
    (:class:`DemoSender`). The worker takes up to ``BATCH`` events, or what arrived within
    ``window_s``, then is busy for a time that grows with the batch and varies by a factor 0.6-1.8
    (a shared, loaded machine). So batches are about 100 events before the demo and 500 during it,
    and their sizes and the swap times vary from run to run as live; ``seed`` fixes one run.
    """

    seed: int
    demo_at: float
    window_s: float = 0.5
    demo_events: int = 50_000
    main_rate: float = 200.0
    #: The worker's busy time per batch times this (2: a machine twice as loaded).
    busy: float = 1.0
    #: The demo's replay never this many events ahead of the worker (None: never held back).
    max_ahead: int | None = None

    def batches(self, until: float) -> Iterator[tuple[float, list[Arrival]]]:
        """(dispatch time, events) of each batch the worker takes, until events stop coming."""
        rng = random.Random(self.seed)
        main = [(i / self.main_rate, MAIN, i) for i in range(int(until * self.main_rate))]
        demo = DemoSender(self.demo_at, self.demo_events, until, self.max_ahead)
        free, taken, demo_taken = 0.0, 0, 0  # main's and the demo's events taken so far
        while True:
            demo.send(free)
            heads = [e[0] for e in main[taken : taken + 1] + demo.sent[demo_taken : demo_taken + 1]]
            coming = demo.next_at()
            if not heads and coming is None:
                return
            start = max(free, min(heads + ([coming] if coming is not None else [])))
            due = start + self.window_s
            demo.send(due)
            merged = heapq.merge(main[taken : taken + BATCH], demo.sent[demo_taken : demo_taken + BATCH])
            arrived = [e for e in itertools.islice(merged, BATCH) if e[0] <= due]
            dispatch = max(start, arrived[-1][0]) if len(arrived) == BATCH else due
            yield dispatch, arrived
            from_demo = sum(source == DEMO for _, source, _ in arrived)
            taken, demo_taken = taken + len(arrived) - from_demo, demo_taken + from_demo
            free = dispatch + (0.05 + 0.0005 * len(arrived)) * rng.uniform(0.6, 1.8) * self.busy
            demo.applied(free, demo_taken)


#: Labels an event is trained with: (send time, source, row) -> the impression.
Labeller = Callable[[float, int, int], Impression]


def feed(
    runner: Any,
    clock: list[float],
    rows: list[Impression],
    stream: LiveStream,
    until: float,
    label: Labeller | None = None,
) -> Iterator[tuple[float, dict[str, float]]]:
    """Apply ``stream``'s batches through ``runner`` (a :class:`streams.runner.ServiceRunner`),
    ``clock[0]`` set to each dispatch time; yields (dispatch time, metrics) after each batch."""
    from streams.runner import Incoming

    topic = runner.service.subscriptions()[0]
    offset = 0
    for dispatch, events in stream.batches(until):
        clock[0] = dispatch
        records = [label(*e) if label else rows[e[2]] for e in events]
        incoming = [Incoming(topic.topic, 0, offset + i, None, r.to_bytes()) for i, r in enumerate(records)]
        offset += len(incoming)
        result = asyncio.run(runner.apply(topic, incoming))
        assert result is not None
        yield dispatch, result.metrics


def replay(
    seed: int,
    rows: list[Impression],
    options: dict[str, Any] | None = None,
    scenario: Scenario = SCENARIOS["demo"],
    busy: float = 1.0,
) -> tuple[Timeline, Injection]:
    """The whole ``scenario`` for one seed: a worker with its options (``options`` replacing some),
    the demo's drift threshold (0.5) and ``busy`` times the usual time per batch."""
    from models.ctr.service import build_service
    from streams.drift import DriftMonitor, DriftSettings
    from streams.metrics import WorkerMetrics
    from streams.runner import ServiceRunner

    class NullSink:
        async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
            return None

    rng = random.Random(seed)
    demo_at = rng.uniform(*scenario.demo_at)
    stream = LiveStream(
        seed,
        demo_at,
        demo_events=scenario.demo_events,
        main_rate=scenario.main_rate,
        busy=busy,
        max_ahead=scenario.max_ahead,
    )
    home = Path(tempfile.mkdtemp(prefix="driftline-replay-"))
    service = build_service(home / "ctr", **{**scenario.options, **(options or {})})
    clock = [0.0]
    service.clock = lambda: clock[0]
    runner = ServiceRunner(service, home / "checkpoints", NullSink(), WorkerMetrics())
    drift = DriftSettings(threshold=0.5)
    runner.drift = DriftMonitor("ctr", "logloss", settings=drift, clock=lambda: clock[0])
    injection = Injection(scenario.corrupt_from, shift_at=scenario.shift_at, label=scenario.stretch_label)
    timeline = Timeline()
    seen: list[tuple[float, int]] = []  # (when the demo's poller sees it, promoted version)

    def label(at: float, source: int, row: int) -> Impression:
        timeline.newest = max((v for t, v in seen if t <= at), default=0)
        return injection.apply(row, rows[row], timeline, now=at) if source == DEMO else rows[row]

    known: set[tuple[int, str, float]] = set()
    alarms = 0
    for dispatch, _ in feed(runner, clock, rows, stream, stream.demo_at + 60, label):
        for record in service.lifecycle.lineage.records:
            for entry in record.history:
                key = (record.version, entry["action"], entry["at"])
                if key in known:
                    continue
                known.add(key)
                if entry["action"] == "promoted":
                    seen.append((dispatch + rng.uniform(0.05, 0.35), record.version))
                elif entry["action"] == "rolled_back":
                    timeline.rollbacks.append({**entry, "at": dispatch, "version": record.version})
                    timeline.actions.append((dispatch, f"rollback: {entry['reason']}"))
        if runner.drift.alarms > alarms:
            alarms = runner.drift.alarms
            timeline.actions.append((dispatch, f"drift alarm #{alarms}"))
    return timeline, injection


def _option(text: str) -> tuple[str, int | float]:
    """``KEY=NUMBER`` as a ctr option (an integer where it reads as one)."""
    key, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (sep and key.strip() and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"expected KEY=NUMBER, got {text!r}")
    return key.strip(), int(number) if number.is_integer() and "." not in value else number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seeds", type=int, nargs="+", help="one replay per seed")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=NUMBER",
        help="a ctr option instead of the scenario's, e.g. rollback_samples=3000 (repeatable)",
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="demo",
        help="demo: the demo beside driftline run; dashboard: the dashboard drift test's worker",
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=1.0,
        help="the worker's time per batch times this: 2 for a machine twice as loaded (default 1)",
    )
    parser.add_argument(
        "--stretch-label",
        choices=("flip", "0", "1"),
        help="the corrupted stretch's labels instead of the scenario's: each flipped, or all 0 or 1",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.busy) and args.busy > 0):
        parser.error(f"--busy must be a number > 0, got {args.busy}")
    scenario = SCENARIOS[args.scenario]
    if args.stretch_label is not None:
        label = None if args.stretch_label == "flip" else int(args.stretch_label)
        scenario = dataclasses.replace(scenario, stretch_label=label)
    from models.ctr.movielens import load_impressions
    from models.ctr.service import build_service

    options = dict(args.option)
    try:  # a bad option fails here, before the replays
        build_service(
            Path(tempfile.mkdtemp(prefix="driftline-replay-")) / "ctr", **{**scenario.options, **options}
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))

    rows = load_impressions()
    for seed in args.seeds:
        timeline, injection = replay(seed, rows, options, scenario, args.busy)
        print(f"seed {seed}:")
        for at, what in timeline.actions:
            print(f"  {at:6.1f} s  {timeline.since(at)}: {what}")
        for line in verdicts(timeline, injection):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
