"""Display fields on queries and documents: optional, bounded strings, links http(s) only."""

from __future__ import annotations

import pytest

from streams.schemas import Document, Query, RecordError, parse_record


def doc(**display: str) -> dict[str, object]:
    return {"doc_id": "d", "features": [1.0, 2.0], **display}


def query(**fields: object) -> dict[str, object]:
    return {"schema": "query/1", "query_id": "q", "ts": 1.0, "documents": [doc()], **fields}


def test_display_fields_round_trip_and_stay_off_the_wire_when_absent() -> None:
    shown = Document(doc_id="d", features=[1.0], title="Fargo (1996)", url="https://example.org/f?a=1",
                     snippet="Crime · Drama", image_url="http://img.example.org/f.jpg")  # fmt: skip
    record = Query(query_id="q", ts=1.0, documents=[shown], text="Likes: Alien (1979)")
    assert parse_record(record.to_bytes()) == record
    plain = Query(query_id="q", ts=1.0, documents=[Document(doc_id="d", features=[1.0])])
    assert b"title" not in plain.to_bytes() and b"text" not in plain.to_bytes()


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("url", "javascript:alert(1)", "http"),
        ("image_url", "data:image/png;base64,AAAA", "http"),
        ("url", "https://", "http"),
        ("url", "java\nscript://x", "http"),
        ("url", "https://example.org/a\tb", "whitespace"),
        ("title", "x" * 301, "at most 300"),
        ("snippet", "x" * 2001, "at most 2000"),
        ("title", "", "at least 1"),
        ("title", 7, "string"),
    ],
)
def test_bad_display_fields_are_refused_with_the_reason(field: str, value: object, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        parse_record(query(documents=[doc(**{field: value})]))  # type: ignore[arg-type]


def test_query_text_is_bounded() -> None:
    with pytest.raises(RecordError, match="at most 2000"):
        parse_record(query(text="x" * 2001))
