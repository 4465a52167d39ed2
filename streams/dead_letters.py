"""``driftline dead-letters replay``: send dead letters back to their source topics once fixed.

The worker dead-letters events it cannot use (``dead_letter/1``: source topic, partition, offset,
reason, raw payload). Once the cause is fixed, ``replay`` re-sends the chosen letters' payloads
with their original keys to their original partitions, so the worker applies them like new
events. A ledger on the ``control`` topic (``outcome/1`` records, service ``dead-letters``, kind
``replayed``, key ``<topic>:<partition>:<offset>`` of the original event) makes a second run skip
what a first run sent, from any machine. A replayed event that fails again is dead-lettered under
its new offset, hence a new key, and can be replayed again.

A run that dies between the broker's ack and the ledger record would leave sent events looking
unsent. So before each chunk a run announces it (kind ``sending``: the chunk's events and the
time), and every re-sent event carries a header naming the event it replays; the next run looks
for announced-but-unrecorded events in their source partitions from that time on, records the
ones it finds and sends only the rest. Two runs at the same moment are not coordinated.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streams.kafka_security import client_security
from streams.schemas import DeadLetter, Outcome, RecordError, parse_record
from streams.topics import topic_name

LEDGER_SERVICE = "dead-letters"
LEDGER_KIND = "replayed"
#: Ledger kind announcing a chunk about to be sent (see the module docstring).
INTENT_KIND = "sending"
#: Margin for clock skew when searching a source partition by time for an unrecorded send.
SKEW_MS = 60_000
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
    #: Outputs the broker refused (partition < 0): no source event to send again; fix and re-derive.
    outputs: list[Letter] = field(default_factory=list)

    def confirm(self, sent: dict[str, int]) -> list[tuple[Letter, int]]:
        """Move letters found already sent (source -> new offset) to skipped; return them with offsets."""
        confirmed = [(letter, sent[letter.source]) for letter in self.to_send if letter.source in sent]
        self.to_send = [letter for letter in self.to_send if letter.source not in sent]
        self.skipped += [letter for letter, _ in confirmed]
        return confirmed


@dataclass
class Ledger:
    """What the control topic says: events replayed, and events announced but never recorded."""

    replayed: set[str] = field(default_factory=set)
    #: source -> epoch ms of the earliest announcement, for events not (yet) recorded as replayed.
    in_doubt: dict[str, int] = field(default_factory=dict)


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


def read_ledger(values: Iterable[bytes | None]) -> Ledger:
    """The ledger from control-topic values; other services' records are ignored."""
    ledger = Ledger()
    announced: dict[str, int] = {}
    for value in values:
        try:
            record = parse_record(value or b"", Outcome)
        except RecordError:
            continue
        if not isinstance(record, Outcome) or record.service != LEDGER_SERVICE:
            continue
        if record.kind == LEDGER_KIND:
            ledger.replayed.add(record.key)
        elif record.kind == INTENT_KIND:
            since_ms = int(record.data.get("since_ms", 0))
            for source in record.data.get("sources", []):
                announced[source] = min(announced.get(source, since_ms), since_ms)
    ledger.in_doubt = {s: ms for s, ms in announced.items() if s not in ledger.replayed}
    return ledger


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
        if letter.record.partition < 0:
            plan.outputs.append(letter)
        else:
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


def intent_record(letters: list[Letter]) -> Outcome:
    """The control-topic record announcing that ``letters`` are about to be sent."""
    now = time.time()
    return Outcome(
        service=LEDGER_SERVICE,
        kind=INTENT_KIND,
        key=f"sending:{uuid.uuid4().hex}",
        seq=1,
        ts=now,
        data={"since_ms": int(now * 1000), "sources": [letter.source for letter in letters]},
    )


# -- Kafka ------------------------------------------------------------------------------------------
def read_until_end(
    consumer: KafkaConsumer, starts: dict[TopicPartition, int | None], timeout_s: float = 60.0
) -> Iterator[Any]:
    """Messages of partitions from a start offset (None: the beginning) up to their end offsets now."""
    if not starts:
        return
    partitions = list(starts)
    consumer.assign(partitions)
    ends = consumer.end_offsets(partitions)
    for tp, start in starts.items():
        if start is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
    pending = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise ReplayError(f"reading {sorted(str(tp) for tp in pending)} timed out after {timeout_s:.0f}s")
        for tp, messages in consumer.poll(timeout_ms=1000).items():
            yield from (m for m in messages if m.offset < ends[tp])
        pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}


def read_topic_to_end(consumer: KafkaConsumer, topic: str) -> Iterator[Any]:
    """Every message of ``topic`` up to its end offsets now; a missing topic reads as empty (not created)."""
    if topic in consumer.topics():
        partitions = consumer.partitions_for_topic(topic) or set()
        yield from read_until_end(consumer, {TopicPartition(topic, p): None for p in sorted(partitions)})


