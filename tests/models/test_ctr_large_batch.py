"""The large-batch bench's training loop (models/ctr/large_batch.py) and bench/ctr_large_batch.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ctr.large_batch import (
    CellConfig,
    TableLayout,
    WideTableDeepFM,
    build_optimizers,
    make_split,
    train_cell,
)
from models.ctr.rowwise import RowClip, RowwiseAdam
from models.ctr.synth import CRITEO_CARDINALITIES

ROOT = Path(__file__).resolve().parents[2]
#: Packages the lent GPU machines lack: the bench's import chain must not need them.
ABSENT = ("aiokafka", "kafka", "faust", "lightgbm", "pydantic", "crc32c", "river")
CPU = torch.device("cpu")
SMALL = dict(hidden=(16, 16), embed_dim=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a loaded 2-core machine more threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split() -> tuple[TableLayout, object, object]:
    layout = TableLayout.criteo(5_000)
    train, heldout = make_split(0, 40_000, 10_000, layout, CPU)
    return layout, train, heldout


def test_layout_hashes_each_field_into_its_own_row_range() -> None:
    layout = TableLayout.criteo(1_000)
    assert layout.sizes == tuple(min(c, 1_000) for c in CRITEO_CARDINALITIES)
    ids = np.random.default_rng(0).integers(0, 2**32, (500, 26), dtype=np.uint64).astype(np.uint32)
    rows = layout.rows(ids)
    starts = np.concatenate([[0], np.cumsum(layout.sizes)])
    assert rows.dtype == np.int32
    assert ((rows >= starts[:-1]) & (rows < starts[1:])).all()
    assert (rows - starts[:-1] == ids % np.array(layout.sizes, dtype=np.uint32)).all()


def test_split_is_the_streams_rows_in_order_with_heldout_after(split) -> None:
    layout, train, heldout = split
    again_train, again_heldout = make_split(0, 40_000, 10_000, layout, CPU)
    assert torch.equal(train.rows, again_train.rows) and torch.equal(heldout.rows, again_heldout.rows)
    assert len(train) == 40_000 and len(heldout) == 10_000
    assert 0.2 < float(train.clicked.mean()) < 0.31  # the generator's 25.6% positives
    assert abs(float(train.dense.mean())) < 1e-3  # standardised on the training rows
    other, _ = make_split(1, 1_000, 10, layout, CPU)
    assert not torch.equal(other.rows, train.rows[:1_000])
    with pytest.raises(ValueError, match="26 fields"):
        make_split(0, 10, 10, TableLayout((10, 10)), CPU)


def _clip_fraction(scale: float) -> float:
    """Share of looked-up rows CowClip clips when the loss (hence every gradient) is multiplied by
    ``scale``: the clip bound ``cnt * max(r ||w||, zeta)`` stays put while gradients grow."""
    torch.manual_seed(0)
    layout = TableLayout((50, 50))
    net = WideTableDeepFM(layout, dense=2, dim=4, hidden=(8,), init_std=0.1)
    rows = torch.randint(0, 50, (64, 2)) + torch.tensor([0, 50])
    logits = net(rows, torch.randn(64, 2))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(64)) * scale
    loss.backward()
    step = RowwiseAdam([net.vectors], lr=1e-3, clip=RowClip(ratio=1.0, zeta=1e-5))
    step.step([rows])
    return step.clipped_fraction


def test_clip_triggers_on_large_gradients_and_not_on_tiny_ones() -> None:
    assert _clip_fraction(1e4) > 0.9
    assert _clip_fraction(1e-4) == 0.0


def test_one_epoch_learns_the_teacher_with_both_optimizers(split) -> None:
    layout, train, heldout = split
    results = {}
    for optimizer in ("adam", "cowclip"):
        config = CellConfig(batch=512, optimizer=optimizer, embed_lr=1e-2, dense_lr=1e-3, **SMALL)
        seen: list[int] = []
        results[optimizer] = train_cell(config, layout, train, heldout, seen.append)
        assert sum(seen) == len(train) and len(seen) == results[optimizer].steps == 79
    for result in results.values():
        print(result)
        assert result.auc > 0.55, result  # 10,000 held-out rows: a standard error of about 0.006
        assert result.samples_per_s > 0 and result.wall_s > 0
    assert results["adam"].clipped == 0.0


def test_more_epochs_pass_over_the_same_rows_again(split) -> None:
    layout, train, heldout = split
    config = CellConfig(batch=512, optimizer="cowclip", embed_lr=1e-2, dense_lr=1e-3, epochs=2, **SMALL)
    seen: list[int] = []
    result = train_cell(config, layout, train, heldout, seen.append)
    assert result.steps == len(seen) == 2 * 79 and sum(seen) == 2 * len(train)
    assert seen[:79] == seen[79:]  # the second pass takes the same batches, the last one short
    with pytest.raises(ValueError, match="epochs"):
        CellConfig(batch=1024, epochs=0)


def test_the_estimate_probes_one_pass_and_counts_the_passes_once(monkeypatch, split) -> None:
    """The start-up probe times one pass even for ``--epochs 3``; the estimate multiplies by 3."""
    import bench.ctr_large_batch as bench

    layout, train, heldout = split
    probed: list[int] = []
    real = bench.train_cell

    def recording(config: CellConfig, *args: object, **kwargs: object) -> object:
        probed.append(config.epochs)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(bench, "train_cell", recording)
    bench.measure_step(CellConfig(batch=512, epochs=3, **SMALL), layout, train, heldout)
    assert probed == [1, 1, 1]
    grid = ["--rows", "1000", "--batches", "100", "--optimizers", "adam", "--seeds", "1"]
    once, thrice = bench.parse_args(grid), bench.parse_args([*grid, "--epochs", "3"])
    costs = (0.01, 0.001, 0.0)  # per step, per sample, data generation
    assert bench.estimate_s(thrice, *costs) == pytest.approx(3 * bench.estimate_s(once, *costs))


@pytest.mark.parametrize(
    ("optimizer", "scaling", "embed_lr", "dense_lr", "l2", "clipped"),
    [
        ("adam", "none", 1e-4, 1e-4, 1e-5, False),  # base values at every batch size
        ("adam", "sqrt", 1e-4, 1e-4, 1e-5, False),  # the embedding knob is the cowclip arm's only
        ("cowclip", "none", 1e-4, 8e-4, 64e-5, True),  # the paper at 64K: dense x sqrt(64), L2 x 64
        ("cowclip", "sqrt", 8e-4, 8e-4, 64e-5, True),
        ("cowclip", "linear", 64e-4, 8e-4, 64e-5, True),
    ],
)
def test_arms_follow_the_scaling_rule_at_64k(
    optimizer: str, scaling: str, embed_lr: float, dense_lr: float, l2: float, clipped: bool
) -> None:
    config = CellConfig(batch=65_536, optimizer=optimizer, embed_scaling=scaling, warmup=0.5, **SMALL)
    net = WideTableDeepFM(TableLayout((10, 10)), dense=2, dim=4, hidden=(4,), init_std=0.1)
    vectors, weights, dense, lr_at = build_optimizers(net, config, steps=100)
    assert vectors.lr == pytest.approx(embed_lr) and weights.lr == pytest.approx(embed_lr)
    assert vectors.l2 == pytest.approx(l2) and weights.l2 == pytest.approx(l2)
    assert (vectors.clip is not None) == clipped and weights.clip is None
    assert lr_at(99) == pytest.approx(dense_lr)
    tables = {id(net.vectors), id(net.weights)}
    assert not any(id(p) in tables for group in dense.param_groups for p in group["params"])
    # The cowclip arm warms the dense lr up over half of the 100 steps; adam starts at its peak.
    assert lr_at(0) == pytest.approx(dense_lr / 50 if clipped else dense_lr)


def test_cell_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        CellConfig(batch=1024, optimizer="sgd")
    with pytest.raises(ValueError, match="warmup"):
        CellConfig(batch=1024, warmup=2.0)
    with pytest.raises(ValueError, match="batch"):
        CellConfig(batch=0)
    with pytest.raises(ValueError, match="embed_scaling"):
        CellConfig(batch=1024, embed_scaling="cubic")


#: Runs the bench with the packages in ABSENT made unimportable, as on the lent GPU machines.
_BLOCKED_RUN = """
import importlib.abc, runpy, sys
ABSENT = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, Absent())
for name in list(sys.modules):
    if name.split(".")[0] in ABSENT:
        del sys.modules[name]
