"""The reference bench's pure helpers: parsing the patched reference's result line and patching a copy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.forecast_reference import PATCHES, Result, parse_result, patch, reference_csv, table


def test_parse_result_takes_the_last_bench_line() -> None:
    output = (
        "Args in experiment:\nmse:0.9, mae:0.6, time:12.0\n"
        "BENCH steps=10 seconds=2.0 mse=0.9 mae=0.6\n"
        "BENCH steps=300 seconds=25.0 mse=0.8243 mae=5.1e-01\n"
    )
    result = parse_result(output)
    assert result == Result(300, 25.0, 0.8243, 0.51)
    assert result.steps_per_s == pytest.approx(12.0)


def test_parse_result_without_a_bench_line_shows_the_output_tail() -> None:
    with pytest.raises(ValueError, match=r"no 'BENCH steps=\.\.\.' line(.|\n)*KeyError"):
        parse_result("loading\nTraceback (most recent call last):\nKeyError: 'x'\n")


def fake_reference(root: Path) -> Path:
    """A tree holding, in each patched file, every line the patches look for, twice."""
    for name, old, _ in PATCHES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else ""
        path.write_text(text + f"# before\n{old}\n{old}\n")
    return root


def test_patch_rewrites_every_occurrence(tmp_path: Path) -> None:
    patch(fake_reference(tmp_path))
    for name, old, new in PATCHES:
        text = (tmp_path / name).read_text()
        assert text.count(new) >= 2 and (old in new or old not in text)


def test_patch_refuses_a_revision_without_a_patched_line(tmp_path: Path) -> None:
    fake_reference(tmp_path)
    (tmp_path / "utils" / "tools.py").write_text("val_loss_min = 1e9\n")
    with pytest.raises(ValueError, match=r"utils/tools\.py: no 'np\.Inf'"):
        patch(tmp_path)


def test_table_reports_the_speed_ratio_and_both_loads() -> None:
    ref, ours = Result(300, 30.0, 0.9, 0.6), Result(300, 2.0, 0.7, 0.5)
    text = table([(24, ref, ours, "load 1.0", "load 2.0")], "delayed", 1)
    assert "| 24 | 300 | 10.0 | 150.0 | 15.0x | 0.900 / 0.600 | 0.700 / 0.500 | load 1.0; load 2.0 |" in text


def test_reference_csv_is_the_exchange_layout_with_the_same_values(tmp_path: Path) -> None:
    source = tmp_path / "rates.txt"
    source.write_text("0.5,1.25,2.0\n0.75,1.5,2.25\n1.0,1.75,2.5\n")
    reference_csv(source, tmp_path / "exchange_rate.csv")
    frame = pd.read_csv(tmp_path / "exchange_rate.csv")
    assert list(frame.columns) == ["date", "0", "1", "OT"]
    rows = [[0.5, 1.25, 2.0], [0.75, 1.5, 2.25], [1.0, 1.75, 2.5]]
    assert frame[["0", "1", "OT"]].to_numpy().tolist() == rows
    assert pd.to_datetime(frame["date"]).diff().dropna().eq(pd.Timedelta(days=1)).all()


def test_table_names_the_data_set_and_our_model() -> None:
    ref, ours = Result(5668, 600.0, 0.1, 0.2), Result(5668, 60.0, 0.09, 0.18)
    text = table([(24, ref, ours, "load 1.0", "load 1.1")], "paper", 15, "exchange_rate", "onenet-paper")
    assert text.splitlines()[0].startswith("exchange_rate, paper labels, 15 warm-up epoch(s)")
    assert "ours: `onenet-paper`" in text.splitlines()[0]
