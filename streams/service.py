"""How a model family plugs into the worker, without knowing Faust or Kafka.

A :class:`ModelService` names the topics it consumes, turns a micro-batch of validated records into
output records, exposes HTTP routes, and round-trips its whole state. The runner
(:mod:`streams.runner`, wired by :mod:`roles.worker`) owns everything else: consuming in
micro-batches, dead-lettering bad events, skipping events a checkpoint already holds, producing
outputs, checkpointing state together with offsets, metrics, and serving the routes.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streams.schemas import Outcome, Record

T = TypeVar("T")


@dataclass(frozen=True)
class Subscription:
    """A topic a service consumes and the record type every event on it must validate as."""

    topic: str
    record_type: type[Record]
    batch_size: int = 256
    batch_window_s: float = 0.5
    #: Optional fast path of a shared (not keyed) service: a pure function from a whole batch's
    #: event values to what its :meth:`ModelService.process_decoded` takes, or None unless every
    #: event in it is usable (the runner then parses the batch event by event). What it takes must
    #: give the same state change as :meth:`ModelService.process` of the same events' records.
    decode: Callable[[Sequence[bytes]], Any] | None = None


@dataclass
class Output:
    """A record to produce once a batch has been applied."""

    topic: str
    key: str | None
    record: Record


@dataclass
class BatchResult:
    """What applying a batch produced: records to send and metrics to export."""

    outputs: list[Output] = field(default_factory=list)
    #: Progressive metrics measured before the update, e.g. ``{"loss": 0.12, "auc": 0.71}``.
    metrics: dict[str, float] = field(default_factory=dict)
    #: Records of the batch the model could not use (index in the batch -> reason); the worker
    #: dead-letters them. Everything else in the batch counts as applied.
    rejected: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRequest:
    """An HTTP request as a route handler sees it."""

    method: str
    path_params: dict[str, str]
    query: dict[str, str]
    body: Any = None
    #: The name of the token the request authenticated with (None: no token, e.g. an open query).
    principal: str | None = None


class ApiError(Exception):
    """Raise from a handler to answer with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotOwner(Exception):
    """Raise from a handler when another worker owns the key's partition: the HTTP layer proxies
    the request to that worker, or answers 503 with Retry-After while no owner is known."""

    def __init__(self, service: str, partition: int | None) -> None:
        super().__init__(f"{service}: partition {partition} is owned by another worker")
        self.service = service
        self.partition = partition


@dataclass
class ApiResponse:
    """A JSON (or, with ``content_type``, text/HTML) answer."""

    body: Any
    status: int = 200
    content_type: str = "application/json"


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


@dataclass(frozen=True)
class Route:
    """``method`` and an aiohttp-style ``path`` (``/forecast/{series}``) bound to a handler.

    ``role`` is what a caller's token must be at least: ``open``, ``reader``, ``annotator`` or
    ``admin``; None means reader for GET and admin for other methods (see :mod:`streams.auth`).
    """

    method: str
    path: str
    handler: Handler
    role: str | None = None


