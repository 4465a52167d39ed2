"""A whole batch of impression events, straight from their JSON to one training :class:`CtrBatch`.

Through the per-event path each impression becomes a validated pydantic record, then the service
checks it against the feature spec and encodes it: about 2 us an impression in pydantic's validator
alone, 4.6-4.9 us of wall time in a worker, beside training (docs/streams.md). Nearly
every batch on a stream is well formed and labelled, so :class:`ImpressionDecoder` checks the whole
batch at once (key sets, the types of all values in one set, finiteness in one numpy pass) and
encodes it in a few list passes, with no record object per impression. A batch it cannot take whole
(one event too large, malformed, unlabelled, or anything pydantic might read differently) gives
None, and the runner parses that batch event by event as before, dead-lettering what is unusable
with its reason. A batch it takes gives the same tensors as the per-event path (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import torch

from models.ctr.fast_encoder import FastCandidateEncoder, feature_maps, json_floats
from models.ctr.features import CtrBatch, FeatureSpec
from streams.schemas import Impression, record_limits

#: The keys an impression may carry on the fast path, its fields' JSON names read from the schema
#: (``schema_``, pydantic's own name for one, is read by pydantic too: a batch holding it goes
#: event by event).
_KEYS = frozenset(field.alias or name for name, field in Impression.model_fields.items())
_SCHEMA = Impression.model_fields["schema_"].default
#: Impression.id's length bounds, read from the schema so the two cannot drift apart.
_ID_META = Impression.model_fields["id"].metadata
_ID_LENGTH = (
    next(m.min_length for m in _ID_META if hasattr(m, "min_length")),
    next(m.max_length for m in _ID_META if hasattr(m, "max_length")),
)
_LABELS = frozenset({0, 1})
#: Every labelled impression's JSON holds this key as it is (an escaped spelling of it goes the
#: per-event way, as anything unusual does).
_CLICKED = b'"clicked"'


class ImpressionDecoder:
    """:meth:`decode` a batch of impression event values into one labelled :class:`CtrBatch`, or None.

    Pure apart from its bucket memo (a cache), so it may run ahead of the batch being trained.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.encoder = FastCandidateEncoder(spec)

    def decode(self, values: Sequence[bytes]) -> CtrBatch | None:
        """The batch's training rows, or None unless every value is a labelled impression whose
        features the spec knows (the per-event path then says what is wrong with which)."""
        limit = record_limits()[0]
        if not values or max(map(len, values)) > limit:
            return None
        if not all(_CLICKED in value for value in values):
            return None  # unlabelled impressions (a click join's stream): not worth decoding twice
        try:
            events = [orjson.loads(value) for value in values]
        except orjson.JSONDecodeError:
            return None
        maps = feature_maps(events, _KEYS)
        if maps is None:
            return None
        labels = _labels(events)
        if labels is None or not _valid_envelopes(events):
            return None
        return self.encoder.encode_maps(*maps, labels)


def _labels(events: list[dict[str, Any]]) -> torch.Tensor | None:
    """Every event's ``clicked`` as a label tensor, or None if any is missing or not 0/1 (a bool
    equals 0 or 1 too, hence the type check)."""
    clicked = [event.get("clicked") for event in events]
    if {type(label) for label in clicked} != {int} or not set(clicked) <= _LABELS:
        return None
    return torch.tensor(clicked, dtype=torch.float32)


def _valid_envelopes(events: list[dict[str, Any]]) -> bool:
    """Whether every event's schema, id and ts are what :class:`Impression` accepts as they are."""
    if {event.get("schema", _SCHEMA) for event in events} != {_SCHEMA}:
        return False
    ids = [event.get("id") for event in events]
    if {type(i) for i in ids} != {str}:
        return False
    lengths = list(map(len, ids))
    if min(lengths) < _ID_LENGTH[0] or max(lengths) > _ID_LENGTH[1]:
        return False
    times = json_floats([event.get("ts") for event in events])
    return times is not None and bool(np.isfinite(times).all())
