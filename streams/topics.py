"""The service's Kafka topics: names, the record type each carries, and creating them.

Names are prefixed with ``DRIFTLINE_TOPIC_PREFIX`` (default ``driftline.``) so several deployments
or test runs can share one cluster.
"""

from __future__ import annotations

import contextlib
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


def ensure_topics(bootstrap: str, partitions: int | None = None, timeout_s: float = 30.0) -> list[str]:
    """Create any missing service topics on the cluster; return the names created.

    Clusters that do not auto-create topics need this; it is idempotent.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(topic_name(short), partitions or spec.partitions, 1)
            for short, spec in TOPICS.items()
            if topic_name(short) not in existing
        ]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()