def find_unrecorded_sends(consumer: KafkaConsumer, in_doubt: dict[str, int]) -> dict[str, int]:
    """Where announced events landed that no ledger record names: source -> offset, if sent at all.

    Reads each source partition from the earliest announcement (less :data:`SKEW_MS`) for the
    :data:`REPLAY_HEADER` of a re-sent event.
    """
    starts_ms: dict[TopicPartition, int] = {}
    for source, since_ms in in_doubt.items():
        topic, partition, _ = source.rsplit(":", 2)
        tp = TopicPartition(topic, int(partition))
        starts_ms[tp] = min(starts_ms.get(tp, since_ms), since_ms)
    found = consumer.offsets_for_times({tp: max(ms - SKEW_MS, 0) for tp, ms in starts_ms.items()})
    starts = {tp: at.offset for tp, at in found.items() if at is not None}  # None: nothing written since
    sent: dict[str, int] = {}
    for message in read_until_end(consumer, starts):
        for name, value in message.headers or ():
            source = value.decode(errors="replace") if name == REPLAY_HEADER and value else None
            if source in in_doubt:
                sent.setdefault(source, message.offset)
    return sent


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


def record_replayed(producer: KafkaProducer, sent: list[tuple[Letter, int]]) -> None:
    """Write the ledger records of events the broker has taken (letter, new offset); wait for acks."""
    control = topic_name("control")
    futures = []
    for letter, offset in sent:
        value = ledger_record(letter, offset).to_bytes()
        futures.append((letter, producer.send(control, key=letter.source.encode(), value=value)))
    producer.flush()
    _, unrecorded = _resolve(futures)
    if unrecorded:
        raise ReplayError(
            f"{len(unrecorded)} event(s) were sent but not recorded as replayed; the next run looks for "
            f"them before sending: {'; '.join(unrecorded[:5])}"
        )


def _announce(producer: KafkaProducer, letters: list[Letter]) -> None:
    """Write the intent record of a chunk and wait for its ack; nothing is sent if it fails."""
    intent = intent_record(letters)
    future = producer.send(topic_name("control"), key=intent.key.encode(), value=intent.to_bytes())
    producer.flush()
    try:
        future.get(timeout=0)
    except KafkaError as exc:
        raise ReplayError(f"cannot write to the control topic, nothing more sent: {exc}") from None


def send_letters(
    producer: KafkaProducer, letters: list[Letter], progress: bool = True
) -> tuple[int, list[str]]:
    """Re-send letters and record each acknowledged one in the ledger; return (sent, errors).

    Per chunk: announce it, send the events and wait for the acks, then write the ledger records
    and wait for theirs, so the ledger never names an event the broker did not take.
    """
    from tqdm import tqdm

    sent = 0
    errors: list[str] = []
    with tqdm(total=len(letters), unit="ev", disable=not progress, desc="replay", file=sys.stderr) as bar:
        for start in range(0, len(letters), CHUNK):
            chunk = letters[start : start + CHUNK]
            _announce(producer, chunk)
            futures = [(letter, _send_event(producer, letter)) for letter in chunk]
            producer.flush()
            acked, failed = _resolve(futures)
            errors += failed
            record_replayed(producer, acked)
            sent += len(acked)
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

    bootstrap = settings_from(args).bootstrap
    try:
        return _replay(args, bootstrap)
    except KafkaError as exc:
        raise ReplayError(f"Kafka at {bootstrap} failed: {exc}") from None


def _replay(args: argparse.Namespace, bootstrap: str) -> int:
    from streams.producer import make_producer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_security()
    )
    try:
        letters, unreadable = letters_from(
            (m.key, m.value) for m in read_topic_to_end(consumer, topic_name("dead-letter"))
        )
        ledger = read_ledger(m.value for m in read_topic_to_end(consumer, topic_name("control")))
        plan = plan_replay(letters, ledger.replayed, args.since, args.reason)
        check_sources(consumer, plan.to_send)
        doubts = {x.source: ledger.in_doubt[x.source] for x in plan.to_send if x.source in ledger.in_doubt}
        confirmed = plan.confirm(find_unrecorded_sends(consumer, doubts) if doubts else {})
    finally:
        consumer.close()
    if unreadable:
        print(
            f"ignored {unreadable} record(s) on the dead-letter topic that are not dead_letter/1",
            file=sys.stderr,
        )
    skipped = f"skipped {len(plan.skipped)} (already replayed)"
    if plan.outputs:
        skipped += f", {len(plan.outputs)} refused output(s) not replayable (they were never consumed events)"
    if args.dry_run:
        for letter in plan.to_send:
            print(_describe(letter))
        print(f"matched {len(plan.matched)}, would send {len(plan.to_send)}, {skipped}")
        return 0
    producer = make_producer(bootstrap)
    try:
        record_replayed(producer, confirmed)  # sent by a run that died before recording them
        sent, errors = send_letters(producer, plan.to_send, progress=not args.quiet)
    finally:
        producer.close()
    print(
        f"matched {len(plan.matched)}, sent {sent}, {skipped}" + (f", failed {len(errors)}" if errors else "")
    )
    for error in errors[:10]:
        print(f"not sent: {error}", file=sys.stderr)
    return 1 if errors else 0
