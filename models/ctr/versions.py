"""Numbered serving versions of a CTR model: publish, pick one to serve, list, round-trip, ship.

The serving version is one attribute (:attr:`VersionHistory.serving`) replaced by assignment, so a
reader that grabs it once holds a consistent frozen model however training and swaps go on.

A version travels to serving replicas as a :class:`ModelUpdate` on the ``model-updates`` topic
(:func:`encode_update`, :func:`load_update`): the ``torch.save`` bytes of its scorer state inline
(base64) when small, else written once into the shared checkpoint store and named by ``uri``; the
``sha256`` of those bytes lets a replica refuse a torn or foreign file instead of serving it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.ctr.learner import CtrScorer
from streams.schemas import ModelUpdate

#: Inline weights (base64 text) must stay under this many characters so that the whole record fits
#: Kafka's default 1 MiB message limit (producer ``max_request_size``, broker ``message.max.bytes``);
#: larger states go to the checkpoint store. States up to ~750 kB raw travel inline.
INLINE_LIMIT = 1_000_000


class UpdateError(ValueError):
    """A model update that cannot be served: bad encoding, unreadable file, hash or model mismatch."""


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

    @classmethod
    def from_info(cls, info: dict[str, Any], scorer: CtrScorer) -> ModelVersion:
        """Inverse of :meth:`info`; ``KeyError``, ``ValueError`` or ``TypeError`` if malformed."""
        return cls(
            number=int(info["version"]),
            scorer=scorer,
            samples_seen=int(info["samples_seen"]),
            steps=int(info["steps"]),
            created=float(info["created"]),
            metrics={str(k): float(v) for k, v in dict(info["metrics"]).items()},
        )


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

    def adopt(self, version: ModelVersion, last_number: int) -> None:
        """Serve ``version`` (one reference swap), a kept one or one loaded from elsewhere.

        It replaces a kept version of the same number; the oldest others go beyond ``keep``; new
        versions are numbered after ``last_number``. The same call twice is a no-op.
        """
        others = [v for v in self.versions if v.number != version.number]
        kept = sorted([*others, version], key=lambda v: v.number)
        while len(kept) > self.keep:
            kept.remove(next(v for v in kept if v is not version))
        self.versions = kept
        self.serving = version
        self.last_number = max(self.last_number, last_number, version.number)

    def find(self, number: int, created: float) -> ModelVersion | None:
        """The kept version ``number`` published at ``created`` (a replay renumbers other models)."""
        return next((v for v in self.versions if v.number == number and v.created == created), None)

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
        self.versions = [ModelVersion.from_info(s, rebuild(s["scorer"])) for s in state["versions"]]
        self.last_number = int(state["last_number"])
        by_number = {v.number: v for v in self.versions}
        self.serving = by_number.get(state["serving"]) if state["serving"] is not None else None


# -- on the wire: the model-updates topic ---------------------------------------------------------
def update_path(store: Path, number: int) -> Path:
    """Where version ``number``'s bytes go in a service's model-updates directory."""
    return store / f"v{number:06d}.pt"


def encode_update(
    service: str,
    version: ModelVersion,
    info: dict[str, Any],
    store: Path,
    inline_limit: int = INLINE_LIMIT,
) -> ModelUpdate:
    """The update announcing ``version``: its bytes inline, or written atomically under ``store``.

    ``info`` (model kind, feature spec, ...) is sent beside the version's own :meth:`~ModelVersion.info`.
    """
    buffer = io.BytesIO()
    torch.save(version.scorer.state_dict(), buffer)
    data = buffer.getvalue()
    common: dict[str, Any] = {
        "service": service,
        "version": version.number,
        "ts": time.time(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "info": {**version.info(), **info},
    }
    if base64_length(len(data)) < inline_limit:
        return ModelUpdate(**common, weights=base64.b64encode(data).decode("ascii"))
    path = update_path(store, version.number)
    if not (path.exists() and path.read_bytes() == data):  # a re-sent version keeps its file as is
        _write_atomically(path, data)
    return ModelUpdate(**common, uri=str(path))


def base64_length(size: int) -> int:
    """Characters of ``size`` bytes in base64 (padded): whether weights travel inline is decided
    without encoding them, which for the default model's 4.7 MB took 10-17 ms of the swap's batch."""
    return 4 * ((size + 2) // 3)


def prune_updates(store: Path, keep: list[int]) -> None:
    """Delete stored update files of versions no longer kept (replicas load only the newest)."""
    if not store.is_dir():
        return
    wanted = {update_path(store, number).name for number in keep}
    for path in store.glob("v*.pt"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def load_update(update: ModelUpdate, checkpoint_root: Path) -> dict[str, Any]:
    """The scorer state an update carries, after checking its sha256; raise :class:`UpdateError`."""
    what = f"model update {update.service} v{update.version}"
    if update.weights is not None:
        source = "its inline weights"
        try:
            data = base64.b64decode(update.weights, validate=True)
        except binascii.Error as exc:
            raise UpdateError(f"{what}: weights are not valid base64 ({exc})") from None
    elif update.uri is not None:
        path, root = Path(update.uri).resolve(), checkpoint_root.resolve()
        if not path.is_relative_to(root):
            raise UpdateError(f"{what}: uri {update.uri} lies outside the checkpoint store {root}")
        source = update.uri
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UpdateError(f"{what}: cannot read {update.uri}: {exc}") from None
    else:
        raise UpdateError(f"{what} carries neither weights nor a uri")
    actual = hashlib.sha256(data).hexdigest()
    if actual != update.sha256:
        raise UpdateError(
            f"{what}: sha256 mismatch, the update says {update.sha256} but {source} hash to {actual}; "
            "not loaded"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for bad bytes
        reason = f"{type(exc).__name__}: {exc}"
        raise UpdateError(f"{what}: {source} is not a saved scorer state ({reason})") from None
    if not isinstance(state, dict):
        raise UpdateError(f"{what}: {source} holds a {type(state).__name__}, not a scorer state")
    return state


def version_from_update(
    update: ModelUpdate, checkpoint_root: Path, rebuild: Callable[[dict[str, Any]], CtrScorer]
) -> ModelVersion:
    """The version an update carries, loaded and sha256-checked; raise :class:`UpdateError`."""
    state = load_update(update, checkpoint_root)
    try:
        return ModelVersion.from_info({**update.info, "version": update.version}, rebuild(state))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UpdateError(
            f"model update {update.service} v{update.version} does not fit this model "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: readers see no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
