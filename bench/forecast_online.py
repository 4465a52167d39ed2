"""FSNet/OneNet online protocol on real ETTh2: warm up, then test-then-train one step at a time.

Split (OneNet's ETT split): rows [0, 2880) train, [2880, 3600) validation (early stopping), then the
online part from row 3600 to 14400 streamed one window at a time with batch size 1. Data are
standardised with train-split statistics; look-back 60. Figures are cumulative online MSE/MAE over
the first ``--steps`` online steps (all 10,800 - H + 1 with ``--steps 0``), taken with one torch thread.

    .venv/bin/python bench/forecast_online.py               # ~6 min: the first 1,000 online steps per H
    .venv/bin/python bench/forecast_online.py --steps 0 --models onenet --epochs 15   # full protocol
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from forecasters.data import ETT_SPLIT, REPO_ROOT, ett_windows, load_etth2
from forecasters.training import fit
from forecasters.zoo import BUILDERS, ForecasterSpec, build_forecaster

#: Published online MSE on ETTh2 (OneNet paper, full 10,800-step online part) by horizon.
PUBLISHED = {
    "OneNet (published)": {1: 0.380, 24: 0.532, 48: 0.609},
    "FSNet (published)": {1: 0.466, 24: 0.687, 48: 0.846},
}
DEFAULT_MODELS = ["last-value", "seasonal-naive", "dlinear", "card", "onenet", "onenet-card"]


def run_one(kind: str, horizon: int, steps: int, epochs: int, seq_len: int) -> dict[str, float | int | str]:
    """Warm up ``kind`` on the train split, then run the online part; return its row of the table."""
    torch.manual_seed(0)
    series = load_etth2()
    windows, _ = ett_windows(series, seq_len, horizon)
    train_end, val_end, online_end = ETT_SPLIT
    spec = ForecasterSpec(
        kind=kind, seq_len=seq_len, horizon=horizon, channels=series.values.shape[1], marks=4
    )
    learner = build_forecaster(spec)
    started = time.perf_counter()
    report = fit(
        learner, windows, windows.origins(0, train_end), windows.origins(train_end, val_end), epochs=epochs
    )
    warmup_s = time.perf_counter() - started
    online = windows.origins(val_end, online_end)
    if steps:
        online = online[:steps]
    sq, ab = 0.0, 0.0
    started = time.perf_counter()
    for origin in online:
        metrics = learner.learn(windows.batch(np.array([origin])))
        sq += metrics["mse"]
        ab += metrics["mae"]
    online_s = time.perf_counter() - started
    return {
        "model": kind,
        "horizon": horizon,
        "steps": len(online),
        "mse": sq / len(online),
        "mae": ab / len(online),
        "steps_per_s": len(online) / online_s,
        "warmup_epochs": report.epochs,
        "warmup_s": warmup_s,
    }


def table(rows: list[dict[str, float | int | str]], horizons: list[int]) -> str:
    """Models as rows, MSE/MAE per horizon side by side, steps/s, then the published references."""
    head = f"{'model':<22}" + "".join(f"{'H=' + str(h) + ' MSE':>10}{'MAE':>7}" for h in horizons)
    lines = [head + f"{'online steps':>20}{'steps/s':>9}", "-" * (len(head) + 29)]
    by_model: dict[str, dict[int, dict[str, float | int | str]]] = {}
    for row in rows:
        by_model.setdefault(str(row["model"]), {})[int(row["horizon"])] = row
    for model, cells in by_model.items():
        line = f"{model:<22}"
        for h in horizons:
            cell = cells.get(h)
            line += f"{float(cell['mse']):>10.3f}{float(cell['mae']):>7.3f}" if cell else f"{'-':>10}{'-':>7}"
        steps = "/".join(str(cells[h]["steps"]) for h in horizons if h in cells)
        speed = np.mean([float(c["steps_per_s"]) for c in cells.values()])
        lines.append(line + f"{steps:>20}{speed:>9.1f}")
    for name, mse in PUBLISHED.items():
        cells_text = "".join(
            f"{mse[h]:>10.3f}{'-':>7}" if h in mse else f"{'-':>10}{'-':>7}" for h in horizons
        )
        lines.append(f"{name:<22}" + cells_text + f"{'10800-H+1':>20}{'-':>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=1000, help="online steps per horizon (0 = the whole online part)"
    )
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 24, 48])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(BUILDERS))
    parser.add_argument("--epochs", type=int, default=2, help="warm-up epochs (OneNet: up to 15, patience 3)")
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "var" / "bench" / "forecast_online.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for horizon in args.horizons:
        for kind in args.models:
            row = run_one(kind, horizon, args.steps, args.epochs, args.seq_len)
            print(
                f"  {kind} H={horizon}: {row['steps']} steps, mse {row['mse']:.3f}, "
                f"{row['steps_per_s']:.1f} steps/s, warm-up {row['warmup_s']:.0f}s",
                flush=True,
            )
            rows.append(row)
    print(
        f"\nETTh2 online (test-then-train, batch 1), look-back {args.seq_len}, "
        f"warm-up {args.epochs} epochs on "
        f"rows [0,2880) with early stopping on [2880,3600); online from row 3600; standardised with train "
        f"statistics; one torch thread.\n"
    )
    print(table(rows, args.horizons))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
