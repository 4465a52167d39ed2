"""The one learner contract that forecasters, CTR models and rankers implement.

Shaped after River (``learn``/``predict``) but batch-first, because the stream hands workers
micro-batches and GPUs want batches. State goes through plain ``state_dict``/``load_state_dict``
so the checkpoint store can persist any learner without knowing its type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

BatchT = TypeVar("BatchT")
PredictionT = TypeVar("PredictionT")


class Learner(ABC, Generic[BatchT, PredictionT]):
    """An online model: predict on a batch, learn from a batch, round-trip its state.

    ``learn`` follows test-then-train: it may score the batch with the pre-update model and
    returns those progressive metrics (e.g. ``{"loss": ...}``) so the service can export them.
    """

    #: Short stable name, used as the checkpoint directory and in metrics labels.
    name: str = "learner"

    @abstractmethod
    def predict(self, batch: BatchT) -> PredictionT:
        """Predictions for every item of ``batch``; must not change the model."""

    @abstractmethod
    def learn(self, batch: BatchT) -> dict[str, float]:
        """Update the model from ``batch``; return metrics measured before the update."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this learner (tensors, numpy arrays, plain values)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a ``state_dict`` produced by the same kind of learner."""
