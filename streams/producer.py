"""Producing events with kafka-python: one record, a batch, or a file replayed at a rate.

Records are validated before they leave (``validate=False`` sends bytes as given, which is how
one tests the dead-letter path). Replay prints a progress bar and returns the achieved rate.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from streams.kafka_security import connect
from streams.schemas import Observation, Record, parse_record
from streams.topics import spec_for, topic_name


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer tuned for throughput with durability (acks=all, idempotent, batched, lz4-free),
    secured by the ``DRIFTLINE_KAFKA_*`` settings; a refused connection raises
    :class:`~streams.kafka_security.KafkaSecurityError` saying why."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
    }
    options.update(overrides)
    return connect(KafkaProducer, **options)


def encode(topic: str, value: Record | dict[str, Any] | bytes | str, validate: bool = True) -> bytes:
    """Bytes to put on ``topic``; validates dicts/strings against the topic's schema first."""
    if isinstance(value, Record):
        return value.to_bytes()
    if validate:
        return parse_record(value, spec_for(topic).record_type).to_bytes()
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode()


def key_of(record: Record) -> str | None:
    """The partitioning key of a record: its series, query, impression or task id."""
    for attr in ("series", "query_id", "id", "impression_id", "task_id"):
        value = getattr(record, attr, None)
        if isinstance(value, str):
            return value
    return None


#: A paced replay sends what is due in bursts at most this far apart: one produce request carries
#: rate x tick records, where pacing every record sent each alone (at 200/s and ``linger_ms`` 5,
#: a request per record cost the producer 0.30 and the broker 0.51 of a core; at 0.1 s, 0.05 and 0.08).
PACE_TICK_S = 0.1


def paced(records: Iterable[Record], rate: float) -> Iterator[Record]:
    """``records`` in order, each once it is due at ``rate`` per second (0: at once), counted from
    the first ``next``. It sleeps only once it is :data:`PACE_TICK_S` ahead of that schedule, so
    records leave in bursts that the producer batches; over any second the rate is the one asked for."""
    started = time.monotonic()
    for position, record in enumerate(records):
        if rate > 0:
            ahead = started + position / rate - time.monotonic()
            if ahead > PACE_TICK_S:
                time.sleep(ahead)
        yield record


@dataclass
class ReplayReport:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def send_all(
    producer: KafkaProducer,
    topic_short: str,
    records: Iterable[Record],
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Send records in order, paced to ``rate`` events/s (0 = as fast as possible), then flush.

    Pacing is :func:`paced`'s: records leave in bursts a tick apart.

    Raises :class:`DeliveryError` if the broker refused any record (after the others are sent):
    a replay never reports events as sent that Kafka does not hold.
    """
    from tqdm import tqdm

    topic = topic_name(topic_short)
    started = time.monotonic()
    sent = 0
    failures: list[BaseException] = []
    with tqdm(total=total, unit="ev", disable=not progress, desc=f"-> {topic}") as bar:
        for record in paced(records, rate):
            key = key_of(record)
            future = producer.send(topic, value=record.to_bytes(), key=key.encode() if key else None)
            future.add_errback(failures.append)
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        producer.flush()
        bar.update(sent % 1000)
    if failures:
        raise DeliveryError(
            f"{len(failures)} of {sent} records were not delivered to {topic}: {failures[0]!r}"
        )
    return ReplayReport(sent, time.monotonic() - started)


class DeliveryError(RuntimeError):
    """The broker did not take some records of a replay."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def observations_from_csv(
    path: Path, series: str, time_column: str | None = "date", header: bool = True, step_s: float = 3600.0
) -> Iterator[Observation]:
    """Rows of a CSV time series as observations of one series.

    With a header, ``time_column`` (if present) gives the event time and every other column is a
    channel; without one (or without that column) row ``i`` is at ``i * step_s``.
    """
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        columns = next(reader) if header else None
        time_at = columns.index(time_column) if columns and time_column in columns else None
        for i, row in enumerate(reader):
            if not row:
                continue
            ts = _timestamp(row[time_at]) if time_at is not None else i * step_s
            values = [float(v) for j, v in enumerate(row) if j != time_at]
            yield Observation(series=series, ts=ts, values=values)


def records_from_jsonl(path: Path, topic_short: str) -> Iterator[Record]:
    """Validated records from a JSON-lines file; raises on the first bad line with its number."""
    from streams.schemas import RecordError

    record_type = spec_for(topic_short).record_type
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield parse_record(line, record_type)
                except RecordError as exc:
                    raise RecordError(f"{path}:{number}: {exc}") from None


def count_lines(path: Path) -> int:
    with _open_text(path) as handle:
        return sum(1 for _ in handle)
