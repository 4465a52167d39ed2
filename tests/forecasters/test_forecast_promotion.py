"""The forecast promotion gate, in process on a synthetic sine (no Kafka): which version serves, why,
with what evidence, and that all of it survives a checkpoint."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forecasters.batch import WindowBatch
from forecasters.learner import Forecaster, forecast_errors
from forecasters.promotion import PromotionConfig
from forecasters.service import ForecastService, build_service
from forecasters.serving import build_serving
from forecasters.zoo import ForecasterSpec
from streams.lifecycle_routes import LifecycleRoutes, NotKept
from streams.probation import RollbackRule
from streams.schemas import Forecast, Observation, Outcome
from streams.service import ApiError, ApiRequest, BatchResult, Output
from streams.topics import topic_name

from .conftest import sine_values

SPEC = ForecasterSpec(kind="dlinear", seq_len=8, horizon=3, channels=2, lr=0.01)
OBSERVATIONS = topic_name("observations")
PARTITION = f"{OBSERVATIONS}:0"
#: A candidate every 4 learned windows, scored on the next 3. One observation per batch from row 10
#: (the first pair's last row) on: v1 is frozen before row 14, scored on the pairs ending at rows
#: 14-16 and decided after row 16; v2 is frozen before row 18 and decided after row 20.
GATE = PromotionConfig(candidate_every=4, gate_windows=3, promotion_margin=0.05)
VALUES = sine_values(64, 2)


def feed(service: ForecastService, rows: range) -> list[BatchResult]:
    """One observation of series "a" per micro-batch; its offset is the row number (as a runner sets)."""
    results = []
    for row in rows:
        service.batch_offsets = {PARTITION: row}
        obs = Observation(series="a", ts=row * 3600.0, values=VALUES[row].tolist())
        results.append(service.process(OBSERVATIONS, [obs]))
    return results


def pairs_ending_at(rows: range) -> WindowBatch:
    """Series "a"'s training pairs (look-back 8 -> the next 3 rows) whose targets end at ``rows``."""
    x = torch.from_numpy(np.stack([VALUES[r - 10 : r - 2] for r in rows]))
    y = torch.from_numpy(np.stack([VALUES[r - 2 : r + 1] for r in rows]))
    return WindowBatch(x, y, keys=("a",) * len(rows))


def forecast_from(learner: Forecaster, last_row: int) -> np.ndarray:
    """``learner``'s forecast from the look-back ending at ``last_row`` (the scaler is the identity)."""
    lookback = torch.from_numpy(VALUES[last_row - 7 : last_row + 1][None])
    return learner.predict(WindowBatch(lookback)).numpy()[0]


def published(result: BatchResult) -> Forecast:
    (output,) = result.outputs
    assert isinstance(output.record, Forecast)
    return output.record


def get_forecast(service: ForecastService) -> dict[str, Any]:
    """``GET /forecast/a`` through the service's route."""
    (route,) = service.routes()
    return asyncio.run(route.handler(ApiRequest("GET", {"series": "a"}, {}))).body


def events(service: ForecastService) -> list[tuple[int, str]]:
    return [(v["version"], e["action"]) for v in service.lineage_body()["versions"] for e in v["history"]]


def test_the_first_candidate_serves_with_its_held_back_score_as_evidence() -> None:
    service = ForecastService(SPEC, promotion=GATE)
    feed(service, range(14))
    frozen = copy.deepcopy(service.learner)  # what the gate freezes before row 14
    before = feed(service, range(14, 16))
    assert service.model_version() == 0 and events(service) == []
    assert [published(r).model_version for r in before] == [0, 0]  # the learner's until a version serves
    decided = feed(service, [16])[0]
    assert decided.metrics["gate_version"] == 1 and decided.metrics["gate_promoted"] == 1
    assert service.model_version() == 1 and published(decided).model_version == 1
    body = service.lineage_body()
    assert body["serving"] == 1 and events(service) == [(1, "promoted")]
    (record,) = body["versions"]
    assert record["offsets"] == {PARTITION: 13}  # v1 learned up to row 13's batch
    held_back = pairs_ending_at(range(14, 17))
    expected = forecast_errors(frozen.predict(held_back), held_back.target)
    evidence = record["history"][0]["evidence"]
    assert evidence["metric"] == "mse" and evidence["candidate"] == pytest.approx(expected["mse"], rel=1e-5)
    assert evidence["serving"] is None and evidence["serving_version"] is None
    assert evidence["window"] == {"samples": 3, "after": {PARTITION: 13}, "to": {PARTITION: 16}}
    assert "first version" in record["history"][0]["reason"] and record["validation"] == evidence


