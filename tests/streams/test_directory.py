"""Who owns a key's partition, and which worker trains a service, from status rows (synthetic)."""

from __future__ import annotations

import time

from streams.directory import OwnerDirectory
from streams.schemas import ServiceStatus


class Board:
    """Status rows as a process's board holds them."""

    def __init__(self, rows: list[ServiceStatus]) -> None:
        self.live = rows

    def rows(self) -> list[ServiceStatus]:
        return self.live


def row(instance: str, service: str, age_s: float, partitions: list[str], **fields: object) -> ServiceStatus:
    fields = {"role": "worker", "ready": True, "url": f"http://{instance}", **fields}
    return ServiceStatus(instance=instance, service=service, ts=time.time() - age_s, partitions=partitions,
                         **fields)  # type: ignore[arg-type]  # fmt: skip


def test_the_newest_ready_claim_on_a_partition_names_its_owner() -> None:
    directory = OwnerDirectory(Board([  # type: ignore[arg-type]
        row("old", "tally", 5, ["tallies:1", "tallies:12"]),
        row("new", "tally", 1, ["tallies:1"]),  # took partition 1 over
        row("booting", "tally", 0, ["tallies:2"], ready=False),  # not restored yet
        row("other", "ctr", 0, ["impressions:2"]),
    ]))  # fmt: skip
    assert directory.owner_url("tally", 1) == "http://new"
    assert directory.owner_url("tally", 12) == "http://old"
    assert directory.owner_url("tally", 2) is None  # a partition 2 is not partition 12's suffix
    assert directory.owner_url("ctr", 1) is None


def test_a_service_is_answered_by_its_trainer_once_per_worker() -> None:
    directory = OwnerDirectory(Board([  # type: ignore[arg-type]
        row("trainer", "ctr", 3, ["impressions:0"]),
        row("standby", "ctr", 0, []),
        row("replica", "ctr", 0, [], role="serving"),
        row("trainer", "rank", 3, ["queries:0"]),
        row("forecaster", "forecast", 0, [], ready=False),
    ]))  # fmt: skip
    assert directory.worker_urls(["ctr", "rank", "forecast", "tally"]) == ["http://trainer"]
    assert directory.worker_urls(["tally"]) == []
