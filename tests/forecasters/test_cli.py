"""``driftline forecasters pretrain`` through the caller's argparse tree, then a warm-started service."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from forecasters.cli import register
from forecasters.service import build_service

from .conftest import sine_values


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="driftline")
    register(root.add_subparsers(dest="command"))
    return root


def test_pretrain_saves_a_checkpoint_the_service_warm_starts_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "history.csv"
    frame = pd.DataFrame(sine_values(800, 2) * 5 + 40, columns=["u", "v"])
    frame.insert(0, "date", pd.date_range("2020-01-01", periods=800, freq="h").astype(str))
    frame.to_csv(csv, index=False)
    data_dir = tmp_path / "forecast"
    args = parser().parse_args(
        ["forecasters", "pretrain", "--csv", str(csv), "--kind", "dlinear", "--seq-len", "24",
         "--horizon", "6", "--epochs", "2", "--fraction", "0.5", "--data-dir", str(data_dir)]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "saved dlinear v1" in out
    service = build_service(data_dir, kind="dlinear")
    assert service.model_version() == 1
    assert (service.spec.seq_len, service.spec.horizon, service.spec.channels, service.spec.marks) == (
        24,
        6,
        2,
        4,
    )
    assert service.scaler.mean == pytest.approx([40.0, 40.0], abs=0.5)


def test_pretrain_needs_a_subcommand_and_sane_fractions(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["forecasters"])
    args = parser().parse_args(["forecasters", "pretrain", "--fraction", "0", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--fraction"):
        args.func(args)