class ModelService(ABC):
    """A model family served from the stream.

    The worker calls :meth:`process` from a worker thread while holding :attr:`lock`. Route
    handlers run on the event loop that also drives Kafka, so they must never wait on that lock
    there: a handler that needs a consistent view calls ``await self.run_locked(fn, ...)``, which
    takes the lock in a thread, and a handler that only reads an immutable snapshot (a serving copy,
    a table entry replaced whole) reads it without the lock.
    """

    #: Checkpoint directory name and metrics label.
    name: str = "service"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: Set by the worker: sends extra records (e.g. labels submitted over HTTP) to Kafka and
        #: returns once the broker has them.
        self.emit: Callable[[Output], Awaitable[None]] | None = None
        #: Per outcome key, the ``seq`` of the last outcome applied (checkpointed by the runner).
        self.outcome_seqs: dict[str, int] = {}
        #: Partition count of the input topics and the partition numbers this process owns and
        #: has restored: kept by the runner, so routes can tell "mine", "elsewhere" and "not yet"
        #: (0 partitions: not run by a runner, everything is local).
        self.partitions = 0
        self.owned: frozenset[int] = frozenset()
        #: Set by the runner before each :meth:`process`: the last offset per ``topic:partition``
        #: applied so far, the batch being processed included (what a new model version learned from).
        self.batch_offsets: dict[str, int] = {}
        #: True from the runner's start until its first assignment is restored.
        self.restoring = False
        #: Outcomes decided here since the runner's last restore point: a recovery that goes back
        #: to that point applies them again, so a decision is never lost nor its ``seq`` reused.
        self.decided: list[Outcome] = []

    @abstractmethod
    def subscriptions(self) -> list[Subscription]:
        """Topics to consume, each with its record type and micro-batch bounds."""

    @abstractmethod
    def process(self, topic: str, records: list[Record]) -> BatchResult:
        """Apply one micro-batch from ``topic`` (already validated, never seen before)."""

    def process_decoded(self, topic: str, decoded: Any) -> BatchResult:
        """Apply one micro-batch from ``topic`` that its subscription's ``decode`` took whole; only
        a service whose subscription has a ``decode`` is asked."""
        raise NotImplementedError(f"{self.name} has no decoder for {topic}")

    def routes(self) -> list[Route]:
        """HTTP routes this service serves."""
        return []

    async def run_locked(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` holding :attr:`lock`, in a thread, leaving the event loop free."""

        def call() -> T:
            with self.lock:
                return fn(*args)

        return await asyncio.to_thread(call)

    def require_owner(self, key: str) -> None:
        """Raise unless this process holds ``key``'s partition: 503 while restoring, else
        :class:`NotOwner` (the HTTP layer proxies to the owner)."""
        from streams.topics import partition_for

        if self.restoring:
            raise ApiError(503, f"{self.name} is restoring its partitions; try again shortly")
        if not self.partitions:
            return
        partition = partition_for(key, self.partitions)
        if partition not in self.owned:
            raise NotOwner(self.name, partition)

    # -- outcomes: HTTP-made changes, durable on the control topic before the answer --------------
    def apply_outcome(self, outcome: Outcome) -> None:
        """Change state as ``outcome`` says; a pure function of state and outcome (override)."""
        raise ApiError(400, f"service {self.name} takes no {outcome.kind!r} outcomes")

    def apply_outcome_once(self, outcome: Outcome) -> bool:
        """Apply ``outcome`` unless its key already holds that ``seq``; call holding :attr:`lock`."""
        if outcome.seq <= self.outcome_seqs.get(outcome.key, 0):
            return False
        self.apply_outcome(outcome)
        self.outcome_seqs[outcome.key] = outcome.seq
        return True

    def new_outcome(self, kind: str, key: str, data: dict[str, Any], ts: float) -> Outcome:
        """The next outcome for ``key``, applied here at once; call holding :attr:`lock`.

        The handler that decided it then calls :meth:`publish_outcome` and answers only after it
        returns, so an answered change is in Kafka and survives any crash (the owning worker
        applies the control topic like any stream; the ``seq`` makes the replay a no-op).
        """
        seq = self.outcome_seqs.get(key, 0) + 1
        outcome = Outcome(service=self.name, kind=kind, key=key, seq=seq, ts=ts, data=data)
        self.apply_outcome_once(outcome)
        self.decided.append(outcome)
        return outcome

    async def publish_outcome(self, outcome: Outcome) -> None:
        """Send ``outcome`` to the control topic and wait for the broker; 503 if it cannot."""
        from streams.topics import topic_name

        if self.emit is None:
            raise ApiError(503, "no producer is attached to this service: the change cannot be recorded")
        try:
            await self.emit(Output(topic_name("control"), outcome.key, outcome))
        except Exception as exc:
            raise ApiError(503, f"change not recorded, try again: {type(exc).__name__}: {exc}") from None

    def control_records(self, records: list[Record]) -> list[Outcome]:
        """The outcomes of a control-topic batch that belong to this service."""
        return [r for r in records if isinstance(r, Outcome) and r.service == self.name]

    def apply_control(self, records: list[Record]) -> tuple[list[Outcome], dict[int, str]]:
        """Apply this service's outcomes in a control-topic batch once each; the outcomes applied,
        and the refused ones by position in ``records`` with the reason. Call holding :attr:`lock`."""
        position = {id(record): index for index, record in enumerate(records)}
        applied: list[Outcome] = []
        rejected: dict[int, str] = {}
        for outcome in self.control_records(records):
            try:
                self.apply_outcome_once(outcome)
            except ApiError as exc:
                rejected[position[id(outcome)]] = exc.message
                continue
            applied.append(outcome)
        return applied, rejected

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The whole service state (models, rolling windows, queues) for a checkpoint."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def model_version(self) -> int:
        """Version reported in metrics and answers; override when the service swaps models."""
        return 0
