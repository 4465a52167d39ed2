"""Who runs what, read from the live status rows of a process's one :class:`~streams.status.StatusBoard`.

A worker asks it which worker owns a key's partition (to proxy the request there); a serving
replica asks it which workers run a service (to forward lineage requests there). Answers come from
the rows as they are when asked, so they are as fresh as the board.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.status import StatusBoard

#: The role whose rows name a trainer's URL (serving replicas publish rows too, and keep no lineage).
WORKER = "worker"


class OwnerDirectory:
    """Answers from ``board``'s live rows of ready processes that published their URL."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def owner_url(self, service: str, partition: int) -> str | None:
        """The URL of the process that owns ``partition`` of ``service`` (the newest claim wins)."""
        claims = [
            (row.ts, row.url)
            for row in self.board.rows()
            if row.ready and row.url and row.service == service
            and any(tp.rsplit(":", 1)[-1] == str(partition) for tp in row.partitions)
        ]  # fmt: skip
        return max(claims)[1] if claims else None

    def worker_urls(self, services: Iterable[str]) -> list[str]:
        """One worker's URL per service of ``services`` that a ready worker runs, without repeats.

        A worker that owns partitions (the trainer, not a stand-by) is preferred, then the newest row.
        """
        best: dict[str, tuple[bool, float, str]] = {}
        for row in self.board.rows():
            if row.role == WORKER and row.ready and row.url:
                claim = (bool(row.partitions), row.ts, row.url)
                best[row.service] = max(best.get(row.service, claim), claim)
        return list(dict.fromkeys(best[name][2] for name in services if name in best))
