"""The ``ctr.threads`` option sets the trainer's torch threads; unset, torch keeps its choice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.ctr.service import build_service
from models.ctr.threads import use_trainer_threads


@pytest.fixture(autouse=True)
def _threads_kept() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_unset_leaves_torchs_choice() -> None:
    torch.set_num_threads(2)
    assert use_trainer_threads(None) == 2
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_a_bad_count_is_refused_with_the_option_named(bad: str) -> None:
    with pytest.raises(ValueError, match=r"ctr\.threads"):
        use_trainer_threads(bad)


def test_build_service_sets_the_trainers_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_CHECKPOINT_STORE", str(tmp_path / "store"))
    torch.set_num_threads(2)
    build_service(tmp_path / "ctr", threads="1")  # options arrive as text from --option ctr.threads=1
    assert torch.get_num_threads() == 1
    build_service(tmp_path / "ctr2")
    assert torch.get_num_threads() == 1  # unset: what the process has is kept
