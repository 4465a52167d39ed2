"""The exactly-once batch protocol, driven directly (the Kafka transport is tested in tests/streams)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from streams.keyed import partition_for
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, Incoming, ServiceRunner
from streams.schemas import Observation, Record
from streams.service import BatchResult, ModelService, Output, Subscription
from streams.tally import TallyService
from streams.topics import topic_name

FIXTURES = Path(__file__).parents[1] / "fixtures"
EVERY_BATCH = CheckpointPolicy(interval_s=0.0, events=1)


class ListSink:
    """Collects what the runner sends, as Kafka would have it; fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, dict]] = []
        self.failures = failures

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, key, json.loads(value)))

    def on(self, short: str) -> list[dict]:
        return [value for topic, _, value in self.sent if topic == topic_name(short)]


def obs(series: str, value: float) -> bytes:
    return Observation(series=series, ts=0, values=[value]).to_bytes()


def stream(values: list[tuple[str, float]], partitions: int = 1, start: int = 0) -> list[Incoming]:
    """Events as Kafka would deliver them: each series on its key's partition, offsets per partition."""
    offsets = dict.fromkeys(range(partitions), start)
    events = []
    for series, value in values:
        partition = partition_for(series, partitions)
        events.append(
            Incoming(
                topic_name("observations"), partition, offsets[partition], series.encode(), obs(series, value)
            )
        )
        offsets[partition] += 1
    return events


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def tally_runner(
    root: Path, sink: ListSink | None = None, partitions: int = 1, **options: Any
) -> ServiceRunner:
    service = TallyService(**options)
    runner = ServiceRunner(service, root, sink or ListSink(), WorkerMetrics(), EVERY_BATCH)
    run(runner.assign([(topic_name("observations"), p) for p in range(partitions)], partitions))
    return runner


def counts(runner: ServiceRunner) -> dict[str, tuple[int, float]]:
    service = runner.service
    assert isinstance(service, TallyService)
    return {series: found for table in service.tables.values() for series, found in table.items()}


def apply(runner: ServiceRunner, events: list[Incoming]) -> BatchResult:
    async def go() -> BatchResult:
        result = await runner.apply(runner.service.subscriptions()[0], events)
        await runner.checkpoint()
        return result

    return run(go())


def test_redelivered_events_are_not_applied_twice(tmp_path):
    events = stream([("a", 1), ("a", 2), ("a", 4)])
    apply(tally_runner(tmp_path), events[:2])
    # A restarted worker restores the shard and is told where to seek; redelivery is skipped anyway.
    restarted = tally_runner(tmp_path)
    assert restarted.restored_version == 1
    apply(restarted, events)
    assert counts(restarted) == {"a": (3, 7.0)}
    assert restarted.offsets == {f"{topic_name('observations')}:0": 2}


def test_a_keyed_restart_reports_the_newest_shard_it_restored_not_the_last(tmp_path):
    on = {p: next(f"s{i}" for i in range(100) if partition_for(f"s{i}", 2) == p) for p in (0, 1)}
    events = stream([(on[0], 1.0), (on[0], 2.0), (on[0], 3.0), (on[1], 1.0)], partitions=2)
    runner = tally_runner(tmp_path, partitions=2)
    for event in events:  # one checkpoint per batch, of the shard it touched: p0 v3, p1 v1
        apply(runner, [event])
    restarted = tally_runner(tmp_path, partitions=2)  # restores p0, then p1
    assert restarted.restored_version == 3
    assert counts(restarted) == {on[0]: (3, 6.0), on[1]: (1, 1.0)}


def test_assignment_seeks_to_the_checkpointed_offsets_not_to_committed_ones(tmp_path):
    events = stream([("a", 1), ("b", 1), ("c", 1)] * 3, partitions=4)
    apply(tally_runner(tmp_path, partitions=4), events)
    service = TallyService()
    runner = ServiceRunner(service, tmp_path, ListSink(), WorkerMetrics(), EVERY_BATCH)
    topic = topic_name("observations")
    positions = run(runner.assign([(topic, p) for p in range(4)], 4))
    for partition in range(4):
        on_it = sum(1 for e in events if e.partition == partition)
        assert positions[(topic, partition)] == (on_it or None), partition


