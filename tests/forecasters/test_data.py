"""Loading the real series and the ETT online split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forecasters.data import ETT_SPLIT, ett_windows, load_etth2, load_exchange_rate


def test_etth2_windows_use_train_statistics(data_dir: Path) -> None:
    series = load_etth2(data_dir / "timeseries" / "ETTh2.csv")
    assert series.values.shape == (17420, 7) and series.columns[-1] == "OT"
    assert series.marks is not None and series.marks.shape == (17420, 4)
    windows, scaler = ett_windows(series, seq_len=60, horizon=24)
    train_end, val_end, online_end = ETT_SPLIT
    train = windows.values[:train_end].numpy()
    assert np.allclose(train.mean(0), 0, atol=1e-4) and np.allclose(train.std(0), 1, atol=1e-3)
    online = windows.origins(val_end, online_end)
    assert online[0] == 3600 and online[-1] == online_end - 24 and len(windows.values) == online_end
    assert scaler.mean.shape == (7,)


def test_exchange_rate_loads_without_timestamps(data_dir: Path) -> None:
    series = load_exchange_rate(data_dir / "timeseries" / "exchange_rate.txt.gz")
    assert series.values.shape == (7588, 8) and series.marks is None
    assert np.isfinite(series.values).all()


def test_a_csv_without_dates_is_a_clear_error(tmp_path: Path) -> None:
    from forecasters.data import load_csv

    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected a 'date' column"):
        load_csv(path)
