"""``driftline dead-letters replay``: choosing letters, the ledger, and replay through a real worker."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime

import pytest

from streams.dead_letters import (
    INTENT_KIND,
    LEDGER_KIND,
    LEDGER_SERVICE,
    Letter,
    intent_record,
    ledger_record,
    letters_from,
    matches,
    parse_since,
    plan_replay,
    read_ledger,
)
from streams.schemas import DeadLetter, Observation, Outcome

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp()


POISONED = "processing failed: RuntimeError: poisoned series 'bad'"


def letter(
    offset: int,
    reason: str = POISONED,
    ts: float = T0,
    topic: str = "driftline.observations",
    partition: int = 3,
) -> Letter:
    record = DeadLetter(
        topic=topic, partition=partition, offset=offset, reason=reason, payload='{"x": 1}', ts=ts
    )
    return Letter(b"bad", record)


# -- unit: filters and parsing ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["2026-11-25T10:00:00Z", "2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00", "2026-11-25 10:00", str(T0)],
)
def test_since_takes_iso_times_and_epoch_seconds_naive_meaning_utc(text):
    assert parse_since(text) == T0


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01", "10:00:00Z"])
def test_since_refuses_what_is_no_time(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--since expects an ISO-8601 time"):
        parse_since(text)


def test_bad_since_on_the_command_line_is_a_usage_error_not_a_traceback(capsys):
    from streams.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["dead-letters", "replay", "--since", "last tuesday"])
    assert exit_.value.code == 2
    assert "--since expects an ISO-8601 time" in capsys.readouterr().err


def test_matches_since_inclusive_and_reason_any_case_substring():
    record = letter(1, reason="processing failed: RuntimeError: Poisoned series 'bad'").record
    assert matches(record)
    assert matches(record, since=T0) and not matches(record, since=T0 + 0.001)
    assert matches(record, reason="poisoned") and matches(record, reason="RUNTIMEERROR: POISONED")
    assert not matches(record, reason="not valid JSON")
    assert not matches(record, since=T0 - 1, reason="finite")


def test_plan_takes_each_original_event_once_and_skips_replayed_ones():
    letters = [
        letter(1),
        letter(2, reason="not valid JSON"),
        letter(1),  # the same dead letter twice: the worker's outputs are at least once
        letter(3, ts=T0 - 60),
        letter(4),
        letter(1, topic="driftline.impressions"),  # same offset, another topic: another event
    ]
    plan = plan_replay(letters, replayed={"driftline.observations:3:4"}, since=T0, reason="POISONED")
    assert [x.source for x in plan.matched] == [
        "driftline.observations:3:1", "driftline.observations:3:4", "driftline.impressions:3:1",
    ]  # fmt: skip
    assert [x.source for x in plan.to_send] == ["driftline.observations:3:1", "driftline.impressions:3:1"]
    assert [x.source for x in plan.skipped] == ["driftline.observations:3:4"]


def test_refused_outputs_are_matched_but_never_sent_back():
    refused = letter(-1, reason="output refused by the broker: MessageSizeTooLargeError", partition=-1)
    plan = plan_replay([letter(1), refused], replayed=set())
    assert [x.source for x in plan.to_send] == ["driftline.observations:3:1"]  # no source event to resend
    assert plan.outputs == [refused] and plan.matched == [letter(1), refused]


def test_letters_keep_their_key_and_unreadable_records_are_counted():
    good = letter(7)
    wrong_schema = b'{"schema": "observation/1"}'
    letters, unreadable = letters_from(
        [(b"k", good.record.to_bytes()), (None, b"{not json"), (b"k", wrong_schema), (b"k", None)]
    )
    assert letters == [Letter(b"k", good.record)]
    assert unreadable == 3


def test_the_ledger_knows_only_its_own_replayed_records():
    done = ledger_record(letter(5), new_offset=912)
    assert (done.service, done.kind, done.key, done.seq, done.data) == (
        LEDGER_SERVICE, LEDGER_KIND, "driftline.observations:3:5", 1, {"offset": 912},
    )  # fmt: skip
    others = [
        Outcome(service="rank", kind="replayed", key="driftline.observations:3:6", seq=1, ts=T0),
        Outcome(service=LEDGER_SERVICE, kind="other", key="driftline.observations:3:7", seq=1, ts=T0),
    ]
    values = [done.to_bytes(), b"garbage", None, *(o.to_bytes() for o in others)]
    assert read_ledger(values).replayed == {"driftline.observations:3:5"}
    assert read_ledger(values).in_doubt == {}


def test_announced_events_without_a_ledger_record_are_in_doubt_from_their_earliest_announcement():
    first = intent_record([letter(1), letter(2)])
    again = intent_record([letter(2), letter(3)])  # a later run announced 2 again
    assert first.kind == INTENT_KIND and first.key != again.key, "each announcement has its own key"
    assert first.data["sources"] == ["driftline.observations:3:1", "driftline.observations:3:2"]
    assert abs(first.data["since_ms"] / 1000 - first.ts) < 0.001
    recorded = ledger_record(letter(1), new_offset=40)
    ledger = read_ledger([first.to_bytes(), again.to_bytes(), recorded.to_bytes()])
    assert ledger.replayed == {"driftline.observations:3:1"}
    assert ledger.in_doubt == {
        "driftline.observations:3:2": first.data["since_ms"],
        "driftline.observations:3:3": again.data["since_ms"],
    }


def test_confirmed_sends_move_from_to_send_to_skipped():
    plan = plan_replay([letter(1), letter(2), letter(3)], replayed={"driftline.observations:3:3"})
    confirmed = plan.confirm({"driftline.observations:3:2": 77, "driftline.observations:3:9": 78})
    assert [(x.source, offset) for x, offset in confirmed] == [("driftline.observations:3:2", 77)]
    assert [x.source for x in plan.to_send] == ["driftline.observations:3:1"]
    assert sorted(x.source for x in plan.skipped) == [
        "driftline.observations:3:2",
        "driftline.observations:3:3",
    ]
    assert len(plan.matched) == 3


# -- Kafka: poisoned events through a real worker, replayed after the fix ----------------------------
def produced_events(n: int, seed: int) -> list[Observation]:
    """Synthetic observations over five series, one of them the poisoned "bad"."""
    rng = random.Random(seed)
    names = ["s0", "s1", "bad", "s2", "s3"]
    return [
        Observation(series=names[i % len(names)], ts=float(i), values=[round(rng.uniform(-5, 5), 3)])
        for i in range(n)
    ]


@pytest.fixture
def probe(kafka):
    """A plain consumer for end offsets: how many records a topic holds, read without a group."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    yield consumer
    consumer.close()


