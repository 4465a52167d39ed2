"""A small JSON client for the worker's HTTP API (CLI commands, tests and benchmarks use it).

Requests carry ``Authorization: Bearer <token>`` when a token is given or ``DRIFTLINE_TOKEN`` is
set, so write routes (which always need a token, see :mod:`streams.auth`) work from the CLI.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

TOKEN_VARIABLE = "DRIFTLINE_TOKEN"


def call(
    method: str, url: str, body: Any = None, timeout: float = 30.0, token: str | None = None
) -> tuple[int, Any]:
    """Status and decoded JSON answer of one request; raises OSError when nothing answers.

    ``token`` defaults to ``$DRIFTLINE_TOKEN``; without either the request goes unauthenticated.
    """
    data = None if body is None and method == "GET" else json.dumps({} if body is None else body).encode()
    headers = {"Content-Type": "application/json"}
    token = token or os.environ.get(TOKEN_VARIABLE)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return error.code, {"error": raw.decode(errors="replace")}


def get_json(url: str, timeout: float = 30.0, token: str | None = None) -> tuple[int, Any]:
    return call("GET", url, timeout=timeout, token=token)


def post_json(url: str, body: Any, timeout: float = 30.0, token: str | None = None) -> tuple[int, Any]:
    return call("POST", url, body, timeout, token)
