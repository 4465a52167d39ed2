"""Online speed and accuracy of driftline's ``onenet`` beside the authors' OneNet, back to back in one run.

The reference (github.com/yfzhang114/OneNet) is never vendored: give the path of a checkout with
``--reference DIR``, e.g.

    git clone https://github.com/yfzhang114/OneNet /tmp/onenet-ref   # HEAD 076188a was measured

It runs under this project's Python (torch, numpy, pandas); the few packages the reference imports beyond
those go to a scratch folder named by ``--deps`` (put on its PYTHONPATH, never into the project's venv):

    .venv/bin/python -m pip install --target /tmp/onenet-deps --no-deps \
        einops numexpr scikit-learn joblib threadpoolctl cloudpickle

The bench copies it to a scratch directory under /tmp, applies the small patches of
``../shared/REFERENCE-RUNS.md`` to that copy (CPU when there is no CUDA, one torch thread, numpy/pandas
compatibility, no wandb/torchvision, an online step limit, a parseable result line, and the delayed-label
protocol), runs it with the project's Python, then runs ours through :func:`forecasters.evaluate.evaluate`
on the same windows (train-split scaling; ETTh2's online rows from 3600, exchange_rate's last 75%), the same
number of online steps, warm-up epochs and protocol, and prints steps/s, MSE and MAE side by side with the
machine load. The reference reads exchange_rate as its ``Exchange`` data set (``date``, ``0``..``6``, ``OT``):
the bench writes that CSV from ``exchange_rate.txt.gz`` into the scratch copy, with made-up daily dates (the
reference's network does not read the calendar marks; ours runs it with ``--no-date``).

    flock /tmp/driftline-bench.lock .venv/bin/python -m bench.forecast_reference \
        --reference /tmp/onenet-ref --deps /tmp/onenet-deps --horizon 24 48 --steps 300
    flock /tmp/driftline-bench.lock .venv/bin/python -m bench.forecast_reference \
        --reference /tmp/onenet-ref --deps /tmp/onenet-deps --data exchange_rate --protocol paper \
        --epochs 15 --model onenet-paper --horizon 1 24 48 --steps 0

Delayed labels (the default) mean window i is forecast with no gradient, then the window whose last
target has just arrived (i - H + 1) is learned; ``--protocol paper`` runs both unpatched in that respect.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.machine import load
from forecasters.data import data_dir, load_dateless
from forecasters.evaluate import Dataset, evaluate

#: The line the patched reference prints after its online loop (see PATCHES), parsed by :func:`parse_result`.
RESULT_LINE = re.compile(
    r"^BENCH steps=(?P<steps>\d+) seconds=(?P<seconds>[0-9.eE+-]+) mse=(?P<mse>[0-9.eE+-]+) "
    r"mae=(?P<mae>[0-9.eE+-]+)$",
    re.MULTILINE,
)

_DELAYED_STEP = '''
    def _delayed_one_batch(self, dataset_object, batch_x, batch_y, batch_x_mark, batch_y_mark, mode='test'):
        """driftline bench patch: forecast with no gradient, then the unchanged update on the window
        whose last target has just arrived (H - 1 windows back)."""
        pending = self.__dict__.setdefault('_pending', [])
        b, t, d = batch_y.shape
        with torch.no_grad():
            share = F.sigmoid(self.weight.view(1, 1, -1).repeat(b, t, 1)
                              + self.bias.view(-1, 1, d).repeat(1, t, 1))
            share = rearrange(share, 'b t d -> b (t d)')
            outputs, _, _ = self.model.forward_weight(
                batch_x.float().to(self.device), batch_x_mark.float().to(self.device), share, 1 - share)
        pending.append((batch_x, batch_y, batch_x_mark, batch_y_mark))
        if len(pending) == self.args.pred_len:
            self._ol_one_batch(dataset_object, *pending.pop(0))
        return outputs, rearrange(batch_y.float().to(self.device), 'b t d -> b (t d)')

    def _process_one_batch(self'''

_CPU_IF_NO_CUDA = "torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"

#: (file, old, new): every occurrence of ``old`` is replaced, and there must be one, so a changed upstream
#: fails loudly instead of running unpatched.
PATCHES: list[tuple[str, str, str]] = [
    ("models/ts2vec/fsnet.py", "torch.device('cuda:0')", _CPU_IF_NO_CUDA),
    ("models/ts2vec/fsnet_.py", "torch.device('cuda:0')", _CPU_IF_NO_CUDA),
    ("exp/exp_onenet_fsnet.py", "import wandb\n", ""),
    ("utils/buffer.py", "from torchvision import transforms\n", "transforms = object  # type hints only\n"),
    ("utils/timefeatures.py", "dt.weekofyear.to_numpy()", "dt.isocalendar().week.to_numpy()"),
    ("utils/timefeatures.py", "], axis=1).astype(np.float)", "], axis=1).astype(float)"),
    ("utils/tools.py", "np.Inf", "np.inf"),
    ("main.py", "    args = parse_args()\n", "    torch.set_num_threads(1)\n    args = parse_args()\n"),
    ("exp/exp_onenet_fsnet.py", "enumerate(tqdm(test_loader)):\n",
     "enumerate(tqdm(test_loader)):\n"
     "            if i >= int(os.environ.get('ONENET_STEPS') or len(test_loader)):\n"
     "                break\n"),
    ("exp/exp_onenet_fsnet.py", "            pred, true = self._process_one_batch(\n",
     "            step = self._process_one_batch\n"
     "            if os.environ.get('ONENET_DELAYED'):\n"
     "                step = self._delayed_one_batch\n"
     "            pred, true = step(\n"),
    ("exp/exp_onenet_fsnet.py", "\n    def _process_one_batch(self", _DELAYED_STEP),
    ("exp/exp_onenet_fsnet.py", "        print('mse:{}, mae:{}, time:{}'.format(mse, mae, exp_time))\n",
     "        print('mse:{}, mae:{}, time:{}'.format(mse, mae, exp_time))\n"
     "        print('BENCH steps={} seconds={} mse={} mae={}'.format(len(maes), exp_time, mse, mae))\n"),
]  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A data set both sides read: our file in the data folder, the reference's name for it, its frequency."""

    file: str
    reference_name: str
    freq: str

    @property
    def dated(self) -> bool:
        return self.file.endswith(".csv")


