"""The shared probation rule: rollback on a bad update, hold on a changed world, trust at the end."""

from __future__ import annotations

import pytest

from streams.probation import Probation, RollbackRule, Verdict

RULE = RollbackRule(margin=0.05, samples=100, length=1_000)


def probation(baseline: float | None = 1.0) -> Probation:
    return Probation(version=2, predecessor=1, since=0.0, baseline=baseline)


def test_a_worse_version_rolls_back_only_once_the_window_is_full() -> None:
    p = probation()
    p.add(50, 1.2, 1.0, RULE)
    assert p.verdict(RULE) is Verdict.WATCH, "50 samples: the window is not full"
    p.add(50, 1.2, 1.0, RULE)
    assert p.verdict(RULE) is Verdict.ROLL_BACK


def test_within_the_margin_is_no_rollback_and_the_version_is_trusted_at_the_end() -> None:
    p = probation()
    for _ in range(9):
        p.add(100, 1.04, 1.0, RULE)
        assert p.verdict(RULE) is Verdict.WATCH
    p.add(100, 1.04, 1.0, RULE)
    assert p.verdict(RULE) is Verdict.TRUSTED
    assert sum(n for n, _, _ in p.window) <= 2 * RULE.samples, "the window slides"


def test_an_alarm_holds_while_the_predecessor_does_worse_too_and_resumes_after() -> None:
    p = probation(baseline=1.0)
    p.add(100, 3.0, 2.0, RULE)  # the world changed: both do worse than the predecessor's baseline
    assert p.hear_alarm(RULE)
    assert p.verdict(RULE) is Verdict.WATCH, "held: no verdict on a changed world"
    for _ in range(3):
        p.add(100, 1.0, 1.0, RULE)  # the stretch is over
    assert p.verdict(RULE) is Verdict.WATCH and not p.held, "the predecessor does as before: resumed"
    p.add(100, 1.5, 1.0, RULE)
    p.add(100, 1.5, 1.0, RULE)
    assert p.verdict(RULE) is Verdict.ROLL_BACK


def test_an_alarm_while_only_the_new_version_breaks_holds_nothing() -> None:
    p = probation(baseline=1.0)
    p.add(100, 2.0, 1.0, RULE)
    assert not p.hear_alarm(RULE)
    assert p.verdict(RULE) is Verdict.ROLL_BACK


def test_state_round_trips_and_old_checkpoints_load() -> None:
    p = probation()
    p.add(30, 1.1, 1.0, RULE)
    assert Probation.from_state(p.state_dict()) == p
    legacy = {"version": 3, "predecessor": 2, "since": 1.0, "evaluated": 5, "window": [[5, 1.0, 1.0]]}
    loaded = Probation.from_state(legacy)
    assert loaded is not None and loaded.baseline is None and not loaded.held
    assert Probation.from_state(None) is None


def test_a_bad_rule_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="rollback margin"):
        RollbackRule(margin=-0.1, samples=10, length=10)
    with pytest.raises(ValueError, match="confirm >= 1"):
        RollbackRule(margin=0.1, samples=10, length=10, confirm=0)


CONFIRMED = RollbackRule(margin=0.05, samples=100, length=1_000, confirm=2)


