"""The simulated stream of bench/lifecycle_replay (DemoSender, LiveStream): held back like the live
replay when ``max_ahead`` is given, on the simulated clock only (no model, no Kafka)."""

from __future__ import annotations

from bench.lifecycle_demo import Backpressure
from bench.lifecycle_replay import DEMO, DemoSender, LiveStream


def test_an_unheld_sender_sends_every_event_before_until_at_1000_per_second() -> None:
    sender = DemoSender(at=2.0, events=5_000, until=4.0, max_ahead=None)
    sender.send(until=100.0)
    assert [e[2] for e in sender.sent] == list(range(2_000))  # sent before ``until`` only
    assert (sender.sent[0][0], sender.sent[-1][0]) == (2.0, 2.0 + 1_999 / 1000)
    assert sender.next_at() is None


def test_a_held_sender_waits_for_the_worker_then_goes_on_one_poll_after_it() -> None:
    sender = DemoSender(at=0.0, events=5_000, until=100.0, max_ahead=1_000)
    sender.send(until=100.0)
    assert len(sender.sent) == 1_000  # four chunks of 250, then held
    assert sender.next_at() is None  # until a batch is done
    sender.applied(3.0, 200)  # not enough: the next chunk would be 1,050 ahead
    assert sender.next_at() is None
    sender.applied(4.0, 250)
    assert sender.next_at() == 4.0 + Backpressure.POLL_S
    sender.send(until=100.0)
    assert len(sender.sent) == 1_250
    assert sender.sent[1_000][0] == 4.0 + Backpressure.POLL_S


def behind(stream: LiveStream, until: float) -> int:
    """The most demo events sent but not yet applied when a batch was taken."""
    taken = list(stream.batches(until))
    sent_at = sorted(at for _, events in taken for at, source, _ in events if source == DEMO)
    most, applied = 0, 0
    for dispatch, events in taken:
        sent = sum(at <= dispatch for at in sent_at)
        most = max(most, sent - applied)
        applied += sum(source == DEMO for _, source, _ in events)
    return most


def test_a_busy_worker_falls_behind_an_unheld_replay_but_never_max_ahead_behind_a_held_one() -> None:
    options = {"seed": 3, "demo_at": 0.0, "demo_events": 20_000, "main_rate": 0.0, "busy": 3.0}
    assert behind(LiveStream(**options), until=30.0) > 5_000
    assert behind(LiveStream(**options, max_ahead=1_000), until=30.0) <= 1_000


def test_a_held_stream_still_delivers_every_event_once_in_order() -> None:
    stream = LiveStream(seed=1, demo_at=1.0, demo_events=3_000, main_rate=200.0, busy=2.0, max_ahead=1_000)
    events = [e for _, batch in stream.batches(until=40.0) for e in batch]
    assert [row for _, source, row in events if source == DEMO] == list(range(3_000))
    assert [at for at, _, _ in events] == sorted(at for at, _, _ in events)
