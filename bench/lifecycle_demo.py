"""Inject a drift into a MovieLens replay and time what the running CTR worker does about it.

Run it beside ``driftline run --services ctr`` (or any worker serving ``ctr``)::

    python -m bench.lifecycle_demo --url http://127.0.0.1:8080

It replays MovieLens-100K impressions (real ratings in their real order) onto the impressions
topic with two **synthetic** changes: a corrupted stretch (``--corrupt START:COUNT``: the labels
of those events flipped, then clean again: a bad update the promotion gate may let through and
probation should roll back) and a lasting flip (``--shift-at N``: every label flipped from event N
on: a changed world that should raise the drift alarm and no rollback). Meanwhile it polls
``/health`` (drift alarms) and ``GET /models`` (rollbacks) and prints each action with the seconds
since the first corrupted event of its change was sent. Open ``/dashboard`` to watch the same.

The replay keeps its schedule whatever the worker does; ``--max-ahead N`` holds it back while the
worker has applied more than N events fewer than were sent, so a lagging worker slows the replay
instead of meeting the corrupted stretch (cut by send time) split between two versions.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import scrape, total  # noqa: E402
from streams.client import call  # noqa: E402
from streams.schemas import Impression  # noqa: E402


@dataclass
class Timeline:
    """What was sent and what the worker did, in wall time (``time.time()``); shared by the
    replay thread and the poller."""

    #: The newest version promoted so far (the poller reads it; the corrupted stretch follows it).
    newest: int = 0
    corrupt_sent: float | None = None
    corrupt_ended: float | None = None
    shift_sent: float | None = None
    #: (wall time seen, what): alarms from ``/health``, rollbacks from ``/models``.
    actions: list[tuple[float, str]] = field(default_factory=list)
    #: The ``rolled_back`` lineage entries seen, in the order seen, each with the ``version`` it
    #: served again.
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    #: Polls the worker did not answer in time (a busy worker answers late).
    missed_polls: int = 0
    #: Seconds the replay spent reading and waiting for the worker (``max_ahead``; 0 without it).
    held_s: float = 0.0

    def since(self, at: float) -> str:
        """``at`` relative to the change it answers (the last change sent before it)."""
        changes = [
            (t, name) for t, name in ((self.corrupt_sent, "corrupted"), (self.shift_sent, "shift")) if t
        ]
        before = [(t, name) for t, name in changes if t <= at]
        if not before:
            return "before any change"
        t, name = max(before)
        return f"{at - t:.1f} s after the first {name} event was sent"


@dataclass
class Injection:
    """Which events get a wrong label, and what label.

    The corrupted stretch spans one whole swap interval: from the first promotion seen after
    event ``start`` until the next one, so the version promoted at its end trained on corrupted
    labels only and was validated on a corrupted slice (the bad update a gate cannot catch). Each
    label of the stretch is flipped, or with ``label`` set, replaced by it (``label=0``: a click
    log outage, every impression unclicked). From event ``shift_at`` (if given) every label is
    flipped for good.
    """

    start: int
    shift_at: int | None = None
    #: The label of every event of the corrupted stretch (None: each flipped).
    label: int | None = None
    #: The newest version when event ``start`` went out, then the one the stretch corrupts.
    armed_at: int | None = None
    corrupting: int | None = None
    #: The version whose promotion ended the stretch: it learned the stretch (the bad update).
    learned: int | None = None

    def __post_init__(self) -> None:
        if self.label not in (None, 0, 1):
            raise ValueError(f"the corrupted stretch's label must be 0 or 1, not {self.label!r}")

    def corrupts(self, index: int, timeline: Timeline, now: float | None = None) -> bool:
        """Whether event ``index``, sent at ``now`` (default: the wall clock), gets a wrong label."""
        now = time.time() if now is None else now
        if self.shift_at is not None and index >= self.shift_at:
            timeline.shift_sent = timeline.shift_sent or now
            return True
        if index < self.start or timeline.corrupt_ended:
            return False
        if self.armed_at is None:
            self.armed_at = timeline.newest
        if timeline.newest == self.armed_at:
            return False  # wait for a fresh version: the stretch starts right after a swap
        if self.corrupting is None:
            self.corrupting, timeline.corrupt_sent = timeline.newest, now
        if timeline.newest == self.corrupting:
            return True
        timeline.corrupt_ended, self.learned = now, timeline.newest  # the world is clean again
        return False

    def apply(
        self, index: int, record: Impression, timeline: Timeline, now: float | None = None
    ) -> Impression:
        """Event ``index`` (``record``), sent at ``now``, as injected: its label flipped by a lasting
        shift, set to ``label`` or flipped in the corrupted stretch, else as it is."""
        if not self.corrupts(index, timeline, now):
            return record
        clicked = int(record.clicked or 0)
        shifted = self.shift_at is not None and index >= self.shift_at
        wrong = 1 - clicked if shifted or self.label is None else self.label
        return record.model_copy(update={"clicked": wrong})


def inject(records: Iterable[Impression], injection: Injection, timeline: Timeline) -> Iterator[Impression]:
    """``records`` with the injected labels."""
    for index, record in enumerate(records):
        yield injection.apply(index, record, timeline)


def poll(url: str, service: str, timeline: Timeline, stop: threading.Event, token: str | None) -> None:
    """Record each new drift alarm and each rollback of ``service`` until ``stop``."""
    alarms, events = 0, set()
    while not stop.wait(0.25):
        now = time.time()
        try:
            status, health = call("GET", f"{url}/health", token=token, timeout=5)
            drift = (health.get("drift") or {}).get(service, {}) if status == 200 else {}
            status, models = call("GET", f"{url}/models", token=token, timeout=5)
        except OSError:  # a busy worker answers late: ask again on the next round
            timeline.missed_polls += 1
            continue
        if drift.get("alarms", 0) > alarms:
            alarms = drift["alarms"]
            timeline.actions.append((now, f"drift alarm #{alarms}"))
        versions = models.get(service, {}).get("versions", []) if status == 200 else []
        history = [(v["version"], h) for v in versions for h in v["history"]]
        # The newest number, not a count: the lineage keeps only the last versions.
        timeline.newest = max((v for v, entry in history if entry["action"] == "promoted"), default=0)
        for version, entry in history:
            if entry["action"] == "rolled_back" and (version, entry["at"]) not in events:
                events.add((version, entry["at"]))
                timeline.rollbacks.append({**entry, "version": version})
                timeline.actions.append((now, f"rollback: {entry['reason']}"))


def events_applied(url: str, service: str) -> float | None:
    """The events ``service`` has applied (``driftline_events_total`` on ``url``'s ``/metrics``,
    every topic), or None when the worker did not answer in time."""
    try:
        return total(scrape(url, timeout_s=5), "driftline_events_total", service=service)
    except OSError:
        return None


class Backpressure:
    """Holds a replay back while the worker lags more than ``max_ahead`` events behind it.

    Counted from what ``applied`` (the worker's events applied, None when it did not answer)
    read before the first event was sent, so a worker that ran before the replay holds nothing
    back. A worker that never applies some sent events (dead letters) holds the replay until
    ``stop``.
    """

    #: Seconds between two reads of ``applied`` while held back.
    POLL_S = 0.2

    def __init__(self, applied: Callable[[], float | None], max_ahead: int, stop: threading.Event) -> None:
        if max_ahead < 1:
            raise ValueError(f"max_ahead must be at least 1 event, not {max_ahead}")
        self.applied, self.max_ahead, self.stop = applied, max_ahead, stop
        self._base: float | None = None
        self._seen = 0.0  # applied since the replay began, as last read
        #: Seconds spent reading and waiting for the worker so far.
        self.held_s = 0.0

    def _ahead(self, sent: int, coming: int) -> bool:
        return self._base is None or sent + coming - self._seen > self.max_ahead

    def ready(self, sent: int, coming: int) -> bool:
        """Wait until ``coming`` more events after ``sent`` keep the replay at most ``max_ahead``
        ahead of the worker; False once ``stop`` is set. Reads the worker only when the last read
        does not already allow it (what was applied never goes down)."""
        began = time.monotonic()
        try:
            return self._wait(sent, coming)
        finally:
            self.held_s += time.monotonic() - began

    def _wait(self, sent: int, coming: int) -> bool:
        while self._ahead(sent, coming):
            count = self.applied()
            if count is not None:
                self._base = count if self._base is None else self._base
                self._seen = count - self._base
                if not self._ahead(sent, coming):
                    break
            if self.stop.wait(self.POLL_S):
                return False
        return not self.stop.is_set()


def held_chunk(max_ahead: int) -> int:
    """Events a held-back replay sends between two checks of the worker: a quarter of ``max_ahead``."""
    return max(1, max_ahead // 4)


def send_held_back(
    producer: KafkaProducer, records: Iterator[Impression], rate: float, hold: Backpressure
) -> int:
    """Send ``records`` in chunks of a quarter of ``hold.max_ahead``, each at ``rate`` and flushed
    (sent means Kafka holds it) once ``hold`` allows it; the number sent. Each chunk keeps the rate
    from its own start, so a wait is not made up by a burst after it."""
    from streams.producer import send_all

    chunk, sent = held_chunk(hold.max_ahead), 0
    while hold.ready(sent, chunk):
        report = send_all(
            producer, "impressions", itertools.islice(records, chunk), rate=rate, progress=False
        )
        if not report.sent:
            break
        sent += report.sent
    return sent


def replay(
    bootstrap: str,
    url: str,
    injection: Injection,
    rate: float,
    limit: int,
    token: str | None = None,
    service: str = "ctr",
    settle_s: float = 10.0,
    stop: threading.Event | None = None,
    timeline: Timeline | None = None,
    max_ahead: int | None = None,
) -> Timeline:
    """Send ``limit`` injected impressions at ``rate`` (until ``stop`` is set), watching ``url``
    meanwhile and ``settle_s`` after, into ``timeline``: what was sent and seen. With ``max_ahead``,
    never more than that many events ahead of what the worker has applied (:class:`Backpressure`)."""
    from models.ctr.movielens import iter_impressions
    from streams.producer import make_producer, send_all

    timeline = timeline or Timeline()
    stop = stop or threading.Event()
    watcher = threading.Thread(target=poll, args=(url, service, timeline, stop, token), daemon=True)
    watcher.start()
    producer = make_producer(bootstrap)
    try:
        impressions = (r for r in itertools.islice(iter_impressions(), limit) if not stop.is_set())
        records = inject(impressions, injection, timeline)
        if max_ahead is None:
            send_all(producer, "impressions", records, rate=rate, total=limit, progress=False)
        else:
            hold = Backpressure(lambda: events_applied(url, service), max_ahead, stop)
            send_held_back(producer, records, rate, hold)
            timeline.held_s = hold.held_s
        stop.wait(settle_s)
    finally:
        stop.set()
        producer.close()
        watcher.join(10)
    return timeline


def verdicts(timeline: Timeline, injection: Injection) -> list[str]:
    """Each action judged against the design: the version that learned the corrupted stretch is
    rolled back (itself, or skipped as unproven when a version promoted after it is), nothing else
    is; both changes raise the drift alarm (times from each change)."""
    begun, shift = timeline.corrupt_sent, timeline.shift_sent
    alarms = [at for at, what in timeline.actions if what.startswith("drift alarm")]
    lines = []
    for change, at, until in (("corrupted stretch", begun, shift), ("lasting flip", shift, None)):
        seen = [a for a in alarms if at and a >= at and (until is None or a < until)]
        lines.append(f"{change}: " + (f"drift alarm {seen[0] - at:.1f} s in" if seen else "no drift alarm"))
    learned_rolled = False
    for entry in timeline.rollbacks:
        at, bad = entry["at"], entry["evidence"]["rolled_back_from"]
        over = [bad, *entry["evidence"].get("skipped", [])]
        if injection.learned in over and begun and at >= begun and not (shift and at >= shift):
            learned_rolled = True
            lines.append(
                f"as designed: v{injection.learned} (learned the stretch) rolled back to v{entry['version']} "
                f"{at - begun:.1f} s in"
                + (f", with v{bad} promoted after it" if bad != injection.learned else "")
            )
        else:
            lines.append(f"WRONG: v{bad} rolled back ({timeline.since(at)})")
    if injection.learned is None:
        lines.append("no version learned the corrupted stretch alone: none was promoted before it ended")
    elif not learned_rolled:
        lines.append(f"WRONG: v{injection.learned} (learned the corrupted stretch) was not rolled back")
    return lines


def _clock(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "never"


def main(argv: list[str] | None = None) -> int:
    from streams.client import DEFAULT_URL
    from streams.config import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="the worker's (or main job's) HTTP")
    parser.add_argument("--bootstrap-servers", help="Kafka (default: $DRIFTLINE_BOOTSTRAP_SERVERS or local)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--limit", type=int, default=60_000, help="impressions to send")
    parser.add_argument(
        "--corrupt-from",
        type=int,
        default=15_000,
        help="flip labels over the next whole swap interval after this",
    )
    parser.add_argument("--shift-at", type=int, default=40_000, help="flip every label from here on")
    parser.add_argument("--token", help="reader token, if the worker's queries need one")
    parser.add_argument(
        "--max-ahead",
        type=int,
        help="never send more than this many events ahead of what the worker has applied (default: no limit)",
    )
    args = parser.parse_args(argv)
    bootstrap = Settings.from_env(bootstrap_servers=args.bootstrap_servers).bootstrap
    injection = Injection(args.corrupt_from, shift_at=args.shift_at)
    print(
        f"synthetic changes: labels flipped over one swap interval after event {injection.start} and from "
        f"event {injection.shift_at} on; {args.limit} events at {args.rate:.0f}/s; watch {args.url}/dashboard"
    )
    if args.max_ahead is not None and args.max_ahead < 1:
        parser.error("--max-ahead must be at least 1")
    timeline = replay(
        bootstrap, args.url, injection, args.rate, args.limit, args.token, max_ahead=args.max_ahead
    )
    for at, what in timeline.actions:
        print(f"{_clock(at)}  {timeline.since(at)}: {what}")
    if not timeline.actions:
        print("no alarm and no rollback seen")
    for line in verdicts(timeline, injection):
        print(line)
    begun, ended, shift = timeline.corrupt_sent, timeline.corrupt_ended, timeline.shift_sent
    print(
        f"corrupted stretch sent {_clock(begun)} to {_clock(ended)} "
        f"(newest version then v{injection.corrupting}, ended by v{injection.learned}); "
        f"lasting flip from {_clock(shift)}; {timeline.missed_polls} poll(s) unanswered within 5 s; "
        f"replay held back {timeline.held_s:.1f} s for the worker"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
