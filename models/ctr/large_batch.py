"""DeepFM on the synthetic Criteo-layout stream, one epoch per cell by default, with and without CowClip.

Why: CowClip's claim (AUC at batch 64K-128K within ~0.1% of batch 1K) needs a stream where a 64K batch
still gets hundreds of steps and embedding tables hold millions of rows, which MovieLens cannot give.
This module is the training loop of ``bench/ctr_large_batch.py``; it imports torch, numpy and the
project's CTR pieces only (no Kafka, pydantic or river), so it runs on a bare GPU machine.

Protocol: rows ``[0, train)`` of seed ``s``'s stream are the training epoch (in stream order, one
pass unless ``CellConfig.epochs`` asks for more), rows ``[train, train + heldout)`` the later,
held-out rows. Each field's uint32 id is hashed into its own table of ``min(cardinality,
max_table_rows)`` rows (Criteo's big fields do the same with a vocabulary cut-off); the counts enter
as standardised ``log1p`` (0 where missing). Embedding tables (vectors and first-order weights) are
updated by :class:`~models.ctr.rowwise.RowwiseAdam` on the rows a batch looked up; the MLP and the
dense linear term by ``torch.optim.Adam``.

Optimizers (the arms of the bench):

- ``adam``: the base learning rates and L2 at every batch size, no clipping, no warm-up;
- ``cowclip``: CowClip on the vector embeddings (not on first-order weights, as the released code)
  plus the scaling rule of :class:`~models.ctr.cowclip.LargeBatchRule`: embedding lr unchanged,
  dense lr x sqrt(k) with linear warm-up, L2 x k, for ``k = batch / base_batch``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.ctr.cowclip import LargeBatchRule
from models.ctr.layers import mlp
from models.ctr.metrics import log_loss, roc_auc
from models.ctr.rowwise import RowClip, RowwiseAdam
from models.ctr.synth import BLOCK, CRITEO_CARDINALITIES, CriteoSynth, SynthConfig

OPTIMIZERS: tuple[str, ...] = ("adam", "cowclip")
#: Exponent of ``k`` in the ``cowclip`` arm's embedding learning rate, by name.
EMBED_SCALINGS: dict[str, float] = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
#: Rows scored per forward pass on the held-out rows (bounds evaluation memory).
EVAL_CHUNK = 262_144


@dataclass(frozen=True)
class TableLayout:
    """Where each field's hashed ids live in one shared table: field ``f`` owns ``sizes[f]`` rows."""

    sizes: tuple[int, ...]

    @classmethod
    def criteo(
        cls, max_table_rows: int, cardinalities: tuple[int, ...] = CRITEO_CARDINALITIES
    ) -> TableLayout:
        if max_table_rows < 1:
            raise ValueError("max_table_rows must be >= 1")
        return cls(tuple(min(c, max_table_rows) for c in cardinalities))

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """int32 table rows ``[n, fields]`` of uint32 ids ``[n, fields]`` (the ids are hashes already,
        so their remainder is a hash too)."""
        sizes = np.array(self.sizes, dtype=np.uint32)
        offsets = np.concatenate([[0], np.cumsum(self.sizes[:-1])]).astype(np.int64)
        return (ids % sizes + offsets).astype(np.int32)


@dataclass(frozen=True)
class Rows:
    """Consecutive encoded rows, as tensors on the training device."""

    rows: torch.Tensor  #: int32 [n, fields]: table rows
    dense: torch.Tensor  #: float32 [n, 13]: standardised log1p counts, 0 where missing
    clicked: torch.Tensor  #: float32 [n]

    def __len__(self) -> int:
        return len(self.clicked)

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(self.rows[start:stop], self.dense[start:stop], self.clicked[start:stop])


def _encode_range(seed: int, start: int, stop: int, layout: TableLayout) -> tuple[np.ndarray, ...]:
    """Rows ``[start, stop)`` of seed ``seed``'s stream as (table rows, log1p counts, clicks)."""
    batch = CriteoSynth(SynthConfig(seed=seed)).batch(start, stop)
    log_counts = np.nan_to_num(np.log1p(batch.dense), nan=0.0)
    return layout.rows(batch.ids), log_counts.astype(np.float32), batch.clicked


