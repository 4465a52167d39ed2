"""Turning impressions into tensors: hashed categorical ids and online-normalised dense values.

Categorical ids are **hashed per field into a fixed number of buckets** (CRC32, stable across
processes and restarts). A streaming service sees new users and items every minute and cannot stop
to rebuild a vocabulary; hashing needs no vocabulary state to checkpoint, never grows, and treats a
brand-new id the same as an old one. The price is collisions, which stay rare while the bucket count
is well above the number of live ids per field (MovieLens-100K: 1,682 items into 16,383 buckets).
Bucket 0 of every field is reserved for "field missing".

Dense values are standardised with running mean/variance (Welford, merged batch-wise with Chan's
formula), so the scale adapts as the stream drifts and the statistics are part of the state.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

_GOLDEN = 0x9E3779B1  # Fibonacci hashing multiplier (2^32 / golden ratio)


class FeatureError(ValueError):
    """A row whose features do not fit the model's feature spec (the message says which field)."""


class HasFeatures(Protocol):
    """Anything with the two feature maps of an impression (an ``Impression`` or a scoring candidate)."""

    @property
    def categorical(self) -> Mapping[str, str]: ...

    @property
    def dense(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class FeatureSpec:
    """The fields a model was built for, in a fixed order, and the hash buckets per categorical field."""

    categorical: tuple[str, ...]
    dense: tuple[str, ...] = ()
    buckets: int = 16_384

    def __post_init__(self) -> None:
        if not self.categorical:
            raise ValueError("a CTR model needs at least one categorical field")
        if self.buckets < 2:
            raise ValueError("buckets must be >= 2 (bucket 0 means missing)")
        names = self.categorical + self.dense
        if len(set(names)) != len(names):
            raise ValueError(f"field names repeat: {names}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of ``dataclasses.asdict`` (lists back to tuples)."""
        return cls(tuple(data["categorical"]), tuple(data["dense"]), int(data["buckets"]))

    @functools.cached_property
    def _fields(self) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(self.categorical), frozenset(self.dense)

    def check(self, row: HasFeatures) -> None:
        """Raise :class:`FeatureError` naming any field the spec does not know."""
        categorical, dense = self._fields
        if row.categorical.keys() <= categorical and row.dense.keys() <= dense:
            return  # every impression passes here: no sets built
        unknown = sorted(set(row.categorical) - set(self.categorical))
        if unknown:
            raise FeatureError(f"unknown categorical field(s) {unknown}; known: {list(self.categorical)}")
        unknown = sorted(set(row.dense) - set(self.dense))
        if unknown:
            raise FeatureError(f"unknown dense field(s) {unknown}; known: {list(self.dense)}")


@dataclass(frozen=True)
class CtrBatch:
    """A batch for the CTR learners: bucket ids ``[B, fields]``, raw dense ``[B, dense]`` (NaN = missing)
    and click labels ``[B]`` (None when scoring)."""

    categorical: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.categorical.shape[0])

    def slice(self, start: int, stop: int) -> CtrBatch:
        labels = None if self.labels is None else self.labels[start:stop]
        return CtrBatch(self.categorical[start:stop], self.dense[start:stop], labels)


def bucket_of(value: str, buckets: int) -> int:
    """Stable bucket in ``[1, buckets)`` for a categorical value (0 is kept for missing)."""
    mixed = (zlib.crc32(value.encode()) * _GOLDEN) & 0xFFFFFFFF  # CRC32 is linear; spread similar ids
    return (mixed * (buckets - 1) >> 32) + 1


class BucketMemo:
    """:func:`bucket_of` through a memo, ``None`` (a missing field) being bucket 0.

    A stream shows the same user and item ids again and again, and a dict lookup costs a fraction
    of hashing one. Bounded: cleared when full, so that a stream of new ids cannot grow it.
    """

    def __init__(self, buckets: int, size: int = 1_000_000) -> None:
        self.buckets = buckets
        self.size = size
        self.known: dict[str | None, int] = {None: 0}

    def __call__(self, value: str | None) -> int:
        bucket = self.known.get(value)
        if bucket is None:
            if len(self.known) >= self.size:
                self.known = {None: 0}
            assert value is not None  # None is always known
            bucket = self.known[value] = bucket_of(value, self.buckets)
        return bucket


def encode(spec: FeatureSpec, rows: Sequence[HasFeatures], labels: Iterable[int] | None = None) -> CtrBatch:
    """Hash and stack ``rows`` into a :class:`CtrBatch`; unknown fields raise :class:`FeatureError`."""
    for row in rows:
        spec.check(row)
    return _stack(spec, rows, labels, BucketMemo(spec.buckets))


class RowEncoder:
    """:func:`encode` on the training path: the rows are checked already (the service checks each
    impression, to dead-letter a misfit with its reason), and buckets come from a :class:`BucketMemo`.
    Checking twice and hashing every value cost about as much as the parsing of the records."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.memo = BucketMemo(spec.buckets)

    def encode(self, rows: Sequence[HasFeatures], labels: Iterable[int] | None = None) -> CtrBatch:
        return _stack(self.spec, rows, labels, self.memo)


def _stack(
    spec: FeatureSpec, rows: Sequence[HasFeatures], labels: Iterable[int] | None, bucket: BucketMemo
) -> CtrBatch:
    """Rows checked against ``spec`` as a :class:`CtrBatch` (flat lists, one array per tensor)."""
    names, dense_names = spec.categorical, spec.dense
    ids = [bucket(row.categorical.get(name)) for row in rows for name in names]
    values = [row.dense.get(name, math.nan) for row in rows for name in dense_names]
    categorical = torch.from_numpy(np.array(ids, np.int64).reshape(len(rows), len(names)))
    dense = torch.from_numpy(np.array(values, np.float32).reshape(len(rows), len(dense_names)))
    label_tensor = None if labels is None else torch.tensor(list(labels), dtype=torch.float32)
    if label_tensor is not None and len(label_tensor) != len(rows):
        raise ValueError(f"{len(label_tensor)} labels for {len(rows)} rows")
    return CtrBatch(categorical, dense, label_tensor)


CANDIDATE_KEYS = frozenset({"categorical", "dense"})


class _Features(NamedTuple):
    """A candidate's feature maps, for :meth:`FeatureSpec.check`'s messages."""

    categorical: Mapping[str, Any]
    dense: Mapping[str, Any]


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    kind = type(value)  # exact types: JSON gives int and float, and a bool is no number here
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is not int:
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return None


class CandidateEncoder:
    """The scoring path: JSON candidates (``{"categorical": {...}, "dense": {...}}``) straight to a
    :class:`CtrBatch`, with the checks an :class:`Impression` would make.

    A score request carries about a hundred candidates of ten fields each; building an
    ``Impression`` per candidate and hashing every value cost more than the model's forward pass.
    Here each candidate is checked and written in one pass over its two dicts, and buckets come
    from a memo (a replica sees the same user and item ids again and again), bounded so that a
    stream of new ids cannot grow it without limit.
    """

    def __init__(self, spec: FeatureSpec, memo_size: int = 1_000_000) -> None:
        self.spec = spec
        self._categorical = {name: column for column, name in enumerate(spec.categorical)}
        self._dense = {name: column for column, name in enumerate(spec.dense)}
        self._bucket = BucketMemo(spec.buckets, memo_size)

    def encode(self, candidates: Sequence[Any]) -> CtrBatch:
        """Encode ``candidates``; raise :class:`FeatureError` starting ``candidate <index>:``."""
        ids: list[int] = []
        values: list[float] = []
        for index, candidate in enumerate(candidates):
            try:
                if not isinstance(candidate, dict) or not candidate.keys() <= CANDIDATE_KEYS:
                    raise FeatureError("expected an object with 'categorical' and/or 'dense'")
                categorical, dense = candidate.get("categorical", {}), candidate.get("dense", {})
                ids += self._buckets(categorical)
                values += self._values(dense)
                if not categorical and not dense:
                    raise FeatureError("an impression needs at least one categorical or dense feature")
            except FeatureError as exc:
                raise FeatureError(f"candidate {index}: {exc}") from None
        rows = len(candidates)
        return CtrBatch(
            torch.from_numpy(np.array(ids, np.int64).reshape(rows, len(self.spec.categorical))),
            torch.from_numpy(np.array(values, np.float32).reshape(rows, len(self.spec.dense))),
        )

    def _buckets(self, categorical: Any) -> list[int]:
        if not isinstance(categorical, dict):
            kind = type(categorical).__name__
            raise FeatureError(f"categorical: expected an object of strings, got {kind}")
        row = [0] * len(self._categorical)
        bucket, columns = self._bucket, self._categorical
        for name, value in categorical.items():
            column = columns.get(name)
            if column is None:
                self.spec.check(_Features(categorical, {}))  # raises, naming the unknown fields
            if type(value) is not str:
                raise FeatureError(f"categorical.{name}: expected a string, got {type(value).__name__}")
            row[column] = bucket(value)
        return row

    def _values(self, dense: Any) -> list[float]:
        if not isinstance(dense, dict):
            raise FeatureError(f"dense: expected an object of numbers, got {type(dense).__name__}")
        row = [math.nan] * len(self._dense)
        for name, value in dense.items():
            column = self._dense.get(name)
            if column is None:
                self.spec.check(_Features({}, dense))  # raises, naming the unknown fields
            number = _finite(value)
            if number is None:
                raise FeatureError(f"dense.{name}: expected a finite number, got {value!r}")
            row[column] = number
        return row


class RunningNorm:
    """Per-column running mean and variance (Welford/Chan), ignoring NaN (missing) entries.

    ``transform`` standardises with the statistics so far and maps missing values to 0 (the mean).
    """

    def __init__(self, width: int, clip: float = 10.0) -> None:
        self.count = torch.zeros(width, dtype=torch.float64)
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.m2 = torch.zeros(width, dtype=torch.float64)
        self.clip = clip

    def update(self, values: torch.Tensor) -> None:
        """Fold a ``[B, width]`` batch into the statistics (Chan et al.'s pairwise merge)."""
        x = values.detach().to("cpu", torch.float64)
        present = ~torch.isnan(x)
        n_b = present.sum(0).to(torch.float64)
        safe = torch.where(present, x, 0.0)
        mean_b = safe.sum(0) / n_b.clamp(min=1)
        m2_b = torch.where(present, (x - mean_b) ** 2, 0.0).sum(0)
        total = self.count + n_b
        delta = mean_b - self.mean
        weight = torch.where(total > 0, n_b / total.clamp(min=1), 0.0)
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2_b + delta**2 * self.count * weight
        self.count = total

    def std(self) -> torch.Tensor:
        variance = self.m2 / (self.count - 1).clamp(min=1)
        std = variance.sqrt()
        return torch.where(std > 1e-12, std, 1.0)

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        """Standardised float32 copy of ``values``; missing entries become 0."""
        mean = self.mean.to(values.device, torch.float32)
        std = self.std().to(values.device, torch.float32)
        z = ((values - mean) / std).clamp(-self.clip, self.clip)
        return torch.nan_to_num(z, nan=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count.clone(),
            "mean": self.mean.clone(),
            "m2": self.m2.clone(),
            "clip": self.clip,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["count"].shape != self.count.shape:
            raise ValueError(f"normaliser width {tuple(state['count'].shape)} != {tuple(self.count.shape)}")
        self.count, self.mean, self.m2 = (state[k].clone().to(torch.float64) for k in ("count", "mean", "m2"))
        self.clip = float(state["clip"])
