"""The live status: worker processes publish rows, views read them from one compacted topic.

Each worker turns its Prometheus registry into one :class:`ServiceStatus` row per service
(:func:`collect_rows`) and publishes it every few seconds on the compacted ``status`` topic, keyed
``"<instance>/<service>"`` (:func:`status_key`). Any view (the terminal of ``driftline run``, a web
dashboard) reads that topic with a :class:`StatusBoard`, which keeps the newest row per key and
forgets rows a dead process stopped refreshing. :func:`render` aggregates the instances of each
service into one table row; :func:`watch` keeps that table on screen (or in the log) until stopped.

Rows are built from metric *names*, not Python attributes, so the worker's metrics code can change
freely as long as the exported families keep their names and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.follower import TopicFollower, stopped
from streams.schemas import RecordError, ServiceStatus, parse_record

log = logging.getLogger(__name__)

#: Rows not refreshed for this long belong to a process that died or was stopped.
DEFAULT_STALE_S = 15.0
#: Online metrics shown as a service's headline, in order of preference (prefix match, so
#: ``ndcg@10`` counts as ``ndcg``); a service with none of them shows its first metric.
MAIN_METRICS = ("mse", "auc", "loss", "ndcg", "mae", "accuracy")
#: Width of the plain tables printed to a log (wide enough that the header never wraps).
LOG_WIDTH = 120

EVENTS_PER_S = "driftline_events_per_second"
CONSUMER_LAG = "driftline_consumer_lag"
LAST_BATCH_TS = "driftline_last_batch_timestamp_seconds"
ONLINE_METRIC = "driftline_online_metric"
MODEL_VERSION = "driftline_model_version"


def status_key(row: ServiceStatus) -> bytes:
    """The status topic key of a row: one key per (process, service), so compaction keeps one row."""
    return f"{row.instance}/{row.service}".encode()


@dataclass
class _Gathered:
    """What the registry says about one service, before it becomes a row."""

    events_per_s: float = 0.0
    lag: float = 0.0
    last_batch_ts: float | None = None
    metric: dict[str, float] = field(default_factory=dict)
    model_version: float = 0.0


def _gather(registry: CollectorRegistry) -> dict[str, _Gathered]:
    """Per-service values of the status metric families; non-finite samples are left out."""
    found: dict[str, _Gathered] = defaultdict(_Gathered)
    for family in registry.collect():
        for sample in family.samples:
            service = sample.labels.get("service")
            if service is None or not math.isfinite(sample.value):
                continue
            if sample.name == EVENTS_PER_S:
                found[service].events_per_s += sample.value
            elif sample.name == CONSUMER_LAG:
                found[service].lag += sample.value
            elif sample.name == LAST_BATCH_TS and sample.value > 0:
                # A labelled gauge reads 0 until first set: that means "no batch yet", not 1970.
                found[service].last_batch_ts = sample.value
            elif sample.name == ONLINE_METRIC and "metric" in sample.labels:
                found[service].metric[sample.labels["metric"]] = sample.value
            elif sample.name == MODEL_VERSION:
                found[service].model_version = sample.value
    return found


def collect_rows(
    registry: CollectorRegistry,
    *,
    instance: str,
    role: str,
    url: str,
    partitions: dict[str, list[str]],
    ready: dict[str, bool],
    status: str,
) -> list[ServiceStatus]:
    """One status row per service of this process, sorted by service.

    A service gets a row when it has samples in ``registry`` or is named in ``partitions`` (a
    service that has not applied a batch yet still shows up). ``ready`` defaults to False for a
    service it does not name.
    """
    gathered = _gather(registry)
    now = time.time()
    rows = []
    for service in sorted(set(gathered) | set(partitions)):
        values = gathered.get(service, _Gathered())
        rows.append(
            ServiceStatus(
                instance=instance,
                role=role,
                service=service,
                url=url,
                ts=now,
                ready=ready.get(service, False),
                status=status,
                partitions=list(partitions.get(service, [])),
                events_per_s=values.events_per_s,
                lag=max(int(values.lag), 0),
                last_batch_ts=values.last_batch_ts,
                metric=values.metric,
                model_version=max(int(values.model_version), 0),
            )
        )
    return rows


class StatusBoard:
    """The newest row per ``instance/service`` key of the status topic, without stale ones.

    A :class:`~streams.follower.TopicFollower` feeds it (from the beginning, no consumer group: a
    view must never steal partitions from another view or commit offsets), so a fresh view sees
    every live process at once thanks to compaction. A process keeps one board, followed while it
    serves (:meth:`following`), and every reader of that process (the dashboard's ``/status``, the
    owner directory) reads it: rows are written and read on that process's event loop only.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        stale_s: float = DEFAULT_STALE_S,
        topic: str | None = None,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        from streams.topics import topic_name

        if stale_s <= 0:
            raise ValueError(f"stale_s must be positive, got {stale_s}")
        self.stale_s = stale_s
        self.topic = topic or topic_name("status")
        self._rows: dict[str, ServiceStatus] = {}
        self.skipped = 0
        self.follower = TopicFollower(bootstrap, [self.topic], self._apply_all, security=security)

    def not_read_yet(self) -> str | None:
        """Why the rows are not complete yet: None once every row the topic held when the board
        started following has been read."""
        if self.follower.caught_up.is_set():
            return None
        return self.follower.problem or f"{self.topic} is still being read from its start"

    def following(self) -> AbstractAsyncContextManager[None]:
        """Follow the topic for the duration of the block."""
        return self.follower.following()

    def _apply_all(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # tombstone: the process said goodbye
            if key is not None:
                self._rows.pop(key.decode(errors="replace"), None)
            return
        try:
            row = cast(ServiceStatus, parse_record(value, ServiceStatus))
        except RecordError as exc:
            self.skipped += 1
            log.warning("skipped a status record on %s: %s", self.topic, exc)
            return
        name = key.decode(errors="replace") if key is not None else status_key(row).decode()
        self._rows[name] = row  # one partition: a later offset is a newer row for the key

    def rows(self, now: float | None = None) -> list[ServiceStatus]:
        """Live rows sorted by service then instance (as of ``now``, default the wall clock)."""
        now = time.time() if now is None else now
        for name in [n for n, row in self._rows.items() if now - row.ts > self.stale_s]:
            del self._rows[name]
        return sorted(self._rows.values(), key=lambda row: (row.service, row.instance))


@dataclass
class ServiceSummary:
    """All live instances of one service folded into one line of the table."""

    service: str
    instances: int
    ready: int
    events_per_s: float
    lag: int
    last_batch_ts: float | None
    metric: tuple[str, float] | None
    model_version: int
    statuses: list[str]

    def to_json(self) -> dict[str, Any]:
        """The summary as the dashboard's ``/status`` answers it: the metric as ``{name, value}``."""
        body = asdict(self)
        body["metric"] = {"name": self.metric[0], "value": self.metric[1]} if self.metric else None
        return body


def main_metric(metric: dict[str, float]) -> str | None:
    """The name of the metric to show for a service (see :data:`MAIN_METRICS`)."""
    for preferred in MAIN_METRICS:
        for name in metric:
            if name.startswith(preferred):
                return name
    return next(iter(metric), None)


def summarize(rows: Iterable[ServiceStatus]) -> list[ServiceSummary]:
    """Fold the rows of each service: sums of rate and lag, newest batch and model, mean metric."""
    by_service: dict[str, list[ServiceStatus]] = defaultdict(list)
    for row in rows:
        by_service[row.service].append(row)
    summaries = []
    for service, group in sorted(by_service.items()):
        merged: dict[str, float] = {}
        for row in group:
            for name, value in row.metric.items():
                merged.setdefault(name, value)
        name = main_metric(merged)
        metric = None
        if name is not None:
            values = [row.metric[name] for row in group if name in row.metric]
            metric = (name, sum(values) / len(values))
        batches = [row.last_batch_ts for row in group if row.last_batch_ts is not None]
        summaries.append(
            ServiceSummary(
                service=service,
                instances=len(group),
                ready=sum(row.ready for row in group),
                events_per_s=sum(row.events_per_s for row in group),
                lag=sum(row.lag for row in group),
                last_batch_ts=max(batches) if batches else None,
                metric=metric,
                model_version=max(row.model_version for row in group),
                statuses=sorted({row.status for row in group}),
            )
        )
    return summaries


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return f"{max(now - ts, 0.0):.0f}s ago"


def render(rows: Sequence[ServiceStatus], now: float | None = None, *, compact: bool = False) -> Table:
    """One table row per service; ``compact`` drops borders and colour for logs."""
    now = time.time() if now is None else now
    table = Table(
        title=None if compact else "driftline status",
        box=None if compact else box.SIMPLE_HEAVY,
        header_style="" if compact else "bold",
        pad_edge=not compact,
    )
    for name in ("service", "instances", "events/s", "lag", "last batch", "online metric", "model", "status"):
        table.add_column(name, justify="right" if name in ("events/s", "lag", "model") else "left")
    for s in summarize(rows):
        healthy = s.ready == s.instances and s.statuses == ["ok"]
        table.add_row(
            s.service,
            f"{s.ready}/{s.instances}",
            f"{s.events_per_s:,.1f}",
            f"{s.lag:,}",
            _ago(s.last_batch_ts, now),
            f"{s.metric[0]} {s.metric[1]:.4g}" if s.metric else "-",
            f"v{s.model_version}",
            ", ".join(s.statuses),
            style=None if compact or healthy else "yellow",
        )
    if not rows:
        table.caption = "no live status rows yet"
    return table


def watch(
    bootstrap: str,
    stop: threading.Event,
    refresh_s: float = 1.0,
    console: Console | None = None,
    *,
    log_every_s: float = 10.0,
    stale_s: float = DEFAULT_STALE_S,
) -> None:
    """Show the status until ``stop`` is set: a live table on a terminal, else a compact plain
    table every ``log_every_s`` seconds so redirected logs stay readable."""
    board = StatusBoard(bootstrap, stale_s=stale_s)
    asyncio.run(_watch(board, stop, refresh_s, console or Console(), log_every_s))


async def _watch(
    board: StatusBoard, stop: threading.Event, refresh_s: float, console: Console, log_every_s: float
) -> None:
    async def refreshed() -> bool:
        """Wait ``refresh_s`` (off the loop: ``stop`` is a thread's event); False once stopped."""
        return not await asyncio.to_thread(stop.wait, refresh_s)

    async with board.following():
        with contextlib.suppress(TimeoutError):  # the first table shows what is there by then
            await asyncio.wait_for(board.follower.caught_up.wait(), refresh_s)
        if console.is_terminal:
            with Live(render(board.rows()), console=console, auto_refresh=False) as live:
                while await refreshed():
                    live.update(render(board.rows()), refresh=True)
            return
        next_print = time.monotonic()
        while True:
            if time.monotonic() >= next_print:
                console.print(f"[driftline] status at {time.strftime('%H:%M:%S')}", markup=False)
                # Logs have no width to respect, and a wrapped header is harder to grep than a long line.
                console.print(render(board.rows(), compact=True), width=max(console.width, LOG_WIDTH))
                next_print += log_every_s
            if not await refreshed():
                return


async def publish_status(
    producer: Any,
    make_rows: Callable[[], list[ServiceStatus]],
    stop: asyncio.Event,
    interval_s: float = 2.0,
) -> None:
    """Send ``make_rows()`` to the status topic every ``interval_s`` until ``stop`` (best effort).

    ``producer`` is an aiokafka producer.
    """
    from streams.topics import topic_name

    topic = topic_name("status")
    while True:
        for row in make_rows():
            try:
                await asyncio.wait_for(producer.send_and_wait(topic, row.to_bytes(), key=status_key(row)), 5)
            except Exception as exc:  # status must never stop the stream
                log.debug("status row not sent: %s", exc)
        if await stopped(stop, interval_s):
            return
