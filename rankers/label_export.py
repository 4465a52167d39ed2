"""``driftline labels export --out FILE``: every accepted label as JSON lines.

Read from the ``labels`` topic, not from the rank service's state. A label is accepted when the
service answers 202 to its submission, and it answers only once the broker holds the label (see
:mod:`rankers.service`), so the topic has every accepted label, in the form it was accepted: task,
query, grades, the annotator named by the token, the time, and the model version serving then. The
service's state has none of that once a label is learned: the ranker keeps the newest
``max_labeled_queries`` queries' grades without their annotators, and the queue only a capped set
of done task ids.

Each line is one message of the topic, in topic order per partition, partitions in turn; a label the
rank service refused afterwards (a duplicate for its task, a retrain that failed, a task it never
made) carries that refusal, read from the dead-letter topic by the label's partition and offset.
The topic keeps what the broker's retention keeps: a partition whose log no longer starts at offset
0 lost its oldest labels, and the command says so on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from streams.schemas import DeadLetter, Label, RecordError, parse_record
from streams.topics import topic_name


class Message(Protocol):
    """What a Kafka consumer record offers that the export reads."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class Export:
    """The rows to write and what was left out, for the summary."""

    rows: list[dict[str, Any]]
    unreadable: int = 0

    @property
    def refused(self) -> int:
        return sum(row["refused"] is not None for row in self.rows)


def refusals(letters: Iterable[Message], labels_topic: str) -> dict[tuple[int, int], str]:
    """``(partition, offset) -> reason`` of the labels events that the dead-letter topic names."""
    found: dict[tuple[int, int], str] = {}
    for message in letters:
        try:
            letter = parse_record(message.value or b"", DeadLetter)
        except RecordError:
            continue
        assert isinstance(letter, DeadLetter)
        if letter.topic == labels_topic and letter.partition >= 0:
            found[(letter.partition, letter.offset)] = letter.reason
    return found


def export_rows(labels: Iterable[Message], refused: dict[tuple[int, int], str]) -> Export:
    """One row per label message; messages that are not labels are counted, not exported."""
    export = Export([])
    for message in labels:
        try:
            label = parse_record(message.value or b"", Label)
        except RecordError:
            export.unreadable += 1
            continue
        assert isinstance(label, Label)
        export.rows.append(
            {
                "task_id": label.task_id,
                "query_id": label.query_id,
                "annotator": label.annotator,
                "ts": label.ts,
                "time": datetime.fromtimestamp(label.ts, UTC).isoformat(),
                "model_version": label.model_version,
                "grades": dict(label.grades),
                "partition": message.partition,
                "offset": message.offset,
                "refused": refused.get((message.partition, message.offset)),
            }
        )
    return export


def write_jsonl(rows: Iterable[dict[str, Any]], out: Path) -> None:
    """All lines or nothing: written beside ``out`` and renamed into place; ValueError (a one-line
    error on the command line) when it cannot be written."""
    partial = out.with_name(f".{out.name}.part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _read(bootstrap: str) -> tuple[Export, list[str]]:
    """The export, and a warning per labels partition whose oldest messages retention deleted."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.dead_letters import read_topic_to_end
    from streams.kafka_security import client_security

    labels = topic_name("labels")
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_security()
    )
    try:
        refused = refusals(read_topic_to_end(consumer, topic_name("dead-letter")), labels)
        partitions = [TopicPartition(labels, p) for p in sorted(consumer.partitions_for_topic(labels) or ())]
        starts = consumer.beginning_offsets(partitions) if partitions else {}
        export = export_rows(read_topic_to_end(consumer, labels), refused)
    finally:
        consumer.close()
    warnings = [
        f"partition {tp.partition} of {labels} starts at offset {start}: retention deleted older labels"
        for tp, start in sorted(starts.items(), key=lambda item: item[0].partition)
        if start > 0
    ]
    return export, warnings


def cmd_export(args: argparse.Namespace) -> int:
    from streams.cli import settings_from

    export, warnings = _read(settings_from(args).bootstrap)
    write_jsonl(export.rows, args.out)
    for warning in warnings:
        print(f"driftline: warning: {warning}", file=sys.stderr)
    skipped = f"; {export.unreadable} message(s) on the topic were not labels" if export.unreadable else ""
    counts = f"{len(export.rows)} label(s) ({export.refused} refused by the rank service)"
    print(f"exported {counts} to {args.out}{skipped}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``labels`` command group to the ``driftline`` parser."""
    group = subparsers.add_parser("labels", help="labels: export every accepted label")
    commands = group.add_subparsers(dest="labels_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "export", help="every accepted label with annotator, task, time and model version, as JSON lines"
    )
    p.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write")
    p.set_defaults(func=cmd_export)