@pytest.mark.kafka
def test_replay_applies_every_dead_lettered_event_once_however_often_it_runs(
    kafka, worker_factory, topic_prefix, monkeypatch, capsys, probe
):
    from kafka import TopicPartition

    from streams import dead_letters
    from streams.cli import main
    from streams.tally import expected_counts
    from streams.topics import topic_name
    from tests.streams.helpers import get_json, get_text, metric_value, read_topic, wait_until
    from tests.streams.test_pipeline import assert_tally, produce

    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", kafka.bootstrap)
    events = produced_events(400, seed=8)
    n_bad = sum(e.series == "bad" for e in events)

    def applied(worker) -> int:
        return get_json(f"{worker.base}/tally")[1]["events"]

    def handled(worker) -> float:
        """Events the worker has finished with: applied or dead-lettered (its own counters)."""
        text = get_text(f"{worker.base}/metrics")
        names = ("driftline_events_total", "driftline_dead_letters_total")
        return sum(metric_value(text, name, service="tally") or 0 for name in names)

    def held(short: str) -> int:
        """Records on a topic (none of these topics is compacted or transactional)."""
        topic = topic_name(short)
        return sum(
            probe.end_offsets([TopicPartition(topic, p) for p in probe.partitions_for_topic(topic)]).values()
        )

    def read_all(short: str) -> list[dict]:
        expected = held(short)
        found = read_topic(kafka.bootstrap, topic_name(short), expected)
        assert len(found) == expected
        return found

    def replay(*extra: str) -> str:
        capsys.readouterr()
        assert main(["dead-letters", "replay", "--reason", "poisoned", "--quiet", *extra]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    poisoned = worker_factory("tally", ['tally.poison=["bad"]']).start()
    produce(kafka, events)
    # Today a model exception dead-letters the whole batch; after the runner rewrite only "bad" ones.
    wait_until(lambda: handled(poisoned) == len(events), timeout_s=90, what="every event handled")
    first = read_all("dead-letter")
    assert applied(poisoned) + len(first) == len(events), "a failed batch left part of its effect in state"
    assert len(first) >= n_bad and all("poisoned" in x["reason"] for x in first)
    assert sum('"bad"' in x["payload"] for x in first) == n_bad

    # Replayed before the fix: they fail again, dead-lettered under their new offsets.
    assert (
        replay("--dry-run") == f"matched {len(first)}, would send {len(first)}, skipped 0 (already replayed)"
    )
    assert replay() == f"matched {len(first)}, sent {len(first)}, skipped 0 (already replayed)"
    wait_until(lambda: handled(poisoned) == len(events) + len(first), timeout_s=90, what="replays handled")
    second = read_all("dead-letter")[len(first) :]
    assert applied(poisoned) + len(second) == len(events)
    assert sum('"bad"' in x["payload"] for x in second) == n_bad
    assert {x["payload"] for x in second} <= {x["payload"] for x in first}
    assert {(x["topic"], x["partition"], x["offset"]) for x in second}.isdisjoint(
        (x["topic"], x["partition"], x["offset"]) for x in first
    )
    poisoned.stop()

    fixed = worker_factory("tally").start()
    total = len(first) + len(second)

    # This run dies after the broker took the events and before their ledger records: the next
    # run must find them sent (announcement + replay header) and not send them again.
    class Crash(Exception):
        pass

    def crash(*_: object) -> None:
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(dead_letters, "ledger_record", crash)
        with pytest.raises(Crash):
            main(["dead-letters", "replay", "--reason", "poisoned", "--quiet"])
    wait_until(lambda: applied(fixed) == len(events), timeout_s=90, what="replayed events applied")
    assert replay("--dry-run") == f"matched {total}, would send 0, skipped {total} (already replayed)"
    assert replay() == f"matched {total}, sent 0, skipped {total} (already replayed)"
    assert_tally(fixed, expected_counts(events))

    # A second run sends nothing: the source topic does not grow and the tallies stay exact.
    before = held("observations")
    assert replay() == f"matched {total}, sent 0, skipped {total} (already replayed)"
    assert held("observations") == before
    assert applied(fixed) == len(events)
    assert_tally(fixed, expected_counts(events))
    ledger = read_all("control")
    assert sorted(x["key"] for x in ledger if x["kind"] == LEDGER_KIND) == sorted(
        f"{x['topic']}:{x['partition']}:{x['offset']}" for x in first + second
    )
