"""The hot path: one aiokafka consumer per service hands large batches of raw records to its runner.

No per-event framework machinery: ``getmany`` returns up to ``batch_size`` raw records that go to
:class:`streams.runner.ServiceRunner` as they are. The consumer joins the service's consumer group
(``<app_id>.<service>``) with static membership (``group.instance.id`` = ``<instance>.<service>``)
and a short session timeout, so a restarted worker gets its partitions back at once and a dead
one's partitions move after :data:`SESSION_TIMEOUT_MS`. On assignment it seeks to the offsets the
checkpoint holds; Kafka's committed offsets are never read.

Keyed services spread partitions over the group's members (range assignment keeps co-partitioned
topics together); a shared service (one model) gives every partition to one member and keeps the
others as hot standbys (:func:`one_owner_assignor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import KafkaError

from streams.kafka_security import client_security
from streams.runner import Decoded, Parsed, ServiceRunner, parse_batch
from streams.service import Subscription

log = logging.getLogger(__name__)

#: Chosen once for every role: a restart within it keeps the partitions (static membership); a
#: dead member's partitions move after it. Kafka's broker minimum is 6 s.
SESSION_TIMEOUT_MS = 8_000
HEARTBEAT_INTERVAL_MS = 1_000
#: Join metadata of a member that owns a shared service's partitions (see one_owner_assignor).
OWNER = b"owner"
#: While the batch before is still applied, how often a batch past its window looks for more.
APPLYING_POLL_S = 0.01
#: How long the broker holds a fetch that finds no new records (aiokafka's default: 500 ms). The
#: consumer has one fetch in flight per broker, so a long-poll over idle partitions (a service's
#: control topic) held back the fetch of a busy topic's consumed partitions: ctr's freshness runs
#: showed those 0.5 s waits in learned p99 (docs/streams.md). Costs an empty fetch per 50 ms idle.
FETCH_MAX_WAIT_MS = 50


def one_owner_assignor(owner: BatchConsumer) -> type[AbstractPartitionAssignor]:
    """An assignor giving every partition to one member, the current owner if there is one.

    Each member says in its join metadata whether it owns partitions now, so a standby that joins
    (or rejoins) never takes the model away from a running trainer; with no owner left, the first
    member by id takes over.
    """

    class OneOwnerAssignor(AbstractPartitionAssignor):
        name = "driftline-one-owner"
        version = 0

        @classmethod
        def assign(
            cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            owners = sorted(m for m, meta in members.items() if meta.user_data == OWNER)
            chosen = owners[0] if owners else min(members)
            topics = sorted({t for m in members.values() for t in m.subscription})
            owned = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
            return {
                member: ConsumerProtocolMemberAssignment(cls.version, owned if member == chosen else [], b"")
                for member in members
            }

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            return ConsumerProtocolMemberMetadata(
                cls.version, list(topics), OWNER if owner.was_owner else b""
            )

        @classmethod
        def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
            return None

    return OneOwnerAssignor


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner.assigned(assigned)


@dataclass
class _Taken:
    """A batch taken from Kafka: the owned partitions' records per topic, each topic's parse
    running ahead (:func:`streams.runner.parse_batch`), and the assignment generation it was
    taken in."""

    generation: int
    records: dict[str, list]
    parsed: dict[str, asyncio.Future[Parsed | Decoded]]

    def drop(self) -> None:
        """Not applied after all: stop waiting for its parses (a parse that runs finishes unused)."""
        for future in self.parsed.values():
            future.cancel()


class BatchConsumer:
    """Feeds one runner from Kafka until stopped; see the module docstring."""

    def __init__(self, runner: ServiceRunner, bootstrap: str, group: str, instance: str) -> None:
        self.runner = runner
        self.bootstrap = bootstrap
        self.group = group
        self.instance = instance
        self.subscriptions: dict[str, Subscription] = {s.topic: s for s in runner.service.subscriptions()}
        first = runner.service.subscriptions()[0]
        self.batch_size = max(s.batch_size for s in self.subscriptions.values())
        self.window_s = first.batch_window_s
        self.consumer: AIOKafkaConsumer | None = None
        #: Partitions owned and restored (their state loaded, the consumer positioned).
        self.owned: set[tuple[str, int]] = set()
        #: True once the assignment is restored: checkpoint loaded and the events that were already
        #: in the partitions at assignment replayed (until then queries answer 503).
        self.ready = False
        #: Whether this member owned a shared service's partitions at its last assignment.
        self.was_owner = False
        #: Offsets to reach before the assignment counts as restored.
        self._catch_up: dict[tuple[str, int], int] = {}
        #: Bumped by every assignment change and seek: records taken across one may come from a
        #: position the fetcher had before it, so such a batch is dropped and read again.
        self._generation = 0
        #: Why the broker cannot be read right now, or None.
        self.problem: str | None = None

    def _make_consumer(self) -> AIOKafkaConsumer:
        assignor = RangePartitionAssignor if self.runner.keyed else one_owner_assignor(self)
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            group_instance_id=self.instance,
            client_id=self.instance,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            rebalance_timeout_ms=60_000,
            max_poll_interval_ms=600_000,
            max_poll_records=self.batch_size,
            max_partition_fetch_bytes=4 * 1024**2,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            fetch_max_bytes=64 * 1024**2,
            partition_assignment_strategy=(assignor,),
            **client_security(),
        )

    # -- rebalance callbacks -------------------------------------------------------------------
    async def revoked(self, revoked: set[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked}
        self._generation += 1
        self.owned -= gone
        await self.runner.revoke(gone)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.consumer
        assert consumer is not None
        tps = {(tp.topic, tp.partition) for tp in assigned}
        name = self.runner.service.name
        log.info("%s: %s assigned %d partition(s); restoring", name, self.instance, len(tps))
        self._generation += 1
        # The input topics' partition count, known even to a standby that was assigned nothing.
        counts = [len(consumer.partitions_for_topic(topic) or ()) for topic in self.subscriptions]
        positions = await self.runner.assign(tps, max(counts))
        for (topic, partition), offset in positions.items():
            # No checkpoint has seen the partition: from its first offset (a retention gap resets
            # to the earliest one still there).
            consumer.seek(TopicPartition(topic, partition), 0 if offset is None else offset)
            self.runner.metrics.lag.labels(self.runner.service.name, topic, str(partition)).set(0)
        self._generation += 1  # anything taken before these seeks is dropped (see _apply)
        self.owned = tps
        self.was_owner = bool(tps)
        self._catch_up = await self._backlog(positions)
        self._check_caught_up()
        log.info(
            "%s: %s owns %d partition(s), %d to replay before serving",
            self.runner.service.name, self.instance, len(tps), len(self._catch_up),
        )  # fmt: skip

    async def _backlog(self, positions: Mapping[tuple[str, int], int | None]) -> dict[tuple[str, int], int]:
        """The last offset already in each partition that the restored state has not applied."""
        consumer = self.consumer
        assert consumer is not None
        if not positions:
            return {}
        try:
            ends = await asyncio.wait_for(
                consumer.end_offsets([TopicPartition(t, p) for t, p in positions]), 10
            )
        except (KafkaError, TimeoutError) as exc:
            log.warning("%s: end offsets unknown (%s); serving without catching up first", self.group, exc)
            return {}
        return {
            (tp.topic, tp.partition): end - 1
            for tp, end in ends.items()
            if end > (positions[(tp.topic, tp.partition)] or 0)
        }

    async def _idle_catch_up(self, consumer: AIOKafkaConsumer) -> None:
        """Nothing more to read and nothing in flight: every backlog partition whose read position
        passed its target is caught up, even when its last offsets never reach us (a gap left by
        transaction markers or compaction). One whose position stopped short of its target is
        read again from its applied offset, so a lost seek can never leave it restoring forever."""
        for topic, partition in list(self._catch_up):
            tp = TopicPartition(topic, partition)
            target = self._catch_up[(topic, partition)]
            position = await consumer.position(tp)
            if position > target:
                self._catch_up.pop((topic, partition))
                continue
            again = self.runner.next_offsets([(topic, partition)])
            log.warning(
                "%s: %s:%d idle at position %d short of %d; reading again from %d",
                self.runner.service.name, topic, partition, position, target, again[(topic, partition)],
            )  # fmt: skip
            self._seek(again)
        self._check_caught_up()

    def backlog(self) -> dict[str, int]:
        """Per ``topic:partition`` still replaying: how many events until it is restored."""
        return {
            f"{t}:{p}": target - self.runner.offsets.get(f"{t}:{p}", -1)
            for (t, p), target in self._catch_up.items()
        }

    def _check_caught_up(self) -> None:
        """Ready (and queries answered) once every backlog offset is applied."""
        offsets = self.runner.offsets
        self._catch_up = {
            tp: o for tp, o in self._catch_up.items() if offsets.get(f"{tp[0]}:{tp[1]}", -1) < o
        }
        self.runner.service.restoring = bool(self._catch_up)
        if not self.ready and not self._catch_up:
            log.info("%s: %s caught up; ready", self.runner.service.name, self.instance)
        self.ready = not self._catch_up

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume, apply and checkpoint until ``stop`` is set; then checkpoint and leave."""
        self.consumer = consumer = self._make_consumer()
        consumer.subscribe(list(self.subscriptions), listener=_Listener(self))
        self.runner.commit = self._commit
        await consumer.start()
        log.info("%s: %s connected; joining group %s", self.runner.service.name, self.instance, self.group)
        lag_task = asyncio.create_task(self._track_lag(stop))
        ahead: _Taken | None = None
        try:
            while not stop.is_set():
                ahead = await self._step(consumer, stop, ahead)
                await self.runner.maybe_checkpoint()
        finally:
            if ahead is not None:
                ahead.drop()
            lag_task.cancel()
            with contextlib.suppress(Exception):
                await self.runner.close()
            await consumer.stop()

    async def _take(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, applying: asyncio.Event
    ) -> dict[TopicPartition, list]:
        """Up to ``batch_size`` records: what arrives within ``window_s`` of the first one and, while
        the batch before is still being applied (``applying`` not yet set), until it is.

        The next batch cannot start before that one ends, so closing it earlier only left what
        arrived meanwhile for the batch after: with window 0 a forecast worker alternated batches
        of 1-11 and 66-88 observations, and one observation costs most of a learn round (measured).
        """
        taken: dict[TopicPartition, list] = {}
        count = 0
        deadline: float | None = None
        while count < self.batch_size and not stop.is_set():
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                if applying.is_set():
                    break
                wait = APPLYING_POLL_S
            got = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=self.batch_size - count)
            for tp, records in got.items():
                taken.setdefault(tp, []).extend(records)
                count += len(records)
            if deadline is None:
                if not got:
                    break
                deadline = time.monotonic() + self.window_s
        return taken

    async def _step(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, ahead: _Taken | None
    ) -> _Taken | None:
        """Apply the batch taken before (``ahead``) while the next one is taken and parsed; return
        that next one, or None when nothing came.

        Taking and parsing change no state, so they overlap the batch before: its processing runs
        in a thread that mostly leaves the GIL free (torch), while parsing needs it. A batch taken
        across an assignment change or a seek may come from a position the fetcher had before
        that seek: it is dropped and every owned partition is read again from its applied offset
        before the next take, so nothing is skipped either way (the runner still drops what was
        applied already, by offset, at apply time).
        """
        if ahead is not None and ahead.generation != self._generation:
            ahead.drop()
            ahead = None
            self._read_again_from_applied()
        applied = asyncio.Event()
        taking = asyncio.create_task(self._take_ahead(consumer, stop, applied))
        try:
            if ahead is not None:
                await self._apply(ahead)
            applied.set()
            taken = await taking
        finally:
            taking.cancel()
        if taken is None and ahead is None and self._catch_up:
            await self._idle_catch_up(consumer)
        return taken

    async def _take_ahead(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, applied: asyncio.Event
    ) -> _Taken | None:
        """The next batch, taken until ``applied`` (see :meth:`_take`), its parse started as soon as
        it is taken; None when nothing came."""
        generation = self._generation
        batch = await self._take(consumer, stop, applied)
        return self._prepare(batch, generation) if batch else None

    def _prepare(self, batch: dict[TopicPartition, list], generation: int) -> _Taken:
        """The owned partitions' records per topic, each topic's parse started in a thread."""
        by_topic: dict[str, list] = {}
        for tp, records in batch.items():
            if (tp.topic, tp.partition) in self.owned:
                by_topic.setdefault(tp.topic, []).extend(records)
        parsed = {
            topic: asyncio.ensure_future(asyncio.to_thread(parse_batch, self.subscriptions[topic], records))
            for topic, records in by_topic.items()
        }
        return _Taken(generation, by_topic, parsed)

    async def _apply(self, taken: _Taken) -> None:
        """Apply a batch taken and parsed ahead, topic by topic, unless a seek or an assignment
        change came meanwhile (then it is dropped and read again, see :meth:`_step`)."""
        for topic, records in taken.records.items():
            try:
                applied = await self.runner.apply(
                    self.subscriptions[topic],
                    records,
                    lambda: taken.generation == self._generation,
                    await taken.parsed[topic],
                )
                if applied is None:
                    taken.drop()
                    self._read_again_from_applied()
                    return
                if self._catch_up:
                    self._check_caught_up()
            except Exception:
                # Not a bad event (those are dead-lettered) but a fault of ours: go back to the
                # restore point and read again from there, rather than skip past anything.
                log.exception("%s: applying a batch failed; rewinding to the last restore point", topic)
                taken.drop()
                self._seek(await self.runner.rewind(self.owned))
                return

    def _read_again_from_applied(self) -> None:
        log.info("%s: dropped a batch fetched across a rebalance; reading again", self.runner.service.name)
        self._seek(self.runner.next_offsets(self.owned))

    def _seek(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Read ``positions`` next; a batch taken before the seek is dropped (see :meth:`_step`)."""
        consumer = self.consumer
        assert consumer is not None
        self._generation += 1
        for (topic, partition), offset in positions.items():
            consumer.seek(TopicPartition(topic, partition), offset)

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        owned = {TopicPartition(t, p): o for (t, p), o in offsets.items() if (t, p) in self.owned}
        if owned:
            await consumer.commit(owned)

    async def _track_lag(self, stop: asyncio.Event) -> None:
        """Refresh ``driftline_consumer_lag`` every 2 s from the partitions' end offsets."""
        name = self.runner.service.name
        while not stop.is_set():
            await asyncio.sleep(2.0)
            consumer = self.consumer
            owned = sorted(self.owned)
            if consumer is None or not owned:
                continue
            try:
                ends = await asyncio.wait_for(
                    consumer.end_offsets([TopicPartition(t, p) for t, p in owned]), 5
                )
            except (KafkaError, TimeoutError) as exc:
                self.problem = f"cannot reach Kafka: {type(exc).__name__}: {exc}"
                log.warning("%s: %s", name, self.problem)
                continue
            self.problem = None
            for tp, end in ends.items():
                applied = self.runner.offsets.get(f"{tp.topic}:{tp.partition}", -1)
                self.runner.metrics.lag.labels(name, tp.topic, str(tp.partition)).set(
                    max(end - applied - 1, 0)
                )
