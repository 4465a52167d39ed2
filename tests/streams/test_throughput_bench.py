"""bench/runner_throughput.py's drain times a real backlog from the moment the group works."""

from __future__ import annotations

from pathlib import Path

from bench.common import Worker, observations, produce
from bench.runner_throughput import drain
from streams.broker import EmbeddedBroker
from streams.topics import ensure_topics

EVENTS = 150_000


def test_the_drain_is_timed_from_the_first_applied_events_not_from_ready(
    kafka: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A worker is ready only once it has caught up with the backlog it found, so a clock started
    at ``/ready`` saw the whole backlog applied already (the bench failed with KeyError)."""
    ensure_topics(kafka.bootstrap, partitions=12)
    produce(kafka.bootstrap, "observations", observations(EVENTS), progress=False)
    store = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp_path / "store")}
    worker = Worker(
        kafka.bootstrap, tmp_path / "w", "tally", env=store, app_id=topic_prefix, prefix=topic_prefix
    )
    got = drain([worker], EVENTS)
    assert 0 < got["before"] < EVENTS
    assert got["seconds"] > 0 and got["rate"] > 0
    assert worker.process is not None and worker.process.poll() is not None  # stopped after