def test_partitions_move_with_their_state(tmp_path):
    topic = topic_name("observations")
    events = stream([(f"s{i}", float(i)) for i in range(40)], partitions=4)
    first = tally_runner(tmp_path, partitions=4)
    apply(first, events)
    run(first.revoke([(topic, 2), (topic, 3)]))  # a second worker joins
    kept = {s for s in counts(first)}
    second = TallyService()
    other = ServiceRunner(second, tmp_path, ListSink(), WorkerMetrics(), EVERY_BATCH)
    run(other.assign([(topic, 2), (topic, 3)], 4))
    moved = {s for t in second.tables.values() for s in t}
    assert kept | moved == {f"s{i}" for i in range(40)} and not kept & moved
    assert all(partition_for(s, 4) in (2, 3) for s in moved)


def test_invalid_events_are_dead_lettered_with_reason_and_offset(tmp_path):
    sink = ListSink()
    runner = tally_runner(tmp_path, sink)
    topic = topic_name("observations")
    events = [
        Incoming(topic, 0, 0, b"a", b"nope"),
        Incoming(topic, 0, 1, b"a", obs("a", 1)),
        Incoming(topic, 0, 2, b"a", None),
    ]
    apply(runner, events)
    letters = sink.on("dead-letter")
    assert [(d["offset"], d["payload"]) for d in letters] == [(0, "nope"), (2, "")]
    assert "not valid JSON" in letters[0]["reason"] and "empty event" in letters[1]["reason"]
    assert counts(runner) == {"a": (1, 1.0)}


class Leaky(TallyService):
    """Changes state and then raises on a poisoned series, as a model with a normaliser would."""

    def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
        table = self.tables.setdefault(partition, {})
        for record in records:
            assert isinstance(record, Observation)
            count, total = table.get(record.series, (0, 0.0))
            table[record.series] = count + 1, total + record.values[0]
            if record.series in self.poison:
                raise RuntimeError(f"poisoned series {record.series!r}")
        return BatchResult()


def test_a_failed_batch_leaves_no_trace_and_only_the_poison_is_dead_lettered(tmp_path):
    sink = ListSink()
    service = Leaky(poison=["bad"])
    runner = ServiceRunner(
        service, tmp_path, sink, WorkerMetrics(), CheckpointPolicy(interval_s=60, events=10**6)
    )
    run(runner.assign([(topic_name("observations"), 0)], 1))
    values = [("a", 1.0), ("b", 2.0), ("a", 3.0)]
    first = stream(values)
    run(runner.apply(service.subscriptions()[0], first))  # applied since the restore point
    second = stream([("a", 10.0), ("bad", 5.0), ("b", 1.0), ("bad", 7.0), ("c", 4.0)], start=3)
    run(runner.apply(service.subscriptions()[0], second))
    assert counts(runner) == {"a": (3, 14.0), "b": (2, 3.0), "c": (1, 4.0)}
    letters = sink.on("dead-letter")
    assert sorted(d["offset"] for d in letters) == [4, 6]
    assert all("poisoned series 'bad'" in d["reason"] for d in letters)


def test_outputs_are_sent_and_rejections_dead_lettered(tmp_path):
    class Rejecting(TallyService):
        def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
            forecast = Observation(series="out", ts=0, values=[1.0])
            return BatchResult(
                [Output(topic_name("forecasts"), "out", forecast)], rejected={1: "wrong channel count"}
            )

    sink = ListSink()
    runner = ServiceRunner(Rejecting(), tmp_path, sink, WorkerMetrics(), EVERY_BATCH)
    apply(runner, stream([("a", 1), ("a", 2)]))
    assert len(sink.on("forecasts")) == 1
    (letter,) = sink.on("dead-letter")
    assert letter["offset"] == 1 and letter["reason"] == "wrong channel count"


def test_a_failed_send_is_never_acknowledged_past_and_the_rewind_delivers_it(tmp_path):
    sink = ListSink(failures=1)
    runner = tally_runner(tmp_path, sink, emit=True)
    events = [
        Incoming(topic_name("observations"), 0, 0, b"a", b"{bad"),
        *stream([("a", 1), ("a", 2)], start=1),
    ]
    with pytest.raises(ConnectionError):
        apply(runner, events)
    assert runner.offsets == {} and runner.store.versions() == []
    # What the consumer does next: read again from the restore point.
    positions = run(runner.rewind([(topic_name("observations"), 0)]))
    assert positions == {(topic_name("observations"), 0): 0}
    apply(runner, events)
    assert counts(runner) == {"a": (2, 3.0)}
    # At least once: whatever the failed attempt did deliver may come twice, nothing is missing.
    assert {d["offset"] for d in sink.on("dead-letter")} == {0}
    assert {t["count"] for t in sink.on("tallies")} == {1, 2}


