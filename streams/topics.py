"""The service's Kafka topics: names, the record type each carries, and creating them.

Names are prefixed with ``DRIFTLINE_TOPIC_PREFIX`` (default ``driftline.``) so several deployments
or test runs can share one cluster.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from streams.schemas import (
    Click,
    DeadLetter,
    Forecast,
    Impression,
    Label,
    LabelingTask,
    ModelUpdate,
    Observation,
    Outcome,
    Query,
    Record,
    ServiceStatus,
    Tallied,
)
from streams.tokens import TokenRecord

#: Partitions of every keyed topic unless ``--partitions`` says otherwise. Sized for growth: keyed
#: state is partitioned like the topics, so the count can never change once topics exist (it would
#: remap keys), and 12 lets a deployment grow to 12 workers per service.
DEFAULT_PARTITIONS = 12


class TopicLayoutError(ValueError):
    """An existing topic's partition count differs from the one asked for."""


def topic_configs(spec: TopicSpec) -> dict[str, str]:
    """Broker settings a topic is created with: compaction, and unlimited retention where kept forever."""
    configs = {"cleanup.policy": "compact"} if spec.compacted else {}
    if spec.keep_forever:
        configs["retention.ms"] = "-1"
    return configs


@dataclass(frozen=True)
class TopicSpec:
    """A logical topic: short name, record type, whether it is compacted, fixed partition count."""

    short: str
    record_type: type[Record]
    compacted: bool = False
    #: Never delete by age (``retention.ms=-1``): a log that is the record of truth, like labels.
    keep_forever: bool = False
    #: None: the deployment's count (co-partitioned keyed topics); a number: always that many.
    partitions: int | None = None


TOPICS: dict[str, TopicSpec] = {
    spec.short: spec
    for spec in (
        TopicSpec("observations", Observation),
        TopicSpec("impressions", Impression),
        TopicSpec("clicks", Click),
        TopicSpec("queries", Query),
        TopicSpec("labels", Label, keep_forever=True),
        TopicSpec("labeling-queue", LabelingTask),
        TopicSpec("forecasts", Forecast),
        TopicSpec("tallies", Tallied),
        TopicSpec("control", Outcome),
        TopicSpec("dead-letter", DeadLetter, partitions=1),
        TopicSpec("status", ServiceStatus, compacted=True, partitions=1),
        TopicSpec("model-updates", ModelUpdate, compacted=True, partitions=1),
        TopicSpec("tokens", TokenRecord, compacted=True, partitions=1),
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


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, kafka-python) puts ``key`` on."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def partition_count(spec: TopicSpec, partitions: int | None) -> int:
    return spec.partitions or partitions or DEFAULT_PARTITIONS


def ensure_topics(bootstrap: str, partitions: int | None = None, timeout_s: float = 30.0) -> list[str]:
    """Create any missing service topics on the cluster; return the names created.

    Idempotent. With ``partitions`` given, an existing keyed topic with another count is refused
    with :class:`TopicLayoutError` (growing a topic remaps keys and breaks keyed state).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streams.kafka_security import connect

    if partitions is not None and partitions < 1:
        raise ValueError(f"--partitions must be at least 1, got {partitions}")
    admin = connect(KafkaAdminClient, bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        if partitions is not None:
            _check_counts(admin, existing, partitions)
        wanted = [
            NewTopic(
                topic_name(short),
                partition_count(spec, partitions),
                1,
                topic_configs=topic_configs(spec),
            )
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


def _check_counts(admin: object, existing: set[str], partitions: int) -> None:
    names = [topic_name(s) for s, spec in TOPICS.items() if spec.partitions is None]
    present = [n for n in names if n in existing]
    if not present:
        return
    described = admin.describe_topics(present)  # type: ignore[attr-defined]
    wrong = {d["name"]: len(d["partitions"]) for d in described if len(d["partitions"]) != partitions}
    if wrong:
        have = ", ".join(f"{name} has {count}" for name, count in sorted(wrong.items()))
        raise TopicLayoutError(
            f"cannot use {partitions} partitions: {have}. Changing a topic's partition count remaps "
            "keys and breaks keyed state; use a new DRIFTLINE_TOPIC_PREFIX (and replay) instead"
        )
