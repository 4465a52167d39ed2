"""A small JSON client for the worker's HTTP API (CLI commands, tests and benchmarks use it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def call(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """Status and decoded JSON answer of one request; raises OSError when nothing answers."""
    data = None if body is None and method == "GET" else json.dumps({} if body is None else body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return error.code, {"error": raw.decode(errors="replace")}


def get_json(url: str, timeout: float = 30.0) -> tuple[int, Any]:
    return call("GET", url, timeout=timeout)


def post_json(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    return call("POST", url, body, timeout)
