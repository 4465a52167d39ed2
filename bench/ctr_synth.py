"""Speed and statistics of the synthetic Criteo-layout stream (``driftline ctr synth``).

    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_synth.py
    flock /tmp/driftline-bench.lock .venv/bin/python bench/ctr_synth.py --rows 500000 --json-rows 100000

Prints, each with the machine's load averages (the machine is shared: wall-clock rates move with
other people's jobs, so the CPU-time rate of this process is printed beside them):

- arrays: rows/s into numpy arrays (``CriteoSynth.batches``), the bench's input;
- JSON: rows/s of ``driftline ctr synth --out FILE`` run as a command (start-up included), and the
  rate the command reports for its own writing;
- the stream over the array rows: positive rate, the share of rows taken by the 1,000 most frequent
  ids of C3 (10.1M ids) against the Zipf expectation, distinct ids, the share of rows in the last 10%
  whose C3 / C7 id never occurred before, and the teacher's own AUC (the best any model can do).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import load  # noqa: E402
from models.ctr.metrics import roc_auc  # noqa: E402
from models.ctr.synth import CATEGORICAL_FIELDS, CRITEO_CARDINALITIES, CriteoSynth, SynthConfig, head_share  # noqa: E402

C3, C7 = CATEGORICAL_FIELDS.index("C3"), CATEGORICAL_FIELDS.index("C7")


def time_arrays(synth: CriteoSynth, rows: int) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Rows/s into arrays, and the columns the statistics need (not all 26: memory stays small)."""
    kept: dict[str, list[np.ndarray]] = {"clicked": [], "probability": [], "c3": [], "c7": []}
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in synth.batches(0, rows):
        kept["clicked"].append(batch.clicked)
        kept["probability"].append(batch.probability)
        kept["c3"].append(batch.ids[:, C3].copy())
        kept["c7"].append(batch.ids[:, C7].copy())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {
        "arrays rows/s (wall)": f"{rows / wall:,.0f}",
        "arrays rows/s (CPU time)": f"{rows / cpu:,.0f}",
    }
    return figures, {name: np.concatenate(parts) for name, parts in kept.items()}


def time_cli(rows: int, seed: int) -> dict[str, str]:
    """``driftline ctr synth`` as a command, writing to a temporary file."""
    with tempfile.TemporaryDirectory(prefix="driftline-synth-") as tmp:
        out = Path(tmp) / "synth.jsonl"
        command = [sys.executable, "-m", "streams.cli", "ctr", "synth", "--rows", str(rows)]
        command += ["--seed", str(seed), "--out", str(out), "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
        size = out.stat().st_size
    reported = re.search(r"\(([\d,]+) rows/s\)", done.stdout)
    return {
        "JSON rows/s, whole command": f"{rows / seconds:,.0f}",
        "JSON rows/s, as the command reports": reported.group(1) if reported else "?",
        "JSON bytes/row": f"{size / rows:,.0f}",
    }


def statistics(columns: dict[str, np.ndarray]) -> dict[str, str]:
    rows = len(columns["clicked"])
    split = rows - rows // 10
    _, counts = np.unique(columns["c3"], return_counts=True)
    top = np.sort(counts)[::-1][:1_000].sum() / rows
    expected = head_share(CRITEO_CARDINALITIES[C3], 1.0, 1_000)
    figures = {
        "positive rate": f"{columns['clicked'].mean():.4f} (Criteo 0.256)",
        "C3 top-1,000 ids' share of rows": f"{top:.3f} (Zipf expectation {expected:.3f})",
        "C3 distinct ids": f"{len(counts):,} ({(counts == 1).mean():.0%} seen once)",
        "C7 distinct ids": f"{len(np.unique(columns['c7'])):,} (12,517 slots)",
    }
    for name in ("c3", "c7"):
        new = ~np.isin(columns[name][split:], columns[name][:split])
        figures[f"{name.upper()} rows with a new id, last 10%"] = f"{new.mean():.1%}"
    sample = slice(0, min(rows, 1_000_000))
    auc = roc_auc(columns["clicked"][sample], columns["probability"][sample])
    figures["teacher AUC (best possible)"] = f"{auc:.4f}"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows into arrays")
    parser.add_argument("--json-rows", type=int, default=500_000, help="rows written by the CLI")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    synth = CriteoSynth(SynthConfig(seed=args.seed))
    rows: list[tuple[str, str, str]] = []
    figures, columns = time_arrays(synth, args.rows)
    rows += [(name, value, load()) for name, value in figures.items()]
    rows += [(name, value, load()) for name, value in time_cli(args.json_rows, args.seed).items()]
    rows += [(name, value, "") for name, value in statistics(columns).items()]
    print(f"synthetic Criteo-layout stream, seed {args.seed}: {args.rows:,} array rows, ", end="")
    print(f"{args.json_rows:,} JSON rows")
    print("| measure | value | machine load (1/5/15 min) |\n|---|---:|---|")
    for name, value, machine in rows:
        print(f"| {name} | {value} | {machine} |")


if __name__ == "__main__":
    main()