def test_a_better_candidate_replaces_the_serving_version() -> None:
    service = ForecastService(SPEC, promotion=GATE)
    feed(service, range(18))
    serving, candidate = copy.deepcopy(service.gate.serving), copy.deepcopy(service.learner)
    assert serving is not None and serving.version == 1
    results = feed(service, range(18, 21))
    assert events(service) == [(1, "promoted"), (2, "promoted")] and service.model_version() == 2
    held_back = pairs_ending_at(range(18, 21))
    evidence = service.lineage_body()["versions"][1]["history"][0]["evidence"]
    for side, learner in (("candidate", candidate), ("serving", serving.learner)):
        expected = forecast_errors(learner.predict(held_back), held_back.target)["mse"]
        assert evidence[side] == pytest.approx(expected, rel=1e-5)
    assert evidence["candidate"] < evidence["serving"] and evidence["serving_version"] == 1
    assert evidence["margin"] == 0.05
    assert evidence["window"] == {"samples": 3, "after": {PARTITION: 17}, "to": {PARTITION: 20}}
    assert [published(r).model_version for r in results] == [1, 1, 2]
    assert np.allclose(published(results[-1]).values, forecast_from(candidate, 20), atol=1e-6)


def test_a_broken_candidate_is_rejected_and_the_old_version_keeps_serving() -> None:
    service = ForecastService(SPEC, promotion=GATE)
    feed(service, range(17))
    v1 = copy.deepcopy(service.gate.serving)
    assert v1 is not None and v1.version == 1
    with torch.no_grad():  # corrupt the learner before v2 is frozen from it
        for parameter in service.learner.net.parameters():  # type: ignore[attr-defined]
            parameter.mul_(-50.0)
    results = feed(service, range(17, 24))
    assert events(service) == [(1, "promoted"), (2, "rejected")]  # v3 is still being scored
    assert service.model_version() == 1 and service.lineage_body()["serving"] == 1
    rejected = service.lineage_body()["versions"][1]
    evidence = rejected["history"][0]["evidence"]
    assert evidence["candidate"] > evidence["serving"] * (1 + evidence["margin"])
    assert evidence["serving_version"] == 1 and evidence["window"]["samples"] == 3
    assert rejected["offsets"] == {PARTITION: 17} and rejected["history"][0]["reason"].startswith("mse ")
    for row, result in zip(range(17, 24), results, strict=True):  # v1's forecasts, not the learner's
        record = published(result)
        assert record.model_version == 1
        assert np.allclose(record.values, forecast_from(v1.learner, row), atol=1e-6)
    assert not np.allclose(forecast_from(service.learner, 23), forecast_from(v1.learner, 23), atol=1e-2)


def test_a_backlog_scores_only_the_slice_the_gate_needs() -> None:
    service = ForecastService(SPEC, promotion=GATE, max_train_batch=4)
    feed(service, range(14))
    frozen = copy.deepcopy(service.learner)
    service.batch_offsets = {PARTITION: 30}
    backlog = [Observation(series="a", ts=r * 3600.0, values=VALUES[r].tolist()) for r in range(14, 31)]
    result = service.process(OBSERVATIONS, backlog)  # 17 pairs in rounds of 4, only 3 held back
    assert result.metrics["trained_windows"] == 17 and result.metrics["gate_promoted"] == 1
    evidence = service.lineage_body()["versions"][0]["history"][0]["evidence"]
    held_back = pairs_ending_at(range(14, 17))
    expected = forecast_errors(frozen.predict(held_back), held_back.target)["mse"]
    assert evidence["candidate"] == pytest.approx(expected, rel=1e-5)
    assert evidence["window"] == {"samples": 3, "after": {PARTITION: 13}, "to": {PARTITION: 30}}


def test_the_gate_state_round_trips_mid_trial_and_decides_the_same() -> None:
    service = ForecastService(SPEC, promotion=GATE)
    feed(service, range(19))  # v2 frozen before row 18 and scored on one of its three pairs
    assert service.gate.trial is not None and service.gate.trial.windows == 1
    restarted = ForecastService(SPEC, promotion=GATE)
    restarted.load_state_dict(copy.deepcopy(service.state_dict()))
    assert restarted.lineage_body() == service.lineage_body() and restarted.model_version() == 1
    first, second = feed(service, range(19, 27)), feed(restarted, range(19, 27))
    assert [r.metrics for r in first] == [r.metrics for r in second]
    assert [published(r) for r in first] == [published(r) for r in second]

    def decisions(s: ForecastService) -> list[tuple[Any, ...]]:
        return [
            (v["version"], v["offsets"], e["action"], e["evidence"])
            for v in s.lineage_body()["versions"]
            for e in v["history"]
        ]

    assert decisions(restarted) == decisions(service) and len(decisions(service)) == 3


