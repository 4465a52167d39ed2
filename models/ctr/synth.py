"""A synthetic Criteo-layout impression stream: Zipf-like ids, counts, clicks from a hidden teacher.

Why: CowClip's large-batch claim is about Criteo-sized streams (45.8M rows, embedding tables of
millions of ids), and no such file can be fetched here. This generator reproduces what a large-batch
optimizer meets on Criteo, not Criteo itself (docs/ctr.md says what is and is not reproduced):

- 26 categorical fields ``C1..C26`` with Criteo's per-field cardinalities (3 to 10.1M), ids drawn
  Zipf-like (a few ids carry most rows, a long tail is seen once or twice), written like Criteo's as
  8 hex digits of a 32-bit hash;
- new ids all along the stream: in fields of at least ``churn_min_cardinality`` ids, every popularity
  slot is taken over by a brand-new id about every ``id_lifetime`` rows (at a slot-specific time), so
  new ids arrive at every popularity level, head included;
- 13 heavy-tailed integer counts ``I1..I13`` with missing values;
- clicks drawn from a hidden teacher, a random factorisation machine (first-order id weights, pairwise
  id interactions, dense weights) with a bias calibrated to Criteo's 25.6% positives. Each id's teacher
  vector is a codebook row picked by a hash of (field, id), so rare ids carry as much signal as head
  ids and no 10M-row table is stored;
- optionally, a slowly rotating teacher (``drift``), so a model frozen early goes stale.

Rows are made in blocks of :data:`BLOCK` rows, vectorised in numpy; block ``b`` draws from its own
seeded stream, so any row range is reproducible on its own, however it is chunked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: Distinct values of C1..C26 in the Criteo Display Advertising Challenge (Kaggle) training set: the
#: embedding-table sizes that DLRM's Kaggle scripts and OneFlow's DCN/DeepFM use (Oneflow-Inc/models,
#: RecommenderSystems/dcn/README.md, "table size array").
CRITEO_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
#: Share of clicks in the Criteo Kaggle training set (about 11.7M of its 45,840,617 rows).
CRITEO_POSITIVE_RATE = 0.256
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
DENSE_FIELDS: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))

#: Per dense field: mean and spread of log1p(count), and the share of rows where it is missing.
#: Illustrative values chosen to resemble Criteo's integer features (small counts, one field in the
#: thousands, several fields often missing); they are not measured from the data set.
_DENSE_LOG_MEAN = np.array([0.7, 1.5, 2.0, 1.5, 8.0, 3.5, 1.3, 2.1, 3.7, 0.4, 0.9, 0.2, 1.5], np.float32)
_DENSE_LOG_STD = np.array([1.0, 1.4, 1.2, 0.9, 1.6, 1.5, 1.2, 1.0, 1.2, 0.5, 0.8, 0.6, 1.0], np.float32)
_DENSE_MISSING = np.array(
    [0.45, 0.0, 0.2, 0.2, 0.03, 0.2, 0.04, 0.0, 0.04, 0.45, 0.04, 0.75, 0.2], np.float32
)
#: Counts are clipped here so that they stay exact in float32.
MAX_COUNT = 2**24 - 1
_LOG_MAX_COUNT = np.float32(math.log(MAX_COUNT + 1))
_Z_LIMIT = 20.0  # a uniform exactly at the missing rate would give z = -inf

#: Largest field drawn in float32 (twice as fast as float64): the float32 uniforms' 2^-24 steps and
#: exp's rounding move a draw by a fraction of a rank at most, at the far end of the tail (Criteo:
#: 20 of 26 fields).
FLOAT32_CARDINALITY = 2**18
#: Rows per generation block: the unit of seeding, of teacher drift steps and of memory use.
BLOCK = 65_536
#: Rows of the teacher's codebook (ids pick a row by hash).
_CODEBOOK_ROWS = 2**16
#: Rows of block 0 the teacher's bias is fitted on (again in every block when the teacher drifts).
_CALIBRATION_ROWS = 16_384
_WEYL = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: spreads slot phases evenly
_U32 = np.uint64(32)


@dataclass(frozen=True)
class SynthConfig:
    """What the stream looks like; the defaults are the Criteo-like stream the bench uses."""

    seed: int = 0
    cardinalities: tuple[int, ...] = CRITEO_CARDINALITIES
    #: Exponent of the id frequencies' power law (1.0: Zipf's law, and the fastest path).
    zipf_exponent: float = 1.0
    #: Mean rows an id keeps its popularity slot before a new id takes it over (0: no new ids).
    id_lifetime: int = 10_000_000
    #: Fields with fewer ids than this keep theirs for ever (a browser type gets no new values).
    churn_min_cardinality: int = 10_000
    #: Rotation of the teacher in radians per million rows (0: a stationary teacher).
    drift: float = 0.0
    positive_rate: float = CRITEO_POSITIVE_RATE
    teacher_dim: int = 4
    #: Standard deviations of the teacher logit's parts: first-order id weights, pairwise id
    #: interactions, dense weights (the bias is calibrated to ``positive_rate``).
    first_order_std: float = 0.8
    interaction_std: float = 0.8
    dense_std: float = 0.5
    start_ts: float = 1_400_000_000.0
    #: Event seconds per row: Criteo's 7 days over its 45,840,617 rows.
    ts_step: float = 7 * 86_400 / 45_840_617

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not self.cardinalities or not all(1 <= c <= 2**32 for c in self.cardinalities):
            raise ValueError("cardinalities must be between 1 and 2^32 ids per field")
        if self.zipf_exponent <= 0:
            raise ValueError("zipf_exponent must be > 0")
        if not 0 < self.positive_rate < 1:
            raise ValueError("positive_rate must be between 0 and 1")
        if self.id_lifetime < 0 or self.teacher_dim < 1:
            raise ValueError("id_lifetime must be >= 0 and teacher_dim >= 1")
        if min(self.first_order_std, self.interaction_std, self.dense_std) < 0:
            raise ValueError("teacher standard deviations must be >= 0")


@dataclass(frozen=True)
class SynthBatch:
    """Consecutive rows of the stream as arrays (the bench's input; JSON lines are made from these)."""

    rows: np.ndarray  #: int64 [n]: each row's position in the stream
    ids: np.ndarray  #: uint32 [n, fields]: categorical ids (written as 8 hex digits)
    dense: np.ndarray  #: float32 [n, 13]: integer counts, NaN where missing
    clicked: np.ndarray  #: uint8 [n]
    probability: np.ndarray  #: float32 [n]: the teacher's click probability (the best possible score)

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int) -> SynthBatch:
        return SynthBatch(*(array[start:stop] for array in self._arrays()))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.rows, self.ids, self.dense, self.clicked, self.probability

    @staticmethod
    def concat(parts: Sequence[SynthBatch]) -> SynthBatch:
        if not parts:
            raise ValueError("nothing to concatenate")
        return SynthBatch(
            *(np.concatenate(arrays) for arrays in zip(*(p._arrays() for p in parts), strict=True))
        )


