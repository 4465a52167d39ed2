"""parse_events' fast path gives the records and dead-letter reasons the slow path gives."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import pytest

from streams.runner import Incoming, parse_events
from streams.schemas import Impression, RecordError, parse_record, record_limits

GOOD = b'{"schema":"impression/1","id":"a","ts":1.0,"categorical":{"user":"7"},"clicked":1}'


def events(*values: bytes | None) -> list[Incoming]:
    return [Incoming("impressions", 0, offset, None, value) for offset, value in enumerate(values)]


def reason(value: bytes) -> str:
    with pytest.raises(RecordError) as caught:
        parse_record(value, Impression)
    return str(caught.value)


def test_valid_records_parse_and_bad_ones_keep_their_own_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_MAX_RECORD_BYTES", "200")
    record_limits.cache_clear()
    try:
        no_features = b'{"schema":"impression/1","id":"b","ts":1.0,"clicked":0}'
        oversized = GOOD[:-1] + b',"dense":{"x":' + b"1" * 200 + b"}}"
        parsed = parse_events(Impression, events(GOOD, no_features, None, oversized, b"[1"))
        assert parsed[0] == Impression.model_validate_json(GOOD)
        assert parsed[1] == reason(no_features) and "at least one" in parsed[1]
        assert parsed[2] == "empty event (no value)"
        assert parsed[3] == reason(oversized) and "max_record_bytes" in parsed[3]
        assert parsed[4] == reason(b"[1") and "not valid JSON" in parsed[4]
    finally:
        monkeypatch.undo()
        record_limits.cache_clear()


class Stricter(Impression):
    """A record type with its own parse: ids must start with ``a``."""

    calls: ClassVar[int] = 0

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        Stricter.calls += 1
        record = super().model_validate_json(json_data, **kwargs)
        if not record.id.startswith("a"):
            raise ValueError("id must start with a")
        return record


def test_a_type_that_overrides_its_parse_is_parsed_through_it() -> None:
    Stricter.calls = 0
    parsed = parse_events(Stricter, events(GOOD, GOOD))
    assert Stricter.calls == 2
    assert all(isinstance(record, Stricter) for record in parsed)
