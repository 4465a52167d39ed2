"""Applies micro-batches of one service exactly once to its state, whatever the transport.

The protocol, for each batch of raw events (any objects with ``topic``, ``partition``, ``offset``,
``key`` and ``value``, such as aiokafka's records):

1. drop events at or below the applied offset of their partition (redelivery);
2. validate the rest (or take their results from a parse done ahead, while the batch before was
   processed: parsing is pure); what fails is dead-lettered with the reason. A subscription with a
   ``decode`` may take a whole batch of usable events in one go instead (:func:`parse_batch`);
   a batch it does not take, or one only partly fresh, is validated event by event;
3. let the service process the records (the runner's own thread, holding the service lock). If it raises,
   the state is restored from the last in-memory snapshot, the batches since then are replayed,
   and the failed batch is bisected until the records that make it raise are isolated and
   dead-lettered: a failed batch leaves no trace in state;
4. send outputs and dead letters and wait until the broker has every one. A send that fails is
   retried until it succeeds; meanwhile nothing else is applied and nothing is checkpointed. An
   output the broker refuses for good (larger than it takes, say) is dead-lettered instead;
5. advance the applied offsets.

Checkpoints are taken by interval (:class:`CheckpointPolicy`), not per batch: the state is copied
under the lock (the copy is also the restore point of step 3) and written to disk in a thread
while the next batches go on. Kafka's committed offsets are set only after a checkpoint is
durable and are advisory: on assignment the consumer seeks to the offsets the checkpoint holds.
So after a crash at any step the restarted worker replays exactly the events its state lacks:
**every event is applied to model state once; outputs are delivered at least once.**

Keyed services (:class:`streams.keyed.KeyedService`) checkpoint one shard per partition number,
so a partition and its state can move to another worker; shared services checkpoint one state.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from models.checkpoints import Checkpoint, CheckpointError, CheckpointStore, serialize
from streams import faults
from streams.drift import Adapts, DriftMonitor, detector_class
from streams.keyed import KeyedService
from streams.metrics import WorkerMetrics
from streams.schemas import DeadLetter, Record, RecordError, parse_record, record_limits
from streams.service import BatchResult, ModelService, Output, Subscription
from streams.sink import RecordRefused
from streams.topics import topic_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class Event(Protocol):
    """One consumed event; aiokafka's ConsumerRecord fits as it is."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Incoming:
    """An :class:`Event` built by hand (tests, replays)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Sink(Protocol):
    """Where outputs and dead letters go; ``send`` returns once the broker has the record, or
    raises :class:`~streams.sink.RecordRefused` for a record it will never take."""

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...


Commit = Callable[[dict[tuple[str, int], int]], Awaitable[None]]


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to checkpoint: every ``interval_s`` seconds or ``events`` applied events, whichever first."""

    interval_s: float = 10.0
    events: int = 100_000
    #: Versions kept per store (the older ones are the fall-back for a corrupted newest).
    keep: int = 3


def tp_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def split_tp(key: str) -> tuple[str, int]:
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)


#: Partition and offset of a dead letter that is a refused output, not a consumed event.
NO_EVENT = -1
#: Characters of a refused output kept in its dead letter: enough to tell which output it was.
EXCERPT_CHARS = 1_000


def _encoded(output: Output) -> tuple[bytes | None, bytes]:
    """An output's Kafka key and value."""
    return (output.key.encode() if output.key is not None else None), output.record.to_bytes()


