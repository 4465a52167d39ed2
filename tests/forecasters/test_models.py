"""Forecasters on synthetic data: exact baselines, CARD's parts, OneNet's mixing, state round trips."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from forecasters.baselines import LastValue, SeasonalNaive
from forecasters.batch import WindowBatch
from forecasters.branches import CrossTimeMLP, CrossVariableTCN, DilatedTCN, WindowNorm
from forecasters.card import CARDConfig, CARDNet, ema_matrix, signal_decay_l1, token_blend
from forecasters.data import Windows
from forecasters.ensemble import ExponentiatedGradient, LogitAdam, moments
from forecasters.gain import ResidualGain
from forecasters.learner import forecast_errors
from forecasters.onenet import BRANCHES, OneNet
from forecasters.training import fit, validation_mse
from forecasters.zoo import BUILDERS, ForecasterSpec, build_forecaster

LEARNED = ["dlinear", "card", "onenet", "onenet-card"]


def spec(kind: str, channels: int = 3, **options: object) -> ForecasterSpec:
    return ForecasterSpec(kind=kind, seq_len=32, horizon=4, channels=channels, period=12, **options)  # type: ignore[arg-type]


def test_last_value_and_seasonal_naive_copy_the_right_steps() -> None:
    x = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1).repeat(1, 1, 2)
    batch = WindowBatch(x)
    assert LastValue(3).predict(batch)[0, :, 0].tolist() == [9, 9, 9]
    # period 4 over window 0..9: the last season is 6, 7, 8, 9, repeated
    assert SeasonalNaive(6, period=4).predict(batch)[0, :, 1].tolist() == [6, 7, 8, 9, 6, 7]
    with pytest.raises(ValueError, match="longer than the look-back"):
        SeasonalNaive(2, period=11).predict(batch)


def test_window_batch_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="y must be"):
        WindowBatch(torch.zeros(2, 8, 3), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="keys"):
        WindowBatch(torch.zeros(2, 8, 3), keys=("a",))
    with pytest.raises(ValueError, match="no targets"):
        LastValue(2).learn(WindowBatch(torch.zeros(1, 8, 3)))


def test_windows_cut_lookback_and_targets_by_origin() -> None:
    values = np.arange(20, dtype=np.float32)[:, None]
    windows = Windows(values, None, seq_len=5, horizon=2)
    assert windows.origins(0, 20)[[0, -1]].tolist() == [5, 18]
    batch = windows.batch(np.array([7]))
    assert batch.x[0, :, 0].tolist() == [2, 3, 4, 5, 6]
    assert batch.y is not None and batch.y[0, :, 0].tolist() == [7, 8]


def test_ema_matrix_follows_the_recurrence() -> None:
    x = torch.randn(6)
    smoothed, state = [], x[0]
    for i, value in enumerate(x):
        state = value if i == 0 else 0.3 * value + 0.7 * state
        smoothed.append(state)
    assert torch.allclose(ema_matrix(6, 0.3) @ x, torch.stack(smoothed), atol=1e-6)


def test_token_blend_merges_adjacent_tokens_of_one_head() -> None:
    heads, tokens, d_head = 2, 4, 1
    out = torch.arange(heads * tokens, dtype=torch.float32).reshape(1, heads, tokens, d_head)
    # head 0 holds tokens 0..3, head 1 holds 4..7; new token i takes entries 2i, 2i+1 of the pair
    assert token_blend(out, merge=2)[0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_signal_decay_loss_weights_early_steps_more() -> None:
    target = torch.zeros(1, 4, 1)
    first, last = target.clone(), target.clone()
    first[0, 0, 0] = 1.0
    last[0, 3, 0] = 1.0
    assert signal_decay_l1(first, target) == pytest.approx(1 / 4)
    assert signal_decay_l1(last, target) == pytest.approx(1 / 2 / 4)


def test_card_is_scale_equivariant_and_channel_count_free() -> None:
    net = CARDNet(CARDConfig(seq_len=32, horizon=4)).eval()
    x = torch.randn(2, 32, 5)
    with torch.no_grad():
        assert torch.allclose(net(3 * x + 7), 3 * net(x) + 7, atol=1e-3)
        assert net(torch.randn(2, 32, 9)).shape == (2, 4, 9)


@pytest.mark.parametrize("kind", LEARNED)
def test_learners_beat_last_value_after_online_learning(kind: str, sine_windows: Windows) -> None:
    learner = build_forecaster(spec(kind))
    origins = sine_windows.origins(0, 400)
    for _ in range(2):
        for batch in sine_windows.batches(origins[:300], 16, np.random.default_rng(0)):
            learner.learn(batch)
    held_out = origins[300:]
    assert validation_mse(learner, sine_windows, held_out) < 0.5 * validation_mse(
        LastValue(4), sine_windows, held_out
    )


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_learn_scores_the_pre_update_forecast(kind: str, sine_windows: Windows) -> None:
    learner = build_forecaster(spec(kind))
    batch = sine_windows.batch(sine_windows.origins(0, 400)[:8])
    before = forecast_errors(learner.predict(batch), batch.target)
    metrics = learner.learn(batch)
    assert metrics["mse"] == pytest.approx(before["mse"], rel=1e-5)
    assert metrics["mae"] == pytest.approx(before["mae"], rel=1e-5)


@pytest.mark.parametrize("kind", LEARNED)
def test_state_round_trip_continues_identically(kind: str, sine_windows: Windows) -> None:
    origins = sine_windows.origins(0, 400)
    learner = build_forecaster(spec(kind))
    learner.learn(sine_windows.batch(origins[:8]))
    twin = build_forecaster(spec(kind))
    twin.load_state_dict(copy.deepcopy(learner.state_dict()))
    nxt = sine_windows.batch(origins[8:16])
    torch.manual_seed(1)
    learner.learn(nxt)
    torch.manual_seed(1)
    twin.learn(nxt)
    probe = sine_windows.batch(origins[100:110])
    assert torch.allclose(learner.predict(probe), twin.predict(probe), atol=1e-6)


@pytest.mark.parametrize("length", [1, 5, 33, 60, 64])
def test_tcn_evaluates_only_what_the_last_step_reads(length: int) -> None:
    tcn = DilatedTCN(inputs=5)
    x = torch.randn(4, length, 5, requires_grad=True)
    every_step = tcn.blocks(tcn.input_fc(x).transpose(1, 2))[..., -1]
    last_step = tcn(x)
    assert torch.allclose(last_step, every_step, atol=1e-5)
    wrt = [x, *tcn.parameters()]
    grads = torch.autograd.grad(last_step.square().sum(), wrt)
    expected = torch.autograd.grad(every_step.square().sum(), wrt)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    if length == 60:  # each block's outputs thin out towards the last step (dilations 1..16)
        assert [want.count for _, _, want in tcn.plan(length)] == [30, 15, 7, 3, 1]


def test_exponentiated_gradient_moves_weight_to_the_better_expert_per_variable() -> None:
    eg = ExponentiatedGradient(experts=2, variables=2, eta=0.5, share=0.0)
    for _ in range(10):
        eg.observe(torch.tensor([[0.1, 1.0], [1.0, 0.1]]))
    assert eg.weights[0, 0] > 0.95 and eg.weights[1, 1] > 0.95
    assert torch.allclose(eg.weights.sum(0), torch.ones(2))
    floored = ExponentiatedGradient(experts=2, variables=1, eta=50.0, share=0.01)
    for _ in range(100):
        floored.observe(torch.tensor([[10.0], [0.0]]))
    assert floored.weights[0, 0] >= 0.005


def test_onenet_mixes_per_variable_and_keeps_a_bias_per_series(sine_windows: Windows) -> None:
    learner = build_forecaster(spec("onenet"))
    assert isinstance(learner, OneNet)
    batch = sine_windows.batch(sine_windows.origins(0, 400)[:2])
    keyed = WindowBatch(batch.x, batch.y, keys=("a", "b"))
    learner.learn(keyed)
    assert set(learner.last_bias) == {"a", "b"}
    weights = learner.mixing_weights(keyed)
    assert set(weights) == set(BRANCHES)
    total = np.array(weights[BRANCHES[0]]) + np.array(weights[BRANCHES[1]])
    assert total.shape == (2, 3) and np.allclose(total, 1.0)
    # the previous step's bias shifts series "a" away from the plain EG weight
    plain = torch.sigmoid(learner._logit()).cpu().numpy()
    assert not np.allclose(np.array(weights[BRANCHES[0]][0]), plain)


def test_window_batch_steps_follow_each_series_in_order() -> None:
    keys = ("a", "b", "a", "a", "b")
    step, previous = WindowBatch(torch.zeros(5, 4, 1), keys=keys, sequential=True).steps()
    assert step.tolist() == [0, 0, 1, 2, 1]
    assert previous.tolist() == [-1, -1, 0, 2, 1]
    independent, none = WindowBatch(torch.zeros(5, 4, 1), keys=keys).steps()  # not sequential
    assert independent.tolist() == [0] * 5 and none.tolist() == [-1] * 5


def frozen_onenet(channels: int = 3, horizon: int = 4, **options: Any) -> OneNet:
    """OneNet whose networks never move (lr 0): only the cheap online parts (EG weights, per-series
    bias, and whichever ``options`` turn on) evolve."""
    torch.manual_seed(0)
    return OneNet(
        CrossTimeMLP(32, horizon),
        CrossVariableTCN(channels, horizon),
        channels,
        horizon,
        lr=0.0,
        bias_lr=0.0,
        **options,
    )


def test_onenet_chunk_advances_weights_and_bias_as_per_step_calls(sine_windows: Windows) -> None:
    origins = sine_windows.origins(0, 400)[:6]
    pairs = sine_windows.batch(origins)
    keys = ("a", "b", "a", "b", "a", "b")  # three consecutive steps of two series
    per_step, chunked = frozen_onenet(), frozen_onenet()
    scores = []
    for step in range(3):
        rows = [2 * step, 2 * step + 1]
        batch = WindowBatch(pairs.x[rows], pairs.target[rows], keys=keys[:2])
        scores.append(per_step.learn(batch)["mse"])
    metrics = chunked.learn(WindowBatch(pairs.x, pairs.target, keys=keys, sequential=True))
    assert metrics["mse"] == pytest.approx(np.mean(scores), rel=1e-5)
    assert torch.allclose(chunked.weights.weights, per_step.weights.weights, atol=1e-6)
    for key in ("a", "b"):
        assert np.allclose(chunked.last_bias[key], per_step.last_bias[key], atol=1e-6)
    # not sequential: every row is mixed as the pre-update model would predict it (today's service)
    independent = frozen_onenet()
    expected = forecast_errors(independent.predict(WindowBatch(pairs.x, keys=keys)), pairs.target)
    assert independent.learn(WindowBatch(pairs.x, pairs.target, keys=keys))["mse"] == pytest.approx(
        expected["mse"], rel=1e-5
    )


def test_fit_keeps_the_best_validation_state(sine_windows: Windows) -> None:
    learner = build_forecaster(spec("dlinear"))
    origins = sine_windows.origins(0, 400)
    report = fit(learner, sine_windows, origins[:250], origins[250:], epochs=4, patience=2)
    assert 1 <= report.best_epoch <= report.epochs <= 4
    assert validation_mse(learner, sine_windows, origins[250:]) == pytest.approx(
        report.best_val_mse, rel=1e-5
    )


def test_unknown_kind_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown forecaster kind 'prophet'"):
        build_forecaster(ForecasterSpec(kind="prophet"))
    with pytest.raises(ValueError, match="unknown forecaster options"):
        ForecasterSpec.from_dict({"kind": "card", "depth": 3})


def test_scale_free_eg_moves_at_most_eta_per_step_however_large_the_outlier() -> None:
    raw = ExponentiatedGradient(experts=2, variables=1, eta=0.5)
    free = ExponentiatedGradient(experts=2, variables=1, eta=0.5, scale_free=True)
    outlier = torch.tensor([[5000.0], [1.0]])  # one ETTh2-LULL-sized error on branch 1
    raw.observe(outlier)
    free.observe(outlier)
    assert raw.logit().item() < -6  # raw EG hands everything to branch 2 at once (down to the share floor)
    assert -0.5 <= free.logit().item() < 0  # scale-free: at most eta
    for _ in range(20):  # a branch that keeps losing still loses its weight
        free.observe(torch.tensor([[1.0], [0.1]]))
    assert free.weights[1, 0] > 0.95


def test_logit_adam_moves_the_share_towards_the_better_branch_per_variable() -> None:
    ocp = LogitAdam(variables=2)
    y = torch.zeros(1, 4, 2)
    y1 = torch.tensor([0.1, 2.0]).expand(1, 4, 2)  # branch 1 good on variable 0, bad on 1
    y2 = torch.tensor([2.0, 0.1]).expand(1, 4, 2)
    for _ in range(200):
        ocp.update(moments(y1, y2, y)[0])
    logit = ocp.logit()
    assert logit[0] > 0.1 and logit[1] < -0.1


def test_moments_give_the_mix_error_for_any_share() -> None:
    y1, y2, y = torch.randn(3, 1, 5, 2).unbind(0)
    m11, m22, m12 = moments(y1, y2, y)[0]
    s = torch.tensor([0.3, 0.8])
    direct = (s * y1 + (1 - s) * y2 - y).pow(2).mean(1)[0]
    assert torch.allclose(s**2 * m11 + (1 - s) ** 2 * m22 + 2 * s * (1 - s) * m12, direct, atol=1e-5)


def test_residual_gain_shrinks_where_the_model_has_no_skill() -> None:
    torch.manual_seed(0)
    gain = ResidualGain(horizon=2, channels=1, decay=0.95)
    for _ in range(300):
        wanted = torch.randn(2, 1)
        # lead 0: the residual is the truth (skill); lead 1: noise unrelated to it (a random walk)
        residual = torch.stack([wanted[0], torch.randn(1)])
        gain.update(gain.moments(residual[None], wanted[None])[0])
    g = gain.gain()[:, 0]
    assert g[0] > 0.95 and g[1] < 0.35


def test_revin_window_norm_makes_a_branch_scale_and_shift_equivariant() -> None:
    net = CrossTimeMLP(32, 4, norm="revin").eval()
    x = torch.randn(2, 32, 3)
    with torch.no_grad():
        assert torch.allclose(net(5 * x + 2), 5 * net(x) + 2, atol=1e-4)
    with pytest.raises(ValueError, match="unknown window norm"):
        WindowNorm("zscore")


def test_fit_hands_the_online_phase_a_reduced_learning_rate(sine_windows: Windows) -> None:
    learner = build_forecaster(spec("onenet"))
    origins = sine_windows.origins(0, 400)
    fit(learner, sine_windows, origins[:100], origins[100:150], epochs=1, online_lr_scale=0.1)
    assert [g["lr"] for o in learner.optimizers() for g in o.param_groups] == [pytest.approx(1e-4)]
    with pytest.raises(ValueError, match="online_lr_scale"):
        fit(learner, sine_windows, origins[:100], origins[100:150], epochs=1, online_lr_scale=0.0)


@pytest.mark.parametrize("options", [{"ocp": "adam"}, {"ocp": "eg-mse", "gain": False, "loss": "mse"}])
def test_onenet_variants_round_trip(options: dict[str, object], sine_windows: Windows) -> None:
    origins = sine_windows.origins(0, 400)
    learner = build_forecaster(spec("onenet", **options))
    learner.learn(sine_windows.batch(origins[:8]))
    twin = build_forecaster(spec("onenet", **options))
    twin.load_state_dict(copy.deepcopy(learner.state_dict()))
    probe = sine_windows.batch(origins[100:110])
    for model in (learner, twin):
        model.learn(sine_windows.batch(origins[8:16]))
    assert torch.allclose(learner.predict(probe), twin.predict(probe), atol=1e-6)


def test_unknown_onenet_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        build_forecaster(spec("onenet", loss="l3"))
    with pytest.raises(ValueError, match="unknown ocp form"):
        build_forecaster(spec("onenet", ocp="hedge"))


@pytest.mark.parametrize("kind", ["onenet", "onenet-card"])
def test_one_outlier_window_leaves_no_lasting_mark(kind: str, sine_windows: Windows) -> None:
    """ETTh2's onenet-card H=48 spikes (issue 13): MSE-trained branches and raw-loss EG let one window with
    an outlier target (LULL) wreck later forecasts. After one such window and a few ordinary ones, the
    forecasts on ordinary windows must be about as good as after ordinary windows only."""
    origins = sine_windows.origins(0, 400)
    learner = build_forecaster(spec(kind))
    for batch in sine_windows.batches(origins[:200], 16, np.random.default_rng(0)):
        learner.learn(batch)
    ordinary, jolted = copy.deepcopy(learner), copy.deepcopy(learner)
    window = sine_windows.batch(origins[200:201])
    ordinary.learn(window)
    jolted.learn(WindowBatch(window.x, window.target + torch.tensor([100.0, 0.0, 0.0])))
    for origin in origins[201:205]:
        for model in (ordinary, jolted):
            model.learn(sine_windows.batch(np.array([origin])))
    probe = origins[300:340]
    after_ordinary = validation_mse(ordinary, sine_windows, probe)
    assert validation_mse(jolted, sine_windows, probe) < 1.3 * after_ordinary


def test_gain_prior_keeps_a_no_skill_lead_at_last_value_and_a_skilled_one_on_the_model() -> None:
    """Issue 13 (exchange_rate, close to a random walk): without the prior, noise keeps g off 0 much of
    the time; with it g stays near 0 where the residual is unrelated to the truth, and near 1 where it is
    the truth plus noise."""
    torch.manual_seed(0)
    plain, ridged = ResidualGain(2, 1, decay=0.99), ResidualGain(2, 1, decay=0.99, prior=16.0)
    seen: dict[int, list[torch.Tensor]] = {0: [], 16: []}
    for _ in range(1000):
        wanted = torch.randn(2, 1)
        residual = torch.stack([wanted[0] + 0.3 * torch.randn(1), 0.2 * torch.randn(1)])
        for gain, key in ((plain, 0), (ridged, 16)):
            gain.update(gain.moments(residual[None], wanted[None])[0])
            seen[key].append(gain.gain()[:, 0])
    plain_g, ridged_g = (torch.stack(seen[key][200:]).mean(0) for key in (0, 16))
    assert ridged_g[1] < 0.25 * plain_g[1]
    assert ridged_g[0] > 0.8
    with pytest.raises(ValueError, match="prior must be >= 0"):
        ResidualGain(2, 1, prior=-1.0)
    learner = build_forecaster(ForecasterSpec.from_dict({"kind": "onenet", "gain_prior": 8}))
    assert isinstance(learner, OneNet) and learner.gain is not None and learner.gain.prior == 8
    with pytest.raises(ValueError, match="gain=1: expected bool"):
        ForecasterSpec.from_dict({"gain": 1})
