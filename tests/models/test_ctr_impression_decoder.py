"""The impressions' batch decoder: the per-event path's tensors for a batch it takes, None otherwise;
and the runner trains a decoded batch exactly as the per-event path trains its records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import torch

from models.ctr.features import CtrBatch
from models.ctr.impression_decoder import ImpressionDecoder
from models.ctr.service import CtrService
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, Decoded, Incoming, ServiceRunner, parse_batch, parse_events
from streams.schemas import Impression, record_limits
from streams.topics import topic_name
from tests.models.synthetic import SPEC, impressions, make_service

GOOD = {"schema": "impression/1", "id": "a", "ts": 1.0, "categorical": {"user": "u1"}, "clicked": 1}


def values(records: list[Impression]) -> list[bytes]:
    return [record.to_bytes() for record in records]


def per_event(service: CtrService, raw: list[bytes]) -> CtrBatch:
    """What the per-event path trains on for ``raw``: pydantic's records, encoded by the service."""
    records = [Impression.model_validate_json(value) for value in raw]
    assert not any(service._unusable(record) for record in records)
    return service.encoder.encode(records, [int(r.clicked or 0) for r in records])


def assert_same(batch: CtrBatch | None, expected: CtrBatch) -> None:
    assert batch is not None
    assert torch.equal(batch.categorical, expected.categorical)
    assert torch.equal(batch.dense.nan_to_num(-7.0), expected.dense.nan_to_num(-7.0))
    assert batch.labels is not None and expected.labels is not None
    assert torch.equal(batch.labels, expected.labels)


def test_a_well_formed_batch_gives_the_per_event_paths_tensors(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    raw = values(impressions(500, seed=3))
    raw[7] = orjson.dumps({**orjson.loads(raw[7]), "dense": {}})  # a missing dense field: NaN
    raw[8] = orjson.dumps({**orjson.loads(raw[8]), "ts": 12, "dense": {"x": 2}})  # JSON integers
    raw[9] = orjson.dumps({k: v for k, v in orjson.loads(raw[9]).items() if k != "schema"})
    expected = per_event(service, raw)
    decoder = ImpressionDecoder(SPEC)
    for _ in range(2):  # the second time every bucket comes from the memo
        assert_same(decoder.decode(raw), expected)
    partly = ImpressionDecoder(SPEC)
    partly.decode(raw[:100])  # a memo holding some values: only the new ones are bucketed
    assert_same(partly.decode(raw), expected)


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},  # pydantic forbids it
        {"schema_": "impression/1"},  # pydantic reads the field name too: left to it
        {"schema": "impression/2"},
        {"clicked": None},  # unlabelled: the click join or a dead letter
        {"clicked": True},
        {"clicked": 2},
        {"clicked": "1"},
        {"id": ""},
        {"id": "x" * 201},
        {"id": 5},
        {"ts": "1.0"},
        {"ts": True},
        {"ts": None},
        {"categorical": None},
        {"categorical": {"user": 5}},
        {"categorical": {"user": None}},
        {"categorical": {"user": ["u1"]}},
        {"categorical": {"nope": "1"}},  # a field the spec lacks
        {"categorical": {}, "dense": {}},  # no feature
        {"dense": {"x": True}},
        {"dense": {"x": "1"}},
        {"dense": {"x": None}},
        {"dense": {"y": 1.0}},
    ],
)
def test_a_batch_with_one_event_it_cannot_take_as_it_is_goes_event_by_event(change: dict) -> None:
    odd = orjson.dumps({**GOOD, **change})
    assert ImpressionDecoder(SPEC).decode([orjson.dumps(GOOD), odd]) is None
    missing = orjson.dumps({k: v for k, v in GOOD.items() if k not in change})
    if change.keys() & {"id", "ts", "clicked"}:
        assert ImpressionDecoder(SPEC).decode([missing]) is None  # a required field left out


@pytest.mark.parametrize(
    "raw", [b"[1]", b'"text"', b"{", b'{"id": "a"', orjson.dumps(GOOD).replace(b"1.0", b"1e999")]
)
def test_values_that_are_no_json_object_or_not_finite_go_event_by_event(raw: bytes) -> None:
    assert ImpressionDecoder(SPEC).decode([orjson.dumps(GOOD), raw]) is None
    assert isinstance(parse_events(Impression, [Incoming("t", 0, 0, None, raw)])[0], str)


def test_a_value_over_the_record_limit_goes_event_by_event(monkeypatch: pytest.MonkeyPatch) -> None:
    good = orjson.dumps(GOOD)
    monkeypatch.setenv("DRIFTLINE_MAX_RECORD_BYTES", str(len(good)))
    record_limits.cache_clear()
    try:
        assert ImpressionDecoder(SPEC).decode([good]) is not None
        assert ImpressionDecoder(SPEC).decode([good, good + b" "]) is None
    finally:
        monkeypatch.undo()
        record_limits.cache_clear()


def events(raw: list[bytes], start: int = 0) -> list[Incoming]:
    return [Incoming(topic_name("impressions"), 0, start + i, None, value) for i, value in enumerate(raw)]


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.records.append((topic, value))


def timeless(sent: Sent) -> list[tuple[str, dict]]:
    """What was sent, less the clock readings in it (a model update's hash names its weights)."""
    bodies = [(topic, orjson.loads(value)) for topic, value in sent.records]
    for _, body in bodies:
        body.pop("ts", None)
        body.get("info", {}).pop("created", None)
    return bodies


