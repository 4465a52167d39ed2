"""``driftline forecasters evaluate``: the split, what each protocol learns when, the JSON rows, bad input."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import forecast_online
from forecasters.batch import WindowBatch
from forecasters.cli import register
from forecasters.data import REPO_ROOT, Windows
from forecasters.evaluate import Dataset, Split, main, seed_list, spec_option, split_rows, stream
from forecasters.learner import StatelessForecaster

from .conftest import sine_values

ROW_FIELDS = {"model", "horizon", "protocol", "steps", "mse", "mae", "steps_per_s"}


def write_csv(path: Path, rows: int, channels: int = 2, dated: bool = True) -> Path:
    values = sine_values(rows, channels) * 3 + 10
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(channels)])
    if dated:
        frame.insert(0, "date", pd.date_range("2021-01-01", periods=rows, freq="h").astype(str))
    frame.to_csv(path, index=False, header=dated)
    return path


class Recorder(StatelessForecaster):
    """Last-value forecasts on a series whose value is its row number, recording, for every origin it
    is first asked to forecast, the newest target row it had learned by then, and every learned origin."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.learned: list[int] = []
        self.newest_known: dict[int, int] = {}

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        origin = int(batch.x[0, -1, 0]) + 1
        newest = max((o + self.horizon - 1 for o in self.learned), default=-1)
        self.newest_known.setdefault(origin, newest)
        return batch.x[:, -1:, :].expand(-1, self.horizon, -1).clone()

    def learn(self, batch: WindowBatch) -> dict[str, float]:
        metrics = super().learn(batch)
        self.learned.append(int(batch.x[0, -1, 0]) + 1)
        return metrics


def run_recorder(horizon: int, protocol: str) -> tuple[Recorder, np.ndarray, float, float]:
    windows = Windows(np.arange(200, dtype=np.float32)[:, None], None, seq_len=8, horizon=horizon)
    origins = windows.origins(100, 200)
    recorder = Recorder(horizon)
    result = stream(recorder, windows, origins, protocol)
    return recorder, origins, result.mse, result.mae


def test_split_follows_fsnet_onenet() -> None:
    assert split_rows("ETTh2.csv", 17420) == Split(2880, 3600, 14400)
    assert split_rows("ETTh1.csv", 9000) == Split(2880, 3600, 9000)
    assert split_rows("ETTm1.csv", 69680) == Split(4 * 2880, 4 * 3600, 4 * 14400)
    assert split_rows("exchange_rate.txt.gz", 7588) == Split(1517, 7588 - 5691, 7588)
    assert split_rows("mine.csv", 1000) == Split(200, 250, 1000)


def test_scaling_uses_train_statistics_only(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "s.csv", 1000)
    frame = pd.read_csv(csv)
    frame.loc[200:, "c0"] += 50  # a level shift after the train rows must not enter the statistics
    frame.to_csv(csv, index=False)
    data = Dataset.load(csv)
    assert data.split == Split(200, 250, 1000)
    assert data.values[:200].mean(0) == pytest.approx([0, 0], abs=1e-5)
    assert data.values[:200].std(0) == pytest.approx([1, 1], abs=1e-4)
    assert data.values[200:, 0].mean() > 10
    assert data.marks is not None and data.marks.shape == (1000, 4)


def test_delayed_learns_a_window_only_once_its_last_target_arrived() -> None:
    recorder, origins, _, _ = run_recorder(4, "delayed")
    assert recorder.learned == list(origins[:-3])  # each window once, in order, all that completed
    for i, origin in enumerate(origins):
        # before forecasting `origin`, rows < origin are known: every one of them, and no later row
        assert recorder.newest_known[int(origin)] == (origin - 1 if i >= 4 else -1)


def test_paper_learns_the_whole_horizon_right_after_forecasting_it() -> None:
    recorder, origins, _, _ = run_recorder(4, "paper")
    assert recorder.learned == list(origins)
    for origin in origins[1:]:
        assert recorder.newest_known[int(origin)] == origin + 2  # H - 1 = 3 of its own targets seen


def test_protocols_score_the_forecast_origin_and_agree_at_horizon_one() -> None:
    delayed, paper = run_recorder(4, "delayed"), run_recorder(4, "paper")
    # last value misses row o + k by k + 1: MSE mean(1, 4, 9, 16), MAE mean(1, 2, 3, 4)
    assert delayed[2:] == paper[2:] == (pytest.approx(7.5), pytest.approx(2.5))
    one_delayed, one_paper = run_recorder(1, "delayed")[0], run_recorder(1, "paper")[0]
    assert one_delayed.learned == one_paper.learned
    assert one_delayed.newest_known == one_paper.newest_known