def test_checkpoints_go_by_interval_not_by_batch(tmp_path):
    topic = topic_name("observations")

    def written(policy: CheckpointPolicy, every_batch: bool) -> int:
        runner = ServiceRunner(
            TallyService(), tmp_path / str(every_batch), ListSink(), WorkerMetrics(), policy
        )
        run(runner.assign([(topic, 0)], 1))

        async def go() -> None:
            for batch in range(50):
                await runner.apply(
                    runner.service.subscriptions()[0], stream([("a", 1.0)] * 100, start=batch * 100)
                )
                # The first release wrote a checkpoint after every batch and waited for it.
                await (runner.checkpoint() if every_batch else runner.maybe_checkpoint())
            await runner.checkpoint()

        run(go())
        return runner.checkpoint_bytes

    per_batch = written(EVERY_BATCH, every_batch=True)
    by_interval = written(CheckpointPolicy(interval_s=3600, events=2500), every_batch=False)
    assert by_interval * 10 <= per_batch  # 50 checkpoints against 2 (+1 final at most)


def test_a_full_disk_degrades_and_recovers_without_losing_offsets(tmp_path, monkeypatch):
    switches = tmp_path / "faults"
    switches.mkdir()
    monkeypatch.setenv("DRIFTLINE_FAULT_DIR", str(switches))
    runner = tally_runner(tmp_path / "ckpt")
    (switches / "disk-full").touch()
    apply(runner, stream([("a", 1)]))
    assert runner.problem is not None and "No space left" in runner.problem
    assert runner.shard_store(0).versions() == []
    (switches / "disk-full").unlink()
    apply(runner, stream([("a", 2)], start=1))
    assert runner.problem is None
    restarted = tally_runner(tmp_path / "ckpt")
    assert counts(restarted) == {"a": (2, 3.0)} and restarted.offsets[f"{topic_name('observations')}:0"] == 1


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    runner = tally_runner(tmp_path)
    apply(runner, stream([("a", 1)]))
    apply(runner, stream([("a", 2)], start=1))
    store = runner.shard_store(0)
    newest = store.dir / f"v{store.current_version():06d}" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:20])  # truncated
    restarted = tally_runner(tmp_path)
    assert counts(restarted) == {"a": (1, 1.0)}  # the older version, with its older offsets
    assert restarted.offsets[f"{topic_name('observations')}:0"] == 0  # so offset 1 is replayed


def test_a_first_release_checkpoint_still_loads(tmp_path):
    """tests/fixtures/checkpoints-format1 was written by the previous release (format 1)."""
    shutil.copytree(FIXTURES / "checkpoints-format1", tmp_path / "ckpt")
    topic = "driftline.observations"
    service = TallyService()
    runner = ServiceRunner(service, tmp_path / "ckpt", ListSink(), WorkerMetrics(), EVERY_BATCH)
    positions = run(runner.assign([(topic, 0), (topic, 1)], 2))
    assert counts(runner) == {"a": (3, 4.5), "b": (1, -1.0)}
    assert positions == {(topic, 0): 3, (topic, 1): 1}
    assert all(partition_for(s, 2) == p for p, t in service.tables.items() for s in t)


def test_run_locked_waits_for_a_batch_without_blocking_the_event_loop():
    import threading
    import time

    service = TallyService()
    release = threading.Event()

    def long_batch() -> None:
        with service.lock:
            release.wait(5)

    batch = threading.Thread(target=long_batch)
    batch.start()
    time.sleep(0.05)

    async def scenario() -> tuple[int, float]:
        started = time.perf_counter()
        locked = asyncio.ensure_future(service.run_locked(lambda: len(service.tables)))
        await asyncio.sleep(0.2)  # the loop keeps running while the batch holds the lock
        ticked = time.perf_counter() - started
        assert not locked.done()
        release.set()
        return await locked, ticked

    result, ticked = asyncio.run(scenario())
    batch.join()
    assert result == 0 and ticked < 1.0


