"""Query-grouped ranking data: the batch type rankers learn from, and the LETOR/SVMlight reader.

A :class:`QueryBatch` holds the documents of several queries back to back (``offsets`` delimit them),
which is the layout LightGBM's ``group`` wants and lets a committee score many queries in one call.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.config import shared_data_dir

MAX_GRADE = 4


@dataclass(frozen=True)
class QueryBatch:
    """Documents of several queries: rows ``offsets[i]:offsets[i+1]`` belong to ``query_ids[i]``.

    ``grades`` is None for unlabeled queries (what arrives on the queries topic).
    """

    features: np.ndarray
    offsets: np.ndarray
    query_ids: tuple[str, ...]
    grades: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"features must be 2-D (documents x features), got shape {self.features.shape}")
        if len(self.offsets) != len(self.query_ids) + 1 or self.offsets[0] != 0:
            raise ValueError("offsets must start at 0 and have one more entry than query_ids")
        if self.offsets[-1] != len(self.features) or np.any(np.diff(self.offsets) < 1):
            raise ValueError("offsets must cover every document and give each query at least one")
        if self.grades is not None:
            if self.grades.shape != (len(self.features),):
                raise ValueError(f"grades shape {self.grades.shape} != ({len(self.features)},)")
            if self.grades.min() < 0 or self.grades.max() > MAX_GRADE:
                raise ValueError(f"grades must lie in 0..{MAX_GRADE}")

    @classmethod
    def from_queries(
        cls,
        query_ids: Sequence[str],
        features: Sequence[np.ndarray],
        grades: Sequence[np.ndarray] | None = None,
    ) -> QueryBatch:
        """Concatenate per-query arrays into one batch."""
        if not features:
            raise ValueError("a batch needs at least one query")
        sizes = [len(f) for f in features]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        stacked = np.concatenate([np.asarray(f, dtype=np.float32) for f in features])
        graded = None if grades is None else np.concatenate([np.asarray(g, dtype=np.int64) for g in grades])
        return cls(stacked, offsets, tuple(query_ids), graded)

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def split_scores(self, scores: np.ndarray) -> list[np.ndarray]:
        """Cut a per-document array (last axis) into one piece per query."""
        return [scores[..., a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def select(self, indices: Sequence[int]) -> QueryBatch:
        """The queries at ``indices`` (in that order) as a new batch."""
        spans = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]
        rows = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        sizes = [len(s) for s in spans]
        return QueryBatch(
            self.features[rows],
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            tuple(self.query_ids[i] for i in indices),
            None if self.grades is None else self.grades[rows],
        )

    @staticmethod
    def concat(batches: Sequence[QueryBatch]) -> QueryBatch:
        """Queries of every batch, in order; all must be labeled or all unlabeled."""
        if not batches:
            raise ValueError("nothing to concatenate")
        labeled = {b.grades is not None for b in batches}
        if len(labeled) != 1:
            raise ValueError("cannot mix labeled and unlabeled batches")
        sizes = np.concatenate([b.group_sizes for b in batches])
        return QueryBatch(
            np.concatenate([b.features for b in batches]),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            tuple(q for b in batches for q in b.query_ids),
            np.concatenate([b.grades for b in batches]) if labeled == {True} else None,
        )


class LetorFormatError(ValueError):
    """A line of a LETOR/SVMlight file that cannot be read, with its line number."""


def load_letor(path: str | os.PathLike[str], n_features: int | None = None) -> QueryBatch:
    """Read ``grade qid:Q i:v ...`` lines (1-based feature indices, ``#`` comments) into a batch.

    Rows of one query must be contiguous, as in the MSLR-WEB and Yahoo files. A ``.gz`` path is
    read through gzip (LETOR 4.0's MQ2008 ships so).
    """
    query_ids: list[str] = []
    rows: list[dict[int, float]] = []
    grades: list[int] = []
    row_query: list[int] = []
    width = 0
    reader = gzip.open if os.fspath(path).endswith(".gz") else open
    with reader(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            body = line.split("#", 1)[0].split()
            if not body:
                continue
            try:
                grade = int(body[0])
                key, qid = body[1].split(":", 1)
                if key != "qid":
                    raise ValueError(f"expected qid:<id> as the second token, got {body[1]!r}")
                values = {int(i): float(v) for i, v in (tok.split(":", 1) for tok in body[2:])}
            except (ValueError, IndexError) as exc:
                raise LetorFormatError(f"{path}:{number}: {exc}") from None
            if not 0 <= grade <= MAX_GRADE:
                raise LetorFormatError(f"{path}:{number}: grade {grade} outside 0..{MAX_GRADE}")
            if values and min(values) < 1:
                raise LetorFormatError(f"{path}:{number}: feature indices start at 1")
            if not query_ids or query_ids[-1] != qid:
                if qid in query_ids:
                    raise LetorFormatError(f"{path}:{number}: rows of query {qid} are not contiguous")
                query_ids.append(qid)
            width = max(width, max(values, default=0))
            rows.append(values)
            grades.append(grade)
            row_query.append(len(query_ids) - 1)
    if not rows:
        raise LetorFormatError(f"{path}: no rows")
    width = n_features or width
    features = np.zeros((len(rows), width), dtype=np.float32)
    for r, values in enumerate(rows):
        for i, v in values.items():
            if i > width:
                raise LetorFormatError(f"{path}: feature index {i} > n_features={width}")
            features[r, i - 1] = v
    sizes = np.bincount(np.asarray(row_query), minlength=len(query_ids))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return QueryBatch(features, offsets, tuple(query_ids), np.asarray(grades, dtype=np.int64))


def mslr_path() -> Path:
    """The MSLR-WEB slice shipped in shared data."""
    return shared_data_dir() / "ltr" / "msn1.fold1.train.5k.txt"
