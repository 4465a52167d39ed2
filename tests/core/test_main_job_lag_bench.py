"""The keep-up bench knows which service's replay a line of the main job reports as done."""

from __future__ import annotations

from bench.main_job_lag import replay_ended
from roles.main_job import CTR_REPLAY, FORECAST_REPLAY, RANK_REPLAY


def test_each_replay_line_names_its_own_service() -> None:
    # ctr's and rank's replays both start "MovieLens-100K": a prefix match ended ctr's sampling
    # when rank's short replay finished.
    assert replay_ended(f"[driftline] replayed 566 events of {RANK_REPLAY} at 207/s\n") == "rank"
    assert replay_ended(f"[driftline] replayed 60007 events of {CTR_REPLAY} at 1,200/s\n") == "ctr"
    assert replay_ended(f"[driftline] replayed 17420 events of {FORECAST_REPLAY} at 200/s\n") == "forecast"


def test_other_lines_end_no_replay() -> None:
    assert replay_ended("[driftline] worker ready at http://127.0.0.1:8080\n") is None
    assert replay_ended("[driftline] replayed 5 events of something else at 10/s\n") is None
