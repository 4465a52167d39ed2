"""Probation and automatic rollback of the rank service on MQ2008 (real queries and grades) with an
injected change: stretches of labels whose grades are mirrored (:func:`rankers.inversion.mirror_grades`,
a synthetic corruption). Labels flow as in production, in process: queries queued, tasks leased and
graded over the labeling routes, labels learned ten queries per batch, and each batch's metrics fed
to a drift alarm as the runner does (:meth:`streams.runner.ServiceRunner._watch_drift`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from rankers.data import QueryBatch
from rankers.inversion import mirror_grades
from rankers.mq2008 import load_mq2008
from rankers.promotion import GateConfig
from rankers.records import query_records
from rankers.service import RankService
from streams.drift import DriftMonitor, DriftSettings

from .service_helpers import LABELS, QUERIES, FakeClock, Harness

BATCH = 10  # labeled queries per labels batch


@dataclass
class Stream:
    """A rank service fed MQ2008 labels batch by batch, with the runner's drift alarm beside it."""

    harness: Harness
    drift: DriftMonitor
    order: np.ndarray
    data: QueryBatch
    #: Per labels batch: (its last label's index, serving version, the batch's metrics).
    log: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    #: Hear alarms (False: the service is not told, as if it did not implement ``on_drift``).
    hear: bool = True

    @property
    def service(self) -> RankService:
        return self.harness.service

    def feed(self, labels: range, mirrored: range = range(0)) -> None:
        """Learn labels ``labels`` (indices into the stream) in batches; ``mirrored`` ones corrupted."""
        for start in range(labels.start, labels.stop, BATCH):
            batch = self.data.select(list(self.order[start : start + BATCH]))
            if start in mirrored:
                batch = mirror_grades(batch)
            queries, truth = query_records(batch, ts0=float(start))
            self.service.process(QUERIES, queries)
            while (task := self.harness.next_task("ann")) is not None:
                assert self.harness.submit(task["task_id"], truth[task["query_id"]], "ann").status == 202
            sent = [o.record for o in self.harness.emitted if o.topic == LABELS]
            self.harness.emitted.clear()
            last = start + BATCH - 1
            self.service.batch_offsets = {f"{LABELS}:0": last}
            result = self.service.process(LABELS, sent)
            assert not result.rejected, result.rejected
            if self.drift.observe(result.metrics) and self.hear:
                self.service.on_drift(self.drift.settings.action)
            self.log.append((last, self.service.model_version(), result.metrics))

    def events(self, action: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, history entry) of every ``action`` in the lineage."""
        body = self.service.lineage_body()
        return [(v["version"], e) for v in body["versions"] for e in v["history"] if e["action"] == action]

    def served_from(self, version: int) -> int:
        """The last label index of the batch after which ``version`` first served."""
        return next(last for last, serving, _ in self.log if serving == version)

    def label_when(self, metric: str) -> list[int]:
        """The last label index of each batch whose metrics have ``metric`` = 1."""
        return [last for last, _, metrics in self.log if metrics.get(metric) == 1.0]


def new_stream(data: QueryBatch, gate: GateConfig, state: dict[str, Any] | None = None) -> Stream:
    service = RankService(
        clock=FakeClock(), rounds=30, committee_size=2, budget=10**6, budget_window=10**6,
        min_quantile=0.0, gate=gate,
    )  # fmt: skip
    drift = DriftMonitor("rank", "ndcg@10", True, DriftSettings())
    if state is not None:
        service.load_state_dict(copy.deepcopy(state["service"]))
        drift.load_state_dict(state["drift"])
    order = np.random.default_rng(0).permutation(data.n_queries)
    return Stream(Harness(service), drift, order, data)


@pytest.fixture(scope="module")
def mq2008() -> QueryBatch:
    return load_mq2008()


def test_a_corrupted_update_that_passed_the_gate_is_rolled_back_and_its_labels_quarantined(
    mq2008: QueryBatch,
) -> None:
    run = new_stream(mq2008, GateConfig())
    # Labels 60-159 mirrored: v14 learns them (trained up to label 139) and passes the gate on the
    # mirrored labels 140-159, which its predecessor v2 (trained on labels 0-19) ranks badly.
    run.feed(range(0, 240), mirrored=range(60, 160))
    promoted = {v: e for v, e in run.events("promoted")}
    assert 14 in promoted and run.served_from(14) == 159
    assert promoted[14]["evidence"]["window"]["after"] == {f"{LABELS}:0": 139}
    [(version, event)] = run.events("rolled_back")
    evidence = event["evidence"]
    assert (version, evidence["rolled_back_from"]) == (2, 14)
    assert evidence["serving"] > evidence["predecessor"] * (1 + GateConfig().rollback_margin)
    [rolled_at] = run.label_when("gate_rolled_back")
    queries = rolled_at - BATCH - 159  # judged before the batch at hand: labels 160..rolled_at-10
    print(f"\ncorrupted update: v14 served from label 159, rolled back after {queries} clean labeled queries")
    assert queries <= 2 * GateConfig().rollback_queries, "the rollback comes within two windows"
    # The labels that made v14 (20-139) and let it through (140-159) are quarantined, no others.
    assert evidence["quarantined"] == {
        "queries": 140,
        "after": {f"{LABELS}:0": 19},
        "to": {f"{LABELS}:0": 159},
    }
    held = set(run.service.ranker.labeled.query_ids)  # type: ignore[union-attr]
    stream_ids = [mq2008.query_ids[i] for i in run.order]
    assert held.isdisjoint(stream_ids[20:160]), "no quarantined label is trained on again"
    assert set(stream_ids[:20]) | set(stream_ids[160 : rolled_at + 1]) <= held
    assert run.service.gate.serving is not None and run.service.gate.serving.version == 2
    assert 14 not in [v for last, v, _ in run.log if last >= rolled_at], "v14 never serves again"


@pytest.fixture(scope="module")
def warmed(mq2008: QueryBatch) -> dict[str, Any]:
    """State after clean labels 0-199: v14 promoted at label 159 and on probation against v2."""
    run = new_stream(mq2008, GateConfig())
    run.feed(range(0, 200))
    probation = run.service.gate.probation
    assert probation is not None and (probation.version, probation.predecessor) == (14, 2)
    assert run.drift.alarms == 0 and not run.events("rolled_back"), "clean labels neither alarm nor roll back"
    return {"service": run.service.state_dict(), "drift": run.drift.state_dict()}


def test_a_lasting_inversion_raises_the_alarm_holds_probation_and_rolls_nothing_back(
    mq2008: QueryBatch, warmed: dict[str, Any]
) -> None:
    run = new_stream(mq2008, GateConfig(), warmed)
    mirrored = range(200, 10_000)  # from label 200 on, for good
    run.feed(range(200, 210), mirrored)
    assert run.drift.alarms == 1, "the first mirrored batch raises the alarm"
    probation = run.service.gate.probation
    assert probation is not None and probation.version == 14 and probation.held, (
        "v2 does worse too than on its gate window: the alarm holds v14's probation"
    )
    run.feed(range(210, 330), mirrored)
    assert not run.events("rolled_back"), "a changed world is no bad update"
    assert 2 not in [v for _, v, _ in run.log], "v2 never serves again"
    promoted = [v for v, e in run.events("promoted") if v > 14]
    assert promoted, "once v14's probation ends, the gate promotes a version gated on the changed world"
    gated = next(e for v, e in run.events("promoted") if v == promoted[0])["evidence"]["window"]
    assert gated["after"][f"{LABELS}:0"] >= 200, "trained on mirrored labels"
    print(f"\nlasting inversion from label 200: drift alarm at label 209, v14 held, v{promoted[0]} promoted "
          f"after label {run.served_from(promoted[0])}, no rollback")  # fmt: skip


def test_probation_round_trips_mid_way_and_older_checkpoints_load(
    mq2008: QueryBatch, warmed: dict[str, Any]
) -> None:
    runs = [new_stream(mq2008, GateConfig(), warmed) for _ in range(2)]
    replica = new_stream(mq2008, GateConfig())
    replica.service.load_state_dict(runs[0].service.state_dict())  # mid-probation
    assert replica.service.gate.state_dict() == runs[0].service.gate.state_dict()
    for run in (runs[0], replica):
        run.drift.load_state_dict(warmed["drift"])
        run.feed(range(200, 240), mirrored=range(200, 240))
    assert replica.service.lineage_body() == runs[0].service.lineage_body()
    assert replica.service.gate.state_dict() == runs[0].service.gate.state_dict()
    old = copy.deepcopy(warmed["service"])
    for key in ("kept", "probation", "learned", "labels", "learned_offsets", "promoted_labels",
                "promoted_offsets", "pending"):  # fmt: skip
        del old["gate"][key]  # what a checkpoint written before probation holds
    before = new_stream(mq2008, GateConfig())
    before.service.load_state_dict(old)
    gate = before.service.gate
    assert gate.serving_version == 14 and gate.probation is None and [c.version for c in gate.kept] == [14]
    assert gate.labels == gate.learned == before.service.ranker.labeled.n_queries  # type: ignore[union-attr]
    before.feed(range(200, 220))
    assert before.service.gate.candidate is not None, "the next retrain is the next candidate"


def test_mirrored_grades_keep_each_querys_grades_in_reverse_order_of_relevance() -> None:
    batch = QueryBatch.from_queries(
        ["a", "b"], [np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32)], [[0, 2, 0, 1], [1, 1, 0]]
    )
    assert mirror_grades(batch).grades.tolist() == [2, 0, 1, 0, 1, 0, 1]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="needs a labeled batch"):
        mirror_grades(QueryBatch.from_queries(["a"], [np.zeros((2, 2), np.float32)], None))
