"""Versioned checkpoints on disk: model state plus the stream offsets it has absorbed.

Layout: ``<root>/<model>/v000007/{state.pt,meta.json}`` and ``<root>/<model>/CURRENT`` naming the
version that serves. Each version is written to a temporary directory and renamed into place, so
a crash mid-write never leaves a half checkpoint that a restart would load. Offsets travel inside
the same checkpoint as the state, which is what lets a restarted worker skip events it already
applied and replay the ones it had not.

``meta.json`` carries ``format`` (:data:`FORMAT`); a version without it is format 1, the first
release's, and still loads. A version that cannot be read (truncated, corrupted) is skipped with a
warning and the next older one loads instead: its offsets are older too, so the events in between
are replayed rather than lost.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streams import faults

log = logging.getLogger(__name__)

_PREFIX = "v"
#: Checkpoint format written by this release; :meth:`CheckpointStore.load` reads 1 and 2.
FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True)
class Checkpoint:
    """One saved version: its number, the state, offsets per partition and free-form metadata."""

    version: int
    state: dict[str, Any]
    offsets: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT


class CheckpointError(RuntimeError):
    """Raised for a missing model, version or an impossible rollback."""


class CheckpointStore:
    """Saves, lists, loads and rolls back versions of one named model.

    ``keep`` bounds how many versions stay on disk (older ones are pruned, never the current).
    """

    def __init__(self, root: str | os.PathLike[str], model: str, keep: int = 10) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = Path(root) / model
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    # -- listing -----------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """All complete versions on disk, oldest first."""
        found = []
        for child in self.dir.iterdir():
            if child.is_dir() and child.name.startswith(_PREFIX) and (child / "meta.json").exists():
                try:
                    found.append(int(child.name[len(_PREFIX):]))
                except ValueError:
                    continue
        return sorted(found)

    def current_version(self) -> int | None:
        """The serving version: the CURRENT pointer, else the newest version, else None."""
        pointer = self.dir / "CURRENT"
        if pointer.exists():
            version = int(pointer.read_text().strip())
            if version in self.versions():
                return version
        versions = self.versions()
        return versions[-1] if versions else None

    def meta(self, version: int) -> dict[str, Any]:
        """Metadata of ``version`` without loading its tensors."""
        path = self._path(version) / "meta.json"
        if not path.exists():
            raise CheckpointError(f"{self.dir.name}: no version {version}")
        return json.loads(path.read_text())

    # -- writing -----------------------------------------------------------------------------
    def save(
        self,
        state: dict[str, Any],
        offsets: dict[str, int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Write a new version atomically, make it current, prune old ones; return its number."""
        return self.save_bytes(serialize(state), offsets, meta)

    def save_bytes(
        self,
        payload: bytes,
        offsets: dict[str, int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`save` for a state already serialized with :func:`serialize` (off the lock)."""
        faults.check_disk(self.dir)
        versions = self.versions()
        version = (versions[-1] + 1) if versions else 1
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.dir))
        try:
            with open(tmp / "state.pt", "wb") as handle:
                half = len(payload) // 2
                view = memoryview(payload)  # slices of bytes would be copies of the whole state
                handle.write(view[:half])
                faults.crash_point("mid_checkpoint")
                handle.write(view[half:])
                handle.flush()
                os.fsync(handle.fileno())
            record = {
                "format": FORMAT,
                "version": version,
                "created": time.time(),
                "offsets": dict(offsets or {}),
                "meta": dict(meta or {}),
            }
            (tmp / "meta.json").write_text(json.dumps(record, sort_keys=True))
            os.replace(tmp, self._path(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        faults.crash_point("between_version_and_current")
        self._point_to(version)
        self._prune()
        return version

    def rollback(self) -> int:
        """Make the version before the current one serve again; return it."""
        current = self.current_version()
        older = [v for v in self.versions() if current is not None and v < current]
        if not older:
            raise CheckpointError(f"{self.dir.name}: no version older than {current} to roll back to")
        self._point_to(older[-1])
        return older[-1]

    # -- reading -----------------------------------------------------------------------------
    def load(self, version: int | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Load ``version``; by default the current one, else the newest older one that reads."""
        if version is not None:
            return self._read(version, map_location)
        current = self.current_version()
        if current is None:
            raise CheckpointError(f"{self.dir.name}: no checkpoint saved yet")
        candidates = [v for v in reversed(self.versions()) if v <= current]
        for candidate in candidates:
            try:
                return self._read(candidate, map_location)
            except CheckpointError as exc:
                log.warning("%s; falling back to the previous version", exc)
        raise CheckpointError(f"{self.dir}: none of versions {candidates} could be read")

    def _read(self, version: int, map_location: str | torch.device) -> Checkpoint:
        try:
            record = self.meta(version)
            fmt = int(record.get("format", 1))
            if fmt not in READABLE_FORMATS:
                raise CheckpointError(
                    f"{self.dir.name} v{version} has format {fmt}; this release reads {READABLE_FORMATS}"
                )
            path = self._path(version) / "state.pt"
            state = torch.load(path, map_location=map_location, weights_only=False)
            offsets = {k: int(v) for k, v in record["offsets"].items()}
            return Checkpoint(version, state, offsets, record["meta"], fmt)
        except CheckpointError:
            raise
        except Exception as exc:  # truncated or corrupted files: torch, json and OS errors alike
            raise CheckpointError(
                f"{self.dir.name} v{version} is unreadable ({type(exc).__name__}: {exc})"
            ) from exc

    def latest(self, n: int) -> list[Checkpoint]:
        """The ``n`` newest versions up to the current one, oldest first (a committee, say)."""
        current = self.current_version()
        chosen = [v for v in self.versions() if current is not None and v <= current][-n:]
        return [self.load(v) for v in chosen]

    # -- internals ---------------------------------------------------------------------------
    def _path(self, version: int) -> Path:
        return self.dir / f"{_PREFIX}{version:06d}"

    def _point_to(self, version: int) -> None:
        tmp = self.dir / ".CURRENT.tmp"
        tmp.write_text(str(version))
        os.replace(tmp, self.dir / "CURRENT")

    def _prune(self) -> None:
        current = self.current_version()
        for version in self.versions()[: -self.keep]:
            if version != current:
                shutil.rmtree(self._path(version), ignore_errors=True)


def serialize(state: dict[str, Any]) -> bytes:
    """The bytes :meth:`CheckpointStore.save_bytes` writes (``torch.save`` format)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
