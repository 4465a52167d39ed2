"""Applies micro-batches of one service exactly once to its state, whatever the transport.

For each batch: drop events a checkpoint already holds (redelivery after a crash), validate the
rest, dead-letter what fails with the reason, let the service process the good records, produce
its outputs and dead letters and wait until Kafka has them, then checkpoint the service state
together with the offsets. Only after that does the transport acknowledge the events, so a crash
at any point either replays a batch whose effect was never saved or skips one that was: model
state sees every event once; outputs are at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from models.checkpoints import CheckpointError, CheckpointStore
from streams.metrics import WorkerMetrics
from streams.schemas import DeadLetter, Record, RecordError, parse_record
from streams.service import BatchResult, ModelService, Output, Subscription
from streams.topics import topic_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """One consumed event, transport-neutral."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Sink(Protocol):
    """Where outputs and dead letters go; ``send`` returns once the broker has the record."""

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...


def _tp(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class ServiceRunner:
    """Owns one service's offsets and checkpoints; see the module docstring for the protocol."""

    def __init__(
        self,
        service: ModelService,
        checkpoint_root: Path,
        sink: Sink,
        metrics: WorkerMetrics,
        keep_checkpoints: int = 3,
    ) -> None:
        self.service = service
        self.store = CheckpointStore(checkpoint_root, f"worker-{service.name}", keep=keep_checkpoints)
        self.sink = sink
        self.metrics = metrics
        self.offsets: dict[str, int] = {}
        #: The checkpoint version the service was restored from at start-up (None: fresh start).
        self.restored_version: int | None = None
        self._lock = asyncio.Lock()
        service.emit = self.emit

    # -- start-up -----------------------------------------------------------------------------
    def restore(self) -> int | None:
        """Load the last checkpoint (if any) into the service; return its version."""
        try:
            checkpoint = self.store.load()
        except CheckpointError:
            return None
        with self.service.lock:
            self.service.load_state_dict(checkpoint.state["service"])
        self.offsets = dict(checkpoint.offsets)
        self.restored_version = checkpoint.version
        self.metrics.checkpoint_version.labels(self.service.name).set(checkpoint.version)
        self.metrics.model_version.labels(self.service.name).set(self.service.model_version())
        log.info(
            "%s: restored checkpoint v%d (%d partitions)",
            self.service.name,
            checkpoint.version,
            len(self.offsets),
        )
        return checkpoint.version

    # -- the batch protocol --------------------------------------------------------------------
    async def apply(self, subscription: Subscription, events: list[Incoming]) -> BatchResult:
        """Apply one micro-batch; see the module docstring."""
        async with self._lock:
            started = time.perf_counter()
            fresh = [e for e in events if e.offset > self.offsets.get(_tp(e.topic, e.partition), -1)]
            records: list[Record] = []
            sources: list[Incoming] = []
            dead: list[tuple[Incoming, str]] = []
            for event in fresh:
                try:
                    if event.value is None:
                        raise RecordError("empty event (no value)")
                    records.append(parse_record(event.value, subscription.record_type))
                    sources.append(event)
                except RecordError as exc:
                    dead.append((event, str(exc)))
            result = BatchResult()
            if records:
                try:
                    result = await asyncio.to_thread(self._process, subscription.topic, records)
                except Exception as exc:  # keep the worker alive; the events stay recoverable
                    log.exception("%s: processing a batch of %d failed", self.service.name, len(records))
                    reason = f"processing failed: {type(exc).__name__}: {exc}"
                    result = BatchResult(rejected=dict.fromkeys(range(len(records)), reason))
                dead.extend((sources[i], reason) for i, reason in sorted(result.rejected.items()))
            await self._send(result.outputs, dead)
            for event in fresh:
                key = _tp(event.topic, event.partition)
                self.offsets[key] = max(self.offsets.get(key, -1), event.offset)
            if fresh:
                version = await asyncio.to_thread(self._checkpoint)
                self.metrics.checkpoint_version.labels(self.service.name).set(version)
            self._record_metrics(subscription.topic, len(records) - len(result.rejected), result, dead)
            self.metrics.batch_seconds.labels(self.service.name).observe(time.perf_counter() - started)
            return result

    def _process(self, topic: str, records: list[Record]) -> BatchResult:
        with self.service.lock:
            return self.service.process(topic, records)

    def _checkpoint(self) -> int:
        with self.service.lock:
            state: dict[str, Any] = {"service": self.service.state_dict()}
            return self.store.save(state, self.offsets, {"model_version": self.service.model_version()})

    async def _send(self, outputs: list[Output], dead: list[tuple[Incoming, str]]) -> None:
        sends: list[Awaitable[None]] = [self.emit(output) for output in outputs]
        for event, reason in dead:
            letter = DeadLetter(
                topic=event.topic,
                partition=event.partition,
                offset=event.offset,
                reason=reason,
                payload=(event.value or b"").decode("utf-8", errors="replace"),
                ts=time.time(),
            )
            sends.append(self.sink.send(topic_name("dead-letter"), event.key, letter.to_bytes()))
        if dead:
            event, reason = dead[0]
            log.warning(
                "%s: dead-lettered %d event(s), first %s:%d@%d: %s",
                self.service.name,
                len(dead),
                event.topic,
                event.partition,
                event.offset,
                reason,
            )
        if sends:
            await asyncio.gather(*sends)

    async def emit(self, output: Output) -> None:
        """Produce one output record; services also call it (e.g. a label submitted over HTTP)."""
        key = output.key.encode() if output.key is not None else None
        await self.sink.send(output.topic, key, output.record.to_bytes())

    def _record_metrics(
        self,
        topic: str,
        applied: int,
        result: BatchResult,
        dead: list[tuple[Incoming, str]],
    ) -> None:
        name = self.service.name
        self.metrics.applied(name, topic, applied)
        if dead:
            self.metrics.dead_letters.labels(name, topic).inc(len(dead))
        for metric, value in result.metrics.items():
            self.metrics.online_metric.labels(name, metric).set(value)
        self.metrics.model_version.labels(name).set(self.service.model_version())
