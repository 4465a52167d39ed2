"""CtrService driven directly: stream batches, swaps, routes, rollback and restart from state."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from models.checkpoints import CheckpointStore
from models.ctr.service import NO_LABEL, CtrService, build_service
from streams.schemas import Observation
from streams.service import ApiError, ApiRequest, ApiResponse
from streams.topics import topic_name
from tests.locking import lock_held_elsewhere, returns_within
from tests.models.outputs import record_outputs
from tests.models.synthetic import OPTIONS, impressions, make_service

TOPIC = topic_name("impressions")
CANDIDATES = [{"categorical": {"user": "u1", "item": f"i{i}"}, "dense": {"x": 3.0}} for i in range(10)]


def call(service: CtrService, method: str, path: str, body: Any = None) -> ApiResponse:
    route = next(r for r in service.routes() if r.method == method and r.path == path)
    return asyncio.run(route.handler(ApiRequest(method, {}, {}, body)))


def score(service: CtrService, candidates: list[dict[str, Any]] = CANDIDATES) -> ApiResponse:
    return call(service, "POST", "/ctr/score", {"candidates": candidates})


def test_subscribes_to_impressions_in_large_batches(tmp_path: Path) -> None:
    subscription, control = make_service(tmp_path)[0].subscriptions()
    assert subscription.topic == TOPIC and control.topic == topic_name("control")
    assert subscription.batch_size == 256


def test_batch_trains_and_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    good = impressions(200, seed=1)
    unlabelled = impressions(3, seed=2, labelled=False)
    odd = impressions(1, seed=3)[0].model_copy(update={"categorical": {"user": "u1", "colour": "red"}})
    other = Observation(series="s", ts=0.0, values=[1.0])
    result = service.process(TOPIC, [*good[:100], unlabelled[0], odd, other, *good[100:], *unlabelled[1:]])
    assert result.rejected == {
        100: NO_LABEL,
        101: result.rejected[101],
        102: "expected an impression, got Observation",
        203: NO_LABEL,
        204: NO_LABEL,
    }
    assert "colour" in result.rejected[101]
    assert result.metrics["samples"] == 200
    assert 0 <= result.metrics["auc"] <= 1 and math.isfinite(result.metrics["logloss"])
    assert service.learner.samples_seen == 200
    assert service.model_version() == 1  # the first trained batch publishes version 1


def test_all_rejected_batch_trains_nothing(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    result = service.process(TOPIC, impressions(5, labelled=False))
    assert set(result.rejected) == set(range(5)) and result.metrics == {}
    assert service.learner.steps == 0 and service.model_version() == 0


def test_serving_copy_swaps_only_at_the_interval(tmp_path: Path) -> None:
    service, clock = make_service(tmp_path)
    service.process(TOPIC, impressions(256, seed=1))
    first = score(service).body
    clock.now = 59.0
    service.process(TOPIC, impressions(256, seed=2))
    assert score(service).body == first  # trained, but not swapped yet
    clock.now = 60.0
    service.process(TOPIC, impressions(256, seed=3))
    second = score(service).body
    assert second["model_version"] == 2
    assert second["scores"] != first["scores"]
    assert [v["version"] for v in call(service, "GET", "/ctr/versions").body["versions"]] == [1, 2]


def test_score_answers_while_training_holds_the_lock(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    service.process(TOPIC, impressions(256, seed=1))
    expected = score(service).body
    # The lock is held for 30 s, far past the 2 s deadline: a score that waits on it fails.
    with lock_held_elsewhere(service, timeout_s=30.0):
        answer = returns_within(2.0, lambda: score(service))
    assert answer.status == 200 and answer.body == expected


def test_score_learns_the_signal(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, swap_interval_s=0.0)
    for seed in range(12):
        service.process(TOPIC, impressions(256, seed=seed))
    scores = score(service).body["scores"]
    even, odd = scores[0::2], scores[1::2]  # even items are the clicked ones in the synthetic stream
    assert min(even) > max(odd)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "expected a JSON body"),
        ([1, 2], "expected a JSON body"),
        ({"candidates": "x"}, "expected a JSON body"),
        ({"candidates": []}, "1 to 10000"),
        ({"candidates": [1]}, "candidate 0: expected an object"),
        ({"candidates": [{"categorical": {"user": "u"}, "price": 3}]}, "candidate 0: expected an object"),
        ({"candidates": [{"categorical": {"user": 5}}]}, "candidate 0: categorical.user"),
        ({"candidates": [{"categorical": {"user": "u"}, "dense": {"x": math.inf}}]}, "dense.x"),
        ({"candidates": [{}]}, "at least one categorical or dense feature"),
        ({"candidates": [CANDIDATES[0], {"categorical": {"hue": "r"}}]}, "candidate 1: unknown categorical"),
    ],
)
def test_bad_score_bodies_get_clear_400s(tmp_path: Path, body: Any, message: str) -> None:
    service, _ = make_service(tmp_path)
    service.process(TOPIC, impressions(64, seed=1))
    with pytest.raises(ApiError) as caught:
        call(service, "POST", "/ctr/score", body)
    assert caught.value.status == 400
    assert message in caught.value.message


def test_score_before_any_training_is_503(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as caught:
        score(make_service(tmp_path)[0])
    assert caught.value.status == 503


def test_rollback_serves_the_previous_version_and_resets_training(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, swap_interval_s=0.0)
    record_outputs(service)
    service.process(TOPIC, impressions(256, seed=1))
    v1 = score(service).body
    service.process(TOPIC, impressions(256, seed=2))
    assert service.model_version() == 2
    answer = call(service, "POST", "/ctr/rollback")
    assert answer.body == {"model_version": 1, "rolled_back_from": 2}
    assert score(service).body == v1
    assert call(service, "GET", "/ctr/versions").body["serving"] == 1
    service.swap()  # training was reset to version 1, so its next version scores like it
    assert score(service).body["scores"] == pytest.approx(v1["scores"], rel=1e-6)
    assert service.model_version() == 3


def test_rollback_without_an_older_version_is_409(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    for _ in range(2):
        with pytest.raises(ApiError) as caught:
            call(service, "POST", "/ctr/rollback")
        assert caught.value.status == 409
        service.process(TOPIC, impressions(64, seed=1))


def test_restart_from_a_checkpoint_loses_nothing(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, swap_interval_s=0.0)
    for seed in range(3):
        service.process(TOPIC, impressions(256, seed=seed))
    store = CheckpointStore(tmp_path / "checkpoints", "worker-ctr")
    store.save({"service": service.state_dict()}, {"impressions-0": 767})
    restarted, _ = make_service(tmp_path, swap_interval_s=0.0, seed=42)
    record_outputs(service)
    record_outputs(restarted)
    restarted.load_state_dict(store.load().state["service"])
    assert score(restarted).body == score(service).body
    assert call(restarted, "GET", "/ctr/versions").body == call(service, "GET", "/ctr/versions").body
    batch = impressions(256, seed=9)
    assert restarted.process(TOPIC, batch).metrics == service.process(TOPIC, batch).metrics
    assert score(restarted).body["scores"] == pytest.approx(score(service).body["scores"], rel=1e-5)
    assert call(restarted, "POST", "/ctr/rollback").body == call(service, "POST", "/ctr/rollback").body


def test_build_service_options(tmp_path: Path) -> None:
    dcn = build_service(tmp_path, **{**OPTIONS, "model": "dcn", "cowclip": False})
    assert dcn.learner.name == "dcn" and dcn.learner.clipper is None
    assert dcn.spec.categorical == ("user", "item")
    default = build_service(tmp_path)
    assert default.learner.name == "deepfm" and "item_id" in default.spec.categorical
    with pytest.raises(ValueError, match="swap_intervall"):
        build_service(tmp_path, swap_intervall=3)
    with pytest.raises(ValueError, match="unknown CTR model"):
        build_service(tmp_path, model="xgboost")
