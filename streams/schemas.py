"""Versioned JSON record schemas for every topic, validated on the way in.

Each record carries ``"schema": "<kind>/<version>"``. ``parse_record`` turns raw bytes into a typed
record or raises :class:`RecordError` with a reason a person can act on; the worker sends such
events to the dead-letter topic instead of crashing.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]


class RecordError(ValueError):
    """An event that cannot be used: not JSON, unknown schema, or out of schema."""


class Record(BaseModel):
    """Base of all records: strict about unknown fields so typos surface as dead letters."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Observation(Record):
    """One time step of a (possibly multivariate) series: the observations topic."""

    schema_: Literal["observation/1"] = Field("observation/1", alias="schema")
    series: str = Field(min_length=1, max_length=200)
    ts: float = Field(description="event time, seconds since the epoch")
    values: list[Finite] = Field(min_length=1, max_length=4096)


class Impression(Record):
    """An ad/item shown to a user: the impressions topic. ``clicked`` absent means not yet known."""

    schema_: Literal["impression/1"] = Field("impression/1", alias="schema")
    id: str = Field(min_length=1, max_length=200)
    ts: float
    categorical: dict[str, str] = Field(default_factory=dict)
    dense: dict[str, Finite] = Field(default_factory=dict)
    clicked: Literal[0, 1] | None = None

    @model_validator(mode="after")
    def _has_features(self) -> Impression:
        if not self.categorical and not self.dense:
            raise ValueError("an impression needs at least one categorical or dense feature")
        return self


class Document(Record):
    """A candidate document of a query with its feature vector."""

    doc_id: str = Field(min_length=1, max_length=200)
    features: list[Finite] = Field(min_length=1, max_length=4096)


class Query(Record):
    """An unlabeled query with its candidates: the queries topic."""

    schema_: Literal["query/1"] = Field("query/1", alias="schema")
    query_id: str = Field(min_length=1, max_length=200)
    ts: float
    documents: list[Document] = Field(min_length=1, max_length=10_000)

    @field_validator("documents")
    @classmethod
    def _same_width(cls, docs: list[Document]) -> list[Document]:
        widths = {len(d.features) for d in docs}
        if len(widths) > 1:
            raise ValueError(f"documents have different feature counts: {sorted(widths)}")
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate doc_id in documents")
        return docs


class LabelingTask(Record):
    """A query chosen for annotation: the labeling-queue topic."""

    schema_: Literal["labeling_task/1"] = Field("labeling_task/1", alias="schema")
    task_id: str
    query_id: str
    ts: float
    documents: list[Document]
    score: Finite
    selector: str


class Label(Record):
    """Graded judgments for one task's documents: the labels topic."""

    schema_: Literal["label/1"] = Field("label/1", alias="schema")
    task_id: str
    query_id: str
    ts: float
    grades: dict[str, Annotated[int, Field(ge=0, le=4)]] = Field(min_length=1)
    annotator: str = "anonymous"


class Forecast(Record):
    """A model's forecast for a series: the forecasts topic."""

    schema_: Literal["forecast/1"] = Field("forecast/1", alias="schema")
    series: str
    ts: float
    horizon: int = Field(ge=1)
    values: list[list[Finite]] = Field(description="[horizon][channel]")
    model: str
    model_version: int
    weights: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(Record):
    """An event the service could not use, with the reason: the dead-letter topic."""

    schema_: Literal["dead_letter/1"] = Field("dead_letter/1", alias="schema")
    topic: str
    partition: int
    offset: int
    reason: str
    payload: str
    ts: float


class Outcome(Record):
    """A decision made over HTTP (a lease, a skip, a rollback), made durable on the control topic.

    The owning worker applies it like any stream event. ``seq`` numbers a service's decisions:
    applying an outcome whose ``seq`` the state already holds is a no-op, so a replayed outcome
    gives the same state however often it arrives.
    """

    schema_: Literal["outcome/1"] = Field("outcome/1", alias="schema")
    service: str = Field(min_length=1, max_length=100)
    kind: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=1, max_length=200)
    seq: int = Field(ge=1)
    ts: float
    data: dict[str, Any] = Field(default_factory=dict)


class Tallied(Record):
    """The tally service's running count of a series after one event (its witness output)."""

    schema_: Literal["tallied/1"] = Field("tallied/1", alias="schema")
    series: str
    count: int = Field(ge=1)
    sum: float


class ServiceStatus(Record):
    """One row of the live status: a role's view of one service, on the compacted status topic."""

    schema_: Literal["service_status/1"] = Field("service_status/1", alias="schema")
    instance: str
    role: str
    service: str
    url: str = ""
    ts: float
    ready: bool = False
    status: str = "ok"
    partitions: list[str] = Field(default_factory=list)
    events_per_s: float = 0.0
    lag: int = 0
    last_batch_ts: float | None = None
    metric: dict[str, float] = Field(default_factory=dict)
    model_version: int = 0


class ModelUpdate(Record):
    """A new model version from a trainer, on the compacted model-updates topic (key: service).

    ``weights`` carries the state inline (base64 of ``torch.save`` bytes) when small; otherwise
    ``uri`` names it in the checkpoint store and ``sha256`` lets a replica check what it loaded.
    """

    schema_: Literal["model_update/1"] = Field("model_update/1", alias="schema")
    service: str
    version: int = Field(ge=1)
    ts: float
    sha256: str
    weights: str | None = None
    uri: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)


RECORD_TYPES: dict[str, type[Record]] = {
    "observation/1": Observation,
    "impression/1": Impression,
    "query/1": Query,
    "labeling_task/1": LabelingTask,
    "label/1": Label,
    "forecast/1": Forecast,
    "dead_letter/1": DeadLetter,
    "outcome/1": Outcome,
    "tallied/1": Tallied,
    "service_status/1": ServiceStatus,
    "model_update/1": ModelUpdate,
}


def _reason(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_record(raw: bytes | str | dict[str, Any], expected: type[Record] | None = None) -> Record:
    """Decode and validate one event; raise :class:`RecordError` saying what is wrong."""
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema is None and expected is not None:
        schema = expected.model_fields["schema_"].default
        data = {**data, "schema": schema}
    cls = RECORD_TYPES.get(schema) if isinstance(schema, str) else None
    if cls is None:
        known = ", ".join(sorted(RECORD_TYPES))
        raise RecordError(f"unknown schema {schema!r}; known: {known}")
    if expected is not None and cls is not expected:
        raise RecordError(f"schema {schema!r} does not belong on this topic (expects {expected.__name__})")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise RecordError(_reason(exc)) from None
