"""A small JSON client for the worker's HTTP API (CLI commands, tests and benchmarks use it).

Requests carry ``Authorization: Bearer <token>`` when a token is given or ``DRIFTLINE_TOKEN`` is
set, so write routes (which always need a token, see :mod:`streams.auth`) work from the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

TOKEN_VARIABLE = "DRIFTLINE_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"


def add_worker_options(command: argparse.ArgumentParser, token_help: str) -> None:
    """``--url``, ``--timeout`` and ``--token`` of a command that talks to a worker's HTTP API."""
    command.add_argument("--url", default=DEFAULT_URL, help=f"worker HTTP address (default {DEFAULT_URL})")
    command.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the worker")
    command.add_argument(
        "--token", default=None, help=f"bearer token (default ${TOKEN_VARIABLE}); {token_help}"
    )


def ask_worker(method: str, path: str, args: argparse.Namespace, payload: Any = None) -> Any:
    """The worker's JSON answer to a CLI command, or None after printing why there is none."""
    url = args.url.rstrip("/") + path
    try:
        status, body = call(method, url, payload, timeout=args.timeout, token=args.token)
    except OSError as exc:
        print(f"cannot reach the worker at {url}: {exc}", file=sys.stderr)
        return None
    if status != 200:
        reason = body.get("error", body) if isinstance(body, dict) else body
        print(f"{method} {url} answered {status}: {reason}", file=sys.stderr)
        return None
    return body


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
