"""The CTR HTTP API over any source of serving versions: the trainer's service or a serving replica.

Both processes answer ``POST /ctr/score`` and ``GET /ctr/versions`` with bodies of the same shape
(a replica's scores are the trainer's to within bfloat16 rounding where it scores in bfloat16:
:mod:`models.ctr.serving_precision`); only the trainer can roll back (a replica follows the
trainer's model updates and answers 409 there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from models.ctr.fast_encoder import FastCandidateEncoder
from models.ctr.features import FeatureError, FeatureSpec
from models.ctr.versions import ModelVersion
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
    ``inline`` predicts on the event loop: a serving replica, whose loop has nothing else to do,
    saves the hop to a thread; a trainer keeps its loop free for Kafka while it scores.
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
        inline: bool = False,
    ) -> None:
        self.model = model
        self.encoder = FastCandidateEncoder(spec)
        self.max_candidates = max_candidates
        self.serving = serving
        self.versions = versions
        self.not_ready = not_ready
        self.rollback = rollback
        self.inline = inline

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/ctr/score", self.score, role="reader"),  # a query, though posted
            Route("POST", "/ctr/rollback", self.roll_back),
            Route("GET", "/ctr/versions", self.list_versions),
        ]

    async def score(self, request: ApiRequest) -> ApiResponse:
        serving = self.serving()  # one reference read: this version stays whole for the request
        if serving is None:
            raise ApiError(503, self.not_ready)
        try:
            batch = self.encoder.encode(candidates_of(request.body, self.max_candidates))
        except FeatureError as exc:
            raise ApiError(400, str(exc)) from None
        predict = serving.scorer.predict
        scores = predict(batch) if self.inline else await asyncio.to_thread(predict, batch)
        return ApiResponse({"model": self.model, "model_version": serving.number, "scores": scores.tolist()})

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


def candidates_of(body: Any, limit: int) -> list[Any]:
    """The candidate list of a score request body; raise a 400 :class:`ApiError` saying what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("candidates"), list):
        raise ApiError(
            400, 'expected a JSON body {"candidates": [{"categorical": {...}, "dense": {...}}, ...]}'
        )
    candidates: list[Any] = body["candidates"]
    if not 1 <= len(candidates) <= limit:
        raise ApiError(400, f"'candidates' must hold 1 to {limit} items, got {len(candidates)}")
    return candidates
