"""A rank booster served by hand (``POST /models/rank/promote|rollback``): the control-topic outcome.

Like the CTR rollback (:mod:`models.ctr.service`), the decision is an outcome: decided and applied
under the service lock, published to the control topic and answered only once Kafka has it, then
applied again as a no-op when the worker reads it back (its ``seq`` is held). The outcome carries the
booster itself (LightGBM model text, zlib-compressed, base64, with its sha256), so a replay onto a
state that lacks the version (a checkpoint older than the decision, or versions numbered otherwise
by a re-batched replay) still serves the same booster; ``learned`` says how many labeled queries the
ranker had learned when it was decided, so a replay that meets it before those labels applies it
only once it has learned as many.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from streams.lifecycle_routes import HAND_ACTIONS
from streams.schemas import Outcome, record_limits
from streams.service import ApiError

#: Room an outcome's envelope (service, kind, key, seq, ts, the other data fields) takes beside the
#: booster's text.
ENVELOPE_BYTES = 4_096


@dataclass(frozen=True)
class ServeByHand:
    """Serve ``version`` (its booster ``model``, compressed) instead of ``was``, decided after the
    ranker learned ``learned`` labeled queries; ``action`` is how the lineage records it."""

    version: int
    was: int
    learned: int
    model: str
    sha256: str
    offsets: dict[str, int]
    trained_at: float
    action: str

    @classmethod
    def encode(
        cls, version: int, text: str, *, was: int, learned: int, offsets: dict[str, int],
        trained_at: float, action: str,
    ) -> ServeByHand:  # fmt: skip
        """The decision to serve booster ``text``; a 409 when it is too large to be recorded."""
        packed = base64.b64encode(zlib.compress(text.encode(), 6)).decode()
        limit = record_limits()[0]
        if len(packed) + ENVELOPE_BYTES > limit:
            raise ApiError(
                409,
                f"version {version}'s booster is {len(packed):,} bytes compressed, too large for one "
                f"control record (max_record_bytes={limit:,}): it cannot be served by hand",
            )
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(version, was, learned, packed, digest, dict(offsets), trained_at, action)

    @classmethod
    def of(cls, outcome: Outcome) -> ServeByHand:
        """Parse ``outcome.data``; a 400 :class:`ApiError` says what is wrong."""
        data = outcome.data
        try:
            serve = cls(
                int(data["version"]), int(data["was"]), int(data["learned"]), str(data["model"]),
                str(data["sha256"]), {str(k): int(v) for k, v in dict(data["offsets"]).items()},
                float(data["trained_at"]), str(data["action"]),
            )  # fmt: skip
            if serve.action not in HAND_ACTIONS:
                raise ValueError(f"action must be one of {HAND_ACTIONS}, got {serve.action!r}")
            serve.text()  # the booster must decode and match its digest
            return serve
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise ApiError(
                400, f"malformed serve outcome {outcome.seq}: {type(exc).__name__}: {exc}"
            ) from None

    def text(self) -> str:
        """The booster's model text; ValueError when it does not match its sha256."""
        text = zlib.decompress(base64.b64decode(self.model, validate=True)).decode()
        if hashlib.sha256(text.encode()).hexdigest() != self.sha256:
            raise ValueError(f"the booster of version {self.version} does not match its sha256")
        return text

    def data(self) -> dict[str, Any]:
        return asdict(self)
