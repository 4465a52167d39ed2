"""The online click joiner on its own: windows in event time, duplicates, late clicks, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.ctr.click_join import ClickJoin, Labelled

WINDOW = 10.0


def features(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features that name their impression: bucket = its number, dense = its number / 2."""
    numbers = np.array([int(key.removeprefix("i")) for key in ids])
    return np.stack([numbers, numbers + 1], axis=1).astype(np.int32), (numbers / 2)[:, None]


def show(join: ClickJoin, ids: list[str], ts: list[float]) -> None:
    join.add_impressions(ids, ts, *features(ids))


def decided(join: ClickJoin) -> dict[str, int]:
    """Every decided row so far, by impression id (from its features), with its label."""
    batches = join.take(1)
    return {f"i{int(b.categorical[0, 0])}": int(b.labels[0]) for b in batches}


def test_an_unclicked_impression_becomes_a_negative_when_both_inputs_pass_its_window() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i1", "i2"], [100.0, 105.0])
    join.add_clicks(["i9"], [111.0])  # clicks have reached 111: i1's window (100..110) is closed
    assert decided(join) == {}, "the impression input is only at 105: i1 may still come late"
    show(join, ["i3"], [112.0])
    assert decided(join) == {"i1": 0}
    assert join.pending == 2 and join.counts["negatives"] == 1


def test_a_click_within_the_window_makes_a_positive_at_once() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i1", "i2"], [100.0, 101.0])
    join.add_clicks(["i2"], [110.5])
    assert decided(join) == {"i2": 1}
    show(join, ["i3"], [200.0])
    join.add_clicks(["i3"], [200.0])
    assert decided(join) == {"i1": 0, "i3": 1}
    assert join.counts["positives"] == 2 and join.pending == 0


def test_features_travel_with_the_label() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i4", "i6"], [0.0, 1.0])
    join.add_clicks(["i6"], [2.0])
    (batch,) = join.take(1)
    assert batch.categorical.tolist() == [[6, 7]] and batch.dense.tolist() == [[3.0]]


def test_duplicate_impression_ids_are_dropped_and_counted() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i1", "i1"], [0.0, 0.0])  # within one batch
    show(join, ["i1"], [1.0])  # while pending
    join.add_clicks(["i1"], [2.0])
    show(join, ["i1"], [3.0])  # after it was learned
    assert join.counts["duplicate_impressions"] == 3
    assert decided(join) == {"i1": 1} and join.pending == 0


def test_late_unknown_and_duplicate_clicks_are_counted_never_raised() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i1", "i2", "i3"], [0.0, 0.0, 0.0])
    join.add_clicks(["i1", "i1"], [5.0, 6.0])  # the second is a duplicate
    join.add_clicks(["i2"], [15.0])  # after i2's window, though i2 is still pending
    show(join, ["i4"], [20.0])  # both inputs past 10: i2 and i3 close as negatives
    join.add_clicks(["i3"], [21.0])  # for an impression already learned as a negative
    join.add_clicks(["i77"], [21.0])  # no such impression (yet)
    show(join, ["i5"], [40.0])  # impressions past 21 + window: i77 is not coming
    assert decided(join) == {"i1": 1, "i2": 0, "i3": 0}
    counts = join.counts
    assert (counts["duplicate_clicks"], counts["late_clicks"], counts["unknown_clicks"]) == (1, 2, 1)


def test_a_click_before_its_impression_waits_for_it() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    join.add_clicks(["i1"], [3.0])
    show(join, ["i1"], [1.0])
    assert decided(join) == {"i1": 1}


def test_an_impression_older_than_the_window_on_arrival_is_dropped_as_late() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, ["i1"], [100.0])
    join.add_clicks(["i9"], [100.0])
    show(join, ["i2"], [80.0])
    assert join.counts["late_impressions"] == 1 and join.pending == 1


def test_pending_is_bounded_when_no_click_ever_comes() -> None:
    join = ClickJoin(WINDOW, 2, 1, max_pending=3)
    show(join, [f"i{n}" for n in range(5)], [float(n) for n in range(5)])
    assert join.pending == 3 and join.counts["forced_negatives"] == 2
    assert decided(join) == {"i0": 0, "i1": 0}


def test_take_gives_full_batches_in_decision_order_and_keeps_the_rest() -> None:
    join = ClickJoin(WINDOW, 2, 1)
    show(join, [f"i{n}" for n in range(5)], [0.0] * 5)
    join.add_clicks(["i3", "i1"], [1.0, 2.0])
    show(join, ["i9"], [50.0])
    join.add_clicks(["i99"], [50.0])  # both inputs past the window: i0, i2 and i4 close
    batches = join.take(2)
    assert [b.categorical[:, 0].tolist() for b in batches] == [[3, 1], [0, 2]]
    assert [b.labels.tolist() for b in batches] == [[1, 1], [0, 0]]
    assert join.take(2) == [] and len(join.take(1)) == 1


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        ClickJoin(0.0, 2, 1)
    join = ClickJoin(WINDOW, 2, 1)
    with pytest.raises(ValueError, match="do not fit"):
        join.add_impressions(["i1"], [0.0], np.zeros((1, 3), np.int32), np.zeros((1, 1)))


def _round_trip(join: ClickJoin) -> ClickJoin:
    buffer = io.BytesIO()
    torch.save(join.state_dict(), buffer)  # as the checkpoint store writes it
    restored = ClickJoin(WINDOW, 2, 1)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    return restored


def _rest_of_stream(join: ClickJoin) -> list[Labelled]:
    join.add_clicks(["i2", "i30", "i5"], [14.0, 16.0, 17.0])
    show(join, ["i30", "i31", "i5"], [15.0, 16.0, 18.0])
    join.add_clicks(["i31", "i40"], [40.0, 60.0])
    show(join, ["i41"], [70.0])
    return join.take(1)


def test_a_checkpoint_mid_window_resumes_with_the_same_labels_and_no_repeats() -> None:
    def first_part() -> ClickJoin:
        join = ClickJoin(WINDOW, 2, 1)
        show(join, ["i1", "i2", "i3", "i4"], [5.0, 6.0, 7.0, 8.0])
        join.add_clicks(["i1", "i30"], [9.0, 12.0])  # i30's click comes before its impression
        show(join, ["i5", "i6"], [12.0, 13.0])
        return join

    straight = first_part()
    learned_before = straight.take(1)
    restored = _round_trip(straight)
    assert restored.pending == straight.pending == 5 and restored.counts == straight.counts
    expected, resumed = _rest_of_stream(straight), _rest_of_stream(restored)
    assert [b.labels.tolist() + b.categorical[0].tolist() for b in resumed] == [
        b.labels.tolist() + b.categorical[0].tolist() for b in expected
    ]
    ids = [int(b.categorical[0, 0]) for b in learned_before + resumed]
    assert len(ids) == len(set(ids)), "an impression was learned twice"
    labels = {f"i{int(b.categorical[0, 0])}": int(b.labels[0]) for b in learned_before + resumed}
    assert labels == {"i1": 1, "i2": 1, "i3": 0, "i4": 0, "i5": 1, "i6": 0, "i30": 1, "i31": 0}
    counts = restored.counts
    assert (counts["late_clicks"], counts["duplicate_clicks"], counts["unknown_clicks"]) == (1, 1, 1)
    assert counts["duplicate_impressions"] == 1 and counts == straight.counts
    assert restored.pending == straight.pending == 1, "i41's window is still open"
