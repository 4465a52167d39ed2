"""Where pretrained forecasters live under a service's data dir, and how they are saved and loaded.

A pretrained checkpoint holds the spec, the learner state and the scaler (per-channel mean/std of
the pretraining rows) that the service applies to arriving observations.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from forecasters.data import Scaler
from forecasters.learner import Forecaster
from forecasters.zoo import ForecasterSpec, build_forecaster
from models.checkpoints import CheckpointStore


def pretrained_store(data_dir: Path, kind: str) -> CheckpointStore:
    """``<data_dir>/pretrained/<kind>/vNNNNNN``."""
    return CheckpointStore(Path(data_dir) / "pretrained", kind)


def save_pretrained(
    data_dir: Path, spec: ForecasterSpec, learner: Forecaster, scaler: Scaler, meta: dict[str, Any]
) -> int:
    """Save a new pretrained version and return its number."""
    state = {"spec": asdict(spec), "learner": learner.state_dict(), "mean": scaler.mean, "std": scaler.std}
    return pretrained_store(data_dir, spec.kind).save(state, meta=meta)


def load_pretrained(data_dir: Path, kind: str) -> tuple[ForecasterSpec, Forecaster, Scaler, int] | None:
    """The current pretrained ``kind`` as (spec, learner, scaler, version), or None if none was saved."""
    store = pretrained_store(data_dir, kind)
    if store.current_version() is None:
        return None
    checkpoint = store.load()
    spec = ForecasterSpec.from_dict(checkpoint.state["spec"])
    learner = build_forecaster(spec)
    learner.load_state_dict(checkpoint.state["learner"])
    return spec, learner, Scaler(checkpoint.state["mean"], checkpoint.state["std"]), checkpoint.version
