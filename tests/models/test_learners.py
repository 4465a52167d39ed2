"""DeepFM and DCN-v2 as online learners: they learn, predict without side effects, round-trip state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ctr.features import CtrBatch, FeatureSpec, encode
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.registry import LEARNERS, learner_class
from tests.models.synthetic import SPEC, impressions

SMALL = CtrConfig(embed_dim=4, hidden=(16, 16), batch_size=128, embed_lr=1e-2, dense_lr=1e-2, seed=3)


def labelled_batch(n: int, seed: int) -> CtrBatch:
    rows = impressions(n, seed)
    return encode(SPEC, rows, [int(r.clicked or 0) for r in rows])


@pytest.fixture(scope="module")
def stream() -> CtrBatch:
    return labelled_batch(128 * 30, seed=0)


@pytest.mark.parametrize("kind", sorted(LEARNERS))
@pytest.mark.parametrize("cowclip", [False, True])
def test_progressive_auc_rises_above_chance(kind: str, cowclip: bool, stream: CtrBatch) -> None:
    learner = learner_class(kind)(SPEC, CtrConfig(**{**SMALL.__dict__, "cowclip": cowclip}))
    history = [learner.learn(stream.slice(s, s + 128)) for s in range(0, len(stream), 128)]
    late = np.mean([m["auc"] for m in history[-8:]])
    assert late > 0.75, f"{kind} progressive AUC only {late:.3f}"
    assert history[-1]["logloss"] < history[0]["logloss"]
    assert learner.steps == 30
    assert ("clipped" in history[-1]) == cowclip
    assert learner.samples_seen == len(stream)
    assert (learner.clipper is not None) == cowclip


@pytest.mark.parametrize(
    ("kind", "ratio", "zeta"),
    # Settings under which CowClip clips part of the rows in each of the first steps on the synthetic
    # stream (the defaults clip none): DCN's embedding gradients run about 5 times DeepFM's.
    [("dcn", 0.01, 2e-4), ("deepfm", 0.005, 1e-4)],
)
def test_cowclip_bounds_every_looked_up_rows_gradient(
    kind: str, ratio: float, zeta: float, stream: CtrBatch
) -> None:
    """Each step, the embedding gradient Adam gets is the unclipped one clipped as CowClip says.

    ``unclipped`` (no CowClip, synced to ``learner`` before each step) gives the raw gradient; a row
    ``k`` looked up ``cnt_k`` times must then have ``||g_k|| <= cnt_k * max(r * ||w_k||, zeta)``,
    with ``w_k`` its weight before the step, and rows under that bound must be left alone.
    """
    config = CtrConfig(**{**SMALL.__dict__, "clip_ratio": ratio, "zeta": zeta})
    learner = learner_class(kind)(SPEC, config)
    unclipped = learner_class(kind)(SPEC, CtrConfig(**{**config.__dict__, "cowclip": False}))
    for start in range(0, 128 * 3, 128):
        batch = stream.slice(start, start + 128)
        unclipped.load_state_dict(learner.state_dict())
        weight = learner.net.embedding.weight.detach().cpu().clone()
        metrics, _ = learner.learn(batch), unclipped.learn(batch)
        lookups = learner.net.embedding.rows(batch.categorical.to(learner.device)).cpu()
        rows, counts = torch.unique(lookups, return_counts=True)
        raw = unclipped.net.embedding.weight.grad[rows].cpu()
        clipped = learner.net.embedding.weight.grad[rows].cpu()
        threshold = counts * torch.clamp(ratio * weight[rows].norm(dim=1), min=zeta)
        over = raw.norm(dim=1) > threshold
        share = over.float().mean().item()
        assert 0 < share < 1, f"step {start // 128}: {share:.0%} of rows over the bound, want some"
        assert metrics["clipped"] == pytest.approx(share)
        worst = (clipped.norm(dim=1) / threshold).max().item()
        assert worst <= 1 + 1e-5, f"step {start // 128}: a row's gradient is {worst:.2f} x its bound"
        scale = torch.where(over, threshold / raw.norm(dim=1), 1.0)
        torch.testing.assert_close(clipped, raw * scale.unsqueeze(1))


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_predict_has_no_side_effects(kind: str, stream: CtrBatch) -> None:
    learner = learner_class(kind)(SPEC, SMALL)
    learner.learn(stream.slice(0, 128))
    before = {k: v.clone() for k, v in learner.net.state_dict().items()}
    first = learner.predict(stream.slice(128, 256))
    second = learner.predict(stream.slice(128, 256))
    np.testing.assert_array_equal(first, second)
    for key, value in learner.net.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert ((first > 0) & (first < 1)).all()


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_state_round_trip_continues_identically(kind: str, stream: CtrBatch) -> None:
    original = learner_class(kind)(SPEC, SMALL)
    for s in range(0, 128 * 3, 128):
        original.learn(stream.slice(s, s + 128))
    restored = learner_class(kind)(SPEC, CtrConfig(**{**SMALL.__dict__, "seed": 99}))
    restored.load_state_dict(original.state_dict())
    probe = stream.slice(1000, 1200)
    np.testing.assert_allclose(restored.predict(probe), original.predict(probe), rtol=1e-6)
    next_batch = stream.slice(384, 512)
    assert restored.learn(next_batch) == original.learn(next_batch)
    np.testing.assert_allclose(restored.predict(probe), original.predict(probe), rtol=1e-5)
    assert restored.steps == original.steps == 4


def test_state_of_another_model_or_spec_is_refused() -> None:
    deepfm = learner_class("deepfm")(SPEC, SMALL)
    with pytest.raises(ValueError, match="deepfm"):
        learner_class("dcn")(SPEC, SMALL).load_state_dict(deepfm.state_dict())
    other = FeatureSpec(categorical=("user",), dense=("x",), buckets=4096)
    with pytest.raises(ValueError, match="features"):
        learner_class("deepfm")(other, SMALL).load_state_dict(deepfm.state_dict())
    with pytest.raises(ValueError, match="unknown CTR model"):
        learner_class("xgboost")


def test_learn_needs_labels_and_skips_empty(stream: CtrBatch) -> None:
    learner: CtrLearner = learner_class("deepfm")(SPEC, SMALL)
    unlabelled = CtrBatch(stream.categorical[:4], stream.dense[:4])
    with pytest.raises(ValueError, match="labels"):
        learner.learn(unlabelled)
    assert learner.learn(stream.slice(0, 0)) == {}
    assert learner.steps == 0


def test_serving_copy_is_frozen_and_restorable(stream: CtrBatch) -> None:
    learner = learner_class("deepfm")(SPEC, SMALL)
    learner.learn(stream.slice(0, 128))
    scorer = learner.scorer()
    probe = stream.slice(2000, 2100)
    frozen = scorer.predict(probe)
    learner.learn(stream.slice(128, 256))
    np.testing.assert_array_equal(scorer.predict(probe), frozen)  # training did not touch the copy
    assert not np.allclose(learner.predict(probe), frozen)
    rebuilt = learner.scorer_from(scorer.state_dict())
    np.testing.assert_allclose(rebuilt.predict(probe), frozen, rtol=1e-6)
    learner.restore(scorer)
    np.testing.assert_allclose(learner.predict(probe), frozen, rtol=1e-6)


def test_scaling_rule_sets_optimiser_hyperparameters() -> None:
    config = CtrConfig(**{**SMALL.__dict__, "batch_size": 4096, "base_batch": 1024, "warmup_samples": 8192})
    learner = learner_class("deepfm")(SPEC, config)
    assert learner.embed_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert learner.dense_optimizer.param_groups[0]["lr"] == pytest.approx(2e-2 * 0.5)  # sqrt(4) x, warmup 1/2
    assert learner.l2 == pytest.approx(4e-5)
    unscaled = learner_class("deepfm")(SPEC, CtrConfig(**{**config.__dict__, "scale_for_batch": False}))
    assert unscaled.dense_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert unscaled.l2 == pytest.approx(1e-5)
