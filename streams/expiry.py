"""Keyed state expires: a key silent for ``ttl_s`` of event time is forgotten, so state stays bounded.

Event time (the records' ``ts``), not the wall clock, decides, so a replay after a crash evicts
exactly what the first pass evicted and the state comes out the same.
"""

from __future__ import annotations

from collections.abc import Mapping


def silent_keys(last_seen: Mapping[str, float], now: float, ttl_s: float | None) -> list[str]:
    """Keys whose last event is more than ``ttl_s`` before ``now`` (none when ``ttl_s`` is None)."""
    if ttl_s is None:
        return []
    return [key for key, seen in last_seen.items() if now - seen > ttl_s]


def check_ttl(ttl_s: float | None) -> float | None:
    """``ttl_s`` validated: None (keep forever) or a positive number of seconds."""
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds (or absent), got {ttl_s!r}")
    return float(ttl_s)
