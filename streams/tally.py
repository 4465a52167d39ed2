"""A service that only counts: per series, how many observations and their sum.

It is the no-op worker of the throughput benchmark and the witness of the exactly-once tests:
after any crash and restart, its counts must equal what was produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.schemas import Observation, Record
from streams.service import ApiError, ApiRequest, ApiResponse, BatchResult, ModelService, Route, Subscription
from streams.topics import topic_name


class TallyService(ModelService):
    """Counts observations per series (and sums their first value)."""

    name = "tally"

    def __init__(
        self, batch_size: int = 1000, batch_window_s: float = 0.2, poison: list[str] | None = None
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        #: Series whose events make ``process`` raise: a model bug on demand, for fault tests.
        self.poison = frozenset(poison or ())
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("observations"), Observation, self.batch_size, self.batch_window_s)]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        for record in records:
            assert isinstance(record, Observation)
            if record.series in self.poison:
                raise RuntimeError(f"poisoned series {record.series!r}")
            self.counts[record.series] = self.counts.get(record.series, 0) + 1
            self.sums[record.series] = self.sums.get(record.series, 0.0) + record.values[0]
        return BatchResult(metrics={"events": float(len(records))})

    def routes(self) -> list[Route]:
        return [Route("GET", "/tally", self._all), Route("GET", "/tally/{series}", self._one)]

    async def _all(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(
            await self.run_locked(lambda: {"series": len(self.counts), "events": sum(self.counts.values())})
        )

    async def _one(self, request: ApiRequest) -> ApiResponse:
        series = request.path_params["series"]
        found = await self.run_locked(lambda: (self.counts.get(series), self.sums.get(series)))
        if found[0] is None:
            raise ApiError(404, f"no observations seen for series {series!r}")
        return ApiResponse({"series": series, "count": found[0], "sum": found[1]})

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "sums": dict(self.sums)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = dict(state["counts"])
        self.sums = dict(state["sums"])


def build_service(data_dir: Path, **options: Any) -> TallyService:
    return TallyService(**options)
