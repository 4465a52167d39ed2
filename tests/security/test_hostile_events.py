"""Hostile events: oversized, deeply nested, NaN/Inf, wrong types, channel counts that change.

Each is dead-lettered with a reason that names what is wrong, and the good events around them are
applied exactly once. The Kafka test replays a stream with 10% hostile events (synthetic data)
through a real worker running the tally and the forecast service.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

import pytest

from streams.schemas import (
    DeadLetter,
    ModelUpdate,
    Observation,
    Outcome,
    RecordError,
    parse_record,
    record_limits,
)
from streams.tally import expected_counts
from streams.topics import topic_name
from tests.streams.helpers import get_json, get_text, metric_value, read_topic, wait_until

MAX_BYTES = 4096


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record limits of this test's process: 4 KiB records, the default nesting depth."""
    monkeypatch.setenv("DRIFTLINE_MAX_RECORD_BYTES", str(MAX_BYTES))
    record_limits.cache_clear()
    yield
    monkeypatch.undo()
    record_limits.cache_clear()


def good(i: int) -> dict:
    return {"schema": "observation/1", "series": f"s{i % 7}", "ts": float(i), "values": [i % 13 - 6.0, 1.0]}


def oversized(i: int) -> bytes:
    """A valid observation padded with whitespace past the limit: only its size is wrong."""
    return json.dumps(good(i)).encode()[:-1] + b" " * MAX_BYTES + b"}"


def deep(i: int) -> dict:
    nested: object = [1.0]
    for _ in range(40):
        nested = [nested]
    return {**good(i), "values": nested}


def not_finite(i: int) -> dict:
    return [
        {**good(i), "values": [float("nan"), 1.0]},
        {**good(i), "ts": float("inf")},
        {**good(i), "values": [1.0, float("-inf")]},
    ][i % 3]


def wrong_type(i: int) -> dict:
    return [
        {**good(i), "values": "abc"},
        {**good(i), "ts": "yesterday"},
        {**good(i), "series": 42},
        {**good(i), "values": [1.0, {"a": 1}]},
    ][i % 4]


def more_channels(i: int) -> dict:
    """Valid on its own; a series that had 2 channels now has 3."""
    return {**good(i), "values": [1.0, 2.0, 3.0]}


#: kind -> (maker, a pattern its dead-letter reason matches)
HOSTILE: dict[str, tuple[Callable[[int], object], str]] = {
    "oversized": (oversized, r"over the 4,096-byte limit \(max_record_bytes\)"),
    "deep nesting": (deep, r"nested deeper than 32 levels \(max_nesting_depth\)"),
    "NaN/Inf": (not_finite, r"Input should be a finite number"),
    "wrong type": (wrong_type, r"Input should be a valid (number|string|list)"),
    "channel count": (more_channels, r"has 2 channels, this observation has 3"),
}


def encode(value: object) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


# -- validation (no broker) ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", [k for k in HOSTILE if k != "channel count"])
def test_each_hostile_kind_is_refused_with_its_reason(limits, kind):
    make, reason = HOSTILE[kind]
    for i in range(12):
        raw = encode(make(i))
        with pytest.raises(RecordError, match=reason):
            parse_record(raw, Observation)
        with pytest.raises(ValueError):  # the runner's fast path refuses it too
            Observation.model_validate_json(raw)
    assert parse_record(encode(more_channels(1)), Observation).values == [1.0, 2.0, 3.0]


def test_nesting_past_python_recursion_is_a_reason_not_a_crash(limits):
    raw = b'{"schema": "outcome/1", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RecordError, match="over the 4,096-byte limit"):
        parse_record(raw)
    record_limits.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLINE_MAX_RECORD_BYTES", str(10**6))
        record_limits.cache_clear()
        with pytest.raises(RecordError, match="nested deeper than 32 levels"):
            parse_record(raw)
    record_limits.cache_clear()


def test_free_form_fields_are_bounded_and_brackets_in_strings_do_not_count(limits):
    nested: object = 1
    for _ in range(33):
        nested = {"x": nested}
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        Outcome(service="rank", kind="lease", key="t", seq=1, ts=1.0, data={"x": nested})
    escaped = '[[[[{{{{\\"[[' * 12  # brackets and escaped quotes inside a string do not nest
    assert parse_record(encode({**good(1), "series": escaped}), Observation).series == escaped
    deep: object = [1.0]
    for _ in range(40):
        deep = [deep]
    for encoding in ("utf-8", "utf-16"):  # UTF-8 is refused before decoding, UTF-16 after it
        with pytest.raises(RecordError, match="nested deeper than 32 levels"):
            parse_record(json.dumps({**good(1), "values": deep}).encode(encoding), Observation)
    assert parse_record(encode({**good(1), "series": "[" * 100}), Observation).series == "[" * 100


