"""The row-wise Adam step: dense Adam (and CowClip) on the looked-up rows, nothing on the others."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from models.ctr.cowclip import CowClip
from models.ctr.layers import FieldEmbedding
from models.ctr.metrics import roc_auc
from models.ctr.rowwise import RowClip, RowwiseAdam, sparse_lookup
from models.ctr.synth import CriteoSynth, SynthConfig

FIELDS, BUCKETS, DIM = 3, 50, 4


def table(seed: int = 0) -> FieldEmbedding:
    torch.manual_seed(seed)
    return FieldEmbedding(FIELDS, BUCKETS, DIM, init_std=0.1)


def batch(seed: int, size: int = 16, buckets: int = 10) -> torch.Tensor:
    """Bucket ids ``[size, fields]`` from the first ``buckets`` of each field (repeats included)."""
    return torch.randint(0, buckets, (size, FIELDS), generator=torch.Generator().manual_seed(seed))


def backward(embedding: FieldEmbedding, categorical: torch.Tensor, sparse: bool, l2: float = 0.0) -> None:
    """A loss whose gradient differs per lookup; ``l2`` adds the learner's lazy L2 to the loss."""
    vectors = sparse_lookup(embedding, categorical) if sparse else embedding(categorical)
    target = torch.linspace(-1, 1, vectors.numel()).reshape(vectors.shape)
    loss = ((vectors - target) ** 2).sum() * 50
    if l2:
        loss = loss + l2 * embedding.weight[torch.unique(embedding.rows(categorical))].pow(2).sum()
    loss.backward()


def touched(embedding: FieldEmbedding, categorical: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(len(embedding.weight), dtype=torch.bool)
    mask[embedding.rows(categorical).reshape(-1)] = True
    return mask


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_one_step_equals_dense_adam_on_touched_rows_and_leaves_the_rest(sparse: bool, l2: float) -> None:
    dense, rowwise = table(), table()
    categorical = batch(1)
    reference = torch.optim.Adam([dense.weight], lr=1e-2)
    optimizer = RowwiseAdam([rowwise.weight], lr=1e-2, l2=l2)
    before = rowwise.weight.detach().clone()
    backward(dense, categorical, sparse=False, l2=l2)
    backward(rowwise, categorical, sparse=sparse)
    assert rowwise.weight.grad.is_sparse == sparse
    reference.step()
    optimizer.step([rowwise.rows(categorical)])
    mask = touched(rowwise, categorical)
    torch.testing.assert_close(rowwise.weight[mask], dense.weight[mask])
    assert torch.equal(rowwise.weight[~mask], before[~mask])
    assert not torch.equal(rowwise.weight[mask], before[mask])


def test_rows_idle_in_a_step_keep_weights_and_moments_while_dense_adam_moves_them() -> None:
    dense, rowwise = table(), table()
    reference = torch.optim.Adam([dense.weight], lr=1e-2)
    optimizer = RowwiseAdam([rowwise.weight], lr=1e-2)
    first, second = batch(1, buckets=5), batch(2, buckets=5) + 5  # disjoint rows
    for embedding, step in ((dense, lambda rows: reference.step()), (rowwise, optimizer.step)):
        for categorical in (first, second):
            embedding.weight.grad = None
            backward(embedding, categorical, sparse=embedding is rowwise)
            step([embedding.rows(categorical)])
    idle = touched(rowwise, first) & ~touched(rowwise, second)
    assert idle.any()
    replay = table()  # the first step alone: the idle rows as they stood after it
    replay_optimizer = RowwiseAdam([replay.weight], lr=1e-2)
    backward(replay, first, sparse=True)
    replay_optimizer.step([replay.rows(first)])
    after_first = replay.weight.detach()
    assert torch.equal(rowwise.weight[idle], after_first[idle])
    assert torch.equal(optimizer.exp_avg[0][idle], replay_optimizer.exp_avg[0][idle])
    assert not torch.allclose(dense.weight[idle], after_first[idle])  # momentum moved them
    # Rows the second batch touched match dense Adam there (their moments were still zero).
    fresh = touched(rowwise, second) & ~touched(rowwise, first)
    torch.testing.assert_close(rowwise.weight[fresh], dense.weight[fresh])


def test_cowclip_on_the_rows_matches_the_learner_s_cowclip() -> None:
    dense, rowwise = table(), table()
    categorical = batch(3, size=64)
    settings = RowClip(ratio=150.0, zeta=1e-5)  # about half the rows: ||g_k|| / (cnt_k ||w_k||) ~ 100-360
    reference = CowClip(
        torch.optim.Adam([dense.weight], lr=1e-2), [dense.weight], settings.ratio, settings.zeta
    )
    optimizer = RowwiseAdam([rowwise.weight], lr=1e-2, clip=settings)
    backward(dense, categorical, sparse=False)
    backward(rowwise, categorical, sparse=True)
    reference.step([dense.rows(categorical)])
    optimizer.step([rowwise.rows(categorical)])
    torch.testing.assert_close(rowwise.weight, dense.weight)  # untouched rows: unchanged in both
    assert optimizer.clipped_fraction == pytest.approx(reference.clipped_fraction)
    assert 0 < optimizer.clipped_fraction < 1


def test_state_round_trip_continues_identically() -> None:
    a, b = table(), table()
    opt_a = RowwiseAdam([a.weight], lr=1e-2)
    for seed in (1, 2):
        a.weight.grad = None
        backward(a, batch(seed), sparse=True)
        opt_a.step([a.rows(batch(seed))])
    b.weight.data.copy_(a.weight.data)
    opt_b = RowwiseAdam([b.weight], lr=1e-2)
    opt_b.load_state_dict(opt_a.state_dict())
    for embedding, optimizer in ((a, opt_a), (b, opt_b)):
        embedding.weight.grad = None
        backward(embedding, batch(3), sparse=True)
        optimizer.step([embedding.rows(batch(3))])
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="shapes"):
        RowwiseAdam([nn.Parameter(torch.zeros(3, 2))]).load_state_dict(opt_a.state_dict())


