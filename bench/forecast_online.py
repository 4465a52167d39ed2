"""The README forecasting bench: ``driftline forecasters evaluate`` on real ETTh2 with the README's defaults.

A thin caller of :func:`forecasters.evaluate.main`: the defaults below come first, so any flag given
here overrides them (``--steps 0`` for the whole online part, ``--csv`` for another file, ...). Then it
prints the published OneNet/FSNet figures beside the table (paper protocol, whole online part).

    .venv/bin/python bench/forecast_online.py            # first 1,000 online steps, both protocols
    .venv/bin/python bench/forecast_online.py --steps 0 --models onenet --epochs 15   # whole online part
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from forecasters.data import REPO_ROOT, data_dir
from forecasters.evaluate import main as evaluate

#: Published online MSE on ETTh2 (OneNet paper, full 10,800-step online part, paper protocol).
PUBLISHED = {"OneNet": {1: 0.380, 24: 0.532, 48: 0.609}, "FSNet": {1: 0.466, 24: 0.687, 48: 0.846}}


def defaults() -> list[str]:
    return [
        "--csv", str(data_dir() / "timeseries" / "ETTh2.csv"),
        "--models", "last-value", "seasonal-naive", "dlinear", "card", "onenet", "onenet-card",
        "--horizon", "1", "24", "48",
        "--protocol", "delayed", "paper",
        "--steps", "1000",
        "--epochs", "2",
        "--json", str(REPO_ROOT / "var" / "bench" / "forecast_online.json"),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    code = evaluate([*defaults(), *(sys.argv[1:] if argv is None else argv)], prog="bench/forecast_online.py")
    for name, mse in PUBLISHED.items():
        cells = ", ".join(f"H={h} {value:.3f}" for h, value in mse.items())
        print(f"{name} published on ETTh2 (paper protocol, whole online part): MSE {cells}")
    return code


if __name__ == "__main__":
    sys.exit(main())