def _excerpt(value: bytes) -> str:
    text = value[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    return text if len(value) <= EXCERPT_CHARS else f"{text}... [excerpt of {len(value):,} bytes]"


def _last_offsets(events: Iterable[Event]) -> dict[str, int]:
    """The highest offset per ``topic:partition`` among ``events`` (one key string per partition)."""
    last: dict[tuple[str, int], int] = {}
    for event in events:
        tp = (event.topic, event.partition)
        if event.offset > last.get(tp, -1):
            last[tp] = event.offset
    return {tp_key(*tp): offset for tp, offset in last.items()}


@functools.cache
def _detector_import() -> threading.Thread:
    """The drift detector's library (river) being imported in a thread, started once per process.

    Imported on first use (1.5 s on a quiet machine), it stalled the batch that ended the detector's
    warm-up inside the training lock: a quarter of the busy samples of a ctr worker draining
    50,000 impressions (py-spy). Started with the runner, it overlaps the connection and the group
    join, and :meth:`ServiceRunner.assign` waits for it: a one-off start-up cost, paid before the
    first batch.
    """
    thread = threading.Thread(target=detector_class, name="drift-import", daemon=True)
    thread.start()
    return thread


@dataclass(slots=True)
class _Item:
    event: Event
    record: Record


#: What parsing each event of a batch gave, in the batch's order: its record, or why it is unusable.
Parsed = list[Record | str]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A whole batch taken by its subscription's ``decode``: every event in it is usable."""

    value: Any


def parse_batch(subscription: Subscription, events: Sequence[Event]) -> Parsed | Decoded:
    """The batch decoded whole by ``subscription.decode`` if it takes it, else :func:`parse_events`
    of it; pure either way (both may run ahead of the batch before)."""
    decode = subscription.decode
    if decode is not None and events:
        values = [event.value for event in events]
        if None not in values:
            decoded = decode(values)
            if decoded is not None:
                return Decoded(decoded)
    return parse_events(subscription.record_type, events)


def parse_events(record_type: type[Record], events: Sequence[Event]) -> Parsed:
    """Validate ``events`` as ``record_type`` records; pure (no state is read or changed).

    Being pure, it may run ahead of the batch before it (:class:`streams.consumer.BatchConsumer`
    parses the next batch while the runner applies one): the runner still decides at apply time
    which events are fresh, and dead-letters the unusable ones among those.
    """
    parsed: Parsed = []
    validate, limit = _validator(record_type)
    for event in events:
        value = event.value
        if value is None:
            parsed.append("empty event (no value)")
            continue
        if limit is None or len(value) <= limit:
            try:
                parsed.append(validate(value))
                continue
            except ValueError:
                pass
        parsed.append(_explained(value, record_type))
    return parsed


def _validator(record_type: type[Record]) -> tuple[Callable[[bytes], Record], int | None]:
    """How to parse one event of ``record_type`` on the fast path, and the size limit to check first.

    A type that keeps :meth:`Record.model_validate_json` is parsed by pydantic's validator itself,
    its size limit read here once a batch: through that method each impression cost 1.7 us more
    (9.2 against 7.5 us at best, 4,096 MovieLens impressions, 30 rounds, load 13-16). A type that
    overrides the method is parsed through its own.
    """
    parse = record_type.model_validate_json
    if getattr(parse, "__func__", None) is not Record.model_validate_json.__func__:
        return parse, None
    limit = record_limits()[0] if record_type.bounded else None
    return record_type.__pydantic_validator__.validate_json, limit


def _explained(value: bytes, record_type: type[Record]) -> Record | str:
    """The slow path for an event the fast one refused: the record, or precisely what is wrong."""
    try:
        return parse_record(value, record_type)
    except RecordError as exc:
        return str(exc)


def _split(events: Sequence[Event], parsed: Parsed) -> tuple[list[_Item], list[tuple[Event, str]]]:
    """The usable records with their events, and the unusable events with their reasons."""
    items: list[_Item] = []
    dead: list[tuple[Event, str]] = []
    for event, result in zip(events, parsed, strict=True):
        if isinstance(result, str):
            dead.append((event, result))
        else:
            items.append(_Item(event, result))
    return items, dead


#: The batches applied since the snapshot, as raw events with their subscription: replayed (parsed
#: again) only after a failure, and raw events keep far fewer objects alive for the garbage
#: collector to scan than parsed records do.
Journal = list[tuple[Subscription, list[Event]]]


@dataclass
class _Applied:
    """What processing a batch gave: outputs, metrics, and events to dead-letter with reasons."""

    outputs: list[Output] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    dead: list[tuple[Event, str]] = field(default_factory=list)

    def merge(self, other: _Applied) -> _Applied:
        return _Applied(
            self.outputs + other.outputs, {**self.metrics, **other.metrics}, self.dead + other.dead
        )


@dataclass
class _Snapshot:
    """A deep copy of the whole state and the offsets it holds: restore point and checkpoint source."""

    state: dict[str, Any]
    offsets: dict[str, int]
    model_version: int


class ServiceRunner:
    """Owns one service's offsets, restore point and checkpoints; see the module docstring."""

    def __init__(
        self,
        service: ModelService,
        checkpoint_root: Path,
        sink: Sink,
        metrics: WorkerMetrics,
        policy: CheckpointPolicy | None = None,
    ) -> None:
        self.service = service
        self.keyed = isinstance(service, KeyedService)
        self.root = Path(checkpoint_root)
        self.policy = policy or CheckpointPolicy()
        self.store = CheckpointStore(self.root, f"worker-{service.name}", keep=self.policy.keep)
        self.sink = sink
        self.metrics = metrics
        #: Last applied offset per ``topic:partition``.
        self.offsets: dict[str, int] = {}
        #: The checkpoint version restored at start-up (None: fresh start); for a keyed service, the
        #: newest among the shards restored on assignment, each shard counting its own versions.
        self.restored_version: int | None = None
        #: Set by the consumer: commits offsets to Kafka (advisory; never ahead of a checkpoint).
        self.commit: Commit | None = None
        #: Why the runner is degraded (a checkpoint or a send failing), or None.
        self.problem: str | None = None
        self.checkpoint_bytes = 0
        self._batch_lock = asyncio.Lock()
        self._snapshot: _Snapshot | None = None
        self._journal: Journal = []
        self._unsaved_events = 0
        self._unsaved_shards: set[int] = set()
        self._last_checkpoint = time.monotonic()
        self._writing: asyncio.Task[None] | None = None
        #: The one thread that processes batches (see :meth:`_in_applier`); it ends with the runner.
        self._applier = ThreadPoolExecutor(1, thread_name_prefix=f"{service.name}-apply")
        weakref.finalize(self, self._applier.shutdown, wait=False)
        service.emit = self.emit
        service.restoring = True
        #: The drift alarm on the service's error stream; its state is checkpointed with the service.
        self.drift = None if self.keyed else DriftMonitor.for_service(service.name)
        self._detector_import = None if self.drift is None else _detector_import()

    # -- restoring -----------------------------------------------------------------------------
    def restore(self) -> int | None:
        """Load the whole state of a shared service from its newest readable checkpoint."""
        if self.keyed:
            raise TypeError("keyed services restore shard by shard on assignment (assign)")
        try:
            checkpoint = self.store.load()
        except CheckpointError as exc:
            log.info("%s: starting fresh (%s)", self.service.name, exc)
            return None
        with self.service.lock:
            self.service.load_state_dict(checkpoint.state["service"])
            self.service.outcome_seqs = dict(checkpoint.state.get("outcomes", {}))
            self._load_drift(checkpoint.state)
        self.offsets = dict(checkpoint.offsets)
        self._restored(checkpoint)
        self._snapshot = None  # the next assign or apply takes the restore point from this state
        return checkpoint.version

    def _restored(self, checkpoint: Checkpoint) -> None:
        # A keyed service restores its shards one by one, in assignment order: reporting the last
        # one's version made /health's figure depend on which partition happened to come last.
        newest = max(checkpoint.version, self.restored_version or 0) if self.keyed else checkpoint.version
        self.restored_version = newest
        self.metrics.checkpoint_version.labels(self.service.name).set(checkpoint.version)
        self.metrics.model_version.labels(self.service.name).set(self.service.model_version())
        log.info(
            "%s: restored %s v%d",
            self.service.name,
            checkpoint.meta.get("shard", "state"),
            checkpoint.version,
        )

    def shard_store(self, partition: int) -> CheckpointStore:
        return CheckpointStore(
            self.root, f"worker-{self.service.name}/p{partition:04d}", keep=self.policy.keep
        )

    async def assign(
        self, assigned: Iterable[tuple[str, int]], partitions: int
    ) -> dict[tuple[str, int], int | None]:
        """Take over partitions: load what their checkpoints hold; return where to seek each.

        The value is the next offset to read (checkpoint offset + 1), or None for "from the
        beginning" (no checkpoint has seen that partition).
        """
        assigned = sorted(set(assigned))
        async with self._batch_lock:
            self.service.partitions = partitions
            if self.keyed:
                assert isinstance(self.service, KeyedService)
                new = {p for _, p in assigned} - self.service.shards()
                await asyncio.to_thread(self._load_shards, new)
            elif assigned and not self.service.owned:
                # Taking over a shared model: start from what the last owner checkpointed.
                await asyncio.to_thread(self.restore)
            await asyncio.to_thread(self._take_snapshot)
            if assigned and self._detector_import is not None:
                await asyncio.to_thread(self._detector_import.join)
            self.service.owned = self.service.owned | {p for _, p in assigned}
            self.service.restoring = False
        return {
            (topic, partition): (
                self.offsets[tp_key(topic, partition)] + 1
                if tp_key(topic, partition) in self.offsets
                else None
            )
            for topic, partition in assigned
        }

    def _load_shards(self, partitions: set[int]) -> None:
        service = self.service
        assert isinstance(service, KeyedService)
        legacy: Checkpoint | None = None
        for partition in sorted(partitions):
            try:
                checkpoint = self.shard_store(partition).load()
            except CheckpointError:
                if legacy is None:
                    legacy = self._legacy_checkpoint()
                shard, offsets = self._shard_from_legacy(legacy, partition)
            else:
                shard, offsets = checkpoint.state["shard"], checkpoint.offsets
                self._restored(checkpoint)
            with service.lock:
                service.load_shard(partition, shard)
            self.offsets.update(offsets)

    def _legacy_checkpoint(self) -> Checkpoint | None:
        """A whole-service checkpoint of the first release (format 1), if the store holds one."""
        try:
            return self.store.load()
        except CheckpointError:
            return None

    def _shard_from_legacy(
        self, legacy: Checkpoint | None, partition: int
    ) -> tuple[dict[str, Any] | None, dict[str, int]]:
        if legacy is None:
            return None, {}
        service = self.service
        assert isinstance(service, KeyedService)
        shard = service.shard_from_state(legacy.state["service"], partition)
        offsets = {k: v for k, v in legacy.offsets.items() if split_tp(k)[1] == partition}
        log.info(
            "%s: shard %d taken from the format-%d checkpoint v%d",
            service.name,
            partition,
            legacy.format,
            legacy.version,
        )
        return shard, offsets

    async def revoke(self, revoked: Iterable[tuple[str, int]]) -> None:
        """Hand partitions over: checkpoint them now, then forget their state and offsets."""
        revoked = set(revoked)
        if not revoked:
            return
        async with self._batch_lock:
            await self._finish_writing()
            if self._snapshot is not None:
                await asyncio.to_thread(self._snapshot_for_checkpoint)
                await self._write_checkpoint(self._snapshot, self._take_unsaved_shards())
            gone = {tp_key(t, p) for t, p in revoked}
            for key in gone:
                self.offsets.pop(key, None)
            self.service.owned = self.service.owned - {p for _, p in revoked}
            if self.keyed:
                service = self.service
                assert isinstance(service, KeyedService)
                with service.lock:
                    for partition in {p for _, p in revoked}:
                        service.drop_shard(partition)
            else:
                self._snapshot = None  # another trainer may write newer versions meanwhile
            if self._snapshot is not None:
                await asyncio.to_thread(self._take_snapshot)
            for topic, partition in revoked:
                self.metrics.forget_partition(self.service.name, topic, partition)

    # -- the batch protocol --------------------------------------------------------------------
    async def apply(
        self,
        subscription: Subscription,
        events: Sequence[Event],
        still_valid: Callable[[], bool] = lambda: True,
        parsed: Parsed | Decoded | None = None,
    ) -> BatchResult | None:
        """Apply one micro-batch of ``subscription``'s topic; see the module docstring.

        ``still_valid`` is asked once the batch lock is held: a consumer whose assignment changed
        meanwhile (a seek to the checkpoint's offsets) says no, the batch is not applied and the
        answer is None (the consumer then reads from the applied offsets again).

        ``parsed`` is :func:`parse_batch` of ``events`` done ahead, or None to parse here. Either
        way only the fresh events' results are used, chosen now against the applied offsets: a
        :class:`Decoded` batch is used only if every event in it is fresh.
        """
        async with self._batch_lock:
            if not still_valid():
                return None
            started = time.perf_counter()
            positions, last = self._fresh(events)
            if not positions:
                return BatchResult()
            if self._snapshot is None:
                await asyncio.to_thread(self._take_snapshot)
            fresh = [events[i] for i in positions]
            if isinstance(parsed, Decoded) and len(fresh) == len(events):
                applied = await self._in_applier(self._process_decoded_safely, subscription, fresh, parsed)
            else:
                if parsed is None or isinstance(parsed, Decoded):  # off the event loop
                    results = await asyncio.to_thread(parse_events, subscription.record_type, fresh)
                else:
                    results = [parsed[i] for i in positions]
                items, dead = _split(fresh, results)
                applied = _Applied(dead=dead)
                if items:
                    processed = await self._in_applier(self._process_safely, subscription, items)
                    applied = applied.merge(processed)
            faults.crash_point("after_apply")
            await self._send(applied.outputs, applied.dead)
            faults.crash_point("after_send")
            for (topic, partition), offset in last.items():
                self.offsets[tp_key(topic, partition)] = offset
                self._unsaved_shards.add(partition)
            self._unsaved_events += len(fresh)
            self._record_metrics(subscription.topic, len(fresh) - len(applied.dead), applied)
            self.metrics.batch_seconds.labels(self.service.name).observe(time.perf_counter() - started)
            return BatchResult(applied.outputs, applied.metrics, {})

    def _in_applier(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` in the runner's own processing thread, always the same one.

        OpenMP keeps a team of threads per thread that starts parallel work, and a team spins for a
        while after each region. With batches processed in whichever of asyncio's default threads
        was free, ctr's training alternated between two teams, and the idle team's spinning took
        cores from the working one: the worker's threads used 43.6-45.7 us of CPU per impression
        against 40.8-42.0 with one processing thread (2 drains each, 100,000 MovieLens impressions).
        """
        return asyncio.get_running_loop().run_in_executor(self._applier, fn, *args)

    def _fresh(self, events: Sequence[Event]) -> tuple[list[int], dict[tuple[str, int], int]]:
        """The positions of the events not applied yet, and the new last offset of each partition
        they touch."""
        applied: dict[tuple[str, int], int] = {}
        fresh: list[int] = []
        for position, event in enumerate(events):
            tp = (event.topic, event.partition)
            last = applied.get(tp)
            if last is None:
                last = self.offsets.get(tp_key(*tp), -1)
            if event.offset > last:
                fresh.append(position)
                last = event.offset
            applied[tp] = last
        moved = {tp: o for tp, o in applied.items() if o > self.offsets.get(tp_key(*tp), -1)}
        return fresh, moved

    def _process_safely(self, subscription: Subscription, items: list[_Item]) -> _Applied:
        """Process under the lock; on an exception restore, replay, and isolate what raised."""
        with self.service.lock:
            try:
                applied = self._process(subscription.topic, items)
            except Exception:
                return self._isolate_failed(subscription, items)
            self._journal.append((subscription, [i.event for i in items]))
            return applied

    def _process_decoded_safely(
        self, subscription: Subscription, events: list[Event], decoded: Decoded
    ) -> _Applied:
        """:meth:`_process_safely` for a batch its subscription decoded whole (every event usable,
        so nothing to dead-letter unless processing raises: then it goes event by event)."""
        service = self.service
        with service.lock:
            try:
                result = self._process_shared(
                    events, lambda: service.process_decoded(subscription.topic, decoded.value)
                )
            except Exception:
                items, dead = _split(events, parse_events(subscription.record_type, events))
                return _Applied(dead=dead).merge(self._isolate_failed(subscription, items))
            self._journal.append((subscription, events))
            return _Applied(list(result.outputs), dict(result.metrics))

    def _isolate_failed(self, subscription: Subscription, items: list[_Item]) -> _Applied:
        """After a batch raised (holding the lock): back to the state before it, then apply what
        applies and dead-letter what raises alone."""
        log.exception("%s: a batch of %d failed; isolating the cause", self.service.name, len(items))
        self._recover()
        return self._isolate(subscription, items)

    def _process(self, topic: str, items: list[_Item]) -> _Applied:
        service = self.service
        if not isinstance(service, KeyedService):
            records = [i.record for i in items]
            result = self._process_shared([i.event for i in items], lambda: service.process(topic, records))
            return self._collect(items, result)
        by_partition: dict[int, list[_Item]] = {}
        for item in items:
            by_partition.setdefault(item.event.partition, []).append(item)
        applied = _Applied()
        for partition, group in by_partition.items():
            result = service.process_shard(topic, partition, [i.record for i in group])
            applied = applied.merge(self._collect(group, result))
        return applied

    def _process_shared(self, events: Iterable[Event], process: Callable[[], BatchResult]) -> BatchResult:
        """A shared service's step: what it has learned up to (``batch_offsets``), the step itself,
        and its error fed to the drift alarm."""
        self.service.batch_offsets = {**self.offsets, **_last_offsets(events)}
        result = process()
        self._watch_drift(result.metrics)
        return result

    @staticmethod
    def _collect(items: list[_Item], result: BatchResult) -> _Applied:
        dead = [(items[i].event, reason) for i, reason in sorted(result.rejected.items())]
        return _Applied(list(result.outputs), dict(result.metrics), dead)

    def _recover(self) -> None:
        """Back to the state just before the failed batch: the snapshot plus the batches since."""
        self._back_to_snapshot(replay=self._journal)

    def _back_to_snapshot(self, replay: Journal) -> None:
        """The snapshot's state, then ``replay``'s batches, then the outcomes decided over HTTP
        since the snapshot (so none is lost nor its ``seq`` reused); call holding the lock."""
        assert self._snapshot is not None
        self._load(self._snapshot)
        for subscription, events in replay:
            parsed = parse_events(subscription.record_type, events)  # the same records: it is pure
            items, _ = _split(events, parsed)
            self._process(subscription.topic, items)
        for outcome in self.service.decided:
            self.service.apply_outcome_once(outcome)

    def _isolate(self, subscription: Subscription, items: list[_Item]) -> _Applied:
        """Apply what applies, bisecting; records that raise alone are dead-lettered."""
        before = self._full_state()
        try:
            applied = self._process(subscription.topic, items)
        except Exception as exc:
            self._load(_Snapshot(before, dict(self.offsets), 0))
            if len(items) == 1:
                reason = f"processing failed: {type(exc).__name__}: {exc}"
                return _Applied(dead=[(items[0].event, reason)])
            middle = len(items) // 2
            return self._isolate(subscription, items[:middle]).merge(
                self._isolate(subscription, items[middle:])
            )
        self._journal.append((subscription, [i.event for i in items]))
        return applied

    def _watch_drift(self, metrics: dict[str, float]) -> None:
        """Feed the batch's error to the drift alarm; on a new alarm, let the service adapt."""
        if self.drift is None or not self.drift.observe(metrics):
            return
        log.warning("%s: drift alarm %d on %s", self.service.name, self.drift.alarms, self.drift.metric)
        action = self.drift.settings.action
        if isinstance(self.service, Adapts):
            self.service.on_drift(action)

    def _full_state(self) -> dict[str, Any]:
        state = {"service": self.service.state_dict(), "outcomes": dict(self.service.outcome_seqs)}
        if self.drift is not None:
            state["drift"] = self.drift.state_dict()
        return copy.deepcopy(state)

    def _load(self, snapshot: _Snapshot) -> None:
        state = copy.deepcopy(snapshot.state)
        self.service.load_state_dict(state["service"])
        self.service.outcome_seqs = state["outcomes"]
        self._load_drift(state)

    def _load_drift(self, state: dict[str, Any]) -> None:
        if self.drift is not None and "drift" in state:  # absent in checkpoints before drift alarms
            self.drift.load_state_dict(state["drift"])

    def _take_snapshot(self) -> None:
        with self.service.lock:
            self._snapshot = _Snapshot(self._full_state(), dict(self.offsets), self.service.model_version())
            self._journal = []
            self.service.decided = []

    async def rewind(self, owned: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Back to the restore point after a fault of ours; return where to read ``owned`` again from."""
        async with self._batch_lock:
            assert self._snapshot is not None
            with self.service.lock:
                self._back_to_snapshot(replay=[])
            self._journal = []
            self.offsets = dict(self._snapshot.offsets)
            return self.next_offsets(owned)

    def next_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where to read each partition from: its applied offset + 1 (0 when none is applied)."""
        return {tp: self.offsets.get(tp_key(*tp), -1) + 1 for tp in partitions}

    # -- outputs -------------------------------------------------------------------------------
    async def _send(self, outputs: list[Output], dead: list[tuple[Event, str]]) -> None:
        sends: list[Awaitable[None]] = [self._deliver(output) for output in outputs]
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
                self.service.name, len(dead), event.topic, event.partition, event.offset, reason,
            )  # fmt: skip
        if sends:
            await asyncio.gather(*sends)

    async def _deliver(self, output: Output) -> None:
        """Send one output of a batch; one the broker refuses for good is dead-lettered instead.

        Retrying it could never succeed and would stall the stream, so the batch completes and
        the dead letter keeps the reason and an excerpt of the output (bounded, so that it is
        never refused itself). Services' own :meth:`emit` calls (outcomes decided over HTTP) are
        not covered: their caller gets the refusal as an error.
        """
        key, value = _encoded(output)
        try:
            await self.sink.send(output.topic, key, value)
        except RecordRefused as exc:
            log.error("%s: an output was refused, dead-lettered instead: %s", self.service.name, exc)
            letter = DeadLetter(
                topic=output.topic,
                partition=NO_EVENT,
                offset=NO_EVENT,
                reason=f"output refused by the broker, not retriable: {exc.reason} ({exc.size:,} bytes)",
                payload=_excerpt(value),
                ts=time.time(),
            )
            self.metrics.dead_letters.labels(self.service.name, output.topic).inc()
            await self.sink.send(topic_name("dead-letter"), key, letter.to_bytes())

    async def emit(self, output: Output) -> None:
        """Produce one output record; services also call it (e.g. an outcome decided over HTTP)."""
        await self.sink.send(output.topic, *_encoded(output))

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        if self._unsaved_events == 0 or (self._writing is not None and not self._writing.done()):
            return False
        waited = time.monotonic() - self._last_checkpoint
        return self._unsaved_events >= self.policy.events or waited >= self.policy.interval_s

    async def maybe_checkpoint(self) -> None:
        """Start a background checkpoint when the policy says one is due."""
        if not self.checkpoint_due():
            return
        async with self._batch_lock:
            await asyncio.to_thread(self._snapshot_for_checkpoint)
            snapshot, shards = self._snapshot, self._take_unsaved_shards()
        assert snapshot is not None
        self._writing = asyncio.create_task(self._write_checkpoint(snapshot, shards))

    async def checkpoint(self) -> None:
        """Checkpoint now and wait until it is durable (shutdown, hand-over, tests)."""
        async with self._batch_lock:
            await self._finish_writing()
            if self._unsaved_events:
                await asyncio.to_thread(self._snapshot_for_checkpoint)
                assert self._snapshot is not None
                await self._write_checkpoint(self._snapshot, self._take_unsaved_shards())

    async def _finish_writing(self) -> None:
        if self._writing is not None:
            await asyncio.shield(self._writing)
            self._writing = None

    def _snapshot_for_checkpoint(self) -> None:
        self._take_snapshot()
        self._unsaved_events = 0
        self._last_checkpoint = time.monotonic()

    def _take_unsaved_shards(self) -> set[int]:
        shards, self._unsaved_shards = self._unsaved_shards, set()
        return shards

    async def _write_checkpoint(self, snapshot: _Snapshot, shards: set[int]) -> None:
        try:
            written, version = await asyncio.to_thread(self._write, snapshot, shards)
        except Exception as exc:  # a full disk, a lost mount: keep going on the in-memory restore point
            self._unsaved_shards |= shards
            self._unsaved_events = max(self._unsaved_events, 1)
            self.problem = f"checkpoint failed: {type(exc).__name__}: {exc}"
            self.metrics.checkpoint_failures.labels(self.service.name).inc()
            log.error(
                "%s: %s; offsets stay uncommitted until a checkpoint succeeds",
                self.service.name,
                self.problem,
            )
            return
        self.problem = None
        self.checkpoint_bytes += written
        self.metrics.checkpoint_bytes.labels(self.service.name).inc(written)
        self.metrics.checkpoint_version.labels(self.service.name).set(version)
        faults.crash_point("after_checkpoint")
        if self.commit is not None:
            try:
                await self.commit({split_tp(k): v + 1 for k, v in snapshot.offsets.items()})
            except Exception as exc:  # advisory only: the checkpoint holds the truth
                log.warning("%s: committing offsets failed: %s", self.service.name, exc)

    def _write(self, snapshot: _Snapshot, shards: set[int]) -> tuple[int, int]:
        """Write the snapshot (keyed: each changed shard); return bytes written and the version."""
        meta = {"model_version": snapshot.model_version}
        if not self.keyed:
            payload = serialize(snapshot.state)
            return len(payload), self.store.save_bytes(payload, snapshot.offsets, meta)
        written, version = 0, 0
        held = snapshot.state["service"]["shards"]
        for partition in sorted(shards & set(held)):
            offsets = {k: v for k, v in snapshot.offsets.items() if split_tp(k)[1] == partition}
            payload = serialize({"shard": held[partition]})
            version = self.shard_store(partition).save_bytes(payload, offsets, {**meta, "shard": partition})
            written += len(payload)
        return written, version

    async def close(self) -> None:
        """Final checkpoint before a clean stop."""
        await self.checkpoint()

    # -- metrics -------------------------------------------------------------------------------
    def _record_metrics(self, topic: str, applied: int, result: _Applied) -> None:
        name = self.service.name
        self.metrics.applied(name, topic, applied)
        if result.dead:
            self.metrics.dead_letters.labels(name, topic).inc(len(result.dead))
        for metric, value in result.metrics.items():
            self.metrics.online_metric.labels(name, metric).set(value)
        self.metrics.model_version.labels(name).set(self.service.model_version())
        self.metrics.last_batch.labels(name).set(time.time())
        if self.drift is not None:
            self.metrics.drift_alarms.labels(name).set(self.drift.alarms)
            self.metrics.drift_in_alarm.labels(name).set(int(self.drift.in_alarm))
