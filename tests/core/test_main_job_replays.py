"""The main job makes each replay's first record before any replay starts its clock."""

from __future__ import annotations

from collections.abc import Iterator

from roles.main_job import Replay, _primed
from streams.schemas import Observation


def test_a_replay_is_built_when_primed_and_keeps_every_record() -> None:
    built: list[str] = []

    def lazily_built() -> Iterator[Observation]:
        built.append("frame")  # what MovieLens's 100k-row conversion does on the first pull
        for i in range(3):
            yield Observation(series="s", ts=float(i), values=[float(i)])

    primed = _primed(Replay("observations", lazily_built(), 3, "synthetic"))
    assert built == ["frame"]  # made now, not inside the replay's paced loop
    assert [r.ts for r in primed.records] == [0.0, 1.0, 2.0]
    assert (primed.topic, primed.total, primed.label) == ("observations", 3, "synthetic")


def test_an_empty_replay_stays_empty() -> None:
    assert list(_primed(Replay("observations", iter([]), 0, "empty")).records) == []