#: The data sets the reference knows by name, keyed by ``--data``.
SOURCES = {
    "ETTh2": Source("ETTh2.csv", "ETTh2", "h"),
    "exchange_rate": Source("exchange_rate.txt.gz", "Exchange", "d"),
}


@dataclass(frozen=True)
class Run:
    """What both sides run: ``source`` from the ``data`` folder, one horizon, online steps, warm-up epochs,
    protocol, and our model."""

    data: Path
    source: Source
    horizon: int
    steps: int
    epochs: int
    protocol: str
    model: str = "onenet"

    @property
    def path(self) -> Path:
        return self.data / self.source.file


@dataclass(frozen=True)
class Result:
    """One side's online figures."""

    steps: int
    seconds: float
    mse: float
    mae: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.seconds, 1e-9)


def parse_result(output: str) -> Result:
    """The last ``BENCH ...`` line of the patched reference's output (a clear error when there is none)."""
    found = list(RESULT_LINE.finditer(output))
    if not found:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise ValueError(f"the reference printed no 'BENCH steps=...' line; its output ended with:\n{tail}")
    last = found[-1]
    return Result(int(last["steps"]), float(last["seconds"]), float(last["mse"]), float(last["mae"]))


def patch(tree: Path) -> None:
    """Apply :data:`PATCHES` to the copy at ``tree`` in place."""
    for name, old, new in PATCHES:
        path = tree / name
        text = path.read_text()
        if old not in text:
            raise ValueError(
                f"{name}: no {old.splitlines()[0]!r}: not the reference revision this bench knows (076188a)"
            )
        path.write_text(text.replace(old, new))


def reference_csv(source: Path, target: Path) -> None:
    """exchange_rate's headerless channels as the reference's ``Exchange`` CSV: a daily ``date`` column, then
    ``0``..``6`` and the last channel as ``OT``."""
    values = load_dateless(source).values
    columns = [str(i) for i in range(values.shape[1] - 1)] + ["OT"]
    frame = pd.DataFrame(values.astype(np.float64), columns=columns)
    frame.insert(0, "date", pd.date_range("1990-01-01", periods=len(frame), freq="D"))
    frame.to_csv(target, index=False)


