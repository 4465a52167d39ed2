"""The consumer parses the next batch while the runner applies one, and exactly-once still holds.

Driven without a broker: :class:`FakeKafka` is just enough of aiokafka's consumer (positions,
seeks, ``getmany``, the rebalance listener) for :class:`streams.consumer.BatchConsumer`, so the
tests can make a send fail or the assignment change while a batch is taken ahead. The same
protocol over a real broker is tested by the crash-point and fault tests.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, ClassVar, Self

from aiokafka import TopicPartition

from streams.consumer import BatchConsumer
from streams.keyed import partition_for
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, Incoming, ServiceRunner
from streams.schemas import Observation, Record
from streams.service import BatchResult, Subscription
from streams.tally import TallyService, expected_counts
from streams.topics import topic_name
from tests.core.test_runner import ListSink, counts

TOPIC = topic_name("observations")
PARTITIONS = 2
BATCH = 10


class FakeKafka:
    """Partition logs read from a position per partition, ``per_fetch`` records a partition per call."""

    def __init__(self, events: list[Incoming], per_fetch: int = BATCH) -> None:
        self.logs: dict[TopicPartition, list[Incoming]] = {}
        for event in events:
            self.logs.setdefault(TopicPartition(event.topic, event.partition), []).append(event)
        self.positions = dict.fromkeys(self.logs, 0)
        self.per_fetch = per_fetch
        self.listener: Any = None
        self.seeks = 0

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned(set(self.logs))

    async def stop(self) -> None:
        return None

    async def rebalance(self) -> None:
        """The group rebalances and gives this member the same partitions back."""
        await self.listener.on_partitions_revoked(set(self.logs))
        await self.listener.on_partitions_assigned(set(self.logs))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.logs if tp.topic == topic}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset
        self.seeks += 1

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in tps}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Incoming]]:
        await asyncio.sleep(0.001)  # a fetch yields to the event loop, as a real one does
        got: dict[TopicPartition, list[Incoming]] = {}
        for tp, log in self.logs.items():
            start = self.positions[tp]
            records = log[start : start + min(self.per_fetch, max_records)]
            if records:
                got[tp] = records
                self.positions[tp] = start + len(records)
                max_records -= len(records)
        if not got:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return got


def observations(count: int) -> list[Incoming]:
    """``count`` SYNTHETIC observations of 6 series, keyed onto their partitions."""
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    events = []
    for i in range(count):
        series = f"s{i % 6}"
        partition = partition_for(series, PARTITIONS)
        value = Observation(series=series, ts=float(i), values=[float(i)]).to_bytes()
        events.append(Incoming(TOPIC, partition, offsets[partition], series.encode(), value))
        offsets[partition] += 1
    return events


async def consume(runner: ServiceRunner, kafka: FakeKafka, until: Any) -> None:
    """Run a consumer on ``kafka`` until ``until()`` holds (60 s at most)."""
    consumer = BatchConsumer(runner, "unused:9092", "group", "instance")
    consumer._make_consumer = lambda: kafka  # type: ignore[method-assign,assignment,return-value]
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(60):
            while not until():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


def tally_runner(tmp: Path, service: TallyService, sink: ListSink | None = None) -> ServiceRunner:
    policy = CheckpointPolicy(interval_s=3600, events=10**9)
    return ServiceRunner(service, tmp, sink or ListSink(), WorkerMetrics(), policy)


def applied_all(runner: ServiceRunner, events: list[Incoming]) -> Any:
    last = {f"{e.topic}:{e.partition}": e.offset for e in events}
    return lambda: runner.offsets == last


class Counted(Observation):
    """An observation whose parses are counted, so a test sees when a batch was parsed."""

    parses: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        with cls.lock:
            Counted.parses += 1
        return super().model_validate_json(json_data, **kwargs)


class Watching(TallyService):
    """Tally whose first batch (``BATCH`` records) waits, up to 10 s, until more records than that
    were parsed: the next batch's parse overlapping this one's processing."""

    def __init__(self, **options: Any) -> None:
        super().__init__(batch_size=BATCH, batch_window_s=0.0, **options)
        self.overlapped: bool | None = None

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(TOPIC, Counted, self.batch_size, self.batch_window_s)]

    def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
        if self.overlapped is None:
            for _ in range(1000):
                if Counted.parses > BATCH:
                    break
                threading.Event().wait(0.01)
            self.overlapped = Counted.parses > BATCH
        return super().process_shard(topic, partition, records)


def test_the_next_batch_is_parsed_while_one_is_processed(tmp_path: Path) -> None:
    Counted.parses = 0
    events = observations(60)
    service = Watching()
    runner = tally_runner(tmp_path, service)
    kafka = FakeKafka(events, per_fetch=BATCH // PARTITIONS)
    asyncio.run(consume(runner, kafka, applied_all(runner, events)))
    assert service.overlapped is True
    assert counts(runner) == expected_counts(Observation.model_validate_json(e.value) for e in events)  # type: ignore[arg-type]


def test_a_failed_send_drops_the_batch_taken_ahead_and_every_event_is_applied_once(tmp_path: Path) -> None:
    events = observations(120)
    events[7] = Incoming(TOPIC, events[7].partition, events[7].offset, b"s1", b"{broken")
    sink = ListSink(failures=3)  # the first batch's sends fail: the runner raises, the consumer rewinds
    runner = tally_runner(tmp_path, TallyService(batch_size=BATCH, batch_window_s=0.0, emit=True), sink)
    kafka = FakeKafka(events, per_fetch=BATCH // PARTITIONS)
    asyncio.run(consume(runner, kafka, applied_all(runner, events)))
    good = [Observation.model_validate_json(e.value) for i, e in enumerate(events) if i != 7]  # type: ignore[arg-type]
    assert counts(runner) == expected_counts(good)
    assert kafka.seeks > PARTITIONS  # the rewind happened (beyond the assignment's seeks)
    letters = sink.on("dead-letter")
    assert {(d["partition"], d["offset"]) for d in letters} == {(events[7].partition, events[7].offset)}
    assert len({(t["series"], t["count"]) for t in sink.on("tallies")}) == len(good)


def test_a_rebalance_while_a_batch_is_taken_ahead_applies_every_event_once(tmp_path: Path) -> None:
    events = observations(200)
    runner = tally_runner(tmp_path, TallyService(batch_size=BATCH, batch_window_s=0.0))
    kafka = FakeKafka(events, per_fetch=BATCH // PARTITIONS)
    rebalanced = 0

    def until() -> bool:
        nonlocal rebalanced
        applied = sum(o + 1 for o in runner.offsets.values())
        if applied >= 40 * (rebalanced + 1) and rebalanced < 3:  # mid-stream, a batch in flight
            rebalanced += 1
            asyncio.get_running_loop().create_task(kafka.rebalance())
        return applied_all(runner, events)()

    asyncio.run(consume(runner, kafka, until))
    assert rebalanced == 3
    assert counts(runner) == expected_counts(Observation.model_validate_json(e.value) for e in events)  # type: ignore[arg-type]


class SlowFirst(TallyService):
    """Tally whose first shard takes 0.3 s, noting how many records each shard call gets."""

    def __init__(self) -> None:
        super().__init__(batch_size=BATCH, batch_window_s=0.0)
        self.sizes: list[int] = []

    def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
        if not self.sizes:
            threading.Event().wait(0.3)
        self.sizes.append(len(records))
        return super().process_shard(topic, partition, records)


def test_with_no_window_the_next_batch_takes_what_arrives_until_the_one_before_is_applied(
    tmp_path: Path,
) -> None:
    events = observations(60)
    service = SlowFirst()
    runner = tally_runner(tmp_path, service)
    kafka = FakeKafka(events, per_fetch=1)  # a trickle: one record a partition per fetch
    asyncio.run(consume(runner, kafka, applied_all(runner, events)))
    assert service.sizes[0] == 1  # nothing was being applied: the first batch closed at once
    assert max(service.sizes) == BATCH // PARTITIONS  # filled while the slow first one was applied
    assert counts(runner) == expected_counts(Observation.model_validate_json(e.value) for e in events)  # type: ignore[arg-type]
