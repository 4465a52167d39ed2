"""A replica's /ctr/score path: the fast encoder and the replica scorer give the learner's answers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from models.ctr import serving_precision
from models.ctr.fast_encoder import FastCandidateEncoder
from models.ctr.features import CandidateEncoder, FeatureError, FeatureSpec
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.registry import learner_class
from models.ctr.serving import replica_scorer
from models.ctr.serving_precision import resolve_precision

SPEC = FeatureSpec(categorical=("user", "item", "genre"), dense=("age", "price"), buckets=97)
CONFIG = CtrConfig(embed_dim=4, hidden=(16, 8), batch_size=64, embed_lr=1e-2, dense_lr=1e-2)


def random_candidates(n: int, seed: int) -> list[dict[str, Any]]:
    """Candidates as JSON gives them: some fields missing, integer and float numbers, new ids."""
    rng = np.random.default_rng(seed)
    candidates = []
    for i in range(n):
        categorical = {
            name: f"{name}{rng.integers(0, 500)}" for name in SPEC.categorical if rng.random() < 0.8
        }
        dense: dict[str, Any] = {"age": int(rng.integers(10, 80))} if rng.random() < 0.7 else {}
        if rng.random() < 0.8:
            dense["price"] = float(rng.normal(0, 100))
        candidates.append(
            {"categorical": categorical, "dense": dense} if categorical or dense else {"dense": {"age": i}}
        )
    return candidates


def trained(kind: str) -> CtrLearner:
    """A learner after a few labelled batches, so that every weight and the normaliser have moved."""
    learner = learner_class(kind)(SPEC, CONFIG, torch.device("cpu"))
    encoder = CandidateEncoder(SPEC)
    rng = np.random.default_rng(1)
    for seed in range(4):
        batch = encoder.encode(random_candidates(64, seed))
        labels = torch.from_numpy(rng.integers(0, 2, 64).astype(np.float32))
        learner.learn(type(batch)(batch.categorical, batch.dense, labels))
    return learner


@pytest.mark.parametrize("kind", ["deepfm", "dcn"])
def test_the_replica_scorer_scores_like_the_learner(kind: str) -> None:
    learner = trained(kind)
    state = learner.scorer().state_dict()
    scorer = replica_scorer(learner, state)
    for seed in range(10, 15):
        batch = FastCandidateEncoder(SPEC).encode(random_candidates(100, seed))
        expected = learner.predict(batch)  # the learner's own forward pass
        scores = scorer.predict(batch)
        assert scores.dtype == np.float64 and scores.shape == (100,)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
        assert np.ptp(scores) > 1e-3  # the scores depend on the candidates
    assert not scorer.net.training


@pytest.mark.parametrize("kind", ["deepfm", "dcn"])
def test_a_bfloat16_replica_runs_its_dnn_in_bfloat16_and_scores_close_to_the_learner(kind: str) -> None:
    learner = trained(kind)
    state = learner.scorer().state_dict()
    scorer = replica_scorer(learner, state, torch.bfloat16)
    assert {p.dtype for p in scorer.net.dnn.parameters()} == {torch.bfloat16}
    assert scorer.net.embedding.weight.dtype == torch.float32  # only the DNN is converted
    assert scorer.net.embedding.weight.data_ptr() == state["net"]["embedding.weight"].data_ptr()
    for seed in range(10, 15):
        batch = FastCandidateEncoder(SPEC).encode(random_candidates(100, seed))
        scores, expected = scorer.predict(batch), learner.predict(batch)
        assert scores.dtype == np.float64 and scores.shape == (100,)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=5e-3)
        assert not np.array_equal(scores, expected)  # rounded: not the float32 path under another name


def test_auto_precision_takes_bfloat16_only_on_a_cpu_where_it_is_faster(monkeypatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(serving_precision, "bf16_speedup", lambda: 3.0)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    assert resolve_precision("auto", gpu) == torch.float32
    assert resolve_precision("float32", cpu) == torch.float32
    monkeypatch.setattr(serving_precision, "bf16_speedup", lambda: 0.4)  # bfloat16 emulated
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="got 'half'"):
        resolve_precision("half", cpu)


def test_the_speed_probe_compares_real_products() -> None:
    speedup = serving_precision.bf16_speedup.__wrapped__(rows=8, width=32, repeats=3)
    assert math.isfinite(speedup) and speedup > 0


def test_the_replica_scorer_serves_the_loaded_tensors_and_real_offsets() -> None:
    learner = trained("deepfm")
    state = learner.scorer().state_dict()
    scorer = replica_scorer(learner, state)
    net = scorer.net
    assert net.embedding.weight.data_ptr() == state["net"]["embedding.weight"].data_ptr()  # not copied
    assert all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])  # nothing left on meta
    assert torch.equal(net.embedding.offsets, learner.net.embedding.offsets)
    assert torch.equal(net.first_order.offsets, learner.net.first_order.offsets)
    assert not any(p.requires_grad for p in net.parameters())


def test_a_state_of_another_shape_is_refused() -> None:
    state = trained("deepfm").scorer().state_dict()
    other = learner_class("deepfm")(SPEC, CtrConfig(embed_dim=5), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        replica_scorer(other, state)
    with pytest.raises(KeyError):
        replica_scorer(other, {"normaliser": state["normaliser"]})


def test_the_fast_encoder_gives_the_checked_encoders_batch_without_calling_it() -> None:
    fast, checked = FastCandidateEncoder(SPEC), CandidateEncoder(SPEC)

    def refuse(candidates: Any) -> Any:
        raise AssertionError("a well-formed request took the slow path")

    fast.checked.encode = refuse  # type: ignore[method-assign]
    for seed in range(5):  # later requests repeat earlier ids: memo hits and misses alike
        candidates = random_candidates(100, seed % 3)
        batch, expected = fast.encode(candidates), checked.encode(candidates)
        assert torch.equal(batch.categorical, expected.categorical)
        assert torch.equal(batch.dense.isnan(), expected.dense.isnan())
        assert torch.equal(batch.dense.nan_to_num(), expected.dense.nan_to_num())
        assert batch.dense.dtype == torch.float32 and batch.categorical.dtype == torch.long


def test_the_fast_encoders_memo_stays_bounded() -> None:
    fast = FastCandidateEncoder(SPEC, memo_size=4)
    for i in range(10):
        batch = fast.encode([{"categorical": {"user": f"u{i}", "item": f"i{i}"}}])
        expected = CandidateEncoder(SPEC).encode([{"categorical": {"user": f"u{i}", "item": f"i{i}"}}])
        assert torch.equal(batch.categorical, expected.categorical)
        assert len(fast._bucket.known) <= 4


@pytest.mark.parametrize(
    "candidate",
    [
        7,
        None,
        {"categorical": {"user": "u"}, "price": 3},
        {"categorical": ["u"]},
        {"categorical": {"user": 5}},
        {"categorical": {"user": None}},
        {"categorical": {"user": ["u"]}},
        {"categorical": {"user": True}},
        {"categorical": {"colour": "red"}},
        {"dense": {"height": 1.0}},
        {"dense": "x"},
        {"dense": {"age": True}},
        {"dense": {"age": None}},
        {"dense": {"age": "30"}},
        {"dense": {"age": math.inf}},
        {"dense": {"age": math.nan}},
        {"dense": {"age": 10**400}},
        {"dense": {"age": [1]}},
        {},
        {"categorical": {}, "dense": {}},
    ],
)
def test_a_bad_candidate_gets_the_checked_encoders_error(candidate: Any) -> None:
    candidates = [*random_candidates(5, 0), candidate]
    with pytest.raises(FeatureError) as expected:
        CandidateEncoder(SPEC).encode(candidates)
    with pytest.raises(FeatureError) as caught:
        FastCandidateEncoder(SPEC).encode(candidates)
    assert str(caught.value) == str(expected.value)
    assert str(caught.value).startswith("candidate 5: ")