def test_with_confirm_each_of_the_last_two_disjoint_windows_must_be_worse() -> None:
    p = probation()
    p.add(100, 1.2, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.WATCH, "one window says worse: not yet confirmed"
    p.add(100, 1.2, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK
    evidence = p.evidence("loss", CONFIRMED)
    assert evidence["confirmed_by"] == [[100, 1.2, 1.0], [100, 1.2, 1.0]]
    assert evidence["samples"] == 100


def test_a_window_within_the_margin_before_a_worse_one_is_no_confirmation() -> None:
    p = probation()
    p.add(50, 1.0, 1.0, CONFIRMED)
    p.add(50, 1.0, 1.0, CONFIRMED)
    p.add(100, 1.3, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.WATCH, "the window before was as good as the predecessor"
    assert p.verdict(RULE) is Verdict.ROLL_BACK, "one window alone would have rolled back"
    p.add(100, 1.3, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK, "two worse windows in a row"
    assert [n for n, _, _ in p.window] == [100, 100], "steps no window needs are dropped"


def test_uneven_steps_fill_both_windows_before_any_is_dropped() -> None:
    p = probation()
    for samples in (70, 70, 70, 40, 90):
        p.add(samples, 1.2, 1.0, CONFIRMED)
    windows = p.windows(CONFIRMED)
    assert [w[0] for w in windows] == [130, 140], "newest first, each the fewest steps holding 100"
    assert sum(n for n, _, _ in p.window) == 270, "the oldest step is no window's any more"
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK


def test_an_alarm_heard_before_the_predecessor_looks_worse_holds_once_it_does() -> None:
    p = probation(baseline=1.0)
    p.add(100, 1.02, 1.0, RULE)  # the alarm comes while the window is still from before the change
    assert not p.hear_alarm(RULE), "the predecessor does as before: nothing to hold yet"
    p.add(100, 1.6, 1.3, RULE)  # the change reaches the window: both do worse, the new one more
    assert p.verdict(RULE) is Verdict.WATCH and p.held, "the world changed under both: held"
    p.add(100, 1.5, 1.0, RULE)  # the world is back and the new version is still worse
    assert p.verdict(RULE) is Verdict.ROLL_BACK and not p.held


def test_an_alarm_holds_a_proven_version_even_when_the_predecessor_cannot_show_the_change() -> None:
    proving = RollbackRule(margin=0.05, samples=100, length=1_000, hold_proven=True)
    for rule, rolls_back in ((RULE, True), (proving, False)):
        p = probation(baseline=1.0)
        p.add(100, 0.9, 1.0, rule)  # better than the predecessor on a full window: proven
        assert p.verdict(rule) is Verdict.WATCH
        p.add(100, 1.5, 1.0, rule)  # the world changes; the predecessor (near the base rate) does as before
        assert p.hear_alarm(rule) is not rolls_back
        assert (p.verdict(rule) is Verdict.ROLL_BACK) is rolls_back


def test_an_unproven_version_is_still_rolled_back_after_an_alarm_of_its_own_breakage() -> None:
    proving = RollbackRule(margin=0.05, samples=100, length=1_000, hold_proven=True)
    p = probation(baseline=1.0)
    p.add(50, 1.5, 1.0, proving)
    assert p.verdict(proving) is Verdict.WATCH and not p.proven, "no full window yet"
    assert not p.hear_alarm(proving)
    p.add(50, 1.5, 1.0, proving)
    assert p.verdict(proving) is Verdict.ROLL_BACK


# -- a version promoted while the one before is on probation (CTR's swaps on a clock) ---------------
def test_a_bad_version_replaced_before_its_verdict_is_still_rolled_back_to_the_proven_one() -> None:
    p = probation()  # v2 against the proven v1
    p.add(100, 1.3, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.WATCH and not p.passed(CONFIRMED), "one window: unjudged"
    p = p.succeeded_by(3, since=1.0)  # v3, trained on from v2, is promoted
    assert (p.version, p.predecessor, p.skipped, p.evaluated) == (3, 1, [2], 0)
    p.add(100, 1.25, 1.0, CONFIRMED)  # v3 is still worse than v1
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK, "v2's window and v3's confirm each other"
    evidence = p.evidence("loss", CONFIRMED)
    assert evidence["rolled_back_from"] == 3 and evidence["skipped"] == [2]
    assert evidence["confirmed_by"] == [[100, 1.25, 1.0], [100, 1.3, 1.0]]


def test_a_chain_of_quick_swaps_stays_on_probation_against_the_proven_version() -> None:
    p = probation()
    for version in (3, 4, 5):  # each version replaced after 50 samples, never judged in full
        p.add(50, 1.3, 1.0, CONFIRMED)
        assert p.verdict(CONFIRMED) is Verdict.WATCH and not p.passed(CONFIRMED)
        p = p.succeeded_by(version, since=float(version))
    p.add(50, 1.3, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK
    assert (p.version, p.predecessor, p.skipped) == (5, 1, [2, 3, 4]), "every unproven one is skipped"


def test_good_versions_replaced_by_swaps_are_never_rolled_back_and_become_the_baseline() -> None:
    p = probation()
    for version in range(3, 9):  # quick swaps: 50 samples each, all as good as the predecessor
        p.add(50, 1.0, 1.02, CONFIRMED)
        assert p.verdict(CONFIRMED) is Verdict.WATCH
        assert not p.passed(CONFIRMED), "its own steps do not fill both windows"
        p = p.succeeded_by(version, since=float(version))
    assert p.predecessor == 1 and p.skipped == [2, 3, 4, 5, 6, 7]
    for _ in range(4):  # v8 lives long enough to be judged on both windows of its own
        p.add(50, 1.0, 1.02, CONFIRMED)
        assert p.verdict(CONFIRMED) is Verdict.WATCH
    assert p.passed(CONFIRMED), "no worse on both own windows: v8 is the next one's baseline"


def test_a_replaced_version_worse_on_its_newest_window_has_not_passed() -> None:
    p = probation()
    p.add(100, 1.0, 1.0, CONFIRMED)
    p.add(100, 1.2, 1.0, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.WATCH, "one worse window: not confirmed"
    assert not p.passed(CONFIRMED), "but not found no worse either"
    p.add(100, 1.0, 1.0, CONFIRMED)
    p.add(100, 1.0, 1.0, CONFIRMED)
    assert p.passed(CONFIRMED)


def test_a_successor_is_trusted_and_proven_on_its_own_steps_only() -> None:
    proving = RollbackRule(margin=0.05, samples=100, length=300, confirm=2, hold_proven=True)
    p = probation()
    for _ in range(5):
        p.add(50, 1.0, 1.0, proving)
    assert p.verdict(proving) is Verdict.WATCH and p.proven
    p = p.succeeded_by(3, since=1.0)
    assert p.verdict(proving) is Verdict.WATCH and not p.proven, "v2's windows do not prove v3"
    p.add(50, 1.0, 1.0, proving)
    assert p.verdict(proving) is Verdict.WATCH and not p.proven, "half a window of its own"
    p.add(50, 1.0, 1.0, proving)
    assert p.verdict(proving) is Verdict.WATCH and p.proven
    for _ in range(4):
        p.add(50, 1.0, 1.0, proving)
    assert p.verdict(proving) is Verdict.TRUSTED, "300 samples of its own"


def test_a_successor_keeps_the_alarm_heard_and_the_baseline() -> None:
    p = probation(baseline=1.0)
    p.add(100, 1.3, 1.0, CONFIRMED)  # v2 breaks; v1 does as on the gate's slice
    assert not p.hear_alarm(CONFIRMED), "only the new version broke: nothing held"
    p = p.succeeded_by(3, since=1.0)
    assert p.alarmed and not p.held and p.baseline == 1.0
    p.add(100, 1.9, 1.6, CONFIRMED)  # then the world changes: v1 does worse than before too
    assert p.verdict(CONFIRMED) is Verdict.WATCH and p.held, "two worse windows, but a changed world"
    assert p.verdict(RULE) is Verdict.WATCH


def test_a_held_version_passed_so_the_next_is_judged_against_it() -> None:
    for rule in (
        CONFIRMED,
        RollbackRule(margin=0.05, samples=100, length=1_000, confirm=2, hold_proven=True),
    ):
        p = probation(baseline=1.0)
        p.add(100, 0.9, 1.0, rule)
        assert p.verdict(rule) is Verdict.WATCH
        p.add(100, 1.8, 1.6, rule)  # the world changes under both versions
        assert p.hear_alarm(rule) and p.passed(rule), "nothing against it, its world is gone"
    handed = p.succeeded_by(3, since=2.0)
    assert Probation.from_state(handed.state_dict()) == handed


# -- a version promoted while the running probation was held (gated on a changed world) ------------
def test_a_version_gated_while_the_probation_was_held_is_rolled_back_on_one_clean_window() -> None:
    """The dashboard test's escape, replayed in process (``bench/lifecycle_replay.py --scenario
    dashboard --busy 1.5``, seed 1 with v3 rejected): the stretch's version, gated on a flipped slice,
    did 1-10% worse than its predecessor on clean windows and two in a row never both passed the margin."""
    running = probation(baseline=0.6)  # v2 against v1, promoted on a clean slice
    running.add(100, 0.9, 0.95, CONFIRMED)  # a corrupted stretch: both do worse than before
    assert running.hear_alarm(CONFIRMED) and running.passed(CONFIRMED), "held: the world changed"
    p = Probation.after(running, 3, 2, since=1.0, baseline=0.93)  # v3 learned the stretch
    p.add(100, 0.70, 0.76, CONFIRMED)  # the stretch's tail: v3 does better on flipped events
    assert p.verdict(CONFIRMED) is Verdict.WATCH and not p.proven, "a changed world's window proves nothing"
    p.add(100, 0.66, 0.60, CONFIRMED)  # clean again: 10% worse
    assert p.verdict(CONFIRMED) is Verdict.ROLL_BACK, "its gate validated nothing: one window decides"
    evidence = p.evidence("loss", CONFIRMED)
    assert evidence["gated_in_changed_world"] and "confirmed_by" not in evidence
    assert (evidence["serving"], evidence["predecessor"], evidence["samples"]) == (0.66, 0.60, 100)
    assert Probation.from_state(p.state_dict()) == p


def test_a_version_gated_on_a_clean_slice_still_needs_every_confirming_window() -> None:
    running = probation(baseline=0.6)
    running.add(100, 0.6, 0.6, CONFIRMED)  # no alarm, nothing held
    p = Probation.after(running, 3, 2, since=1.0, baseline=0.6)
    assert not p.gated_in_changed_world and not p.alarmed
    p.add(100, 0.6, 0.6, CONFIRMED)
    p.add(100, 0.66, 0.60, CONFIRMED)
    assert p.verdict(CONFIRMED) is Verdict.WATCH, "one worse window is a fluctuation until confirmed"
    assert Probation.after(None, 3, 2, since=1.0, baseline=0.6) == Probation(3, 2, 1.0, 0.6)


def test_a_successor_of_a_version_gated_on_a_changed_world_is_judged_alike() -> None:
    running = probation(baseline=0.6)
    running.add(100, 0.9, 0.95, CONFIRMED)
    assert running.hear_alarm(CONFIRMED)
    p = Probation.after(running, 3, 2, since=1.0, baseline=0.93)
    p.add(50, 0.66, 0.60, CONFIRMED)
    p = p.succeeded_by(4, since=2.0)  # v4, trained on from v3, is promoted before a full window
    p.add(50, 0.66, 0.60, CONFIRMED)
    assert p.gated_in_changed_world and p.verdict(CONFIRMED) is Verdict.ROLL_BACK
    assert p.evidence("loss", CONFIRMED)["skipped"] == [3]