def test_a_checkpoint_from_before_the_gate_loads_with_a_fresh_lineage() -> None:
    old = ForecastService(SPEC, version=4, promotion=GATE)
    feed(old, range(12))
    state = copy.deepcopy(old.state_dict())
    del state["gate"]
    state["table"] = {s: entry[:3] for s, entry in state["table"].items()}  # no version per entry then
    service = ForecastService(SPEC, promotion=GATE)
    service.load_state_dict(state)
    assert service.model_version() == 4 and service.lineage_body() == {"serving": None, "versions": []}
    assert get_forecast(service) == get_forecast(old) and get_forecast(service)["model_version"] == 4
    feed(service, range(12, 19))  # 4 learned windows before v5 is frozen, then its 3 held back
    assert events(service) == [(5, "promoted")] and service.model_version() == 5


def test_get_models_shows_the_lineage_and_kept_versions_serve_by_hand(tmp_path: Path) -> None:
    service = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    sent: list[Output] = []

    async def emit(output: Output) -> None:
        sent.append(output)

    service.emit = emit
    feed(service, range(21))
    routes = {(r.method, r.path): r.handler for r in LifecycleRoutes([service]).routes()}
    models = asyncio.run(routes["GET", "/models"](ApiRequest("GET", {}, {})))
    assert models.body == {"forecast": service.lineage_body()}
    assert models.body["forecast"]["serving"] == 2 and len(models.body["forecast"]["versions"]) == 2

    def post(word: str, body: object = None) -> Any:
        request = ApiRequest("POST", {"service": "forecast"}, {}, body)
        return asyncio.run(routes["POST", f"/models/{{service}}/{word}"](request)).body

    for word, body, says in (
        ("promote", None, "no kept version newer than the serving one (kept: [1, 2])"),
        ("promote", {"version": 3}, "version 3 is not kept (kept: [1, 2]); it cannot serve"),
    ):
        with pytest.raises(ApiError) as refused:
            post(word, body)
        assert (refused.value.status, refused.value.message) == (409, says)
    v1 = copy.deepcopy(service.gate.find(1))
    assert v1 is not None and not sent
    assert post("rollback") == {"serving": 1, "was": 2, "action": "rolled_back"}
    assert service.model_version() == 1 and len(sent) == 1
    (outcome,) = [output.record for output in sent if output.topic == topic_name("control")]
    assert isinstance(outcome, Outcome) and outcome.data["trained"] == {PARTITION: 20}
    assert np.allclose(forecast_from(service.learner, 20), forecast_from(v1.learner, 20), atol=1e-6)
    with pytest.raises(ApiError) as refused:
        post("rollback")
    assert refused.value.status == 409 and "no version older than 1 is kept" in refused.value.message
    assert post("promote") == {"serving": 2, "was": 1, "action": "promoted"}
    assert events(service) == [(1, "promoted"), (1, "rolled_back"), (2, "promoted"), (2, "promoted")]
    assert (
        service.lineage_body()["versions"][-1]["history"][-1]["reason"] == "by hand: v2 serves instead of v1"
    )