def zipf_ranks(uniform: np.ndarray, cardinality: int, exponent: float) -> np.ndarray:
    """Popularity ranks in ``[1, cardinality]`` (uint64) from uniforms in [0, 1), computed in the
    uniforms' precision (float32 resolves ranks up to :data:`FLOAT32_CARDINALITY`).

    The inverse CDF of a power law ``x^-exponent`` on ``[1, cardinality + 1)``, floored: rank ``r``
    has probability about proportional to ``(r + 0.5)^-exponent``.
    """
    real = uniform.dtype.type
    if exponent == 1.0:
        x = np.exp(uniform * real(math.log(cardinality + 1)))
    else:
        q = 1.0 - exponent
        x = np.exp(np.log1p(uniform * real((cardinality + 1) ** q - 1)) / real(q))
    return np.minimum(x, real(cardinality), out=x).astype(np.uint64)


def head_share(cardinality: int, exponent: float, top: int) -> float:
    """Expected share of rows that go to the ``top`` most popular ids of a field (before churn)."""
    top = min(top, cardinality)
    if exponent == 1.0:
        return math.log(top + 1) / math.log(cardinality + 1)
    q = 1.0 - exponent
    return ((top + 1) ** q - 1) / ((cardinality + 1) ** q - 1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place: a bijection of uint64 that scatters every input bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


class Teacher:
    """The hidden click model: a factorisation machine whose id vectors come from a hashed codebook.

    ``logit = bias + sum_f w(f, id_f) + sum_{f<g} <v(f, id_f), v(g, id_g)> + <d, z>`` with ``z`` the
    standardised log counts (0 where missing). ``w`` and ``v`` of an id are row ``hash(field, id)`` of a
    random codebook, ``d`` a random vector. With ``drift`` the codebook and ``d`` rotate towards a
    second, independent draw: ``cos(t) A + sin(t) B`` keeps every variance while the weights change.
    """

    def __init__(self, config: SynthConfig, codes: np.ndarray, z: np.ndarray) -> None:
        """``codes`` ``[fields, n]`` and ``z`` ``[13, n]``: a sample of rows the bias is fitted on, so
        that the mean click probability over it is ``config.positive_rate`` (in every block: a
        drifting teacher's logits move, so its bias is refitted per block)."""
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
        fields, dims, dense = len(config.cardinalities), config.teacher_dim, len(DENSE_FIELDS)
        pairs = fields * (fields - 1) / 2
        # Scales so that each part of the logit has the configured standard deviation.
        first_scale = config.first_order_std / math.sqrt(fields)
        vector_scale = (config.interaction_std**2 / max(pairs * dims, 1)) ** 0.25
        scales = np.array([first_scale] + [vector_scale] * dims)
        self._codebooks = rng.standard_normal((2, _CODEBOOK_ROWS, dims + 1)) * scales
        self._dense = rng.standard_normal((2, dense)) * (config.dense_std / math.sqrt(dense))
        self.drift = config.drift
        self._stationary = self._blend(0.0) if config.drift == 0 else None
        self._calibration = (codes[:, :_CALIBRATION_ROWS], z[:, :_CALIBRATION_ROWS])
        self._positive_rate = config.positive_rate
        self._stationary_bias = self._fit_bias(0) if config.drift == 0 else None
        self._bias_cache: dict[int, float] = {}

    def angle(self, block: int) -> float:
        """The rotation of block ``block`` (constant within a block, taken at its middle row)."""
        return self.drift * (block + 0.5) * BLOCK / 1e6

    def tables(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The codebook as float32 ``[rows, 1 + dims]`` and the dense weights, as they stand in
        ``block``. Column 0 is ``w - ||v||^2 / 2``: the pairwise sum is ``(||sum v||^2 - sum ||v||^2) / 2``
        and each id's ``||v||^2`` depends on that id alone, so it folds into its first-order weight."""
        return self._stationary or self._blend(self.angle(block))

    def _blend(self, angle: float) -> tuple[np.ndarray, np.ndarray]:
        book = math.cos(angle) * self._codebooks[0] + math.sin(angle) * self._codebooks[1]
        dense = math.cos(angle) * self._dense[0] + math.sin(angle) * self._dense[1]
        vectors = book[:, 1:]
        table = np.column_stack([book[:, 0] - 0.5 * (vectors**2).sum(1), vectors]).astype(np.float32)
        return table, dense.astype(np.float32)

    def raw_logits(self, codes: np.ndarray, z: np.ndarray, block: int) -> np.ndarray:
        """Logits without the bias, from codebook rows ``[fields, n]`` and standardised counts ``[13, n]``."""
        table, dense = self.tables(block)
        total = np.zeros((codes.shape[1], table.shape[1]), dtype=np.float32)
        for column in codes:
            total += np.take(table, column, axis=0)
        # einsum: ``@`` would start BLAS threads that spin on a shared machine, and ``.sum(1)`` over an
        # axis of 4 is several times slower.
        vectors = total[:, 1:]
        pairwise = 0.5 * np.einsum("nk,nk->n", vectors, vectors)
        return (total[:, 0] + pairwise + np.einsum("d,dn->n", dense, z)).astype(np.float64)

    def bias(self, block: int) -> float:
        """The logit bias in ``block``."""
        if self._stationary_bias is not None:
            return self._stationary_bias
        if block not in self._bias_cache:
            self._bias_cache = {block: self._fit_bias(block)}  # blocks come in order: keep one
        return self._bias_cache[block]

    def _fit_bias(self, block: int) -> float:
        raw = self.raw_logits(*self._calibration, block)
        low, high = -20.0, 20.0
        for _ in range(40):
            middle = (low + high) / 2
            if np.mean(_sigmoid(raw + middle)) < self._positive_rate:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    def first_order(self, field: int, keys: np.ndarray, block: int = 0) -> np.ndarray:
        """Teacher first-order weights (column 0 of :meth:`tables`) in field number ``field`` of the ids
        with these keys (an id's key is its popularity rank while no churn has happened), for checks."""
        table, _ = self.tables(block)
        return table[_codes(_hash_ids(keys.astype(np.uint64), field)), 0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hash_ids(keys: np.ndarray, field: int) -> np.ndarray:
    """64-bit hash of (field, key): its low 32 bits are the written id, its top 16 the codebook row."""
    salt = _mix64(np.array([field + 1], dtype=np.uint64) * _WEYL)
    return _mix64(keys ^ salt)


def _codes(hashes: np.ndarray) -> np.ndarray:
    """The codebook rows of 64-bit hashes: their top 16 bits (a view, no arithmetic)."""
    return hashes.astype("<u8", copy=False).view("<u2")[3::4]


@dataclass(frozen=True)
class _Features:
    rows: np.ndarray  # [n]
    ids: np.ndarray  # [n, fields]
    codes: np.ndarray  # [fields, n]: each id's codebook row
    dense: np.ndarray  # [n, 13]: counts, NaN where missing
    z: np.ndarray  # [13, n]: standardised log counts, 0 where missing


class CriteoSynth:
    """The generator: ``CriteoSynth(SynthConfig(seed=1)).batch(0, 1_000_000)``.

    Row ``i`` is the same whatever range it is asked in; ``batches`` streams a long range block by
    block in bounded memory.
    """

    def __init__(self, config: SynthConfig | None = None) -> None:
        self.config = config or SynthConfig()
        first = self._features(0, np.random.default_rng(self._seed(0)))
        self.teacher = Teacher(self.config, first.codes, first.z)

    def _seed(self, block: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.config.seed, spawn_key=(1, block))

    def _features(self, block: int, rng: np.random.Generator) -> _Features:
        """Ids and counts of one block. Arrays are field-major (one contiguous row per field): numpy
        loops over a short inner axis of 13 or 26 cost several times more."""
        cfg = self.config
        rows = np.arange(block * BLOCK, (block + 1) * BLOCK, dtype=np.int64)
        # Slot r gets a new id each time rows / lifetime + phase(r) crosses an integer. Both terms are
        # 32.32 fixed point; the phases are spread evenly over [0, 1) by a Weyl sequence.
        age = (rows * (2.0**32 / cfg.id_lifetime)).astype(np.uint64) if cfg.id_lifetime > 0 else None
        ids = np.empty((len(cfg.cardinalities), BLOCK), dtype=np.uint32)
        codes = np.empty((len(cfg.cardinalities), BLOCK), dtype=np.uint16)
        for field, cardinality in enumerate(cfg.cardinalities):
            precision = np.float32 if cardinality <= FLOAT32_CARDINALITY else np.float64
            keys = zipf_ranks(rng.random(BLOCK, dtype=precision), cardinality, cfg.zipf_exponent)
            if age is not None and cardinality >= cfg.churn_min_cardinality:
                generation = (age + ((keys * _WEYL) >> _U32)) >> _U32
                keys += generation * np.uint64(cardinality)
            hashes = _hash_ids(keys, field)
            ids[field] = hashes  # the low 32 bits
            codes[field] = _codes(hashes)
        # One uniform u per count: below the missing rate m it is missing; above it,
        # z = logit((u - m) / (1 - m)) = log((u - m) / (1 - u)) is logistic (scaled to unit variance),
        # and NaN where missing, which the counts inherit through exp and floor.
        uniform = rng.random((len(DENSE_FIELDS), BLOCK), dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.log((uniform - _DENSE_MISSING[:, None]) / (1 - uniform))
        z *= np.float32(math.sqrt(3) / math.pi)
        log_counts = np.clip(_DENSE_LOG_MEAN[:, None] + _DENSE_LOG_STD[:, None] * z, 0.0, _LOG_MAX_COUNT)
        counts = np.floor(np.exp(log_counts) - 1.0)
        np.nan_to_num(z, copy=False, nan=0.0, neginf=-_Z_LIMIT, posinf=_Z_LIMIT)  # missing: 0
        return _Features(rows, ids.T, codes, counts.T, z)

    def _block(self, block: int) -> SynthBatch:
        rng = np.random.default_rng(self._seed(block))
        features = self._features(block, rng)
        logits = self.teacher.raw_logits(features.codes, features.z, block) + self.teacher.bias(block)
        probability = _sigmoid(logits)
        clicked = (rng.random(BLOCK) < probability).astype(np.uint8)
        return SynthBatch(
            features.rows, features.ids, features.dense, clicked, probability.astype(np.float32)
        )

    def batches(self, start: int, stop: int) -> Iterator[SynthBatch]:
        """Rows ``[start, stop)`` in pieces of at most :data:`BLOCK` rows, in order."""
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got {start}, {stop}")
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            first = block * BLOCK
            yield self._block(block).slice(max(start - first, 0), min(stop - first, BLOCK))

    def batch(self, start: int, stop: int) -> SynthBatch:
        """Rows ``[start, stop)`` as one batch."""
        return SynthBatch.concat(list(self.batches(start, stop)) or [self._block(0).slice(0, 0)])

    def timestamps(self, rows: np.ndarray) -> np.ndarray:
        """Event time (seconds since the epoch) of each row."""
        return self.config.start_ts + rows * self.config.ts_step
