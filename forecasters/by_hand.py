"""A kept forecast version served by hand: the outcome an admin's promote or rollback becomes.

It follows the CTR rollback (:mod:`models.ctr.service`): the decision is applied under the lock,
published on the control topic and answered only once Kafka has it; the service also consumes the
control topic, where its own outcome arrives again as a no-op (its ``seq`` is held), and after a
crash the replay applies it to the restored state. Two things make that replay serve the same model:

- the target's weights are written to the checkpoint store before the outcome goes out
  (:class:`VersionStore`), so a state that lacks the target (a checkpoint older than the decision,
  or candidates frozen elsewhere by a re-batched replay) loads it from there;
- the outcome names the observation offsets learned at the decision (``trained``): a replay that
  reaches the control topic before those observations waits (in the state) until training has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forecasters.learner import Forecaster
from forecasters.promotion import Frozen, thaw_learner
from models.checkpoints import CheckpointError, CheckpointStore
from streams.lifecycle_routes import HAND_ACTIONS
from streams.schemas import Outcome
from streams.service import ApiError


@dataclass(frozen=True)
class ServeByHand:
    """Serve ``version`` (frozen at ``trained_at``, weights in the store as ``stored``) instead of
    ``was``, decided once the observations up to ``trained`` were learned; ``action`` as recorded."""

    version: int
    trained_at: float
    was: int | None
    trained: dict[str, int]
    stored: int
    action: str

    @classmethod
    def of(cls, outcome: Outcome) -> ServeByHand:
        """Parse ``outcome.data``; a 400 :class:`ApiError` says what is missing or wrong."""
        data = outcome.data
        try:
            action = str(data["action"])
            if action not in HAND_ACTIONS:
                raise ValueError(f"action must be one of {HAND_ACTIONS}, got {action!r}")
            was = data["was"]
            return cls(
                int(data["version"]),
                float(data["trained_at"]),
                None if was is None else int(was),
                {str(tp): int(offset) for tp, offset in dict(data["trained"]).items()},
                int(data["stored"]),
                action,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(
                400, f"malformed forecast outcome {outcome.seq}: {type(exc).__name__}: {exc}"
            ) from None

    def data(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "trained_at": self.trained_at,
            "was": self.was,
            "trained": dict(self.trained),
            "stored": self.stored,
            "action": self.action,
        }


class VersionStore:
    """Frozen forecast versions in the deployment's checkpoint store (``<root>/served-by-hand/forecast``),
    where every worker that may replay a decision reaches them."""

    def __init__(self, checkpoint_root: Path, keep: int = 100) -> None:
        self.root = checkpoint_root / "served-by-hand"
        self.keep = keep

    def _store(self) -> CheckpointStore:
        return CheckpointStore(self.root, "forecast", self.keep)  # creates the directory: only on use

    def save(self, frozen: Frozen) -> int:
        """Write ``frozen`` (atomically); its number in the store."""
        meta = {"version": frozen.version, "trained_at": frozen.trained_at}
        return self._store().save(frozen.learner.state_dict(), meta=meta)

    def load(self, serve: ServeByHand, template: Forecaster) -> Frozen:
        """The version ``serve`` names, from the store into a copy of ``template``; a 409
        :class:`ApiError` when it is gone, unreadable or another version."""
        try:
            saved = self._store().load(serve.stored)
        except CheckpointError as exc:
            raise ApiError(409, f"cannot serve v{serve.version}: {exc}") from None
        if saved.meta != {"version": serve.version, "trained_at": serve.trained_at}:
            raise ApiError(
                409, f"cannot serve v{serve.version}: stored entry {serve.stored} holds {saved.meta}"
            )
        try:
            learner = thaw_learner(saved.state, template)
        except (KeyError, RuntimeError, ValueError) as exc:  # saved by another forecaster spec
            raise ApiError(
                409, f"cannot serve v{serve.version}: it does not fit this forecaster ({exc})"
            ) from None
        return Frozen(serve.version, learner, serve.trained_at)
