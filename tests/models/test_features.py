"""Hashed categorical encoding and the online normaliser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.ctr.features import (
    BucketMemo,
    FeatureError,
    FeatureSpec,
    RowEncoder,
    RunningNorm,
    bucket_of,
    encode,
)
from streams.schemas import Impression

SPEC = FeatureSpec(categorical=("user", "item"), dense=("age",), buckets=101)


def impression(categorical: dict[str, str], dense: dict[str, float] | None = None) -> Impression:
    return Impression(id="x", ts=0.0, categorical=categorical, dense=dense or {})


def test_buckets_are_stable_in_range_and_zero_means_missing() -> None:
    batch = encode(SPEC, [impression({"user": "u1", "item": "i9"}, {"age": 30}), impression({"item": "i9"})])
    assert batch.categorical.shape == (2, 2)
    assert batch.categorical[0, 0] == bucket_of("u1", 101)
    assert batch.categorical[1, 0] == 0  # user missing
    assert batch.categorical[0, 1] == batch.categorical[1, 1]  # same id, same bucket
    assert ((batch.categorical[0] >= 1) & (batch.categorical[0] < 101)).all()
    assert math.isnan(batch.dense[1, 0])
    assert batch.labels is None


def test_unknown_fields_are_named() -> None:
    with pytest.raises(FeatureError, match="colour"):
        encode(SPEC, [impression({"user": "u", "colour": "red"})])
    with pytest.raises(FeatureError, match="height"):
        encode(SPEC, [impression({"user": "u"}, {"height": 2.0})])


def test_the_training_encoder_gives_what_encode_gives_across_memo_resets() -> None:
    rows = [
        impression({"user": f"u{i % 7}", "item": f"i{i}"}, {"age": float(i)} if i % 3 else {})
        for i in range(40)
    ]
    encoder = RowEncoder(SPEC)
    encoder.memo.size = 5  # cleared several times on the way
    for start in (0, 20):
        part = rows[start : start + 20]
        batch, reference = encoder.encode(part, [1] * 20), encode(SPEC, part, [1] * 20)
        assert torch.equal(batch.categorical, reference.categorical)
        assert torch.equal(batch.dense.isnan(), reference.dense.isnan())
        assert torch.equal(batch.dense.nan_to_num(), reference.dense.nan_to_num())
        assert batch.dense.dtype == torch.float32 and torch.equal(batch.labels, reference.labels)
    assert len(encoder.memo.known) <= 5


def test_the_bucket_memo_maps_missing_to_zero_and_stays_bounded() -> None:
    memo = BucketMemo(101, size=3)
    assert [memo(v) for v in (None, "a", "b", "c", None, "a")] == [
        0,
        *(bucket_of(v, 101) for v in "abc"),
        0,
        bucket_of("a", 101),
    ]
    assert len(memo.known) <= 3 and memo.known[None] == 0


def test_labels_must_match_rows() -> None:
    with pytest.raises(ValueError, match="labels"):
        encode(SPEC, [impression({"user": "u"})], labels=[1, 0])


def test_spec_round_trips_and_validates() -> None:
    from dataclasses import asdict

    assert FeatureSpec.from_dict(asdict(SPEC)) == SPEC
    with pytest.raises(ValueError):
        FeatureSpec(categorical=())
    with pytest.raises(ValueError):
        FeatureSpec(categorical=("a",), dense=("a",))


def test_running_norm_matches_numpy_over_batches_with_missing_values() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, size=(300, 2))
    data[rng.random((300, 2)) < 0.2] = np.nan
    norm = RunningNorm(2)
    for chunk in np.array_split(data, 7):
        norm.update(torch.tensor(chunk, dtype=torch.float32))
    np.testing.assert_allclose(norm.mean.numpy(), np.nanmean(data, axis=0), rtol=1e-5)
    np.testing.assert_allclose(norm.std().numpy(), np.nanstd(data, axis=0, ddof=1), rtol=1e-5)
    z = norm.transform(torch.tensor(data, dtype=torch.float32)).numpy()
    assert (z[np.isnan(data)] == 0).all()
    np.testing.assert_allclose(np.nanmean(np.where(np.isnan(data), np.nan, z), axis=0), 0.0, atol=1e-4)


def test_running_norm_state_round_trip_and_width_check() -> None:
    norm = RunningNorm(2)
    norm.update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    other = RunningNorm(2)
    other.load_state_dict(norm.state_dict())
    probe = torch.tensor([[2.0, 1.0]])
    torch.testing.assert_close(other.transform(probe), norm.transform(probe))
    with pytest.raises(ValueError, match="width"):
        RunningNorm(3).load_state_dict(norm.state_dict())
