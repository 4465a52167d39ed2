"""Small HTTP and Kafka helpers for integration tests."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer

from streams.client import get_json, post_json

__all__ = ["get_json", "get_text", "metric_value", "post_json", "read_topic", "try_get_json", "wait_until"]


def try_get_json(url: str) -> tuple[int, Any]:
    """``get_json``, with (0, {}) while the server is not listening yet (or no longer)."""
    try:
        return get_json(url)
    except (OSError, ValueError):
        return 0, {}


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 60.0,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate``; on time-out fail saying ``what`` (and ``explain()``: the state then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Consume ``expected`` JSON records from the start of ``topic`` (fewer if the timeout hits)."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=1000, group_id=None,
    )  # fmt: skip
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer:
                found.append(json.loads(message.value))
                if len(found) >= expected:
                    break
    finally:
        consumer.close()
    return found


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample, or None if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