def test_gate_options_come_from_the_worker_options(tmp_path: Path) -> None:
    options = {"candidate_every": "100", "gate_windows": 16, "promotion_margin": "0.1", "keep_versions": "4"}
    probation = {"rollback_margin": "0.2", "rollback_windows": "50", "probation_windows": 300}
    service = build_service(
        tmp_path, kind="dlinear", seq_len=8, horizon=3, channels=2, **options, **probation
    )
    assert service.gate.config == PromotionConfig(
        candidate_every=100,
        gate_windows=16,
        promotion_margin=0.1,
        rollback_margin=0.2,
        rollback_windows=50,
        probation_windows=300,
        keep_versions=4,
    )
    assert service.gate.rule == RollbackRule(margin=0.2, samples=50, length=300)
    assert build_service(tmp_path, kind="dlinear", seq_len=8, horizon=3, channels=2).gate.config == (
        PromotionConfig()
    )
    assert build_serving(tmp_path, seq_len=8, horizon=3, gate_windows=16).horizon == 3  # replicas ignore them


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("candidate_every", "0", "candidate_every must be an integer >= 1, got 0"),
        ("gate_windows", "many", "gate_windows='many': expected an integer"),
        ("gate_windows", 2.5, "gate_windows must be an integer >= 1, got 2.5"),
        ("candidate_every", True, "candidate_every must be an integer >= 1, got True"),
        ("promotion_margin", "-0.1", "promotion_margin must be a number >= 0, got -0.1"),
        ("promotion_margin", "nan", "promotion_margin must be a number >= 0, got nan"),
        ("rollback_margin", "-0.5", "rollback_margin must be a number >= 0, got -0.5"),
        ("rollback_windows", "0", "rollback_windows must be an integer >= 1, got 0"),
        ("probation_windows", 1.5, "probation_windows must be an integer >= 1, got 1.5"),
        ("keep_versions", "1", "keep_versions must be an integer >= 2, got 1"),
    ],
)
def test_bad_gate_options_are_refused_with_a_clear_error(key: str, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PromotionConfig.pop_from({key: bad})


#: GATE with a short probation: a promoted version rolls back when its MSE exceeds its
#: predecessor's by 10% over 3 windows within 12 windows of its promotion.
PROBATION = PromotionConfig(
    candidate_every=4,
    gate_windows=3,
    promotion_margin=0.05,
    rollback_margin=0.1,
    rollback_windows=3,
    probation_windows=12,
)


def serving_broken(tmp_path: Path) -> ForecastService:
    """v2 serves on probation against v1 (promoted after row 20), its frozen copy then broken."""
    service = ForecastService(SPEC, promotion=PROBATION, checkpoint_root=tmp_path)
    feed(service, range(21))
    probation, serving = service.gate.probation, service.gate.serving
    assert probation is not None and (probation.version, probation.predecessor) == (2, 1)
    assert serving is not None and serving.version == 2
    with torch.no_grad():
        for parameter in serving.learner.net.parameters():  # type: ignore[attr-defined]
            parameter.mul_(-5.0)
    return service


def test_a_promoted_version_worse_than_its_predecessor_is_rolled_back_and_training_continues_from_it(
    tmp_path: Path,
) -> None:
    service = serving_broken(tmp_path)
    v1 = copy.deepcopy(service.gate.find(1))
    assert v1 is not None
    quiet = feed(service, range(21, 24))  # 3 windows scored; v3 is frozen before row 22 and scored
    assert all("rolled_back_to" not in r.metrics for r in quiet) and service.model_version() == 2
    expected = copy.deepcopy(v1.learner)
    expected.learn(pairs_ending_at(range(24, 25)))  # v1 restored into the learner, then row 24 learned
    (rolled,) = feed(service, [24])
    assert rolled.metrics["rolled_back_to"] == 1 and rolled.metrics["rolled_back_from"] == 2
    assert service.model_version() == 1 and published(rolled).model_version == 1
    assert np.allclose(published(rolled).values, forecast_from(v1.learner, 24), atol=1e-6)
    assert np.allclose(forecast_from(service.learner, 24), forecast_from(expected, 24), atol=1e-6)
    version, event = next((v, e) for v, e in events_with_entries(service) if e["action"] == "rolled_back")
    assert version == 1 and event["reason"].startswith("v2 did worse than v1 on the same last 3 windows")
    evidence = event["evidence"]
    assert evidence["rolled_back_from"] == 2 and evidence["serving"] > evidence["predecessor"] * 1.1
    assert evidence["window"] == {"samples": 3, "after": None, "to": {PARTITION: 23}}
    assert service.gate.probation is None and service.gate.trial is None, "v3 learned from v2's time: dropped"
    feed(service, range(25, 31))  # 4 windows from v1 again, then the next candidate (v3 again) is scored
    assert events(service)[-1] == (3, "promoted") and service.model_version() == 3


def events_with_entries(service: ForecastService) -> list[tuple[int, dict[str, Any]]]:
    return [(v["version"], e) for v in service.lineage_body()["versions"] for e in v["history"]]


def test_probation_state_round_trips_mid_window_and_decides_the_same(tmp_path: Path) -> None:
    service = serving_broken(tmp_path)
    feed(service, range(21, 23))
    assert service.gate.probation is not None and service.gate.probation.evaluated == 2
    restarted = ForecastService(SPEC, promotion=PROBATION, checkpoint_root=tmp_path)
    restarted.load_state_dict(copy.deepcopy(service.state_dict()))
    assert restarted.gate.probation == service.gate.probation
    assert [f.version for f in restarted.gate.kept] == [1, 2] and restarted.model_version() == 2
    first, second = feed(service, range(23, 31)), feed(restarted, range(23, 31))
    assert [r.metrics for r in first] == [r.metrics for r in second]
    assert any("rolled_back_to" in r.metrics for r in second)
    assert events(restarted) == events(service)


def test_a_drift_alarm_holds_probation_while_the_predecessor_does_worse_too(tmp_path: Path) -> None:
    service = serving_broken(tmp_path)
    garbled = VALUES * 8.0  # synthetic: a stretch where every version does far worse than before

    def observe(target: ForecastService, rows: range) -> BatchResult:
        """``rows`` of the garbled stretch in one micro-batch (a backlog: no candidate is frozen in it)."""
        target.batch_offsets = {PARTITION: rows[-1]}
        batch = [Observation(series="a", ts=r * 3600.0, values=garbled[r].tolist()) for r in rows]
        return target.process(OBSERVATIONS, batch)

    observe(service, range(21, 27))
    twin = ForecastService(SPEC, promotion=PROBATION, checkpoint_root=tmp_path)
    twin.load_state_dict(copy.deepcopy(service.state_dict()))  # the same, but hears no alarm
    service.on_drift("alarm")  # as the runner calls it after the batch
    probation = service.gate.probation
    assert probation is not None and probation.held and probation.baseline is not None
    _, new, old = probation.windows(service.gate.rule)[0]
    assert new > old * 1.1, "v2 does worse than v1 on the window: a rollback, were it not held"
    assert old > probation.baseline * 1.1, "and v1 does worse than on the gate's slice: the world changed"
    held, judged = observe(service, range(27, 28)), observe(twin, range(27, 28))
    assert "rolled_back_to" not in held.metrics and service.model_version() == 2
    assert judged.metrics["rolled_back_to"] == 1 and twin.model_version() == 1


def test_an_alarm_while_only_the_new_version_breaks_holds_nothing(tmp_path: Path) -> None:
    service = serving_broken(tmp_path)
    feed(service, range(21, 23))
    service.on_drift("warm-restart")
    assert service.gate.probation is not None and not service.gate.probation.held
    assert any(r.metrics.get("rolled_back_to") == 1 for r in feed(service, range(23, 25)))


def test_a_gate_state_from_before_probation_loads_with_the_serving_version_kept(tmp_path: Path) -> None:
    service = ForecastService(SPEC, promotion=PROBATION, checkpoint_root=tmp_path)
    feed(service, range(19))  # v1 serves, v2 is being scored
    state = copy.deepcopy(service.state_dict())
    gate = state["gate"]
    v1 = next(f for f in gate.pop("kept") if f["version"] == 1)
    del gate["probation"], v1["trained_at"]
    gate["serving"] = v1  # how the gate saved its serving version before probation
    old = ForecastService(SPEC, promotion=PROBATION, checkpoint_root=tmp_path)
    old.load_state_dict(state)
    assert [f.version for f in old.gate.kept] == [1] and old.model_version() == 1
    assert old.gate.probation is None and old.gate.trial is not None
    first, second = feed(service, range(19, 23)), feed(old, range(19, 23))
    assert [r.metrics for r in first] == [r.metrics for r in second]
    assert old.gate.probation is not None and (
        old.gate.probation.version,
        old.gate.probation.predecessor,
    ) == (2, 1)


def test_a_version_that_does_no_worse_is_trusted_after_its_probation(tmp_path: Path) -> None:
    config = PromotionConfig(
        candidate_every=16, gate_windows=3, rollback_margin=1.0, rollback_windows=3, probation_windows=12
    )
    service = ForecastService(SPEC, promotion=config, checkpoint_root=tmp_path)
    feed(service, range(45))  # v1 promoted after row 28, v2 after row 44: on probation from row 45
    assert events(service) == [(1, "promoted"), (2, "promoted")] and service.gate.probation is not None
    feed(service, range(45, 57))  # 12 windows scored beside v1
    probation = service.gate.probation
    assert probation is not None and probation.evaluated == 12
    feed(service, [57])
    assert service.gate.probation is None and service.model_version() == 2
    assert events(service) == [(1, "promoted"), (2, "promoted")]


def test_only_the_last_keep_versions_promoted_versions_are_kept(tmp_path: Path) -> None:
    service = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    feed(service, range(37))
    promoted = [v for v, action in events(service) if action == "promoted"]
    assert promoted == [1, 2, 4, 5, 6] and [f.version for f in service.gate.kept] == [4, 5, 6]
    with pytest.raises(NotKept, match=r"version 2 is not kept \(kept: \[4, 5, 6\]\)"):
        service.gate.target("promoted", 2)