sys.argv = ["bench/ctr_large_batch.py", *sys.argv[2:]]
runpy.run_path("bench/ctr_large_batch.py", run_name="__main__")
"""


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """The bench at a tiny size, with the packages in ABSENT made unimportable."""
    tiny = [
        "--rows",
        "6000",
        "--heldout",
        "2000",
        "--seeds",
        "2",
        "--hidden",
        "8",
        "--max-table-rows",
        "2000",
    ]
    command = [sys.executable, "-c", _BLOCKED_RUN, ",".join(ABSENT), *tiny, "--workers", "2", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bench_runs_without_kafka_pydantic_lightgbm_or_river(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "auc.png"
    done = run_bench("--batches", "512,2048", "--json", str(out), "--plot", str(png))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUC" in done.stdout and "clipped" in done.stdout and "estimated run time" in done.stdout
    report = json.loads(out.read_text())
    assert len(report["cells"]) == 2 * 2 * 2  # seeds x batches x optimizers
    fields = {"batch", "optimizer", "seed", "steps", "auc", "logloss", "samples_per_s", "wall_s", "clipped"}
    assert all(fields <= set(cell) for cell in report["cells"])
    assert [(r["batch"], r["optimizer"], r["seeds"]) for r in report["table"]] == [
        (512, "adam", 2), (512, "cowclip", 2), (2048, "adam", 2), (2048, "cowclip", 2),
    ]  # fmt: skip
    assert all(r["auc_stderr"] >= 0 for r in report["table"])
    assert png.read_bytes()[:4] == b"\x89PNG"

    # Started again with --resume, a run keeps the finished cells and does only the missing ones.
    again = run_bench("--batches", "512,2048,1024", "--no-estimate", "--resume", "--json", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(out.read_text())["cells"]
    assert resumed[:8] == report["cells"]
    assert sorted((c["seed"], c["batch"]) for c in resumed[8:]) == [
        (0, 1024),
        (0, 1024),
        (1, 1024),
        (1, 1024),
    ]
    # ... but only over a run with the same settings.
    other = run_bench("--batches", "512", "--zeta", "1e-3", "--no-estimate", "--resume", "--json", str(out))
    assert other.returncode != 0 and "other settings" in other.stderr


def test_the_blocker_really_blocks() -> None:
    """The check above would pass vacuously if the finder let the packages through."""
    probe = _BLOCKED_RUN.split("sys.argv = ")[0] + "import pydantic\n"
    done = subprocess.run(
        [sys.executable, "-c", probe, ",".join(ABSENT)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "not installed on the GPU machine" in done.stderr
