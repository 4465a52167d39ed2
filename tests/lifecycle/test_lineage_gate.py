"""The one promotion rule every family's gate uses, and how a decision lands in the lineage."""

from __future__ import annotations

import pytest

from streams.lineage import GateEvidence, Lineage


def evidence(candidate: float, serving: float | None, *, lower_is_better: bool = True) -> GateEvidence:
    return GateEvidence(
        metric="m",
        candidate=candidate,
        serving=serving,
        serving_version=None if serving is None else 1,
        margin=0.02,
        window={"samples": 10, "after": {"t:0": 4}, "to": {"t:0": 14}},
        lower_is_better=lower_is_better,
    )


@pytest.mark.parametrize(
    ("candidate", "serving", "lower_is_better", "passes"),
    [
        (1.0, None, True, True),  # nothing serves yet
        (1.019, 1.0, True, True),  # a loss within the margin
        (1.021, 1.0, True, False),  # a loss past it
        (0.981, 1.0, False, True),  # a gain within the margin
        (0.979, 1.0, False, False),  # a gain past it
        (float("nan"), None, True, False),  # a diverged first candidate does not serve
        (float("inf"), float("inf"), True, False),  # nor does a diverged one against a diverged one
        (5.0, float("nan"), True, True),  # a finite score replaces a diverged serving version
        (0.1, float("nan"), False, True),
    ],
)
def test_no_worse_than_serving_by_the_margin(
    candidate: float, serving: float | None, lower_is_better: bool, passes: bool
) -> None:
    assert evidence(candidate, serving, lower_is_better=lower_is_better).passes() is passes


def test_a_decision_is_recorded_with_its_evidence_and_only_a_pass_serves() -> None:
    lineage = Lineage()
    assert lineage.gate(1, 100.0, {"t:0": 4}, evidence(1.0, None))
    assert not lineage.gate(2, 200.0, {"t:0": 9}, evidence(1.5, 1.0))
    assert lineage.serving == 1
    body = lineage.body()
    rejected = body["versions"][1]
    assert rejected["offsets"] == {"t:0": 9}
    assert rejected["validation"]["candidate"] == 1.5 and rejected["validation"]["serving"] == 1.0
    [event] = rejected["history"]
    assert event["action"] == "rejected"
    assert "1.5000 > serving's 1.0000" in event["reason"]
    assert event["evidence"]["window"]["to"] == {"t:0": 14}


def test_a_diverged_candidate_is_recorded_as_rejected_with_a_null_score() -> None:
    lineage = Lineage()
    assert lineage.gate(1, 100.0, {"t:0": 4}, evidence(1.0, None))
    assert not lineage.gate(2, 200.0, {"t:0": 9}, evidence(float("nan"), 1.0))
    rejected = lineage.body()["versions"][1]
    assert rejected["validation"]["candidate"] is None  # the body stays valid JSON
    assert "not a finite score" in rejected["history"][0]["reason"]
    assert lineage.serving == 1


def test_a_version_trimmed_from_the_lineage_can_still_serve_again() -> None:
    lineage = Lineage(keep=3)
    lineage.add(1, 10.0, {"impressions:0": 5}, {})
    lineage.record(1, "promoted", "first", {})
    for version in (2, 3, 4):
        lineage.add(version, 20.0 + version, {}, {})
        lineage.record(version, "promoted", "better", {})
    assert lineage.find(1) is None, "v1 left the last 3 records"
    lineage.serve_again(1, 10.0, {"impressions:0": 5}, "rolled_back", "v4 did worse", {"metric": "logloss"})
    again = lineage.find(1)
    assert lineage.serving == 1 and again is not None and again.trained_at == 10.0
    assert [e["action"] for e in again.history] == ["rolled_back"]
    kept_before = lineage.find(4)
    lineage.serve_again(4, 24.0, {}, "promoted", "by hand", {})
    assert lineage.find(4) is kept_before and lineage.serving == 4, "a kept record is not entered twice"
