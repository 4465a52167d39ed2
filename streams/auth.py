"""Who may call which route: each route declares the role it needs, requests prove theirs by token.

Roles are ranked reader < annotator < admin (:class:`~streams.tokens.Role`); a route's role is the
one it declares (:attr:`streams.service.Route.role`), else ``reader`` for GET and ``admin`` for any
other method, so a new write route is never open by mistake. ``open`` routes (pages, their
scripts) need no token; reader routes (queries) are open too unless ``DRIFTLINE_HTTP_QUERY_AUTH``
is ``reader``. Everything above reader always needs a token. ``/health``, ``/ready`` and
``/metrics`` are open (probes and Prometheus send no token).

Answers: no token or an unknown one is 401 (with how to create one when none exist), a known token
with too low a role is 403, a token past its write rate is 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.kafka_security import client_security
from streams.limits import Limits, RateLimiter, retry_after
from streams.service import Route
from streams.token_sync import TokenSync
from streams.tokens import Principal, Role, TokenFile, TokenStore, token_from_header

log = logging.getLogger(__name__)

OPEN = "open"
ROUTE_ROLES = (OPEN, *(r.label for r in Role))
PUBLIC_HOSTS = ("0.0.0.0", "::", "")
QUERY_AUTH_MODES = ("open", "reader")


class AuthError(Exception):
    """A request refused before its handler: ``status`` with a JSON reason and ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def required_role(route: Route) -> str:
    """The role ``route`` declares, else reader for GET and admin for every other method."""
    role = route.role or ("reader" if route.method.upper() in ("GET", "HEAD") else "admin")
    if role not in ROUTE_ROLES:
        raise ValueError(f"route {route.method} {route.path}: unknown role {role!r}; known: {ROUTE_ROLES}")
    return role


@dataclass
class HttpSecurity:
    """Tokens, the query-auth mode and the limits one HTTP application enforces."""

    store: TokenStore = field(default_factory=TokenStore)
    limits: Limits = field(default_factory=Limits.from_settings)
    #: Reader routes (queries) answer without a token.
    queries_open: bool = True
    #: The home whose ``tokens.jsonl`` is followed (None: none), and the cluster whose tokens topic is.
    home: Path | None = None
    bootstrap: str | None = None
    #: Where HTTP binds: a public bind with no tokens gets a loud warning.
    bind_host: str = "127.0.0.1"
    #: Client security for following the tokens topic (:mod:`streams.kafka_security`).
    kafka_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.writes = RateLimiter(self.limits.write_rate, self.limits.write_burst)

    @classmethod
    def from_settings(cls, settings: Settings, follow_topic: bool) -> HttpSecurity:
        """Tokens from the settings' home (and, with ``follow_topic``, the cluster's tokens topic)."""
        mode = settings.http_query_auth.strip().lower()
        if mode not in QUERY_AUTH_MODES:
            raise ValueError(f"DRIFTLINE_HTTP_QUERY_AUTH must be one of {QUERY_AUTH_MODES}, got {mode!r}")
        return cls(
            limits=Limits.from_settings(settings),
            queries_open=mode == "open",
            home=Path(settings.home),
            bootstrap=settings.bootstrap if follow_topic else None,
            bind_host=settings.http_host,
            kafka_options=client_security(settings) if follow_topic else {},
        )

    # -- per request -----------------------------------------------------------------------------
    def authorize(self, needed: str, authorization: str | None) -> Principal | None:
        """The caller's principal (None on an open route without a valid token); raise :class:`AuthError`."""
        token = token_from_header(authorization)
        principal = self.store.authenticate(token) if token else None
        if needed == OPEN or (needed == "reader" and self.queries_open):
            return principal
        role = Role.parse(needed)
        if principal is None:
            reason = "unknown or revoked token" if token else f"this route needs a token with role {needed}"
            raise AuthError(401, f"{reason}: {self.how_to_get_a_token(role)}", {"WWW-Authenticate": "Bearer"})
        if principal.role < role:
            have = principal.role.label
            raise AuthError(403, f"{principal.name} has role {have}; this route needs {needed}")
        if role > Role.READER and (wait := self.writes.take(principal.name)):
            raise AuthError(
                429, f"{principal.name}: too many writes (limit {self.limits.write_rate:g}/s)",
                {"Retry-After": retry_after(wait)},
            )  # fmt: skip
        return principal

    def how_to_get_a_token(self, role: Role) -> str:
        home = f" --home {self.home}" if self.home is not None else ""
        create = f"`driftline{home} tokens add NAME --role {role.label}`"
        if len(self.store) == 0:
            return f"no tokens exist yet; create one with {create} and send 'Authorization: Bearer <token>'"
        return f"send 'Authorization: Bearer <token>' (an admin creates one with {create})"

    # -- per application -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        """Keep the store current from the home's file and the tokens topic while in the block."""
        stop = asyncio.Event()
        file = TokenFile(self.home) if self.home is not None else None
        sync = TokenSync(self.store, file, self.bootstrap, self.kafka_options)
        task = asyncio.create_task(sync.run(stop))
        warning = asyncio.create_task(self._warn_if_exposed(sync))
        try:
            yield
        finally:
            stop.set()
            warning.cancel()
            await asyncio.gather(task, warning, return_exceptions=True)

    async def _warn_if_exposed(self, sync: TokenSync) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sync.caught_up.wait(), 15.0)
        if self.bind_host in PUBLIC_HOSTS and len(self.store) == 0:
            warn_exposed(self.bind_host, self.how_to_get_a_token(Role.ADMIN))


def warn_exposed(host: str, how: str) -> None:
    """The loud warning of an HTTP bound to every interface while no token exists."""
    bar = "!" * 78
    message = (
        f"{bar}\n!! WARNING: HTTP listens on {host or 'every interface'} and NO TOKENS are configured.\n"
        f"!! Anyone who reaches this port can query; writes are refused until a token exists.\n"
        f"!! {how}\n{bar}"
    )
    print(message, file=sys.stderr, flush=True)
    log.warning("HTTP bound to %s with no tokens configured", host)


_installed: HttpSecurity | None = None


def install(security: HttpSecurity) -> None:
    """Make ``security`` what :func:`streams.http.make_app` uses when given none (the CLI's roles)."""
    global _installed
    _installed = security


def installed() -> HttpSecurity:
    """The installed security, else one from the environment's settings (home file only, no topic)."""
    global _installed
    if _installed is None:
        _installed = HttpSecurity.from_settings(Settings.from_env(), follow_topic=False)
    return _installed