def runner(tmp_path: Path, name: str) -> tuple[ServiceRunner, CtrService, Sent]:
    service, _ = make_service(tmp_path / name, swap_interval_s=0.0, seed=5)
    sent = Sent()
    policy = CheckpointPolicy(interval_s=3600.0, events=10**9)
    return ServiceRunner(service, tmp_path / name / "ckpt", sent, WorkerMetrics(), policy), service, sent


def state_tensors(service: CtrService) -> dict[str, torch.Tensor]:
    """The network's weights and the dense normaliser's running statistics."""
    norm = {f"norm.{k}": torch.as_tensor(v) for k, v in service.learner.normaliser.state_dict().items()}
    return {**service.learner.net.state_dict(), **norm}


def test_the_runner_trains_a_decoded_batch_as_it_trains_the_records(tmp_path: Path) -> None:
    fast, fast_service, fast_sent = runner(tmp_path, "fast")
    slow, slow_service, slow_sent = runner(tmp_path, "slow")
    subscription = fast_service.subscriptions()[0]
    assert subscription.decode is not None
    batches = [events(values(impressions(256, seed=s)), start=256 * s) for s in range(3)]
    bad = orjson.dumps({**GOOD, "clicked": None})  # one unlabelled impression: event by event

    async def go() -> None:
        for batch in [*batches, events([orjson.dumps(GOOD), bad], start=768)]:
            decoded = parse_batch(subscription, batch)
            await fast.apply(subscription, batch, parsed=decoded)
            await slow.apply(subscription, batch, parsed=parse_events(Impression, batch))

    asyncio.run(go())
    assert [isinstance(parse_batch(subscription, b), Decoded) for b in batches] == [True] * 3
    fast_state, slow_state = state_tensors(fast_service), state_tensors(slow_service)
    assert fast_state.keys() == slow_state.keys()
    assert all(torch.equal(fast_state[k], slow_state[k]) for k in fast_state)
    assert fast.offsets == slow.offsets == {f"{topic_name('impressions')}:0": 769}
    assert timeless(fast_sent) == timeless(slow_sent)  # the same model updates and one dead letter
    assert sum(topic == topic_name("dead-letter") for topic, _ in fast_sent.records) == 1


def learned_rows(service: CtrService) -> list[int]:
    """The sizes of the batches ``service``'s learner trains from now on."""
    rows: list[int] = []
    original = service.learner.learn

    def learn(batch: CtrBatch) -> dict[str, float]:
        rows.append(len(batch))
        return original(batch)

    service.learner.learn = learn  # type: ignore[method-assign]
    return rows


def test_a_decoded_batch_partly_applied_already_is_applied_event_by_event(tmp_path: Path) -> None:
    fast, service, _ = runner(tmp_path, "fast")
    subscription = service.subscriptions()[0]
    batch = events(values(impressions(256, seed=1)))
    rows = learned_rows(service)

    async def go() -> None:
        await fast.apply(subscription, batch[:100], parsed=parse_batch(subscription, batch[:100]))
        await fast.apply(subscription, batch, parsed=parse_batch(subscription, batch))

    asyncio.run(go())
    assert rows == [100, 156]
    assert fast.offsets == {f"{topic_name('impressions')}:0": 255}


def test_a_decoded_batch_that_raises_leaves_no_trace(tmp_path: Path) -> None:
    fast, service, sent = runner(tmp_path, "fast")
    reference, reference_service, _ = runner(tmp_path, "reference")
    subscription = service.subscriptions()[0]
    calls: list[int] = []
    original = service.learner.learn

    def learn(batch: CtrBatch) -> dict[str, float]:
        calls.append(len(batch))
        metrics = original(batch)
        if len(calls) == 1:
            raise RuntimeError("a fault of ours, after the state changed")
        return metrics

    service.learner.learn = learn  # type: ignore[method-assign]
    batch = events(values(impressions(64, seed=2)))

    async def go() -> None:
        await fast.apply(subscription, batch, parsed=parse_batch(subscription, batch))
        await reference.apply(subscription, batch, parsed=parse_events(Impression, batch))

    asyncio.run(go())
    assert calls == [64, 64]  # failed, then applied again (from the restored state) event by event
    assert not any(topic == topic_name("dead-letter") for topic, _ in sent.records)
    assert fast.offsets == {f"{topic_name('impressions')}:0": 63}
    state, expected = state_tensors(service), state_tensors(reference_service)
    assert all(torch.equal(state[k], expected[k]) for k in expected)  # learned once, not twice


def test_unlabelled_impressions_are_refused_before_any_json_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A click join's stream carries no ``clicked``: its batches go event by event anyway, so the
    decoder must not pay a JSON decode for them first."""
    decoded: list[bytes] = []
    real = orjson.loads
    monkeypatch.setattr(orjson, "loads", lambda value: decoded.append(value) or real(value))
    unlabelled = orjson.dumps({k: v for k, v in GOOD.items() if k != "clicked"})
    assert ImpressionDecoder(SPEC).decode([orjson.dumps(GOOD), unlabelled]) is None
    assert decoded == []
    assert ImpressionDecoder(SPEC).decode([orjson.dumps(GOOD)]) is not None and len(decoded) == 1
