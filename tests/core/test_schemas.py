from __future__ import annotations

import json

import pytest

from streams.schemas import Impression, Label, Observation, Query, RecordError, parse_record


def test_roundtrip_keeps_schema_tag():
    record = Observation(series="a", ts=1.5, values=[1.0, 2.0])
    data = json.loads(record.to_bytes())
    assert data["schema"] == "observation/1"
    assert parse_record(record.to_bytes()) == record


def test_schema_tag_may_be_omitted_when_the_topic_says_the_type():
    record = parse_record('{"series": "a", "ts": 1, "values": [3]}', Observation)
    assert isinstance(record, Observation) and record.values == [3.0]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        ("{", "not valid JSON"),
        ("3", "expected a JSON object"),
        ('{"schema": "nope/1"}', "unknown schema 'nope/1'"),
        ('{"schema": "observation/1", "series": "", "ts": 1, "values": [1]}', "series"),
        ('{"schema": "observation/1", "series": "a", "ts": 1, "values": []}', "values"),
        ('{"schema": "observation/1", "series": "a", "ts": 1, "values": [1e999]}', "finite"),
        ('{"schema": "observation/1", "series": "a", "ts": "x", "values": [1]}', "ts"),
    ],
)
def test_bad_observations_say_what_is_wrong(raw, reason):
    with pytest.raises(RecordError, match=reason):
        parse_record(raw, Observation)


def test_wrong_record_type_for_topic():
    label = Label(task_id="t", query_id="q", ts=0, grades={"d": 3})
    with pytest.raises(RecordError, match="does not belong on this topic"):
        parse_record(label.to_bytes(), Observation)


def test_impression_needs_a_feature_and_a_binary_click():
    with pytest.raises(RecordError, match="at least one categorical or dense"):
        parse_record({"schema": "impression/1", "id": "i", "ts": 0})
    with pytest.raises(RecordError, match="clicked"):
        parse_record({"schema": "impression/1", "id": "i", "ts": 0, "categorical": {"u": "1"}, "clicked": 2})
    ok = parse_record({"schema": "impression/1", "id": "i", "ts": 0, "dense": {"x": 1.0}})
    assert isinstance(ok, Impression) and ok.clicked is None


def test_query_documents_must_agree():
    docs = [{"doc_id": "a", "features": [1, 2]}, {"doc_id": "b", "features": [1]}]
    with pytest.raises(RecordError, match="different feature counts"):
        parse_record({"schema": "query/1", "query_id": "q", "ts": 0, "documents": docs})
    docs = [{"doc_id": "a", "features": [1]}, {"doc_id": "a", "features": [2]}]
    with pytest.raises(RecordError, match="duplicate doc_id"):
        parse_record({"schema": "query/1", "query_id": "q", "ts": 0, "documents": docs})
    good = [{"doc_id": "a", "features": [1]}, {"doc_id": "b", "features": [2]}]
    assert isinstance(parse_record({"schema": "query/1", "query_id": "q", "ts": 0, "documents": good}), Query)


def test_label_grades_in_range():
    with pytest.raises(RecordError, match="less than or equal to 4"):
        parse_record({"schema": "label/1", "task_id": "t", "query_id": "q", "ts": 0, "grades": {"d": 5}})


def test_each_record_is_keyed_by_the_id_its_consumers_join_on():
    from streams.producer import key_of
    from streams.schemas import Click

    assert key_of(Observation(series="s1", ts=0, values=[1.0])) == "s1"
    assert key_of(Click(impression_id="imp-7", ts=3.0)) == "imp-7"