def test_bad_settings_and_mismatched_rows_are_refused() -> None:
    weight = table().weight
    with pytest.raises(ValueError):
        RowwiseAdam([weight], lr=0)
    with pytest.raises(ValueError):
        RowwiseAdam([weight], clip=RowClip(ratio=0))
    with pytest.raises(ValueError, match="tables"):
        RowwiseAdam([weight]).step([])


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small ops: a second torch thread only spins on a shared machine (7x slower measured at load 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_an_fm_trained_with_sparse_lookups_and_rowwise_adam_learns_the_synthetic_stream() -> None:
    """The sparse path end to end, on the synthetic Criteo-layout stream (hashed into small tables)."""
    synth = CriteoSynth(SynthConfig(seed=5))
    train, test = synth.batch(0, 160_000), synth.batch(160_000, 200_000)
    buckets = 2**14
    torch.manual_seed(0)
    vectors, weights = FieldEmbedding(26, buckets, 4, 1e-2), FieldEmbedding(26, buckets, 1, 0.0)
    optimizers = (
        RowwiseAdam([vectors.weight], lr=5e-3, clip=RowClip()),
        RowwiseAdam([weights.weight], lr=5e-3),
    )

    def logits(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        categorical = torch.from_numpy((ids % buckets).astype(np.int64))
        v = sparse_lookup(vectors, categorical)
        pairwise = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return sparse_lookup(weights, categorical).sum((1, 2)) + pairwise, categorical

    for start in range(0, len(train), 2048):
        part = train.slice(start, start + 2048)
        scores, categorical = logits(part.ids)
        labels = torch.from_numpy(part.clicked.astype(np.float32))
        nn.functional.binary_cross_entropy_with_logits(scores, labels).backward()
        for optimizer, table in zip(optimizers, (vectors, weights), strict=True):
            optimizer.step([table.rows(categorical)])
            optimizer.zero_grad()
    with torch.no_grad():
        scores, _ = logits(test.ids)
    assert roc_auc(test.clicked, scores.numpy()) > 0.62  # 0.643 measured; chance is 0.5
