"""The online joiner: clicks that arrive after their impressions become labels (Monolith's joiner).

Real ad logs carry the impression when it is shown and the click seconds or minutes later, on
another stream. :class:`ClickJoin` keeps each unlabelled impression's encoded features until one of:

- a click for its id arrives within ``window_s`` seconds of the impression (event time): it is a
  **positive** at once (its memory is freed, it can be learned from while fresh);
- the window closes without a click: it is a **negative**.

Time is the records' own ``ts``, never the wall clock, so a replay gives the same labels. Each input
has a watermark (the largest ``ts`` seen on it) and windows close on the smaller of the two, as a
two-input operator must: while the clicks lag behind (a backlog, a slow partition) no impression is
called a negative whose click may still be queued, and while the impressions lag, clicks that come
before their impression wait (as orphans) for it instead of being lost.

Every event is accounted for in :attr:`ClickJoin.counts`, never raised: a duplicate impression id is
dropped; an impression older than the window when it arrives is dropped as late; a click after its
impression's window (or for one already learned as a negative) is late; a second click is a
duplicate; a click whose impression never comes is unknown. Resolved ids are remembered one more
window so that duplicates and late clicks are told apart from unknown ones. With no click stream at
all windows would never close, so ``max_pending`` bounds the memory: beyond it the oldest pending
impressions are closed as negatives (counted as ``forced_negatives``).

Pending features live in preallocated numpy columns (int32 bucket ids, float32 dense values), not
as records: about 400 bytes per pending impression with 26 + 13 fields (docs/ctr.md). The state is
arrays and id lists, so the runner's snapshots copy it cheaply and checkpoints hold it whole: after
a crash the restored join resumes exactly where the checkpoint left it, and the replayed events
give the same labels, so no impression is learned twice. Pure: no Kafka, no torch.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The counters of :attr:`ClickJoin.counts`, all cumulative (they travel with the state).
COUNTS = (
    "positives",
    "negatives",
    "forced_negatives",
    "duplicate_impressions",
    "late_impressions",
    "late_clicks",
    "duplicate_clicks",
    "unknown_clicks",
)
_MAX_BUCKET = np.iinfo(np.int32).max


@dataclass(frozen=True)
class Labelled:
    """Rows whose label is decided, in the order they were decided."""

    categorical: np.ndarray  #: int32 [n, categorical fields]: bucket ids
    dense: np.ndarray  #: float32 [n, dense fields]: raw values, NaN where missing
    labels: np.ndarray  #: uint8 [n]: 1 clicked within the window, 0 not

    def __len__(self) -> int:
        return len(self.labels)


class ClickJoin:
    """Joins clicks to pending impressions by id within ``window_s`` of event time; see the module."""

    def __init__(
        self, window_s: float, categorical_width: int, dense_width: int, max_pending: int = 2_000_000
    ) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"click_window_s must be a positive number of seconds, got {window_s}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.window_s = float(window_s)
        self.max_pending = max_pending
        self._widths = (categorical_width, dense_width)
        self._clear()

    def _clear(self) -> None:
        """Empty state: nothing pending, no time seen on either input."""
        self.counts = dict.fromkeys(COUNTS, 0)
        categorical_width, dense_width = self._widths
        # pending impressions: id -> slot of the columns below (a freed slot has ts NaN)
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._ts = np.empty(0)
        self._seq = np.empty(0, dtype=np.int64)  # arrival number: ties of ts close in arrival order
        self._categorical = np.empty((0, categorical_width), dtype=np.int32)
        self._dense = np.empty((0, dense_width), dtype=np.float32)
        self._next_seq = 0
        # resolved ids, kept one more window: impression ts by id, and which of them were clicked
        self._done: dict[str, float] = {}
        self._done_order: deque[str] = deque()
        self._done_clicked: set[str] = set()
        # clicks that came before their impression: click ts by impression id
        self._orphans: dict[str, float] = {}
        self._orphan_order: deque[str] = deque()
        self._impression_watermark = -math.inf
        self._click_watermark = -math.inf
        self._ready: list[Labelled] = []

    # -- input ---------------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """Event time both inputs have reached: windows ending at or before it are closed."""
        return min(self._impression_watermark, self._click_watermark)

    def add_impressions(
        self, ids: Sequence[str], ts: Sequence[float], categorical: np.ndarray, dense: np.ndarray
    ) -> None:
        """Unlabelled impressions with their encoded features (row ``i`` belongs to ``ids[i]``)."""
        categorical = np.asarray(categorical)
        dense = np.asarray(dense, dtype=np.float32)
        if categorical.shape != (len(ids), self._widths[0]) or dense.shape != (len(ids), self._widths[1]):
            raise ValueError(
                f"features {categorical.shape} and {dense.shape} do not fit {len(ids)} impressions of "
                f"{self._widths[0]} categorical and {self._widths[1]} dense fields"
            )
        if categorical.size and (categorical.min() < 0 or categorical.max() > _MAX_BUCKET):
            raise ValueError("bucket ids must lie in [0, 2^31)")
        late_before = self.watermark - self.window_s
        pending: list[int] = []
        clicked: list[int] = []
        batch: set[str] = set()
        for row, (key, when) in enumerate(zip(ids, ts, strict=True)):
            if key in self._slots or key in self._done or key in batch:
                self.counts["duplicate_impressions"] += 1
            elif when <= late_before:
                self.counts["late_impressions"] += 1
            else:
                batch.add(key)
                click = self._orphans.pop(key, None)
                if click is not None and click <= when + self.window_s:
                    clicked.append(row)
                    self._remember(key, float(when), clicked=True)
                else:
                    if click is not None:
                        self.counts["late_clicks"] += 1
                    pending.append(row)
        if clicked:
            self._decide(categorical[clicked], dense[clicked], 1, "positives")
        self._insert([ids[row] for row in pending], np.asarray(ts, dtype=np.float64)[pending],
                     categorical[pending], dense[pending])  # fmt: skip
        if len(ids):
            self._impression_watermark = max(self._impression_watermark, float(np.max(ts)))
        self._advance()

    def add_clicks(self, impression_ids: Sequence[str], ts: Sequence[float]) -> None:
        """Clicks on impressions: each turns its pending impression into a positive."""
        rows: list[int] = []
        for key, when in zip(impression_ids, ts, strict=True):
            slot = self._slots.get(key)
            if slot is not None:
                shown = float(self._ts[slot])
                if when > shown + self.window_s:
                    self.counts["late_clicks"] += 1
                    continue
                rows.append(slot)
                self._release(key, slot)
                self._remember(key, shown, clicked=True)
            elif key in self._done:
                self.counts["duplicate_clicks" if key in self._done_clicked else "late_clicks"] += 1
            elif key in self._orphans:
                self.counts["duplicate_clicks"] += 1
            else:
                self._orphans[key] = float(when)
                self._orphan_order.append(key)
        if rows:
            self._decide(self._categorical[rows], self._dense[rows], 1, "positives")
        if len(impression_ids):
            self._click_watermark = max(self._click_watermark, float(np.max(ts)))
        self._advance()

    # -- output --------------------------------------------------------------------------------
    def take(self, size: int) -> list[Labelled]:
        """The decided rows in full batches of ``size``, oldest decision first; a remainder stays."""
        ready = sum(map(len, self._ready))
        if ready < size:
            return []
        rows = _concat(self._ready)
        full = ready - ready % size
        self._ready = [_slice(rows, full, ready)] if full < ready else []
        return [_slice(rows, start, start + size) for start in range(0, full, size)]

    @property
    def pending(self) -> int:
        """Impressions waiting for a click or for their window to close."""
        return len(self._slots)

    def gauges(self) -> dict[str, float]:
        """Counters and sizes for the worker's metrics (``join_<name>``)."""
        sizes = {"pending": self.pending, "orphan_clicks": len(self._orphans),
                 "remembered": len(self._done), "ready": sum(map(len, self._ready))}  # fmt: skip
        return {f"join_{name}": float(value) for name, value in {**self.counts, **sizes}.items()}

    # -- internals -----------------------------------------------------------------------------
    def _insert(self, ids: list[str], ts: np.ndarray, categorical: np.ndarray, dense: np.ndarray) -> None:
        if not ids:
            return
        slots = [self._free.pop() for _ in range(min(len(self._free), len(ids)))]
        if len(slots) < len(ids):
            start, extra = len(self._ids), len(ids) - len(slots)
            self._grow(start + extra)
            slots += range(start, start + extra)
        self._ts[slots] = ts
        self._seq[slots] = np.arange(self._next_seq, self._next_seq + len(ids))
        self._next_seq += len(ids)
        self._categorical[slots] = categorical
        self._dense[slots] = dense
        for key, slot in zip(ids, slots, strict=True):
            self._slots[key] = slot
            self._ids[slot] = key

    def _grow(self, needed: int) -> None:
        """Room for slots ``[0, needed)``: the columns double, so growing costs O(1) per slot."""
        used = len(self._ids)
        self._ids += [None] * (needed - used)
        capacity = len(self._ts)
        if needed <= capacity:
            return
        size = max(needed, 2 * capacity, 1024)
        self._ts = np.concatenate([self._ts, np.full(size - capacity, np.nan)])
        self._seq = np.concatenate([self._seq, np.zeros(size - capacity, dtype=np.int64)])
        self._categorical = np.concatenate(
            [self._categorical, np.zeros((size - capacity, self._widths[0]), dtype=np.int32)]
        )
        self._dense = np.concatenate(
            [self._dense, np.zeros((size - capacity, self._widths[1]), dtype=np.float32)]
        )

    def _release(self, key: str, slot: int) -> None:
        del self._slots[key]
        self._ids[slot] = None
        self._ts[slot] = np.nan
        self._free.append(slot)

    def _remember(self, key: str, shown: float, clicked: bool) -> None:
        self._done[key] = shown
        self._done_order.append(key)
        if clicked:
            self._done_clicked.add(key)

    def _decide(self, categorical: np.ndarray, dense: np.ndarray, label: int, counter: str) -> None:
        rows = len(categorical)
        self._ready.append(Labelled(categorical.copy(), dense.copy(), np.full(rows, label, dtype=np.uint8)))
        self.counts[counter] += rows

    def _advance(self) -> None:
        """Close the windows the watermark has passed, force the oldest out beyond ``max_pending``,
        and forget resolved ids and orphan clicks once they cannot matter (orphans beyond
        ``max_pending`` too: a click stream without impressions must not grow without bound)."""
        used = len(self._ids)
        due = np.flatnonzero(self._ts[:used] <= self.watermark - self.window_s)
        self._close(due, "negatives")
        excess = len(self._slots) - self.max_pending
        if excess > 0:
            live = np.flatnonzero(~np.isnan(self._ts[:used]))
            oldest = live[np.lexsort((self._seq[live], self._ts[live]))[:excess]]
            self._close(oldest, "forced_negatives")
        forget = self.watermark - 2 * self.window_s
        while self._done_order and self._done[self._done_order[0]] <= forget:
            key = self._done_order.popleft()
            del self._done[key]
            self._done_clicked.discard(key)
        orphans_end = self._impression_watermark - self.window_s
        while self._orphan_order and (
            self._orphans.get(self._orphan_order[0], -math.inf) <= orphans_end
            or len(self._orphans) > self.max_pending
        ):
            key = self._orphan_order.popleft()
            if self._orphans.pop(key, None) is not None:
                self.counts["unknown_clicks"] += 1

    def _close(self, slots: np.ndarray, counter: str) -> None:
        """Make the impressions in ``slots`` negatives, oldest (ts, then arrival) first."""
        if not len(slots):
            return
        slots = slots[np.lexsort((self._seq[slots], self._ts[slots]))]
        self._decide(self._categorical[slots], self._dense[slots], 0, counter)
        for slot in slots.tolist():
            key = self._ids[slot]
            assert key is not None
            self._remember(key, float(self._ts[slot]), clicked=False)
            self._release(key, slot)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the join holds, compacted to live rows in arrival order. Id lists are JSON
        text: the runner deep-copies every snapshot, and one string copies (and saves) at once
        where 10^5 string objects take a second."""
        live = np.flatnonzero(~np.isnan(self._ts[: len(self._ids)]))
        live = live[np.argsort(self._seq[live], kind="stable")]
        ready = _concat(self._ready) if self._ready else None
        return {
            "widths": list(self._widths),
            "ids": json.dumps([self._ids[slot] for slot in live.tolist()]),
            "ts": self._ts[live].copy(),
            "seq": self._seq[live].copy(),
            "categorical": self._categorical[live].copy(),
            "dense": self._dense[live].copy(),
            "next_seq": self._next_seq,
            "watermarks": [self._impression_watermark, self._click_watermark],
            "done": json.dumps(list(self._done_order)),
            "done_ts": np.array([self._done[key] for key in self._done_order]),
            "done_clicked": json.dumps(sorted(self._done_clicked)),
            "orphans": json.dumps([key for key in self._orphan_order if key in self._orphans]),
            "orphan_ts": np.array([self._orphans[k] for k in self._orphan_order if k in self._orphans]),
            "ready": None if ready is None else [ready.categorical, ready.dense, ready.labels],
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (the window is this instance's configured one)."""
        if tuple(state["widths"]) != self._widths:
            raise ValueError(f"join state of widths {state['widths']} cannot load into {list(self._widths)}")
        self._clear()
        ids, done, orphans = (json.loads(state[key]) for key in ("ids", "done", "orphans"))
        self._insert(ids, state["ts"], state["categorical"], state["dense"])
        self._seq[: len(ids)] = state["seq"]
        self._next_seq = int(state["next_seq"])
        self._impression_watermark, self._click_watermark = map(float, state["watermarks"])
        self._done = dict(zip(done, map(float, state["done_ts"]), strict=True))
        self._done_order = deque(done)
        self._done_clicked = set(json.loads(state["done_clicked"]))
        self._orphans = dict(zip(orphans, map(float, state["orphan_ts"]), strict=True))
        self._orphan_order = deque(orphans)
        if state["ready"] is not None:
            self._ready = [Labelled(*state["ready"])]
        self.counts = {**dict.fromkeys(COUNTS, 0), **state["counts"]}


def _concat(parts: list[Labelled]) -> Labelled:
    if len(parts) == 1:
        return parts[0]
    return Labelled(*(np.concatenate(columns) for columns in zip(
        *((p.categorical, p.dense, p.labels) for p in parts), strict=True)))  # fmt: skip


def _slice(rows: Labelled, start: int, stop: int) -> Labelled:
    return Labelled(rows.categorical[start:stop], rows.dense[start:stop], rows.labels[start:stop])
