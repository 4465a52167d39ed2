"""``driftline dead-letters replay``: send dead letters back to their source topics once fixed.

The worker dead-letters events it cannot use (``dead_letter/1``: source topic, partition, offset,
reason, raw payload). Once the cause is fixed, ``replay`` re-sends the chosen letters' payloads
with their original keys to their original partitions, so the worker applies them like new
events. A ledger on the ``control`` topic (``outcome/1`` records, service ``dead-letters``, kind
``replayed``, key ``<topic>:<partition>:<offset>`` of the original event) makes a second run skip
what a first run sent, from any machine. A replayed event that fails again is dead-lettered under
its new offset, hence a new key, and can be replayed again.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streams.schemas import DeadLetter, Outcome, RecordError, parse_record
from streams.topics import topic_name

LEDGER_SERVICE = "dead-letters"
LEDGER_KIND = "replayed"
#: Header on every re-sent event naming the event it replays, so its origin stays traceable.
REPLAY_HEADER = "driftline-replay-of"
#: Events sent before their ledger records are written; bounds the work a crash leaves unrecorded.
CHUNK = 500


class ReplayError(ValueError):
    """A replay that cannot go ahead or did not finish, with what to do about it."""


@dataclass(frozen=True)
class Letter:
    """A dead letter with the Kafka key it was written under (the source event's key)."""

    key: bytes | None
    record: DeadLetter

    @property
    def source(self) -> str:
        """``<topic>:<partition>:<offset>`` of the original event: the ledger key."""
        return f"{self.record.topic}:{self.record.partition}:{self.record.offset}"


@dataclass
class Plan:
    """Which letters a run selects: all that match, split into those to send and those done."""

    matched: list[Letter] = field(default_factory=list)
    to_send: list[Letter] = field(default_factory=list)
    skipped: list[Letter] = field(default_factory=list)


# -- choosing letters (pure) ------------------------------------------------------------------------
def parse_since(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO-8601 time (a time without zone is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since expects an ISO-8601 time (2026-11-25T10:00:00Z) or epoch seconds, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def matches(letter: DeadLetter, since: float | None = None, reason: str | None = None) -> bool:
    """Whether a letter was written at or after ``since`` and its reason contains ``reason`` (any case)."""
    if since is not None and letter.ts < since:
        return False
    return reason is None or reason.casefold() in letter.reason.casefold()


def letters_from(messages: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[list[Letter], int]:
    """Letters from dead-letter topic ``(key, value)`` pairs, and how many were not ``dead_letter/1``."""
    letters: list[Letter] = []
    unreadable = 0
    for key, value in messages:
        try:
            record = parse_record(value or b"", DeadLetter)
        except RecordError:
            unreadable += 1
            continue
        assert isinstance(record, DeadLetter)
        letters.append(Letter(key, record))
    return letters, unreadable


def replayed_sources(values: Iterable[bytes | None]) -> set[str]:
    """The ledger keys among control-topic values: original events already replayed."""
    done: set[str] = set()
    for value in values:
        try:
            record = parse_record(value or b"", Outcome)
        except RecordError:
            continue  # other services' control records are no business of the ledger
        if isinstance(record, Outcome) and record.service == LEDGER_SERVICE and record.kind == LEDGER_KIND:
            done.add(record.key)
    return done


def plan_replay(
    letters: Iterable[Letter], replayed: set[str], since: float | None = None, reason: str | None = None
) -> Plan:
    """Select matching letters, once per original event (letters are at least once), minus replayed ones."""
    plan = Plan()
    seen: set[str] = set()
    for letter in letters:
        if letter.source in seen or not matches(letter.record, since, reason):
            continue
        seen.add(letter.source)
        plan.matched.append(letter)
        (plan.skipped if letter.source in replayed else plan.to_send).append(letter)
    return plan


def ledger_record(letter: Letter, new_offset: int) -> Outcome:
    """The control-topic record saying ``letter``'s event was sent again, at ``new_offset``."""
    return Outcome(
        service=LEDGER_SERVICE,
        kind=LEDGER_KIND,
        key=letter.source,
        seq=1,
        ts=time.time(),
        data={"offset": new_offset},
    )


# -- Kafka ------------------------------------------------------------------------------------------
def read_to_end(consumer: KafkaConsumer, topic: str, timeout_s: float = 60.0) -> Iterator[Any]:
    """Every message of ``topic`` from its beginning up to the end offsets it had when called.

    A missing topic reads as empty (never auto-created by asking for it).
    """
    if topic not in consumer.topics():
        return
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    ends = consumer.end_offsets(partitions)
    consumer.seek_to_beginning(*partitions)
    pending = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise ReplayError(f"reading {topic} timed out after {timeout_s:.0f}s; is the cluster reachable?")
        for tp, messages in consumer.poll(timeout_ms=1000).items():
            yield from (m for m in messages if m.offset < ends[tp])
        pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}


def check_sources(consumer: KafkaConsumer, letters: list[Letter]) -> None:
    """Refuse, before sending anything, letters whose source topic or partition no longer exists."""
    topics = consumer.topics()
    missing: dict[str, int] = {}
    for letter in letters:
        topic, partition = letter.record.topic, letter.record.partition
        if topic not in topics or partition not in (consumer.partitions_for_topic(topic) or ()):
            where = f"{topic} partition {partition}"
            missing[where] = missing.get(where, 0) + 1
    if missing:
        listed = ", ".join(f"{where} ({count} letters)" for where, count in sorted(missing.items()))
        raise ReplayError(f"source topics missing, nothing sent: {listed}; narrow with --since/--reason")


def _resolve(futures: list[tuple[Letter, Any]]) -> tuple[list[tuple[Letter, int]], list[str]]:
    """``(letter, offset)`` of acknowledged sends and the error text of failed ones (after a flush)."""
    done: list[tuple[Letter, int]] = []
    errors: list[str] = []
    for letter, future in futures:
        try:
            done.append((letter, future.get(timeout=0).offset))
        except KafkaError as exc:
            errors.append(f"{letter.source}: {type(exc).__name__}: {exc}")
    return done, errors


def _send_event(producer: KafkaProducer, letter: Letter) -> Any:
    """Send ``letter``'s payload with its key to its source partition; the future of the send."""
    record = letter.record
    headers = [(REPLAY_HEADER, letter.source.encode())]
    return producer.send(
        record.topic,
        value=record.payload.encode(),
        key=letter.key,
        partition=record.partition,
        headers=headers,
    )


def _send_ledger(producer: KafkaProducer, control: str, letter: Letter, offset: int) -> Any:
    """Send the ledger record of ``letter``'s event, re-sent at ``offset``; the future of the send."""
    return producer.send(control, key=letter.source.encode(), value=ledger_record(letter, offset).to_bytes())


def send_letters(
    producer: KafkaProducer, letters: list[Letter], progress: bool = True
) -> tuple[int, list[str]]:
    """Re-send letters and record each acknowledged one in the ledger; return (sent, errors).

    Per chunk: send the events and wait for the acks, then write the ledger records and wait for
    theirs, so the ledger never names an event the broker did not take.
    """
    from tqdm import tqdm

    control = topic_name("control")
    sent = 0
    errors: list[str] = []
    with tqdm(total=len(letters), unit="ev", disable=not progress, desc="replay", file=sys.stderr) as bar:
        for start in range(0, len(letters), CHUNK):
            chunk = letters[start : start + CHUNK]
            futures = [(letter, _send_event(producer, letter)) for letter in chunk]
            producer.flush()
            acked, failed = _resolve(futures)
            errors += failed
            ledger = [(letter, _send_ledger(producer, control, letter, offset)) for letter, offset in acked]
            producer.flush()
            recorded, unrecorded = _resolve(ledger)
            if unrecorded:
                raise ReplayError(
                    f"{len(unrecorded)} event(s) were sent but not recorded as replayed (a rerun would send "
                    f"them again): {'; '.join(unrecorded[:5])}"
                )
            sent += len(recorded)
            bar.update(len(chunk))
    return sent, errors


# -- CLI --------------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add the ``dead-letters`` command group to the ``driftline`` parser."""
    group = subparsers.add_parser(
        "dead-letters", help="dead letters: send them back to their topics once fixed"
    )
    commands = group.add_subparsers(dest="dead_letters_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "replay",
        help="re-send dead letters to their source topics (each original event once, whatever the reruns)",
    )
    p.add_argument(
        "--since", type=parse_since, help="only letters written at or after this time (ISO-8601 or epoch s)"
    )
    p.add_argument("--reason", help="only letters whose reason contains this text (any case)")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent, send nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)


def _describe(letter: Letter) -> str:
    when = datetime.fromtimestamp(letter.record.ts, UTC).isoformat(timespec="seconds")
    return f"{letter.source}  {when}  {letter.record.reason[:120]}"


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.cli import settings_from
    from streams.producer import make_producer

    bootstrap = settings_from(args).bootstrap
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        letters, unreadable = letters_from(
            (m.key, m.value) for m in read_to_end(consumer, topic_name("dead-letter"))
        )
        replayed = replayed_sources(m.value for m in read_to_end(consumer, topic_name("control")))
        plan = plan_replay(letters, replayed, args.since, args.reason)
        check_sources(consumer, plan.to_send)
    finally:
        consumer.close()
    if unreadable:
        print(
            f"ignored {unreadable} record(s) on the dead-letter topic that are not dead_letter/1",
            file=sys.stderr,
        )
    skipped = f"skipped {len(plan.skipped)} (already replayed)"
    if args.dry_run:
        for letter in plan.to_send:
            print(_describe(letter))
        print(f"matched {len(plan.matched)}, would send {len(plan.to_send)}, {skipped}")
        return 0
    producer = make_producer(bootstrap)
    try:
        sent, errors = send_letters(producer, plan.to_send, progress=not args.quiet)
    finally:
        producer.close()
    print(
        f"matched {len(plan.matched)}, sent {sent}, {skipped}" + (f", failed {len(errors)}" if errors else "")
    )
    for error in errors[:10]:
        print(f"not sent: {error}", file=sys.stderr)
    return 1 if errors else 0
