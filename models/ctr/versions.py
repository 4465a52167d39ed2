"""Numbered serving versions of a CTR model: publish, roll back, list, round-trip.

The serving version is one attribute (:attr:`VersionHistory.serving`) replaced by assignment, so a
reader that grabs it once holds a consistent frozen model however training and swaps go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.ctr.learner import CtrScorer


class NoOlderVersion(LookupError):
    """Rollback asked for while no older version is kept."""


@dataclass(frozen=True)
class ModelVersion:
    """One published model: its number, when, how much it had learned, and the frozen copy."""

    number: int
    scorer: CtrScorer
    samples_seen: int
    steps: int
    created: float = field(default_factory=time.time)
    #: Progressive metrics of the last batch before publication.
    metrics: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "version": self.number,
            "created": self.created,
            "samples_seen": self.samples_seen,
            "steps": self.steps,
            "metrics": dict(self.metrics),
        }


class VersionHistory:
    """The last ``keep`` published versions and which one serves."""

    def __init__(self, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 versions so that a rollback is possible")
        self.keep = keep
        self.versions: list[ModelVersion] = []
        self.serving: ModelVersion | None = None
        self.last_number = 0

    def publish(
        self, scorer: CtrScorer, samples_seen: int, steps: int, metrics: dict[str, float]
    ) -> ModelVersion:
        """Number a new version, make it serve (one reference swap), forget the oldest beyond ``keep``."""
        self.last_number += 1
        version = ModelVersion(self.last_number, scorer, samples_seen, steps, metrics=dict(metrics))
        self.versions = [*self.versions, version][-self.keep :]
        self.serving = version
        return version

    def rollback(self) -> ModelVersion:
        """Serve the version published before the serving one again."""
        older = [v for v in self.versions if self.serving is not None and v.number < self.serving.number]
        if not older:
            current = self.serving.number if self.serving else None
            raise NoOlderVersion(f"no version older than {current} is kept (kept: {self.numbers()})")
        self.serving = older[-1]
        return older[-1]

    def numbers(self) -> list[int]:
        return [v.number for v in self.versions]

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_number": self.last_number,
            "serving": self.serving.number if self.serving else None,
            "versions": [{**v.info(), "scorer": v.scorer.state_dict()} for v in self.versions],
        }

    def load_state_dict(self, state: dict[str, Any], rebuild: Callable[[dict[str, Any]], CtrScorer]) -> None:
        """Restore; ``rebuild`` turns a saved scorer state back into a :class:`CtrScorer`."""
        self.versions = [
            ModelVersion(
                number=int(saved["version"]),
                scorer=rebuild(saved["scorer"]),
                samples_seen=int(saved["samples_seen"]),
                steps=int(saved["steps"]),
                created=float(saved["created"]),
                metrics=dict(saved["metrics"]),
            )
            for saved in state["versions"]
        ]
        self.last_number = int(state["last_number"])
        by_number = {v.number: v for v in self.versions}
        self.serving = by_number.get(state["serving"]) if state["serving"] is not None else None
