"""The CTR HTTP API over any source of serving versions: the trainer's service or a serving replica.

Both processes answer ``POST /ctr/score`` and ``GET /ctr/versions`` with the same bodies; only the
trainer can roll back (a replica follows the trainer's model updates and answers 409 there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from models.ctr.features import FeatureError, FeatureSpec, encode
from models.ctr.versions import ModelVersion
from streams.schemas import Impression, RecordError, parse_record
from streams.service import ApiError, ApiRequest, ApiResponse, Route

NOT_THE_TRAINER = (
    "this process is a CTR serving replica and cannot roll back: roll back on the CTR trainer (the "
    "worker running the ctr service, e.g. `driftline ctr rollback --url <trainer>`); replicas follow "
    "its model updates"
)


class CtrRoutes:
    """``/ctr/score``, ``/ctr/versions`` and ``/ctr/rollback`` bound to what a process has.

    ``serving`` returns the version to score with (read once per request, so a swap never tears
    it); ``versions`` builds the ``GET /ctr/versions`` body; ``rollback`` (the trainer's only)
    rolls back and returns the answer body. ``not_ready`` is the 503 reason before any version.
    """

    def __init__(
        self,
        model: str,
        spec: FeatureSpec,
        max_candidates: int,
        serving: Callable[[], ModelVersion | None],
        versions: Callable[[], Awaitable[dict[str, Any]]],
        not_ready: str,
        rollback: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.max_candidates = max_candidates
        self.serving = serving
        self.versions = versions
        self.not_ready = not_ready
        self.rollback = rollback

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/ctr/score", self.score),
            Route("POST", "/ctr/rollback", self.roll_back),
            Route("GET", "/ctr/versions", self.list_versions),
        ]

    async def score(self, request: ApiRequest) -> ApiResponse:
        serving = self.serving()  # one reference read: this version stays whole for the request
        if serving is None:
            raise ApiError(503, self.not_ready)
        candidates = parse_candidates(request.body, self.spec, self.max_candidates)
        scores = await asyncio.to_thread(serving.scorer.predict, encode(self.spec, candidates))
        return ApiResponse(
            {"model": self.model, "model_version": serving.number, "scores": [float(s) for s in scores]}
        )

    async def roll_back(self, request: ApiRequest) -> ApiResponse:
        if self.rollback is None:
            raise ApiError(409, NOT_THE_TRAINER)
        return ApiResponse(await self.rollback())

    async def list_versions(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(await self.versions())


def versions_body(
    model: str,
    serving: ModelVersion | None,
    versions: Sequence[ModelVersion],
    swap_interval_s: float,
    trained_samples: int,
) -> dict[str, Any]:
    """The ``GET /ctr/versions`` answer (what ``driftline ctr versions`` prints)."""
    return {
        "model": model,
        "serving": serving.number if serving else 0,
        "swap_interval_s": swap_interval_s,
        "trained_samples": trained_samples,
        "versions": [v.info() for v in versions],
    }


def parse_candidates(body: Any, spec: FeatureSpec, limit: int) -> list[Impression]:
    """Validate a score request body; raise a 400 :class:`ApiError` saying what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("candidates"), list):
        raise ApiError(
            400, 'expected a JSON body {"candidates": [{"categorical": {...}, "dense": {...}}, ...]}'
        )
    candidates = body["candidates"]
    if not 1 <= len(candidates) <= limit:
        raise ApiError(400, f"'candidates' must hold 1 to {limit} items, got {len(candidates)}")
    parsed = []
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, dict) or not set(candidate) <= {"categorical", "dense"}:
            raise ApiError(400, f"candidate {index}: expected an object with 'categorical' and/or 'dense'")
        try:
            row = parse_record({**candidate, "id": f"candidate-{index}", "ts": 0.0}, Impression)
            assert isinstance(row, Impression)
            spec.check(row)
        except (RecordError, FeatureError) as exc:
            raise ApiError(400, f"candidate {index}: {exc}") from None
        parsed.append(row)
    return parsed
