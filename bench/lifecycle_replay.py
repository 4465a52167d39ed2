"""The lifecycle demo replayed in process on a simulated clock: the same stream, decided alike.

``bench/lifecycle_demo.py`` against a live worker behaves differently from run to run: batch sizes,
swap times and when the demo sees a promotion depend on the machine. This replays the same stream
(MovieLens-100K; the synthetic label flips of :class:`bench.lifecycle_demo.Injection`) through a CTR
service and its runner, with those timings drawn from a seed, so a run that went wrong can be
replayed and a fix checked across seeds::

    python -m bench.lifecycle_replay 1 2 3 4
    python -m bench.lifecycle_replay --option rollback_samples=3000 1 2 3 4   # swaps before two windows
    python -m bench.lifecycle_replay --scenario dashboard 1 2 3 4   # tests/streams/test_dashboard_drift.py
    python -m bench.lifecycle_replay --scenario dashboard --busy 1.5 2 3   # a worker behind the stream

Each seed prints the actions and :func:`bench.lifecycle_demo.verdicts`, times in simulated seconds.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.lifecycle_demo import Injection, Timeline, verdicts  # noqa: E402
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


SCENARIOS = {
    # README, "Watch it on the page": python -m bench.lifecycle_demo beside driftline run.
    "demo": Scenario(DEMO_OPTIONS, 200.0, (30.0, 36.0), 50_000, 15_000, 35_000),
    # tests/streams/test_dashboard_drift.py: a bare worker with a small model, the replay alone
    # from its start, the stretch after event 12,000, no lasting flip, 30,000 events.
    "dashboard": Scenario(
        {**DEMO_OPTIONS, "batch_window_s": 0.5, "embed_dim": 8, "hidden": [32, 32]},
        0.0,
        (0.0, 0.0),
        30_000,
        12_000,
        None,
    ),
}


@dataclass(frozen=True)
class LiveStream:
    """The demo's stream as its worker sees it, on a simulated clock.

    ``driftline run`` replays MovieLens at 200 events/s from time 0 and the demo adds its own replay
    at 1,000/s from ``demo_at`` (both from the first rating). The worker takes up to ``BATCH``
    events, or what arrived within ``window_s``, then is busy for a time that grows with the batch
    and varies by a factor 0.6-1.8 (a shared, loaded machine). So batches are about 100 events
    before the demo and 500 during it, and their sizes and the swap times vary from run to run as
    live; ``seed`` fixes one run.
    """

    seed: int
    demo_at: float
    window_s: float = 0.5
    demo_events: int = 50_000
    main_rate: float = 200.0
    #: The worker's busy time per batch times this (2: a machine twice as loaded).
    busy: float = 1.0

    def arrivals(self, until: float) -> list[tuple[float, int, int]]:
        """(arrival time, source, MovieLens row) of every event sent before ``until``, in order."""
        main = [(i / self.main_rate, MAIN, i) for i in range(int(until * self.main_rate))]
        sent = min(self.demo_events, max(0, int((until - self.demo_at) * 1000)))
        return sorted(main + [(self.demo_at + j / 1000, DEMO, j) for j in range(sent)])

    def batches(self, until: float) -> Iterator[tuple[float, list[tuple[float, int, int]]]]:
        """(dispatch time, events) of each batch the worker takes, until events stop coming."""
        rng = random.Random(self.seed)
        events, free, next_event = self.arrivals(until), 0.0, 0
        while next_event < len(events):
            start = max(free, events[next_event][0])
            due = start + self.window_s
            arrived = [e for e in events[next_event : next_event + BATCH] if e[0] <= due]
            dispatch = max(start, arrived[-1][0]) if len(arrived) == BATCH else due
            yield dispatch, arrived
            next_event += len(arrived)
            free = dispatch + (0.05 + 0.0005 * len(arrived)) * rng.uniform(0.6, 1.8) * self.busy


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
        seed, demo_at, demo_events=scenario.demo_events, main_rate=scenario.main_rate, busy=busy
    )
    home = Path(tempfile.mkdtemp(prefix="driftline-replay-"))
    service = build_service(home / "ctr", **{**scenario.options, **(options or {})})
    clock = [0.0]
    service.clock = lambda: clock[0]
    runner = ServiceRunner(service, home / "checkpoints", NullSink(), WorkerMetrics())
    drift = DriftSettings(threshold=0.5)
    runner.drift = DriftMonitor("ctr", "logloss", settings=drift, clock=lambda: clock[0])
    injection, timeline = Injection(scenario.corrupt_from, shift_at=scenario.shift_at), Timeline()
    seen: list[tuple[float, int]] = []  # (when the demo's poller sees it, promoted version)

    def label(at: float, source: int, row: int) -> Impression:
        timeline.newest = max((v for t, v in seen if t <= at), default=0)
        record = rows[row]
        if source == DEMO and injection.flips(row, timeline, now=at):
            record = record.model_copy(update={"clicked": 1 - int(record.clicked or 0)})
        return record

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
    args = parser.parse_args(argv)
    if not (math.isfinite(args.busy) and args.busy > 0):
        parser.error(f"--busy must be a number > 0, got {args.busy}")
    scenario = SCENARIOS[args.scenario]
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