def test_internal_records_are_not_bounded_and_dead_letters_are_cut(limits):
    update = ModelUpdate(service="ctr", version=1, ts=1.0, sha256="x", weights="w" * (2 * MAX_BYTES))
    assert parse_record(update.to_bytes(), ModelUpdate) == update
    letter = DeadLetter(topic="t", partition=0, offset=1, reason="r", payload="p" * (3 * MAX_BYTES), ts=1.0)
    assert letter.payload.startswith("p" * MAX_BYTES) and letter.payload.endswith("[cut: 12,288 characters]")


# -- a replay with 10% hostile events (real broker and worker) -----------------------------------
def stream(n: int, seed: int) -> tuple[list[tuple[str | None, bytes]], list[str | None]]:
    """``n`` events, every tenth hostile (the kinds in turn, shuffled positions within each ten)."""
    rng = random.Random(seed)
    events: list[tuple[str | None, bytes]] = []
    kinds: list[str | None] = []
    names = list(HOSTILE)
    for block in range(n // 10):
        hostile_at = block * 10 + rng.randrange(10)
        for i in range(block * 10, block * 10 + 10):
            kind = names[block % len(names)] if i == hostile_at else None
            value = HOSTILE[kind][0](i) if kind else good(i)
            events.append((f"s{i % 7}", encode(value)))
            kinds.append(kind)
    return events, kinds


@pytest.mark.kafka
def test_a_replay_with_ten_percent_hostile_events(kafka, worker_factory, capsys):
    from streams.producer import make_producer

    events, kinds = stream(1000, seed=11)
    options = ["forecast.kind=last-value", "forecast.channels=2", "forecast.seq_len=4", "forecast.horizon=1"]
    worker = worker_factory(
        "tally,forecast", options, env={"DRIFTLINE_MAX_RECORD_BYTES": str(MAX_BYTES)}
    ).start()
    producer = make_producer(kafka.bootstrap)
    futures = [producer.send(topic_name("observations"), value=v, key=k.encode()) for k, v in events]
    producer.flush()
    kind_at = {
        (m.partition, m.offset): kind for m, kind in zip((f.get(10) for f in futures), kinds, strict=True)
    }
    producer.close()

    schema_kinds = [k for k in HOSTILE if k != "channel count"]
    hostile = Counter(k for k in kinds if k)
    tally_dead = sum(hostile[k] for k in schema_kinds)
    forecast_dead = sum(hostile.values())
    expected_letters = tally_dead + forecast_dead
    letters = read_topic(kafka.bootstrap, topic_name("dead-letter"), expected_letters, timeout_s=90)
    assert len(letters) == expected_letters, worker.log()[-3000:]

    by_event: dict[tuple[int, int], list[str]] = defaultdict(list)
    for letter in map(DeadLetter.model_validate, letters):
        by_event[letter.partition, letter.offset].append(letter.reason)
    reasons: Counter[str] = Counter()
    for where, found in by_event.items():
        kind = kind_at[where]
        assert kind is not None, f"a good event was dead-lettered: {found}"
        assert len(found) == (1 if kind == "channel count" else 2), (kind, found)  # tally and forecast
        for reason in found:
            assert re.search(HOSTILE[kind][1], reason), (kind, reason)
        reasons[kind] += len(found)

    good_or_channel = [
        Observation.model_validate_json(v)
        for (_, v), k in zip(events, kinds, strict=True)
        if k in (None, "channel count")
    ]

    def applied(service: str) -> float | None:
        return metric_value(get_text(f"{worker.base}/metrics"), "driftline_events_total", service=service)

    wait_until(
        lambda: applied("forecast") == len(events) - forecast_dead,
        what="forecast applied",
        explain=worker.log,
    )
    wait_until(lambda: applied("tally") == len(events) - tally_dead, what="tally applied", explain=worker.log)
    for series, (count, total) in expected_counts(good_or_channel).items():
        body = get_json(f"{worker.base}/tally/{series}")[1]
        assert (body["count"], body["sum"]) == (count, pytest.approx(total)), series
    with capsys.disabled():
        print(
            f"\nhostile replay (synthetic): {len(events)} events, {sum(hostile.values())} hostile "
            f"{dict(hostile)}; dead letters by kind {dict(reasons)}; applied exactly once: "
            f"tally {applied('tally'):.0f}, forecast {applied('forecast'):.0f}; lost 0"
        )
