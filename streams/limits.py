"""Limits on what one HTTP request may cost: body size, JSON shape, write rate, time.

Every limit answers with a clear JSON error instead of a crash: a body past ``max_body_bytes`` is
413, JSON nested deeper than ``max_json_depth`` or holding more than ``max_json_items`` values is
400 (deep nesting would otherwise hit Python's recursion limit inside a handler), a token past its
write rate is 429 with ``Retry-After``.

The JSON limits are checked on the text, before decoding, wherever the text settles them: depth by
:func:`json_depth` (a vectorised scan, 0.06-0.13 ms for a 33 KB score request against 0.42-0.46 ms for
walking its ~1,900 decoded values), and the count because every value takes at least one byte of
its own. Only bodies the text does not settle (not UTF-8, or longer than ``max_json_items`` bytes)
are walked after decoding (:func:`check_shape`). UTF-8 text is decoded by orjson (0.34 ms for that
request against the standard library's 0.82, measured), other encodings by :mod:`json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import orjson

from streams.config import Settings


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each is the setting ``DRIFTLINE_HTTP_<NAME>`` (see :mod:`streams.config`)."""

    max_body_bytes: int
    max_json_depth: int
    max_json_items: int
    #: Writes (annotator and admin routes) per second per token, and the burst allowed above it.
    write_rate: float
    write_burst: int
    #: Reading the body and running the handler, each.
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **changes: Any) -> Limits:
        """The limits ``settings`` (default: the environment's) configure, with ``changes`` applied."""
        settings = settings or Settings.from_env()
        values = {f.name: getattr(settings, f"http_{f.name}") for f in fields(cls)}
        return cls(**{**values, **changes})


class BadJson(ValueError):
    """A body that is not JSON, or JSON past the limits; the message says which."""


def _reject_constant(name: str) -> Any:
    raise BadJson(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(raw: bytes, limits: Limits) -> Any:
    """Decode ``raw`` as strict JSON within ``limits``; raise :class:`BadJson` saying what is wrong."""
    encoding = json.detect_encoding(raw)
    settled_by_text = encoding.startswith("utf-8")
    if settled_by_text and json_depth(raw) > limits.max_json_depth:
        raise BadJson(_too_deep(limits))
    try:
        value = _loads(raw, encoding)
    except RecursionError:
        raise BadJson(_too_deep(limits)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJson(f"request body is not valid JSON: {exc}") from None
    if not settled_by_text or len(raw) > limits.max_json_items:
        check_shape(value, limits)
    return value


def _loads(raw: bytes, encoding: str) -> Any:
    """orjson for UTF-8; the standard library for other encodings and for any text orjson refuses,
    so the error says what is wrong (``NaN is not valid JSON``) and the texts accepted stay the same
    (orjson decodes an integer past 64 bits as a float)."""
    if encoding == "utf-8":
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(raw, parse_constant=_reject_constant)


def _too_deep(limits: Limits) -> str:
    return f"JSON nested too deeply (the limit is {limits.max_json_depth} levels)"


#: How each byte moves the nesting depth: openers +1, closers -1, anything else 0.
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
#: Every byte but quotes and brackets: deleted first, so the scan handles a few KB, not the body.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
#: A whole JSON string, escapes included.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_QUOTE = ord('"')


def json_depth(raw: bytes) -> int:
    """How deeply UTF-8 JSON text nests (``[[1]]`` is 2), without decoding it; brackets inside
    strings do not count.

    Without a backslash every quote opens or closes a string, so a bracket is inside a string
    exactly when an odd number of quotes precede it: numpy settles that for every byte at once.
    Text with backslashes (an escaped quote breaks that parity) has its strings cut out first.
    In any other encoding the bytes say nothing: decode and use :func:`check_shape`.
    """
    if b"\\" in raw:
        raw = _STRING.sub(b"", raw)
    skeleton = np.frombuffer(raw.translate(None, _NOT_STRUCTURE), np.uint8)
    outside = (np.cumsum(skeleton == _QUOTE) & 1) == 0
    return int(np.cumsum(_DEPTH_STEP[skeleton] * outside).max(initial=0))


def check_shape(value: Any, limits: Limits) -> None:
    """Raise :class:`BadJson` if ``value`` nests deeper or holds more values than ``limits`` allow.

    Iterative, so it cannot itself run out of stack.
    """
    items = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        items += 1
        if items > limits.max_json_items:
            raise BadJson(f"JSON holds more than {limits.max_json_items} values")
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limits.max_json_depth:
            raise BadJson(_too_deep(limits))
        stack.extend((child, depth + 1) for child in children)


class RateLimiter:
    """A token bucket per key (a token's name): ``rate`` per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if ``key`` may go on now (one unit taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            level, then = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - then) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                return (1.0 - level) / self.rate
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory: forgetting buckets only forgives callers
            self._buckets[key] = (level - 1.0, now)
            return 0.0


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
