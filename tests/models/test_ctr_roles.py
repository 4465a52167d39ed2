"""The CTR trainer/serving split: rollback as a durable outcome, model updates, the serving replica."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from models.ctr.routes import NOT_THE_TRAINER
from models.ctr.service import CtrService
from models.ctr.serving import CtrServing, build_serving
from models.ctr.versions import UpdateError
from streams.schemas import ModelUpdate, Outcome, parse_record
from streams.service import ApiError, ApiRequest, ApiResponse, Output, Route
from streams.topics import topic_name
from tests.models.outputs import record_outputs
from tests.models.synthetic import OPTIONS, impressions, make_service

IMPRESSIONS = topic_name("impressions")
CONTROL = topic_name("control")
UPDATES = topic_name("model-updates")
CANDIDATES = [{"categorical": {"user": "u1", "item": f"i{i}"}, "dense": {"x": float(i)}} for i in range(10)]


def call(routes: list[Route], method: str, path: str, body: Any = None) -> ApiResponse:
    route = next(r for r in routes if r.method == method and r.path == path)
    return asyncio.run(route.handler(ApiRequest(method, {}, {}, body)))


def score(routes: list[Route]) -> dict[str, Any]:
    return call(routes, "POST", "/ctr/score", {"candidates": CANDIDATES}).body


def trained(tmp_path: Path, versions: int = 2, **overrides: Any) -> tuple[CtrService, list[ModelUpdate]]:
    """A trainer that has published ``versions`` versions, and the updates it published (off the wire)."""
    service, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0, **overrides)
    updates = []
    for seed in range(versions):
        updates += wire_updates(service.process(IMPRESSIONS, impressions(256, seed=seed)).outputs)
    return service, updates


def wire_updates(outputs: list[Output]) -> list[ModelUpdate]:
    """The model updates among ``outputs``, encoded and parsed back as a replica receives them."""
    found = []
    for output in outputs:
        assert output.topic == UPDATES and output.key == "ctr"
        update = parse_record(output.record.to_bytes(), ModelUpdate)
        assert isinstance(update, ModelUpdate)
        found.append(update)
    return found


def roll_back(service: CtrService) -> Outcome:
    """POST /ctr/rollback with a recording producer; return the outcome it published."""
    sent = record_outputs(service)
    answer = call(service.routes(), "POST", "/ctr/rollback")
    assert answer.status == 200
    (output,) = sent
    assert output.topic == CONTROL and output.key == "ctr" and isinstance(output.record, Outcome)
    return output.record


def state_of(service: CtrService) -> dict[str, Any]:
    """What a rollback changes: the serving number, the training weights, the kept versions."""
    state = service.state_dict()
    return {
        "serving": state["history"]["serving"],
        "versions": [v["version"] for v in state["history"]["versions"]],
        "net": state["learner"]["net"],
        "normaliser": state["learner"]["normaliser"],
        "outcome_seqs": dict(service.outcome_seqs),
        "pending": dict(service.pending),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for name in a[key]:
                left, right = a[key][name], b[key][name]
                same = torch.equal(left, right) if isinstance(left, torch.Tensor) else left == right
                assert same, f"{key}.{name} differs"
        else:
            assert a[key] == b[key], key


# -- rollback as an outcome ----------------------------------------------------------------------
def test_rollback_is_published_before_the_answer_and_names_the_version(tmp_path: Path) -> None:
    service, _ = trained(tmp_path)
    outcome = roll_back(service)
    assert (outcome.service, outcome.kind, outcome.key, outcome.seq) == ("ctr", "rollback", "ctr", 1)
    data = outcome.data
    assert (data["version"], data["rolled_back_from"], data["trained_samples"]) == (1, 2, 512)
    target = parse_record(data["update"], ModelUpdate)  # the target's weights, durable before the answer
    assert isinstance(target, ModelUpdate) and target.version == 1 and target.info["rollback"] is True
    assert target.uri == str(tmp_path / "checkpoints/model-updates/ctr/rollbacks/v000001.pt")
    assert Path(target.uri).exists()
    assert service.model_version() == 1 and service.outcome_seqs == {"ctr": 1}


def test_rollback_without_a_producer_is_503_and_without_an_older_version_409(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=1)
    with pytest.raises(ApiError) as caught:
        call(service.routes(), "POST", "/ctr/rollback")
    assert caught.value.status == 409 and "no version older than 1" in caught.value.message
    service.process(IMPRESSIONS, impressions(64, seed=5))
    with pytest.raises(ApiError) as caught:
        call(service.routes(), "POST", "/ctr/rollback")  # no emit attached: the change cannot be recorded
    assert caught.value.status == 503


def test_rollback_outcome_applied_twice_gives_the_same_state(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=3)
    before = service.state_dict()
    outcome = roll_back(service)
    after = state_of(service)
    service.apply_outcome(outcome)
    assert_same(state_of(service), after)

    crashed, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0, seed=9)
    crashed.load_state_dict(before)  # the last checkpoint was taken before the rollback
    crashed.apply_outcome_once(outcome)
    crashed.apply_outcome(outcome)
    assert_same(state_of(crashed), after)
    assert score(crashed.routes()) == score(service.routes())


def test_a_replayed_control_batch_is_a_no_op(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=3)
    outcome = roll_back(service)
    after = state_of(service)
    result = service.process(CONTROL, [outcome, outcome])
    assert_same(state_of(service), after)
    assert result.rejected == {}
    (update,) = wire_updates(result.outputs)  # the rollback's update is re-announced, at least once
    assert update.version == 2 and update.info["rollback"] is True

    service.swap()  # a newer version since: a late replay must neither undo it nor announce v2
    result = service.process(CONTROL, [outcome])
    assert service.model_version() == 4 and result.outputs == []


def test_a_rollback_replayed_before_the_impressions_waits_for_them(tmp_path: Path) -> None:
    """A checkpoint older than the decision: the replay may apply control before impressions."""
    service, _ = trained(tmp_path, versions=2)
    outcome = roll_back(service)
    rolled_back = score(service.routes())
    restarted, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0)
    assert restarted.process(CONTROL, [outcome]).outputs == []
    assert restarted.model_version() == 0 and list(restarted.pending) == [1]

    state = restarted.state_dict()  # a checkpoint taken while it waits keeps it waiting
    restarted.load_state_dict(state)
    assert list(restarted.pending) == [1]
    # Re-batched differently than before the crash: versions 1..3 are other models than 1..2 were.
    for seed, rows in ((0, 100), (1, 256), (2, 156)):
        result = restarted.process(IMPRESSIONS, impressions(rows, seed=seed))
    assert restarted.pending == {} and restarted.learner.samples_seen == 512
    assert restarted.model_version() == 1 and score(restarted.routes()) == rolled_back
    assert [u.version for u in wire_updates(result.outputs)] == [3, 1]  # its swap, then the rollback
    assert wire_updates(result.outputs)[1].info["rollback"] is True
    restarted.swap()
    assert restarted.model_version() == 4  # numbering goes on after the replayed versions


def test_a_rollback_whose_weights_are_gone_is_refused(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=2)
    outcome = roll_back(service)
    target = parse_record(outcome.data["update"], ModelUpdate)
    assert isinstance(target, ModelUpdate) and target.uri is not None
    Path(target.uri).unlink()
    restarted, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0)
    for seed in range(2):  # the same samples again, but versions published anew: not the kept ones
        restarted.process(IMPRESSIONS, impressions(256, seed=seed))
    result = restarted.process(CONTROL, [outcome])
    assert "cannot roll back" in result.rejected[0] and "cannot read" in result.rejected[0]
    assert restarted.model_version() == 2 and restarted.outcome_seqs == {}


def test_control_batch_after_a_crash_applies_the_rollback(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=2)
    before = service.state_dict()
    outcome = roll_back(service)
    restarted, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0)
    restarted.load_state_dict(before)
    other = Outcome(service="rank", kind="lease", key="q1", seq=1, ts=0.0)
    unknown = Outcome(service="ctr", kind="retrain", key="ctr", seq=2, ts=0.0)
    result = restarted.process(CONTROL, [other, outcome, unknown])
    assert restarted.model_version() == 1 and restarted.outcome_seqs == {"ctr": 1}
    assert result.rejected == {2: "service ctr takes no 'retrain' outcomes"}
    assert [u.version for u in wire_updates(result.outputs)] == [1]


# -- model updates and the serving replica ---------------------------------------------------------
def replica(tmp_path: Path, **overrides: Any) -> CtrServing:
    """A replica that has read the (empty) topic to its end, as one started before the trainer.

    It scores in float32, so its answers are the trainer's bit for bit: that is how these tests tell
    which version it serves. The bfloat16 default is tested in ``test_ctr_serving_path.py``."""
    options = {**OPTIONS, "serving_precision": "float32", **overrides}
    serving = build_serving(tmp_path / "checkpoints", **options)
    serving.caught_up()
    return serving


def test_every_swap_publishes_an_inline_update_that_a_replica_serves_identically(tmp_path: Path) -> None:
    service, updates = trained(tmp_path, versions=2)
    assert [u.version for u in updates] == [1, 2]
    assert all(u.weights and u.uri is None and len(u.sha256) == 64 for u in updates)
    serving = replica(tmp_path)
    for update in updates:
        serving.apply_update(update)
    assert serving.ready() and serving.model_version() == 2
    assert score(serving.routes()) == score(service.routes())
    versions = call(serving.routes(), "GET", "/ctr/versions").body
    trainer = call(service.routes(), "GET", "/ctr/versions").body
    assert versions["serving"] == 2 and versions["versions"] == trainer["versions"][-1:]
    assert versions["model"] == trainer["model"] and versions["swap_interval_s"] == 0.0


def test_large_updates_go_through_the_checkpoint_store(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path / "ctr", swap_interval_s=0.0, keep_versions=2)
    service.inline_limit = 0  # every state counts as large
    updates = []
    for seed in range(3):
        updates += wire_updates(service.process(IMPRESSIONS, impressions(256, seed=seed)).outputs)
    store = tmp_path / "checkpoints" / "model-updates" / "ctr"
    assert [u.uri for u in updates] == [str(store / f"v{n:06d}.pt") for n in (1, 2, 3)]
    assert all(u.weights is None for u in updates)
    assert sorted(p.name for p in store.iterdir()) == ["v000002.pt", "v000003.pt"]  # pruned with history
    serving = replica(tmp_path)
    serving.apply_update(updates[-1])
    assert score(serving.routes()) == score(service.routes())


def test_a_sha256_mismatch_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    service, updates = trained(tmp_path, versions=2)
    serving = replica(tmp_path)
    serving.apply_update(updates[0])
    forged = updates[1].model_copy(update={"sha256": "0" * 64})
    with pytest.raises(UpdateError, match="sha256 mismatch, the update says 0000"):
        serving.apply_update(forged)
    assert serving.model_version() == 1

    service.inline_limit = 0
    (big,) = wire_updates([service.update_output(service.history.serving)])
    assert big.uri is not None
    path = Path(big.uri)
    path.write_bytes(path.read_bytes()[:-10])  # a torn or replaced file
    with pytest.raises(UpdateError, match=f"sha256 mismatch.*{path.name}"):
        serving.apply_update(big)
    assert serving.model_version() == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": None, "uri": "/etc/passwd"}, "outside the checkpoint store"),
        ({"weights": "not base64!"}, "not valid base64"),
        ({"weights": None}, "neither weights nor a uri"),
        ({"service": "rank"}, "service 'rank' sent to the 'ctr' replica"),
    ],
)
def test_bad_updates_get_clear_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    _, (update,) = trained(tmp_path, versions=1)
    serving = replica(tmp_path)
    with pytest.raises(UpdateError, match=message):
        serving.apply_update(update.model_copy(update=change))
    assert not serving.ready()


def test_an_update_for_another_model_is_refused(tmp_path: Path) -> None:
    _, (update,) = trained(tmp_path, versions=1)
    with pytest.raises(UpdateError, match="this replica serves 'dcn'"):
        replica(tmp_path, model="dcn").apply_update(update)
    with pytest.raises(UpdateError, match="does not fit this model"):
        replica(tmp_path, embed_dim=8).apply_update(update)


def test_older_updates_are_ignored_unless_they_are_a_rollback(tmp_path: Path) -> None:
    service, updates = trained(tmp_path, versions=2)
    serving = replica(tmp_path)
    serving.apply_update(updates[1])
    serving.apply_update(updates[0])
    assert serving.model_version() == 2
    outcome = roll_back(service)
    (rollback,) = wire_updates(service.process(CONTROL, [outcome]).outputs)
    serving.apply_update(rollback)
    assert serving.model_version() == 1
    assert score(serving.routes()) == score(service.routes())


def test_replica_answers_503_before_any_version_and_409_to_rollback(tmp_path: Path) -> None:
    serving = replica(tmp_path)
    assert not serving.ready() and serving.model_version() == 0
    with pytest.raises(ApiError) as caught:
        score(serving.routes())
    assert (
        caught.value.status == 503 and "catching up with the trainer's model updates" in caught.value.message
    )
    assert call(serving.routes(), "GET", "/ctr/versions").body["serving"] == 0
    with pytest.raises(ApiError) as caught:
        call(serving.routes(), "POST", "/ctr/rollback")
    assert caught.value.status == 409 and caught.value.message == NOT_THE_TRAINER


def test_replica_serves_from_the_topic_only_once_caught_up(tmp_path: Path) -> None:
    service, updates = trained(tmp_path, versions=2)
    serving = build_serving(tmp_path / "checkpoints", **OPTIONS, serving_precision="float32")
    other = updates[0].model_copy(update={"service": "rank", "version": 9})
    for record in (updates[0], other, updates[1]):  # as the topic holds them: rank's update is skipped
        serving.apply(record)
    assert serving.model_version() == 2 and not serving.ready()
    with pytest.raises(ApiError) as caught:
        score(serving.routes())  # v2 is in hand, but the topic may hold a newer one: not yet
    assert caught.value.status == 503
    serving.caught_up()
    assert serving.ready() and score(serving.routes()) == score(service.routes())
    with pytest.raises(UpdateError, match="expected a model update, got Outcome"):
        serving.apply(Outcome(service="ctr", kind="rollback", key="ctr", seq=1, ts=0.0))


def test_build_serving_takes_the_trainer_options(tmp_path: Path) -> None:
    serving = replica(tmp_path, max_candidates=3, swap_interval_s=5)
    assert serving.name == "ctr" and serving.learner.name == "deepfm"
    with pytest.raises(ValueError, match="swap_intervall"):
        replica(tmp_path, swap_intervall=3)


def test_serving_precision_is_the_replicas_option_and_both_roles_check_it(tmp_path: Path) -> None:
    assert replica(tmp_path, serving_precision="bfloat16").precision == torch.bfloat16
    assert replica(tmp_path).precision == torch.float32
    make_service(tmp_path / "trainer", serving_precision="bfloat16")  # accepted, and ignored
    for build in (lambda: replica(tmp_path, serving_precision="fp8"),
                  lambda: make_service(tmp_path / "bad", serving_precision="fp8")):  # fmt: skip
        with pytest.raises(ValueError, match=r"serving_precision must be one of \['auto', 'float32'"):
            build()


# -- through Kafka and a worker process -------------------------------------------------------------
@pytest.mark.kafka
def test_an_answered_rollback_is_on_the_control_topic_and_survives_a_kill(
    kafka, worker_factory, minted_tokens, monkeypatch
) -> None:
    from streams.client import TOKEN_VARIABLE
    from streams.producer import make_producer, send_all
    from streams.tokens import Role
    from tests.streams.helpers import get_json, post_json, read_topic, wait_until

    options = [f"ctr.{key}={json.dumps(value)}" for key, value in OPTIONS.items()]
    worker = worker_factory("ctr", [*options, "ctr.swap_interval_s=0", "ctr.batch_window_s=0.2"])
    annotator = minted_tokens.mint("annotator", Role.ANNOTATOR)
    worker.start()
    producer, rows = make_producer(kafka.bootstrap), [*impressions(256, seed=1), *impressions(256, seed=2)]
    try:
        send_all(producer, "impressions", rows, progress=False)
    finally:
        producer.close()
    versions = lambda: get_json(f"{worker.base}/ctr/versions")[1]  # noqa: E731
    wait_until(lambda: versions()["trained_samples"] == 512, timeout_s=120, what="512 impressions trained on")
    serving = versions()["serving"]
    assert serving >= 2

    assert post_json(f"{worker.base}/ctr/rollback", {}, token=annotator)[0] == 403  # takes an admin
    monkeypatch.delenv(TOKEN_VARIABLE)
    assert post_json(f"{worker.base}/ctr/rollback", {})[0] == 401  # and a token at all
    code, rolled = post_json(f"{worker.base}/ctr/rollback", {}, token=minted_tokens.admin)
    assert code == 200 and rolled == {"model_version": serving - 1, "rolled_back_from": serving}
    (record,) = read_topic(kafka.bootstrap, topic_name("control"), expected=1)
    assert record["schema"] == "outcome/1" and record["kind"] == "rollback"
    assert (record["data"]["version"], record["data"]["rolled_back_from"]) == (serving - 1, serving)

    scored = lambda: post_json(f"{worker.base}/ctr/score", {"candidates": CANDIDATES})[1]  # noqa: E731
    rolled_back = scored()
    assert rolled_back["model_version"] == serving - 1

    def serving_entry() -> tuple[dict[str, Any], int]:
        """The serving version's entry (its ``created`` tells it from a replayed namesake), samples."""
        body = versions()
        (entry,) = [v for v in body["versions"] if v["version"] == body["serving"]]
        return entry, body["trained_samples"]

    before = serving_entry()
    assert before[0]["version"] == serving - 1 and before[1] == 512

    worker.kill()
    worker.start()
    wait_until(lambda: serving_entry() == before, timeout_s=60, what="the rolled-back version after restart")
    assert scored()["scores"] == pytest.approx(rolled_back["scores"], rel=1e-6)  # the same model
    updates = read_topic(kafka.bootstrap, topic_name("model-updates"), expected=1000, timeout_s=5)
    assert (updates[-1]["version"], updates[-1]["info"]["rollback"]) == (serving - 1, True)


def test_adopting_an_old_version_keeps_it_and_the_newest(tmp_path: Path) -> None:
    service, _ = trained(tmp_path, versions=4, keep_versions=3)
    history = service.history
    old = replace(history.versions[0], number=1, created=0.0)  # one loaded from the store
    history.adopt(old, last_number=4)
    assert history.numbers() == [1, 3, 4] and history.serving is old and history.last_number == 4
    history.adopt(old, last_number=4)
    assert history.numbers() == [1, 3, 4] and history.serving is old
