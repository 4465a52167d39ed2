"""A keyed service that only counts: per series, how many observations and their sum.

It is the no-op worker of the throughput benchmark and the witness of the exactly-once tests:
after any crash, restart or partition move, its counts must equal what was produced. State is
one shard per partition (:class:`streams.keyed.KeyedService`), so any number of workers can
share the observations topic. With ``emit`` on, every applied event also produces a
``tallied/1`` record (the running count), so crash tests can check that outputs are complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams.expiry import check_ttl, silent_keys
from streams.keyed import KeyedService, partition_for
from streams.schemas import Observation, Record, Tallied
from streams.service import (
    ApiError,
    ApiRequest,
    ApiResponse,
    BatchResult,
    Output,
    Route,
    Subscription,
)
from streams.topics import topic_name

#: series -> (count, sum)
Shard = dict[str, tuple[int, float]]


class TallyService(KeyedService):
    """Counts observations per series (and sums their first value)."""

    name = "tally"

    def __init__(
        self,
        batch_size: int = 5000,
        batch_window_s: float = 0.05,
        poison: list[str] | None = None,
        emit: bool = False,
        ttl_s: float | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        #: Series whose events make processing raise: a model bug on demand, for fault tests.
        self.poison = frozenset(poison or ())
        self.emit_counts = emit
        #: A series silent this long (event time) is forgotten; None keeps every series.
        self.ttl_s = check_ttl(ttl_s)
        self.tables: dict[int, Shard] = {}
        #: Per shard, each series' newest event time (what expiry goes by).
        self.last_seen: dict[int, dict[str, float]] = {}

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("observations"), Observation, self.batch_size, self.batch_window_s)]

    def process_shard(self, topic: str, partition: int, records: list[Record]) -> BatchResult:
        table = self.tables.setdefault(partition, {})
        seen = self.last_seen.setdefault(partition, {})
        outputs: list[Output] = []
        for record in records:
            assert isinstance(record, Observation)
            if record.series in self.poison:
                raise RuntimeError(f"poisoned series {record.series!r}")
            count, total = table.get(record.series, (0, 0.0))
            table[record.series] = count + 1, total + record.values[0]
            seen[record.series] = max(seen.get(record.series, record.ts), record.ts)
            if self.emit_counts:
                tallied = Tallied(series=record.series, count=count + 1, sum=total + record.values[0])
                outputs.append(Output(topic_name("tallies"), record.series, tallied))
        for series in silent_keys(seen, max(seen.values(), default=0.0), self.ttl_s):
            del table[series], seen[series]
        return BatchResult(outputs, {"events": float(len(records))})

    # -- shards ----------------------------------------------------------------------------------
    def shards(self) -> set[int]:
        return set(self.tables)

    def shard_state(self, partition: int) -> dict[str, Any]:
        return {
            "counts": dict(self.tables.get(partition, {})),
            "last_seen": dict(self.last_seen.get(partition, {})),
        }

    def load_shard(self, partition: int, state: dict[str, Any] | None) -> None:
        self.tables[partition] = dict(state["counts"]) if state else {}
        self.last_seen[partition] = dict(state.get("last_seen", {})) if state else {}

    def drop_shard(self, partition: int) -> None:
        self.tables.pop(partition, None)
        self.last_seen.pop(partition, None)

    def shard_from_state(self, state: dict[str, Any], partition: int) -> dict[str, Any]:
        """A first-release checkpoint held ``counts`` and ``sums`` of every series in one state."""
        counts = {
            series: (int(count), float(state["sums"][series]))
            for series, count in state["counts"].items()
            if partition_for(series, self.partitions) == partition
        }
        return {"counts": counts}

    # -- HTTP ------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("GET", "/tally", self._all), Route("GET", "/tally/{series}", self._one)]

    async def _all(self, request: ApiRequest) -> ApiResponse:
        """This worker's own partitions only (``scope: local``): the per-series route is global."""

        def summary() -> dict[str, Any]:
            tables = list(self.tables.values())
            return {
                "scope": "local",
                "series": sum(len(t) for t in tables),
                "events": sum(count for t in tables for count, _ in t.values()),
            }

        return ApiResponse(await self.run_locked(summary))

    async def _one(self, request: ApiRequest) -> ApiResponse:
        series = request.path_params["series"]
        self.require_owner(series)  # owned here: its shard is one of ours
        for partition, table in self.tables.items():
            if series in table:
                count, total = table[series]
                return ApiResponse({"series": series, "count": count, "sum": total, "partition": partition})
        raise ApiError(404, f"no observations seen for series {series!r}")


def expected_counts(records: Iterable[Observation]) -> dict[str, tuple[int, float]]:
    """What a tally of exactly these observations holds: the reference tests and benches check."""
    out: dict[str, tuple[int, float]] = {}
    for record in records:
        count, total = out.get(record.series, (0, 0.0))
        out[record.series] = (count + 1, total + record.values[0])
    return out


def build_service(data_dir: Path, **options: Any) -> TallyService:
    return TallyService(**options)
