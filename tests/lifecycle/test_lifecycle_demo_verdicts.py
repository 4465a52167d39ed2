"""The demo's own judgement of what the worker did (bench/lifecycle_demo.verdicts), on made-up timelines."""

from __future__ import annotations

from typing import Any

from bench.lifecycle_demo import Injection, Timeline, verdicts


def rollback(at: float, bad: int, to: int, skipped: tuple[int, ...] = ()) -> dict[str, Any]:
    evidence: dict[str, Any] = {"rolled_back_from": bad}
    if skipped:
        evidence["skipped"] = list(skipped)
    return {"action": "rolled_back", "at": at, "reason": "", "evidence": evidence, "version": to}


def timeline(*rollbacks: dict[str, Any], alarms: tuple[float, ...] = (102.0, 131.5)) -> Timeline:
    line = Timeline(corrupt_sent=100.0, corrupt_ended=105.0, shift_sent=130.0)
    line.actions = [(at, f"drift alarm #{i}") for i, at in enumerate(alarms, 1)]
    line.rollbacks = list(rollbacks)
    return line


def test_the_designed_run_reads_as_designed() -> None:
    said = verdicts(timeline(rollback(107.3, 11, to=10)), Injection(15_000, corrupting=10, learned=11))
    assert said == [
        "corrupted stretch: drift alarm 2.0 s in",
        "lasting flip: drift alarm 1.5 s in",
        "as designed: v11 (learned the stretch) rolled back to v10 7.3 s in",
    ]


def test_the_learned_version_skipped_by_a_rollback_of_its_successor_reads_as_designed() -> None:
    said = verdicts(timeline(rollback(111.0, 12, to=10, skipped=(11,))), Injection(15_000, learned=11))
    assert (
        said[2]
        == "as designed: v11 (learned the stretch) rolled back to v10 11.0 s in, with v12 promoted after it"
    )
    assert len(said) == 3


def test_a_clean_rollback_a_kept_bad_version_and_a_flip_rollback_read_wrong() -> None:
    said = verdicts(
        timeline(rollback(90.0, 8, to=7), rollback(131.7, 13, to=12, skipped=(12,)), alarms=(102.5, 147.7)),
        Injection(15_000, corrupting=10, learned=11),
    )
    assert said[:2] == ["corrupted stretch: drift alarm 2.5 s in", "lasting flip: drift alarm 17.7 s in"]
    assert said[2] == "WRONG: v8 rolled back (before any change)"
    assert said[3].startswith("WRONG: v13 rolled back (1.7 s after the first shift")
    assert said[4] == "WRONG: v11 (learned the corrupted stretch) was not rolled back"


def test_a_stretch_that_ran_into_the_lasting_flip_has_no_version_to_roll_back() -> None:
    line = timeline(alarms=(101.7,))
    line.corrupt_ended = None
    said = verdicts(line, Injection(15_000, corrupting=6))
    assert said == [
        "corrupted stretch: drift alarm 1.7 s in",
        "lasting flip: no drift alarm",
        "no version learned the corrupted stretch alone: none was promoted before it ended",
    ]
