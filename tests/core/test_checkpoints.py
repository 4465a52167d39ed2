from __future__ import annotations

import pytest
import torch

from models.checkpoints import CheckpointError, CheckpointStore


def test_save_load_roundtrip_with_offsets(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    version = store.save({"w": torch.arange(3.0)}, {"t:0": 41}, {"note": "first"})
    checkpoint = store.load()
    assert version == 1 and checkpoint.version == 1
    assert torch.equal(checkpoint.state["w"], torch.arange(3.0))
    assert checkpoint.offsets == {"t:0": 41}
    assert checkpoint.meta == {"note": "first"}


def test_versions_increase_and_old_ones_are_pruned(tmp_path):
    store = CheckpointStore(tmp_path, "m", keep=3)
    for i in range(5):
        store.save({"i": i})
    assert store.versions() == [3, 4, 5]
    assert store.current_version() == 5
    assert [c.state["i"] for c in store.latest(2)] == [3, 4]


def test_rollback_serves_previous_and_refuses_past_the_oldest(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    store.save({"i": 1})
    store.save({"i": 2})
    assert store.rollback() == 1
    assert store.load().state["i"] == 1
    with pytest.raises(CheckpointError, match="no version older"):
        store.rollback()
    # A new save after a rollback becomes current again.
    assert store.save({"i": 3}) == 3 and store.load().state["i"] == 3


def test_half_written_versions_are_ignored(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    store.save({"i": 1})
    (store.dir / "v000002").mkdir()  # a crash before meta.json landed
    (store.dir / ".tmp-abc").mkdir()
    assert store.versions() == [1]
    assert store.load().state["i"] == 1


def test_empty_store_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint saved yet"):
        CheckpointStore(tmp_path, "m").load()
    with pytest.raises(CheckpointError, match="no version 7"):
        CheckpointStore(tmp_path, "m").meta(7)
