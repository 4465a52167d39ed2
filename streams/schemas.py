"""Versioned JSON record schemas for every topic, validated on the way in.

Each record carries ``"schema": "<kind>/<version>"``. ``parse_record`` turns raw bytes into a typed
record or raises :class:`RecordError` with a reason a person can act on; the worker sends such
events to the dead-letter topic instead of crashing.

Hostile events are refused before they cost much: a record over ``max_record_bytes`` is not
parsed at all, JSON nested deeper than ``max_nesting_depth`` is refused before decoding (Python's
decoder would raise RecursionError) and in free-form fields, and every number must be finite,
event times included. The limits are settings (``DRIFTLINE_MAX_RECORD_BYTES``,
``DRIFTLINE_MAX_NESTING_DEPTH``), read once per process.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streams.config import Settings
from streams.limits import json_depth

Finite = Annotated[float, Field(allow_inf_nan=False)]


@functools.cache
def record_limits() -> tuple[int, int]:
    """``(max_record_bytes, max_nesting_depth)`` from the settings (cached: call ``cache_clear``
    after changing them in-process)."""
    settings = Settings.from_env()
    return settings.max_record_bytes, settings.max_nesting_depth


def value_depth(value: Any) -> int:
    """How deeply a decoded JSON value nests (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(value_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(value_depth, value), default=0)
    return 0


def _shallow(value: Any) -> Any:
    """A free-form field's value, refused when it nests deeper than the limit."""
    limit = record_limits()[1]
    if value_depth(value) > limit:
        raise ValueError(f"nested deeper than {limit} levels (max_nesting_depth)")
    return value


#: A free-form JSON object whose nesting is bounded (typed fields bound theirs by their type).
FreeForm = Annotated[dict[str, Any], Field(default_factory=dict), AfterValidator(_shallow)]


class RecordError(ValueError):
    """An event that cannot be used: not JSON, unknown schema, or out of schema."""


class Record(BaseModel):
    """Base of all records: strict about unknown fields so typos surface as dead letters."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    #: Whether ``max_record_bytes`` applies: false for internal records sized by their writers.
    bounded: ClassVar[bool] = True

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Pydantic's parser, after the size check. The runner's fast path comes through here for
        every record, so without options the validator is called directly (what pydantic's own
        method does after checking its options), so the check costs no more than that option
        handling did (about 2.2 us a small observation either way on this machine)."""
        if cls.bounded and len(json_data) > record_limits()[0]:
            _check_size(cls, json_data)  # raises, saying why
        if kwargs:
            return super().model_validate_json(json_data, **kwargs)
        return cls.__pydantic_validator__.validate_json(json_data)  # type: ignore[no-any-return]


class Observation(Record):
    """One time step of a (possibly multivariate) series: the observations topic."""

    schema_: Literal["observation/1"] = Field("observation/1", alias="schema")
    series: str = Field(min_length=1, max_length=200)
    ts: Finite = Field(description="event time, seconds since the epoch")
    values: list[Finite] = Field(min_length=1, max_length=4096)


class Impression(Record):
    """An ad/item shown to a user: the impressions topic. ``clicked`` absent means not yet known."""

    schema_: Literal["impression/1"] = Field("impression/1", alias="schema")
    id: str = Field(min_length=1, max_length=200)
    ts: Finite
    categorical: dict[str, str] = Field(default_factory=dict)
    dense: dict[str, Finite] = Field(default_factory=dict)
    clicked: Literal[0, 1] | None = None

    @model_validator(mode="after")
    def _has_features(self) -> Impression:
        if not self.categorical and not self.dense:
            raise ValueError("an impression needs at least one categorical or dense feature")
        return self


class Click(Record):
    """A click on an impression shown earlier: the clicks topic, joined to ``impression_id`` by the
    CTR service within its click window (:mod:`models.ctr.click_join`)."""

    schema_: Literal["click/1"] = Field("click/1", alias="schema")
    impression_id: str = Field(min_length=1, max_length=200)
    ts: Finite


def _web_url(url: str) -> str:
    """An absolute http(s) address: a page opens it as a link or image, so no ``javascript:`` or
    ``data:`` and no whitespace (which browsers strip, letting ``java\nscript:`` through)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("must not contain whitespace or control characters")
    return url


#: Display text: shown to annotators (escaped), never read by a model.
DisplayText = Annotated[str, Field(min_length=1, max_length=2000)]
WebUrl = Annotated[str, Field(max_length=2000), AfterValidator(_web_url)]


class Document(Record):
    """A candidate document of a query with its feature vector.

    ``title``, ``url``, ``snippet`` and ``image_url`` are optional display fields for the annotators'
    page: producer-supplied, bounded, URLs http(s) only; models ignore them."""

    doc_id: str = Field(min_length=1, max_length=200)
    features: list[Finite] = Field(min_length=1, max_length=4096)
    title: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    url: WebUrl | None = None
    snippet: DisplayText | None = None
    image_url: WebUrl | None = None


class Query(Record):
    """An unlabeled query with its candidates: the queries topic. ``text`` is an optional display
    field (what the annotator reads as the query), ignored by models."""

    schema_: Literal["query/1"] = Field("query/1", alias="schema")
    query_id: str = Field(min_length=1, max_length=200)
    ts: Finite
    documents: list[Document] = Field(min_length=1, max_length=10_000)
    text: DisplayText | None = None

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
    ts: Finite
    documents: list[Document]
    score: Finite
    selector: str
    text: DisplayText | None = None  # the query's display text


class Label(Record):
    """Graded judgments for one task's documents: the labels topic."""

    schema_: Literal["label/1"] = Field("label/1", alias="schema")
    task_id: str
    query_id: str
    ts: Finite
    grades: dict[str, Annotated[int, Field(ge=0, le=4)]] = Field(min_length=1)
    annotator: str = "anonymous"
    #: The model version serving when the label was accepted (absent on labels from before it).
    model_version: int | None = Field(None, ge=0)


class Forecast(Record):
    """A model's forecast for a series: the forecasts topic."""

    schema_: Literal["forecast/1"] = Field("forecast/1", alias="schema")
    series: str
    ts: Finite
    horizon: int = Field(ge=1)
    values: list[list[Finite]] = Field(description="[horizon][channel]")
    model: str
    model_version: int
    weights: FreeForm


class DeadLetter(Record):
    """An event the service could not use, with the reason: the dead-letter topic.

    A payload over ``max_record_bytes`` is cut there (it is refused for its size anyway), so a
    dead letter never outgrows what the broker takes.
    """

    bounded: ClassVar[bool] = False
    schema_: Literal["dead_letter/1"] = Field("dead_letter/1", alias="schema")
    topic: str
    partition: int
    offset: int
    reason: str
    payload: str
    ts: Finite

    @field_validator("payload")
    @classmethod
    def _cut(cls, payload: str) -> str:
        limit = record_limits()[0]
        if len(payload) <= limit:
            return payload
        return f"{payload[:limit]}... [cut: {len(payload):,} characters]"


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
    ts: Finite
    data: FreeForm


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
    ts: Finite
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

    bounded: ClassVar[bool] = False
    schema_: Literal["model_update/1"] = Field("model_update/1", alias="schema")
    service: str
    version: int = Field(ge=1)
    ts: Finite
    sha256: str
    weights: str | None = None
    uri: str | None = None
    info: FreeForm


RECORD_TYPES: dict[str, type[Record]] = {
    "observation/1": Observation,
    "impression/1": Impression,
    "click/1": Click,
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


def _check_size(cls: type[Record], raw: str | bytes | bytearray) -> None:
    limit = record_limits()[0]
    if cls.bounded and len(raw) > limit:
        raise RecordError(f"record of {len(raw):,} bytes is over the {limit:,}-byte limit (max_record_bytes)")


def _decode(raw: bytes | str, expected: type[Record] | None) -> Any:
    """JSON text to Python, refusing oversized and too deeply nested text before decoding it."""
    _check_size(expected or Record, raw)
    limit = record_limits()[1]
    too_deep = f"JSON nested deeper than {limit} levels (max_nesting_depth)"
    text = raw.encode() if isinstance(raw, str) else raw
    # UTF-8 text is checked before decoding (HTTP bodies alike: streams.limits.json_depth); nesting
    # never exceeds the count of openers, so most records are settled without the scan
    by_text = json.detect_encoding(text).startswith("utf-8")
    if by_text and text.count(b"[") + text.count(b"{") > limit and json_depth(text) > limit:
        raise RecordError(too_deep)
    try:
        value = json.loads(raw)
        if not by_text and value_depth(value) > limit:
            raise RecordError(too_deep)
    except RecursionError:
        raise RecordError(too_deep) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not valid JSON: {exc}") from exc
    return value


def parse_record(raw: bytes | str | dict[str, Any], expected: type[Record] | None = None) -> Record:
    """Decode and validate one event; raise :class:`RecordError` saying what is wrong."""
    data = raw if isinstance(raw, dict) else _decode(raw, expected)
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
