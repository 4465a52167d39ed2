"""The gain's prior chosen on the validation split (issue 13 item 3): last-value where the model's move
has no skill, the model where it has, kept in the state; synthetic series only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forecasters.data import Scaler, Windows
from forecasters.evaluate import main
from forecasters.gain import PRIOR_CANDIDATES, ResidualGain
from forecasters.onenet import OneNet
from forecasters.pretrained import load_pretrained, save_pretrained
from forecasters.training import fit
from forecasters.zoo import ForecasterSpec, build_forecaster

from .conftest import sine_values


def random_walk(rows: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).standard_normal((rows, channels)), 0).astype(np.float32)


def onenet(channels: int = 3, **options: object) -> OneNet:
    spec = ForecasterSpec.from_dict(
        {"kind": "onenet", "seq_len": 32, "horizon": 4, "channels": channels, **options}
    )
    learner = build_forecaster(spec)
    assert isinstance(learner, OneNet) and learner.gain is not None
    return learner


def test_choose_prior_takes_last_value_without_skill_and_the_model_with_it() -> None:
    torch.manual_seed(0)
    wanted = torch.randn(300, 4, 2)
    noise = torch.randn(300, 4, 2)
    unrelated, skilled = ResidualGain(4, 2), ResidualGain(4, 2)
    before = [unrelated.cross.clone(), unrelated.power.clone(), unrelated.miss.clone()]
    mse = unrelated.choose_prior(0.5 * noise, wanted, lag=3)
    assert unrelated.prior == math.inf
    assert mse[math.inf] == pytest.approx(float(wanted.square().mean()))  # no gain: the last value
    assert mse[0.0] > mse[16.0] > mse[math.inf]
    after = [unrelated.cross, unrelated.power, unrelated.miss]
    assert all(map(torch.equal, before, after))  # the replay leaves the online start where it was
    mse = skilled.choose_prior(wanted + 0.3 * noise, wanted, lag=3)
    assert skilled.prior is not None and skilled.prior <= 1.0
    assert mse[skilled.prior] < 0.2 * mse[math.inf]


def test_choose_prior_refuses_bad_input() -> None:
    gain = ResidualGain(4, 2)
    with pytest.raises(ValueError, match="one shape"):
        gain.choose_prior(torch.zeros(5, 4, 2), torch.zeros(5, 4, 3), lag=3)
    with pytest.raises(ValueError, match="N >= 1"):
        gain.choose_prior(torch.zeros(0, 4, 2), torch.zeros(0, 4, 2), lag=3)
    with pytest.raises(ValueError, match="candidate priors >= 0"):
        gain.choose_prior(torch.zeros(5, 4, 2), torch.zeros(5, 4, 2), lag=3, candidates=(0.0, -1.0))
    assert gain.prior is None


def test_fit_chooses_the_prior_on_validation_and_the_checkpoint_carries_it(tmp_path: Path) -> None:
    """A random walk's validation windows say the model's move has no skill: after the warm-up the
    forecast is the last value exactly, and so it is for the service warm-starting from the pretrained
    checkpoint; on sines the model has skill, and the forecast is the model's."""
    walk = Windows(random_walk(600, 3), None, seq_len=32, horizon=4)
    origins = walk.origins(0, 600)
    learner = onenet()
    report = fit(learner, walk, origins[:200], origins[200:], epochs=1)
    assert report.gain_prior == learner.gain.prior == math.inf  # type: ignore[union-attr]
    probe = walk.batch(origins[-50:])
    assert torch.equal(learner.predict(probe), probe.x[:, -1:, :].expand(-1, 4, -1))
    spec = ForecasterSpec(seq_len=32, horizon=4, channels=3)
    save_pretrained(tmp_path, spec, learner, Scaler(np.zeros(3), np.ones(3)), {})
    loaded = load_pretrained(tmp_path, "onenet")
    assert loaded is not None and loaded[0].gain_prior is None
    assert isinstance(loaded[1], OneNet) and loaded[1].gain is not None and loaded[1].gain.prior == math.inf

    sines = Windows(sine_values(600, 3), None, seq_len=32, horizon=4)
    learner = onenet()
    report = fit(learner, sines, origins[:200], origins[200:], epochs=1)
    assert report.gain_prior is not None and report.gain_prior < math.inf
    probe = sines.batch(origins[-50:])
    last_value_mse = float((probe.target - probe.x[:, -1:, :]).square().mean())
    assert float((learner.predict(probe) - probe.target).square().mean()) < 0.5 * last_value_mse

    fixed = onenet(gain_prior=8)  # a prior given by hand is kept
    assert fit(fixed, walk, origins[:200], origins[200:], epochs=1).gain_prior == 8


def test_spec_leaves_the_prior_to_validation_unless_given() -> None:
    assert ForecasterSpec().gain_prior is None
    assert ForecasterSpec.from_dict({"gain_prior": None}).gain_prior is None
    assert ForecasterSpec.from_dict({"gain_prior": 4}).gain_prior == 4
    with pytest.raises(ValueError, match="gain_prior=True: expected float"):
        ForecasterSpec.from_dict({"gain_prior": True})
    with pytest.raises(ValueError, match="prior must be >= 0"):
        onenet(gain_prior=-1.0)
    assert PRIOR_CANDIDATES[0] == 0 and PRIOR_CANDIDATES[-1] == math.inf


def test_evaluate_rows_name_the_chosen_prior_in_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "walk.txt"
    pd.DataFrame(random_walk(2000, 2)).to_csv(csv, index=False, header=False)
    out = tmp_path / "rows.json"
    argv = ["--csv", str(csv), "--no-date", "--models", "onenet", "last-value", "--horizon", "4"]
    assert (
        main([*argv, "--steps", "30", "--epochs", "1", "--seq-len", "32", "--json", str(out), "--quiet"]) == 0
    )

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    rows = {row["model"]: row for row in json.loads(out.read_text(), parse_constant=refuse)}
    assert rows["onenet"]["gain_prior"] == "inf" and rows["last-value"]["gain_prior"] is None
    assert rows["onenet"]["mse"] == pytest.approx(rows["last-value"]["mse"], rel=1e-6)
    assert "inf" in capsys.readouterr().out
