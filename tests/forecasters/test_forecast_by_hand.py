"""A forecast version served by hand is durable: a replay of its outcome onto an older state waits for
the observations decided after, and serves the decided weights even when the replay froze other
candidates (in process, synthetic sine)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecasters.service import ForecastService
from streams.schemas import Observation, Outcome
from streams.service import ApiError, Output
from streams.topics import topic_name

from .test_forecast_promotion import GATE, OBSERVATIONS, PARTITION, SPEC, VALUES, feed, forecast_from

CONTROL = topic_name("control")


def decide_rollback(service: ForecastService) -> Outcome:
    """``POST /models/forecast/rollback`` (no body) on ``service``; the outcome it published."""
    sent: list[Output] = []

    async def emit(output: Output) -> None:
        sent.append(output)

    service.emit = emit
    asyncio.run(service.serve_version("rolled_back", None))
    (output,) = sent
    assert output.topic == CONTROL and isinstance(output.record, Outcome)
    return output.record


def events(service: ForecastService) -> list[tuple[int, str, str]]:
    """The lineage's (version, action, reason) in the order it shows them (times left out)."""
    body = service.lineage_body()
    return [(v["version"], e["action"], e["reason"]) for v in body["versions"] for e in v["history"]]


def restarted(tmp_path: Path, state: dict[str, Any]) -> ForecastService:
    service = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    service.load_state_dict(copy.deepcopy(state))
    return service


def test_a_replayed_rollback_waits_for_the_observations_it_was_decided_after(tmp_path: Path) -> None:
    live = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    feed(live, range(29))  # serving v4, v1 and v2 kept
    checkpoint = live.state_dict()
    feed(live, range(29, 31))
    outcome = decide_rollback(live)
    assert live.model_version() == 2 and outcome.data["trained"] == {PARTITION: 30}
    replay = restarted(tmp_path, checkpoint)
    replay.process(CONTROL, [outcome])  # the control topic is ahead of the observations
    assert replay.model_version() == 4 and list(replay.pending) == [outcome.seq]
    assert replay.state_dict()["pending"] == [outcome.model_dump(mode="json", by_alias=True)]
    feed(replay, [29])
    assert replay.model_version() == 4, "row 30 is not learned yet"
    feed(replay, [30])
    assert replay.model_version() == 2 and not replay.pending
    assert events(replay) == events(live)
    assert (2, "rolled_back", "by hand: v2 serves instead of v4") in events(live)
    assert np.allclose(forecast_from(replay.learner, 30), forecast_from(live.learner, 30), atol=1e-6)
    replay.process(CONTROL, [outcome])  # once more: its seq is held
    assert replay.outcome_seqs == {"forecast": 1} and replay.model_version() == 2


def test_a_rebatched_replay_serves_the_decided_weights_from_the_store(tmp_path: Path) -> None:
    live = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    feed(live, range(12))
    early = live.state_dict()  # before any version was frozen
    feed(live, range(12, 29))
    decided = copy.deepcopy(live.gate.find(2))
    outcome = decide_rollback(live)
    assert decided is not None and outcome.data["version"] == 2
    replay = restarted(tmp_path, early)
    replay.batch_offsets = {PARTITION: 28}  # the backlog in one micro-batch: candidates freeze elsewhere
    backlog = [Observation(series="a", ts=r * 3600.0, values=VALUES[r].tolist()) for r in range(12, 29)]
    replay.process(OBSERVATIONS, backlog)
    own = replay.gate.find(2)
    assert own is None or own.trained_at != decided.trained_at, "the replay froze its own v2, if any"
    replay.process(CONTROL, [outcome])
    assert replay.model_version() == 2 and not replay.pending
    served = replay.gate.serving
    assert served is not None and served.trained_at == decided.trained_at
    assert np.allclose(forecast_from(served.learner, 28), forecast_from(decided.learner, 28), atol=1e-6)
    assert np.allclose(forecast_from(replay.learner, 28), forecast_from(decided.learner, 28), atol=1e-6)


def test_an_outcome_whose_weights_are_gone_is_refused_and_training_goes_on(tmp_path: Path) -> None:
    live = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    feed(live, range(12))
    early = live.state_dict()
    feed(live, range(12, 29))
    outcome = decide_rollback(live)
    stored = tmp_path / "served-by-hand" / "forecast" / f"v{outcome.data['stored']:06d}"
    for path in stored.iterdir():
        path.write_bytes(b"torn")
    replay = restarted(tmp_path, early)
    feed(replay, range(12, 29))  # one observation per batch, as live: the same versions, other times
    result = replay.process(CONTROL, [outcome])
    assert result.rejected and "cannot serve v2" in result.rejected[0]
    assert replay.model_version() == 4  # what the gate chose: nothing served by hand
    with pytest.raises(ApiError, match="malformed forecast outcome"):
        replay.apply_outcome(outcome.model_copy(update={"seq": 9, "data": {"version": 2}}))
