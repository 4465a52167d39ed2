"""The scoring path's candidate encoder: the same tensors as ``encode`` on impressions, clear errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from models.ctr.features import CandidateEncoder, FeatureError, FeatureSpec, bucket_of, encode
from streams.schemas import Impression

SPEC = FeatureSpec(categorical=("user", "item"), dense=("age", "price"), buckets=101)
CANDIDATES: list[dict[str, Any]] = [
    {"categorical": {"user": "u1", "item": "i9"}, "dense": {"age": 30, "price": 2.5}},
    {"categorical": {"item": "i9"}},
    {"dense": {"price": -1.0}},
    {"categorical": {"item": "i3", "user": "u2"}, "dense": {"age": 41.0}},
]


def test_candidates_encode_exactly_like_impressions() -> None:
    batch = CandidateEncoder(SPEC).encode(CANDIDATES)
    reference = encode(SPEC, [Impression(id="c", ts=0.0, **c) for c in CANDIDATES])
    assert torch.equal(batch.categorical, reference.categorical)
    assert torch.allclose(batch.dense, reference.dense, equal_nan=True)
    assert batch.dense.dtype == reference.dense.dtype and batch.categorical.dtype == torch.long
    assert batch.labels is None


def test_the_bucket_memo_stays_bounded_and_correct() -> None:
    encoder = CandidateEncoder(SPEC, memo_size=3)
    for i in range(10):
        batch = encoder.encode([{"categorical": {"user": f"u{i}", "item": f"i{i}"}}])
        assert batch.categorical.tolist() == [[bucket_of(f"u{i}", 101), bucket_of(f"i{i}", 101)]]
        assert len(encoder._bucket.known) <= 3


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (7, "expected an object with 'categorical' and/or 'dense'"),
        ({"categorical": {"user": "u"}, "price": 3}, "expected an object with 'categorical'"),
        ({"categorical": ["u"]}, "categorical: expected an object of strings, got list"),
        ({"categorical": {"user": 5}}, "categorical.user: expected a string, got int"),
        ({"categorical": {"colour": "red"}}, "unknown categorical field(s) ['colour']"),
        ({"dense": {"height": 1.0}}, "unknown dense field(s) ['height']"),
        ({"dense": "x"}, "dense: expected an object of numbers, got str"),
        ({"dense": {"age": True}}, "dense.age: expected a finite number, got True"),
        ({"dense": {"age": "30"}}, "dense.age: expected a finite number"),
        ({"dense": {"age": math.inf}}, "dense.age: expected a finite number, got inf"),
        ({"dense": {"age": math.nan}}, "dense.age: expected a finite number, got nan"),
        ({"dense": {"age": 10**400}}, "dense.age: expected a finite number"),
        ({}, "at least one categorical or dense feature"),
        ({"categorical": {}, "dense": {}}, "at least one categorical or dense feature"),
    ],
)
def test_bad_candidates_are_named_by_index_and_field(candidate: Any, message: str) -> None:
    with pytest.raises(FeatureError) as caught:
        CandidateEncoder(SPEC).encode([CANDIDATES[0], candidate])
    assert str(caught.value).startswith("candidate 1: ")
    assert message in str(caught.value)
