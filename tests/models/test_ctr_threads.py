"""The CTR trainer's torch threads: one core left to the worker's Kafka side, unless told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.ctr.service import build_service
from models.ctr.threads import OMP_ENV, trainer_threads, use_trainer_threads


@pytest.fixture(autouse=True)
def _threads_kept() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_core_is_left_to_the_kafka_side() -> None:
    assert trainer_threads(cores=2) == 1
    assert trainer_threads(cores=16) == 15
    assert trainer_threads(cores=1) == 1


def test_an_explicit_count_wins_and_must_be_positive() -> None:
    assert trainer_threads(3, cores=2) == 3
    with pytest.raises(ValueError, match="at least 1"):
        trainer_threads(0)


def test_omp_num_threads_decides_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv(OMP_ENV, "2")
    assert use_trainer_threads() == 2
    assert torch.get_num_threads() == 2
    assert use_trainer_threads(1) == 1  # the option is explicit: it applies anyway
    assert torch.get_num_threads() == 1


def test_build_service_sets_the_trainers_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OMP_ENV, raising=False)
    monkeypatch.setenv("DRIFTLINE_CHECKPOINT_STORE", str(tmp_path / "store"))
    build_service(tmp_path / "ctr", threads="3")  # options arrive as text from --option ctr.threads=3
    assert torch.get_num_threads() == 3
    build_service(tmp_path / "ctr")
    assert torch.get_num_threads() == trainer_threads()
