"""Forecast probation on real data with synthetic injections: ETTh2's online rows through the service
in its runner (drift alarm included, no Kafka), 8 observations per micro-batch, a DLinear warmed up on
the train split, the default gate and probation options (bench/forecast_rollback.py is the harness).

With these options the gate freezes its 5th candidate at window 1285 and decides it at window 1317,
against v4 (promoted at window 1061).
"""

from __future__ import annotations

import logging

import pytest
import torch

from bench.forecast_rollback import DRIFT, Run, Stream, glitch, row_of
from forecasters.promotion import PromotionConfig

BATCH = 8
FREEZE = 1285
DECIDED = FREEZE + PromotionConfig().gate_windows  # 1317


@pytest.fixture(scope="module")
def stream() -> Stream:
    torch.set_num_threads(1)
    return Stream.load()


def test_a_corrupted_update_that_passes_the_gate_is_rolled_back(stream: Stream) -> None:
    # Synthetic corruption: the 32 windows before the freeze and the whole held-back slice arrive
    # multiplied by 2.5 (a sensor in other units) and train at 30x the learning rate, so v5 learns
    # the glitch and passes the gate on glitched windows; from window 1318 on the data is clean.
    start, stop = row_of(FREEZE - 32) + 1, row_of(DECIDED) + 1
    raw = stream.values(row_of(1560) + 1, glitch(start, stop - start, 2.5))
    run = Run.start(stream, DRIFT)
    run.feed(stream, raw, BATCH, range(start, stop), boost=30.0)
    promoted = dict(run.events("promoted"))
    assert run.windows_at(promoted[5], "after") == FREEZE and run.windows_at(promoted[5]) == DECIDED
    assert promoted[5]["evidence"]["serving_version"] == 4, "the glitched v5 passed the gate against v4"
    (version, event), *later = run.events("rolled_back")
    evidence = event["evidence"]
    assert (version, evidence["rolled_back_from"]) == (4, 5) and not later
    assert evidence["serving"] > evidence["predecessor"] * (1 + PromotionConfig().rollback_margin)
    rolled_at = run.windows_at(event)
    delay = rolled_at - DECIDED
    print(f"\nv5 began serving at window {DECIDED}, rolled back at window {rolled_at}: {delay} windows")
    assert DECIDED < rolled_at <= DECIDED + PromotionConfig().probation_windows
    served = [(windows, version) for windows, _, version, _ in run.log]
    assert {v for w, v in served if DECIDED <= w < rolled_at} == {5}
    assert {v for w, v in served if rolled_at < w} == {4}, "v4 serves again until the next candidate passes"


def test_a_lasting_change_raises_the_alarm_and_rolls_nothing_back(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    # Synthetic lasting change: from window 1340 on (v5, promoted at 1317 on clean data, is on
    # probation against v4) every raw value is multiplied by 2.5, for good. Old versions do worse
    # too: the alarm holds v5's probation, and v6, gated on the changed world, serves next.
    shift = 1340
    raw = stream.values(row_of(1700) + 1, glitch(row_of(shift), row_of(1700), 2.5))
    run = Run.start(stream, DRIFT)
    with caplog.at_level(logging.WARNING, logger="forecasters.promotion"):
        run.feed(stream, raw, BATCH)
    alarms = [w for w in run.alarms() if w >= shift]
    print(f"\nlasting change at window {shift}: drift alarm at windows {alarms}")
    assert alarms and alarms[0] <= shift + 48
    assert "drift alarm: v5's probation against v4 is held (old versions do worse too)" in caplog.text
    assert not run.events("rolled_back")
    promoted = {v: run.windows_at(e) for v, e in run.events("promoted")}
    assert promoted[6] > shift and run.service.model_version() == 6