def make_split(
    seed: int,
    train: int,
    heldout: int,
    layout: TableLayout,
    device: torch.device,
    pool: Executor | None = None,
) -> tuple[Rows, Rows]:
    """Seed ``seed``'s training rows and the held-out rows after them, on ``device``.

    ``pool`` generates block-aligned pieces in parallel (the generator is single-threaded numpy and
    each block is seeded on its own, so the rows are the same either way). The counts are
    standardised with the training rows' mean and spread.
    """
    if train < 1 or heldout < 1:
        raise ValueError("need at least one training and one held-out row")
    if len(layout.sizes) != len(CRITEO_CARDINALITIES):
        raise ValueError(f"the stream has {len(CRITEO_CARDINALITIES)} fields, the layout {len(layout.sizes)}")
    total = train + heldout
    piece = BLOCK * max(1, -(-total // BLOCK) // 32)
    bounds = [(start, min(start + piece, total)) for start in range(0, total, piece)]
    if pool is None:
        parts = [_encode_range(seed, a, b, layout) for a, b in bounds]
    else:
        futures = [pool.submit(_encode_range, seed, a, b, layout) for a, b in bounds]
        parts = [future.result() for future in futures]
    rows, dense, clicked = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    mean, std = dense[:train].mean(0), dense[:train].std(0) + 1e-6
    dense = (dense - mean) / std
    everything = Rows(
        torch.from_numpy(rows).to(device),
        torch.from_numpy(dense.astype(np.float32)).to(device),
        torch.from_numpy(clicked.astype(np.float32)).to(device),
    )
    return everything.slice(0, train), everything.slice(train, total)


class WideTableDeepFM(nn.Module):
    """DeepFM over one table of per-field row ranges (:class:`TableLayout`), with sparse gradients.

    ``models.ctr.deepfm.DeepFMNet`` gives every field the same number of buckets; Criteo's fields range
    from 3 to 10M ids, so here each field gets its own table size, and the lookups return sparse
    gradients for :class:`RowwiseAdam`.
    """

    def __init__(self, layout: TableLayout, dense: int, dim: int, hidden: tuple[int, ...], init_std: float):
        super().__init__()
        fields = len(layout.sizes)
        self.vectors = nn.Parameter(torch.randn(layout.total, dim) * init_std)
        self.weights = nn.Parameter(torch.randn(layout.total, 1) * init_std)
        self.dense_linear = nn.Linear(dense, 1)
        self.dnn = nn.Sequential(mlp(fields * dim + dense, hidden), nn.Linear(hidden[-1], 1))

    def tables(self) -> list[nn.Parameter]:
        return [self.vectors, self.weights]

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from int64 table rows ``[B, F]`` and dense features ``[B, D]``."""
        vectors = nn.functional.embedding(rows, self.vectors, sparse=True)  # [B, F, d]
        linear = nn.functional.embedding(rows, self.weights, sparse=True).sum((1, 2))
        summed = vectors.sum(1)
        interactions = 0.5 * (summed * summed - (vectors * vectors).sum(1)).sum(1)
        deep = self.dnn(torch.cat([vectors.flatten(1), dense], 1)).squeeze(1)
        return linear + self.dense_linear(dense).squeeze(1) + interactions + deep


@dataclass(frozen=True)
class CellConfig:
    """One cell of the bench: a batch size, an optimizer arm and the model's hyper-parameters.

    Defaults are the CowClip paper's Criteo DeepFM setting (``ALGORITHMS.md``): dim 10, DNN 400x3,
    init std 1e-2, base lr 1e-4 (embeddings and dense) and L2 1e-5 at batch 1024, r = 1, zeta = 1e-5.
    """

    batch: int
    optimizer: str = "cowclip"
    base_batch: int = 1024
    embed_dim: int = 10
    hidden: tuple[int, ...] = (400, 400, 400)
    init_std: float = 1e-2
    embed_lr: float = 1e-4
    dense_lr: float = 1e-4
    l2: float = 1e-5
    clip_ratio: float = 1.0
    zeta: float = 1e-5
    #: Embedding lr at batch ``k * base_batch`` in the ``cowclip`` arm: ``"none"`` (the paper: unchanged),
    #: ``"sqrt"`` (x sqrt(k), as the dense lr) or ``"linear"`` (x k); an experiment knob.
    embed_scaling: str = "none"
    #: Share of the training steps over which the dense learning rate warms up (``cowclip`` only).
    #: The paper warms up over its first epoch of several; one epoch here, so a tenth of it.
    warmup: float = 0.1
    #: Passes over the training rows, in the same order each time. A stream learner gets one; the
    #: paper trains several (its warm-up alone lasts one), so more tests what the step count costs.
    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.batch < 1 or self.base_batch < 1:
            raise ValueError("batch and base_batch must be >= 1")
        if self.embed_scaling not in EMBED_SCALINGS:
            raise ValueError(f"embed_scaling must be one of {EMBED_SCALINGS}, not {self.embed_scaling!r}")
        if not 0 <= self.warmup <= 1:
            raise ValueError("warmup is a share of the training steps, between 0 and 1")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")


@dataclass(frozen=True)
class CellResult:
    """What one cell measured (the bench's JSON rows carry these fields)."""

    batch: int
    optimizer: str
    seed: int
    steps: int
    train_rows: int
    heldout_rows: int
    auc: float
    logloss: float
    samples_per_s: float
    #: Seconds of the training epoch (data already on the device; evaluation not included).
    wall_s: float
    eval_s: float
    #: Mean over steps of the share of distinct looked-up vector-embedding rows CowClip clipped.
    clipped: float
    device: str


def build_optimizers(
    net: WideTableDeepFM, config: CellConfig, steps: int
) -> tuple[RowwiseAdam, RowwiseAdam, torch.optim.Adam, Callable[[int], float]]:
    """Vector-table step, first-order-table step, dense Adam, and the dense lr at each step."""
    scaled = config.optimizer == "cowclip"
    rule = LargeBatchRule(config.batch if scaled else config.base_batch, config.base_batch)
    clip = RowClip(config.clip_ratio, config.zeta) if scaled else None
    embed_lr = rule.embed_lr(config.embed_lr) * rule.k ** EMBED_SCALINGS[config.embed_scaling]
    l2 = rule.l2(config.l2)
    vectors = RowwiseAdam([net.vectors], lr=embed_lr, l2=l2, clip=clip)
    weights = RowwiseAdam([net.weights], lr=embed_lr, l2=l2)
    dense_params = [p for name, p in net.named_parameters() if name not in ("vectors", "weights")]
    fused = next(net.parameters()).is_cuda
    dense = torch.optim.Adam(dense_params, lr=rule.dense_lr(config.dense_lr), fused=fused)
    warmup_steps = math.ceil(config.warmup * steps) if scaled else 0
    peak = rule.dense_lr(config.dense_lr)
    return vectors, weights, dense, lambda step: peak * LargeBatchRule.warmup(step, warmup_steps)


@torch.no_grad()
def predict(net: nn.Module, data: Rows) -> np.ndarray:
    """Click probabilities of ``data`` (float64, on the host), scored in chunks."""
    net.eval()
    scores = [
        torch.sigmoid(net(part.rows.long(), part.dense))
        for part in (data.slice(a, a + EVAL_CHUNK) for a in range(0, len(data), EVAL_CHUNK))
    ]
    net.train()
    return torch.cat(scores).double().cpu().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_cell(
    config: CellConfig,
    layout: TableLayout,
    train: Rows,
    heldout: Rows,
    progress: Callable[[int], object] | None = None,
) -> CellResult:
    """Train a fresh DeepFM for ``config.epochs`` passes over ``train`` in batches of ``config.batch``,
    then score ``heldout``. ``progress(rows)`` is called after every step (a progress bar's
    ``update``). The warm-up is a share of all the steps.

    The loop reads nothing back from the device itself (no ``loss.item()``); RowwiseAdam's
    ``torch.unique`` and clip count are its only host syncs.
    """
    device = train.rows.device
    torch.manual_seed(config.seed)
    with device:  # tables of millions of rows are drawn where they live, not on the host and copied
        net = WideTableDeepFM(layout, train.dense.shape[1], config.embed_dim, config.hidden, config.init_std)
    per_epoch = -(-len(train) // config.batch)
    steps = per_epoch * config.epochs
    vectors, weights, dense, dense_lr = build_optimizers(net, config, steps)
    clipped = 0.0
    _sync(device)
    began = time.perf_counter()
    for step in range(steps):
        start = step % per_epoch * config.batch
        part = train.slice(start, start + config.batch)
        rows = part.rows.long()
        for group in dense.param_groups:
            group["lr"] = dense_lr(step)
        loss = nn.functional.binary_cross_entropy_with_logits(net(rows, part.dense), part.clicked)
        vectors.zero_grad()
        weights.zero_grad()
        dense.zero_grad(set_to_none=True)
        loss.backward()
        vectors.step([rows])
        weights.step([rows])
        dense.step()
        clipped += vectors.clipped_fraction
        if progress is not None:
            progress(len(part))
    _sync(device)
    wall = time.perf_counter() - began
    began = time.perf_counter()
    scores = predict(net, heldout)
    labels = heldout.clicked.cpu().numpy()
    auc = roc_auc(labels, scores)
    eval_s = time.perf_counter() - began
    return CellResult(
        batch=config.batch,
        optimizer=config.optimizer,
        seed=config.seed,
        steps=steps,
        train_rows=len(train),
        heldout_rows=len(heldout),
        auc=math.nan if auc is None else auc,
        logloss=log_loss(labels, scores),
        samples_per_s=len(train) * config.epochs / wall,
        wall_s=wall,
        eval_s=eval_s,
        clipped=clipped / steps,
        device=str(device),
    )