def run_reference(checkout: Path, run: Run, deps: Path | None) -> Result:
    """A patched scratch copy of ``checkout`` run on ``run.source`` for ``run.steps`` steps (0: all)."""
    if not (checkout / "exp" / "exp_onenet_fsnet.py").is_file():
        raise ValueError(f"{checkout}: not a checkout of yfzhang114/OneNet (no exp/exp_onenet_fsnet.py)")
    with tempfile.TemporaryDirectory(prefix="onenet-ref-", dir="/tmp") as scratch:
        tree = Path(scratch) / "OneNet"
        shutil.copytree(checkout, tree, ignore=shutil.ignore_patterns(".git", "checkpoints", "result"))
        patch(tree)
        root = run.data
        if not run.source.dated:
            root = Path(scratch) / "data"
            root.mkdir()
            reference_csv(run.path, root / "exchange_rate.csv")
        command = [
            sys.executable, "-u", "main.py", "--method", "onenet_fsnet", "--root_path", f"{root}/",
            "--data", run.source.reference_name, "--freq", run.source.freq, "--features", "M",
            "--seq_len", "60", "--label_len", "0",
            "--pred_len", str(run.horizon), "--n_inner", "1", "--test_bsz", "1", "--des", "Exp", "--itr", "1",
            "--train_epochs", str(run.epochs), "--learning_rate", "1e-3", "--online_learning", "full",
            "--use_adbfgs",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ONENET_STEPS": str(run.steps or "")}
        env.pop("ONENET_DELAYED", None)
        if run.protocol == "delayed":
            env["ONENET_DELAYED"] = "1"
        if deps is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(deps), env.get("PYTHONPATH")]))
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"the reference failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return parse_result(done.stdout)


def run_ours(run: Run) -> Result:
    """driftline's ``run.model`` through the evaluate command's own loop, seed 0, one thread."""
    torch.set_num_threads(1)
    dataset = Dataset.load(run.path, dated=run.source.dated)
    (row,) = evaluate(
        dataset, [run.model], [run.horizon], [run.protocol], run.steps, run.epochs, progress=False
    )
    return Result(row["steps"], row["steps"] / row["steps_per_s"], row["mse"], row["mae"])


def table(
    rows: list[tuple[int, Result, Result, str, str]],
    protocol: str,
    epochs: int,
    data: str = "ETTh2",
    model: str = "onenet",
) -> str:
    """Markdown rows: per horizon, each side's steps/s, MSE, MAE, the steps/s ratio and the load."""
    lines = [
        f"{data}, {protocol} labels, {epochs} warm-up epoch(s), one torch thread, CPU; ours: `{model}`",
        "| H | steps | reference steps/s | ours steps/s | ours / reference | reference MSE / MAE"
        " | ours MSE / MAE | load (reference; ours) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for horizon, ref, ours, ref_load, our_load in rows:
        lines.append(
            f"| {horizon} | {ours.steps} | {ref.steps_per_s:.1f} | {ours.steps_per_s:.1f} | "
            f"{ours.steps_per_s / ref.steps_per_s:.1f}x | {ref.mse:.3f} / {ref.mae:.3f} | "
            f"{ours.mse:.3f} / {ours.mae:.3f} | {ref_load}; {our_load} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.forecast_reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of yfzhang114/OneNet")
    parser.add_argument("--deps", type=Path, help="a pip --target folder with the reference's extra packages")
    parser.add_argument("--horizon", type=int, nargs="+", default=[24])
    parser.add_argument("--steps", type=int, default=300, help="online steps for both sides, 0 = all")
    parser.add_argument("--epochs", type=int, default=1, help="warm-up epochs for both sides")
    parser.add_argument("--protocol", choices=["delayed", "paper"], default="delayed")
    parser.add_argument("--data", choices=sorted(SOURCES), default="ETTh2", help="the data both sides run")
    parser.add_argument("--model", default="onenet", help="our model (a `forecasters evaluate` model name)")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.epochs < 1 or min(args.horizon) < 1:
        parser.error("--steps must be >= 0 (0 = the whole online part), --epochs and --horizon >= 1")
    rows = []
    source = SOURCES[args.data]
    try:
        for horizon in args.horizon:
            run = Run(
                data_dir() / "timeseries", source, horizon, args.steps, args.epochs, args.protocol, args.model
            )
            ref = run_reference(args.reference, run, args.deps)
            ref_load = load()
            ours = run_ours(run)
            rows.append((horizon, ref, ours, ref_load, load()))
            print(f"H={horizon}: reference {ref}, ours {ours}", file=sys.stderr, flush=True)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(table(rows, args.protocol, args.epochs, args.data, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
