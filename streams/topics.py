"""The service's Kafka topics: names, the record type each carries, and creating them.

Names are prefixed with ``DRIFTLINE_TOPIC_PREFIX`` (default ``driftline.``) so several deployments
or test runs can share one cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from streams.schemas import (
    DeadLetter,
    Forecast,
    Impression,
    Label,
    LabelingTask,
    Observation,
    Query,
    Record,
)


@dataclass(frozen=True)
class TopicSpec:
    """A logical topic: short name, record type and partition count."""

    short: str
    record_type: type[Record]
    partitions: int = 4


TOPICS: dict[str, TopicSpec] = {
    spec.short: spec
    for spec in (
        TopicSpec("observations", Observation),
        TopicSpec("impressions", Impression),
        TopicSpec("queries", Query),
        TopicSpec("labels", Label),
        TopicSpec("labeling-queue", LabelingTask),
        TopicSpec("forecasts", Forecast),
        TopicSpec("dead-letter", DeadLetter, partitions=1),
    )
}


def prefix() -> str:
    return os.environ.get("DRIFTLINE_TOPIC_PREFIX", "driftline.")


def topic_name(short: str) -> str:
    """Full Kafka topic name for a logical topic (``observations`` -> ``driftline.observations``)."""
    if short not in TOPICS:
        raise KeyError(f"unknown topic {short!r}; known: {', '.join(TOPICS)}")
    return prefix() + short


def spec_for(name: str) -> TopicSpec:
    """The spec of a topic given its short or full name."""
    short = name.removeprefix(prefix())
    if short not in TOPICS:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(TOPICS)}")
    return TOPICS[short]