def test_cli_rows_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_csv(tmp_path / "sines.csv", 400)
    out = tmp_path / "rows.json"
    root = argparse.ArgumentParser(prog="driftline")
    register(root.add_subparsers(dest="command"))
    args = root.parse_args(
        ["forecasters", "evaluate", "--csv", str(csv), "--models", "last-value", "dlinear",
         "--horizon", "2", "4", "--protocol", "delayed", "paper", "--steps", "20", "--epochs", "1",
         "--seq-len", "12", "--seeds", "2", "--json", str(out), "--quiet"]
    )  # fmt: skip
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 2 * 2 * 2
    assert all(set(row) >= ROW_FIELDS for row in rows)
    assert {(r["model"], r["horizon"], r["protocol"], r["seed"]) for r in rows} == {
        (m, h, p, s)
        for m in ("last-value", "dlinear")
        for h in (2, 4)
        for p in ("delayed", "paper")
        for s in (0, 1)
    }
    assert all(r["steps"] == 20 and r["steps_per_s"] > 0 and r["mse"] > 0 for r in rows)
    last_value = {r["mse"] for r in rows if r["model"] == "last-value" and r["horizon"] == 4}
    assert len(last_value) == 1  # nothing to learn: seeds and protocols agree
    table = capsys.readouterr().out
    assert "dlinear" in table and "delayed" in table and "±" in table  # two seeds give a spread


def test_whole_online_part_and_a_file_without_dates(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "plain.txt", 400, channels=3, dated=False)
    out = tmp_path / "rows.json"
    argv = ["--csv", str(csv), "--models", "last-value", "--horizon", "5", "--steps", "0", "--json", str(out)]
    assert main([*argv, "--no-date", "--quiet"]) == 0
    (row,) = json.loads(out.read_text())
    assert row["steps"] == 300 - 5 + 1  # origins 100..395: every window whose targets end by row 400
    assert row["protocol"] == "delayed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--horizon", "40", "--seq-len", "60"], "too short for seq-len 60 \\+ horizon 40"),
        (["--steps", "-1"], "steps >= 0"),
        (["--seeds", "0"], "--seeds N needs N >= 1"),
        (["--option", "depth=3"], "unknown forecaster options \\['depth'\\]"),
        (["--option", "gain_prior=high"], "gain_prior='high': expected float"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    csv = write_csv(tmp_path / "short.csv", 300)
    assert main(["--csv", str(csv), "--models", "last-value", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m forecasters.evaluate: error:")
    assert re.search(message, err), err


def test_files_without_a_date_column_with_text_or_gaps_are_refused(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", 300, dated=False)
    with pytest.raises(ValueError, match="--no-date"):
        Dataset.load(plain)
    text = tmp_path / "text.csv"
    pd.DataFrame({"date": ["2021-01-01"] * 3, "a": [1, 2, 3], "b": ["x", "y", "z"]}).to_csv(text, index=False)
    with pytest.raises(ValueError, match=r"\['b'\] are not numeric"):
        Dataset.load(text)
    gaps = write_csv(tmp_path / "gaps.csv", 300)
    frame = pd.read_csv(gaps)
    frame.loc[[5, 250], "c1"] = np.nan
    frame.to_csv(gaps, index=False)
    with pytest.raises(ValueError, match="2 missing values"):
        Dataset.load(gaps)
    with pytest.raises(ValueError, match="no such file"):
        Dataset.load(tmp_path / "missing.csv")


def test_readme_bench_is_a_thin_caller_whose_flags_override_its_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_csv(tmp_path / "s.csv", 300)
    out = tmp_path / "bench.json"
    argv = [
        "--csv",
        str(csv),
        "--models",
        "last-value",
        "--horizon",
        "3",
        "--seq-len",
        "12",
        "--steps",
        "7",
        "--json",
        str(out),
    ]
    assert forecast_online.main([*argv, "--quiet"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["horizon"], r["protocol"], r["steps"]) for r in rows] == [
        ("last-value", 3, "delayed", 7),
        ("last-value", 3, "paper", 7),
    ]
    assert "OneNet published on ETTh2 (paper protocol" in capsys.readouterr().out


def test_seeds_are_a_count_or_a_list() -> None:
    assert seed_list([3]) == [0, 1, 2]
    assert seed_list([7, 9]) == [7, 9]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_csv(tmp_path / "s.csv", 300)
    assert main(["--csv", str(csv), "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_imports_without_kafka_clients_lightgbm_pydantic_or_river() -> None:
    """A bare GPU machine has torch, numpy, pandas, tqdm and rich, not the service's other packages."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {"aiokafka", "kafka", "lightgbm", "pydantic", "river"}:
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        import forecasters.evaluate
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_options_are_spec_fields_read_as_json_where_they_can_be() -> None:
    assert spec_option("gain_prior=8") == ("gain_prior", 8)
    assert spec_option("loss=mse") == ("loss", "mse")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        spec_option("gain_prior")
