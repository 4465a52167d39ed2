"""``GET /models`` and ``POST /models/{service}/promote|rollback``: every service's lineage in one place.

``GET /models`` answers a JSON object keyed by service name, each value
``{"serving": version, "versions": [{"version", "trained_at", "offsets", "validation", "history"}]}``
(:mod:`streams.lineage`). A service with versions (:class:`Versioned`, CTR) answers its own lineage;
one without answers its current state as a single version, so the shape holds for all.

The POST routes (admin: :mod:`streams.auth` asks admin of every non-GET route) take an optional
JSON body ``{"version": N}``; without it a rollback serves the previous kept version and a promote
the newest. A service without versions answers 409.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from streams.lineage import single_version
from streams.service import ApiError, ApiRequest, ApiResponse, ModelService, Route

#: The route word and the lineage action it records.
ACTIONS = {"promote": "promoted", "rollback": "rolled_back"}
#: The lineage actions a serve by hand records.
HAND_ACTIONS = tuple(ACTIONS.values())
#: The control-topic outcome kind of a forecast or rank serve by hand (key: the service name).
SERVE = "serve"

Kept = TypeVar("Kept")


class NotKept(LookupError):
    """No kept version fits a request to serve one by hand (the route answers 409)."""


def kept_target(
    kept: Iterable[Kept],
    serving: Kept | None,
    action: str,
    number: int | None,
    number_of: Callable[[Kept], int],
) -> Kept:
    """The kept version an admin's ``action`` serves, for every family: ``number``, else the one kept
    just before the serving one for a rollback and the newest for a promote; :class:`NotKept` when
    there is none. ``number_of`` reads a version's number."""
    by_number = sorted(kept, key=number_of)
    numbers = [number_of(v) for v in by_number]
    if number is not None:
        found = next((v for v in by_number if number_of(v) == number), None)
        if found is None:
            raise NotKept(f"version {number} is not kept (kept: {numbers}); it cannot serve")
        return found
    if action == ACTIONS["rollback"]:
        current = None if serving is None else number_of(serving)
        older = [v for v in by_number if current is not None and number_of(v) < current]
        if not older:
            raise NotKept(f"no version older than {current} is kept (kept: {numbers})")
        return older[-1]
    if not by_number or by_number[-1] is serving:
        raise NotKept(f"no kept version newer than the serving one (kept: {numbers})")
    return by_number[-1]


@runtime_checkable
class Versioned(Protocol):
    """A service that keeps versions and can serve one of them by hand."""

    def lineage_body(self) -> dict[str, Any]:
        """Its ``GET /models`` value; called holding the service lock."""

    async def serve_version(self, action: str, number: int | None) -> dict[str, Any]:
        """Serve ``number`` (None: the service's default for ``action``) durably; the answer body."""


class LifecycleRoutes:
    """The lifecycle routes over the services of one process."""

    def __init__(self, services: Sequence[ModelService]) -> None:
        self.services = {s.name: s for s in services}

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/models", self.models),
            Route("POST", "/models/{service}/promote", self.promote),
            Route("POST", "/models/{service}/rollback", self.rollback),
        ]

    async def models(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse({name: await self._lineage(s) for name, s in self.services.items()})

    @staticmethod
    async def _lineage(service: ModelService) -> dict[str, Any]:
        if isinstance(service, Versioned):
            return await service.run_locked(service.lineage_body)
        return single_version(service.model_version(), dict(service.batch_offsets))

    async def promote(self, request: ApiRequest) -> ApiResponse:
        return await self._serve(request, "promote")

    async def rollback(self, request: ApiRequest) -> ApiResponse:
        return await self._serve(request, "rollback")

    async def _serve(self, request: ApiRequest, word: str) -> ApiResponse:
        name = request.path_params["service"]
        service = self.services.get(name)
        if service is None:
            raise ApiError(404, f"no service {name!r} here (services: {', '.join(sorted(self.services))})")
        if not isinstance(service, Versioned):
            raise ApiError(409, f"service {name} keeps no versions: there is nothing to {word}")
        return ApiResponse(await service.serve_version(ACTIONS[word], version_of(request.body)))


def version_of(body: Any) -> int | None:
    """The optional ``{"version": N}`` of a promote or rollback body; a 400 says what is wrong."""
    if body is None or body == {}:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    whole = isinstance(version, int) and not isinstance(version, bool)
    if not isinstance(body, dict) or set(body) != {"version"} or not whole or version < 1:
        raise ApiError(400, 'expected no body, {} or {"version": N} with N a version number >= 1')
    return version