class SharedEcho(ModelService):
    """A shared (not keyed) service named like one with a drift detector; it learns nothing."""

    name = "forecast"

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("observations"), Observation)]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        return BatchResult()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def test_a_shared_service_takes_its_partitions_once_its_drift_detector_is_imported(tmp_path, monkeypatch):
    """The detector's library (seconds to import) loads before the first batch, not inside the
    batch that ends the detector's warm-up."""
    import threading

    import streams.runner as runner_module

    release = threading.Event()
    importing = threading.Thread(target=release.wait, args=(5,))  # stands in for the slow import
    importing.start()
    monkeypatch.setattr(runner_module, "_detector_import", lambda: importing)
    runner = ServiceRunner(SharedEcho(), tmp_path, ListSink(), WorkerMetrics(), EVERY_BATCH)
    assert runner.drift is not None

    async def scenario() -> dict[tuple[str, int], int | None]:
        assigned = asyncio.ensure_future(runner.assign([(topic_name("observations"), 0)], 1))
        await asyncio.sleep(0.2)
        assert not assigned.done() and not runner.service.owned
        release.set()
        return await asyncio.wait_for(assigned, 5)

    assert run(scenario()) == {(topic_name("observations"), 0): None}
    assert runner.service.owned == {0}


class DecodingSum(ModelService):
    """A shared service with a batch decoder that takes every batch, even one holding an event the
    per-event path refuses; processing such a batch raises after changing the state."""

    name = "sum"

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0
        self.decoded_batches = 0

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("observations"), Observation, decode=self.decode)]

    @staticmethod
    def decode(values: Any) -> list[bytes]:
        return list(values)

    def process_decoded(self, topic: str, decoded: list[bytes]) -> BatchResult:
        self.decoded_batches += 1
        for value in decoded:
            self.total += json.loads(value)["values"][0]  # raises on the bad event, half-way through
        return BatchResult()

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        self.total += sum(r.values[0] for r in records if isinstance(r, Observation))
        return BatchResult()

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = state["total"]


def test_a_decoded_batch_that_fails_goes_event_by_event_and_dead_letters_what_is_unusable(tmp_path):
    from streams.runner import Decoded, parse_batch

    sink = ListSink()
    service = DecodingSum()
    runner = ServiceRunner(
        service, tmp_path, sink, WorkerMetrics(), CheckpointPolicy(interval_s=60, events=10**6)
    )
    run(runner.assign([(topic_name("observations"), 0)], 1))
    subscription = service.subscriptions()[0]
    good = stream([("a", 1.0), ("a", 2.0)])
    run(runner.apply(subscription, good, parsed=parse_batch(subscription, good)))
    events = [*stream([("a", 10.0)], start=2), Incoming(topic_name("observations"), 0, 3, b"a", b"nope")]
    events += stream([("a", 100.0)], start=4)
    decoded = parse_batch(subscription, events)
    assert isinstance(decoded, Decoded)
    run(runner.apply(subscription, events, parsed=decoded))
    assert service.decoded_batches == 2
    assert service.total == 113.0  # the failed batch's 10 left no trace; 10 and 100 applied once
    (letter,) = sink.on("dead-letter")
    assert letter["offset"] == 3 and "not valid JSON" in letter["reason"]
    assert runner.offsets == {f"{topic_name('observations')}:0": 4}


def test_every_batch_is_processed_in_the_runners_one_thread(tmp_path):
    """One thread starts all of a service's parallel work (one OpenMP team; see _in_applier),
    whatever else the default executor is running meanwhile, such as the next batch's parse."""
    import threading

    threads: list[str] = []

    class Recording(TallyService):
        def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
            threads.append(threading.current_thread().name)
            return super().process_shard(topic, partition, records)

    runner = ServiceRunner(Recording(), tmp_path, ListSink(), WorkerMetrics(), EVERY_BATCH)
    run(runner.assign([(topic_name("observations"), 0)], 1))

    async def go() -> None:
        for start in range(0, 6, 2):
            busy = asyncio.gather(*(asyncio.to_thread(time.sleep, 0.02) for _ in range(3)))
            await runner.apply(runner.service.subscriptions()[0], stream([("a", 1), ("a", 2)], start=start))
            await busy

    run(go())
    assert len(threads) == 3 and len(set(threads)) == 1
    assert threads[0].startswith("tally-apply")
